"""Two model families of different embedding widths in one store: a tiny random CLIP (16-d)
and a tiny random SigLIP (24-d), each checked against a direct transformers forward, then
stats, compare (against an independent scipy computation), report and text search across
both runs."""

from __future__ import annotations

import io
import json

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from conftest import SPECIAL_WORDS, make_tiny_siglip, save_word_tokenizer
from PIL import Image
from scipy.stats import kendalltau, wilcoxon

from cli import cli
from clipshift.analysis import compare, sql, stats
from clipshift.ingest import ingest
from clipshift.store import Store, latest_schema_version, variants_schema


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def two_families(tmp_path_factory, tiny_model, tiny_siglip, photos):
    """One store: the six photos by the tiny CLIP and by the tiny SigLIP (read-only)."""
    db = tmp_path_factory.mktemp("families") / "db"
    clip = ingest([photos], db, str(tiny_model), batch_size=6, keep_pixels=-1, device="cpu")
    siglip = ingest([photos], db, str(tiny_siglip), batch_size=6, keep_pixels=-1, device="cpu")
    return db, clip.run_id, siglip.run_id


def rows_of(db, table: str, run_id: str) -> list[dict]:
    dataset = lance.dataset(str(db / f"{table}.lance"))
    rows = dataset.to_table(filter=f"run_id = '{run_id}'").to_pylist()
    return sorted(rows, key=lambda r: (r["image_id"], r["variant"]))


def pixels_of(rows: list[dict]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(r["pixels"]))) for r in rows])


def normalised_input(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """The model input computed independently: x / 255, minus mean, over std (float64 first)."""
    x = pixels.astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    return torch.from_numpy(x.transpose(0, 3, 1, 2)).float()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_kept_input_buffer_gives_the_fresh_normalisation_bit_for_bit(tiny_model):
    """`start` normalises each batch into one kept buffer (encoder.py: fresh 48 MB batches
    cost page faults): the values are the fresh path's exactly, a smaller last batch included,
    and a batch's outputs do not change when the next batch overwrites the buffer."""
    from clipshift.encoder import Encoder
    from clipshift.families import CLIP_MEAN, CLIP_STD

    encoder = Encoder(str(tiny_model), device="cpu")
    rng = np.random.default_rng(0)
    first, last = (rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8) for n in (6, 4))
    for images in (first, last):
        fresh = encoder.pixel_values(images)
        kept = encoder.pixel_values(images, reuse=True)
        assert kept.is_contiguous()  # NCHW, as the patch convolution takes it
        assert torch.equal(fresh, kept)
        independent = normalised_input(images, CLIP_MEAN, CLIP_STD)
        np.testing.assert_allclose(kept.numpy(), independent.numpy(), atol=1e-5)
    assert encoder.pixel_values(last, reuse=True).data_ptr() == kept.data_ptr()
    alone = encoder.encode(first)
    again = encoder.start(first)
    encoder.start(last)  # overwrites the buffer `again` was computed from
    np.testing.assert_array_equal(encoder.finish(again).embeddings, alone.embeddings)


def test_both_runs_share_one_store_in_tables_of_their_width(two_families):
    db, clip_run, siglip_run = two_families
    store = Store.open(db)
    assert store.variants_tables() == ["variants_16", "variants_24"]
    assert store.variants_table_of(clip_run) == "variants_16"
    assert store.variants_table_of(siglip_run) == "variants_24"
    runs = {r["run_id"]: r for r in lance.dataset(str(db / "runs.lance")).to_table().to_pylist()}
    assert {runs[clip_run]["family"], runs[siglip_run]["family"]} == {"clip", "siglip"}
    assert (runs[siglip_run]["embedding_dim"], runs[siglip_run]["num_layers"]) == (24, 3)
    preprocessing = json.loads(runs[siglip_run]["preprocessing"])
    assert preprocessing["image_mean"] == [0.5] * 3 and preprocessing["image_std"] == [0.5] * 3
    assert preprocessing["normalisation_from"] == "preprocessor_config.json"
    assert json.loads(runs[clip_run]["preprocessing"])["normalisation_from"] == "family default"
    assert runs[siglip_run]["attention_maps"].startswith("received+probe")
    # one SQL view over both tables: the embedding is a list of each run's own width
    widths = sql(db, "SELECT run_id, any_value(len(embedding)) FROM variants GROUP BY run_id").rows
    assert dict(widths) == {clip_run: 16, siglip_run: 24}


def test_clip_embeddings_match_get_image_features(two_families, tiny_model):
    from transformers import CLIPModel

    from clipshift.families import CLIP_MEAN, CLIP_STD

    db, clip_run, _ = two_families
    rows = rows_of(db, "variants_16", clip_run)[:12]
    model = CLIPModel.from_pretrained(tiny_model, attn_implementation="eager").eval()
    with torch.no_grad():
        inputs = normalised_input(pixels_of(rows), CLIP_MEAN, CLIP_STD)
        features = model.get_image_features(pixel_values=inputs).pooler_output.numpy()
    stored = np.array([r["embedding"] for r in rows])
    assert cosines(stored, features).min() >= 0.9999


def test_siglip_embeddings_and_attention_match_the_definition(two_families, tiny_siglip):
    from transformers import SiglipModel

    db, _, siglip_run = two_families
    rows = rows_of(db, "variants_24", siglip_run)[:12]
    model = SiglipModel.from_pretrained(tiny_siglip, attn_implementation="eager").eval()
    with torch.no_grad():
        inputs = normalised_input(pixels_of(rows), [0.5] * 3, [0.5] * 3)
        features = model.get_image_features(pixel_values=inputs).pooler_output.numpy()
        vision = model.vision_model(pixel_values=inputs, output_attentions=True)
        # the definition (docs/metrics.md): per layer, what each patch receives, mean over
        # heads and query tokens; then the pooling head's probe over the patches
        received = [layer.mean(dim=1).mean(dim=1).numpy() for layer in vision.attentions]
        head = model.vision_model.head
        probe = head.probe.repeat(len(rows), 1, 1)
        _, weights = head.attention(
            probe, vision.last_hidden_state, vision.last_hidden_state, need_weights=True
        )
    maps = np.stack([*received, weights[:, 0].numpy()], axis=1)
    stored = np.array([r["embedding"] for r in rows])
    assert cosines(stored, features).min() >= 0.9999
    np.testing.assert_allclose(
        np.array([r["attention_layers"] for r in rows]), maps.reshape(len(rows), -1), atol=1e-6
    )
    np.testing.assert_allclose(np.array([r["attention"] for r in rows]), maps[:, -1], atol=1e-6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)  # each map is a distribution


def test_stats_of_several_runs_in_long_format(two_families):
    db, clip_run, siglip_run = two_families
    both = stats(db, all_runs=True)
    assert both.run is None
    records = both.records()
    assert {r["run_id"] for r in records} == {clip_run, siglip_run}
    assert len(records) == 2 * 9
    assert both.columns[:4] == ["run_id", "model", "family", "model_rank"]
    for augmentation in {r["augmentation"] for r in records}:
        pair = [r for r in records if r["augmentation"] == augmentation]
        best = max(pair, key=lambda r: r["cosine_mean"])
        assert best["model_rank"] == 1
        single = {r["augmentation"]: r for r in stats(db, run=best["run_id"]).records()}[
            augmentation
        ]
        assert single["cosine_mean"] == pytest.approx(best["cosine_mean"], abs=1e-12)
    out = CliRunner().invoke(
        cli, ["stats", "--db", str(db), "--run", clip_run, "--run", siglip_run[:6]]
    )
    assert out.exit_code == 0, out.output
    assert "model_rank" in out.output and str(db) not in out.output
    assert out.output.count("blur") == 2


def independent_shifts(db, table: str, run_id: str) -> dict[tuple[str, str], dict]:
    """cosine and attention_similarity per (image, augmentation), with numpy from pylance."""
    rows = rows_of(db, table, run_id)
    originals = {r["image_id"]: r for r in rows if r["variant"] == "original"}

    def minmax(values):
        m = np.asarray(values, dtype=np.float64)
        span = m.max() - m.min()
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    found = {}
    for r in rows:
        if r["variant"] == "original":
            continue
        o = originals[r["image_id"]]
        u, v = np.asarray(o["embedding"], np.float64), np.asarray(r["embedding"], np.float64)
        a, b = minmax(o["attention"]), minmax(r["attention"])
        found[(r["image_id"], r["variant"])] = {
            "cosine": u @ v / (np.linalg.norm(u) * np.linalg.norm(v)),
            "attention_similarity": 1 / (1 + np.mean((a - b) ** 2)),
        }
    return found


def test_compare_matches_an_independent_scipy_computation(two_families):
    db, clip_run, siglip_run = two_families
    a = independent_shifts(db, "variants_16", clip_run)
    b = independent_shifts(db, "variants_24", siglip_run)
    result = compare(db, clip_run, siglip_run)
    assert result.note is None
    assert len(result.rows) == 2 * 9
    for metric in ("cosine", "attention_similarity"):
        means = []
        for augmentation in sorted({aug for _, aug in a}):
            keys = sorted(k for k in a if k[1] == augmentation and k in b)
            differences = np.array([a[k][metric] - b[k][metric] for k in keys])
            row = next(
                r
                for r in result.rows
                if r["metric"] == metric and r["augmentation"] == augmentation
            )
            assert row["n"] == len(keys) == 6
            assert row["mean_difference"] == pytest.approx(differences.mean(), abs=1e-9)
            assert row["median_difference"] == pytest.approx(np.median(differences), abs=1e-9)
            expected_p = wilcoxon(differences).pvalue
            assert row["wilcoxon_p"] == pytest.approx(expected_p, rel=1e-9)
            winner = "neither"
            if expected_p < 0.05:
                winner = "A" if differences.mean() > 0 else "B"
            assert row["more_robust"] == winner
            means.append(
                (np.mean([a[k][metric] for k in keys]), np.mean([b[k][metric] for k in keys]))
            )
        tau = kendalltau(*zip(*means, strict=True))
        assert result.kendall_tau[metric][0] == pytest.approx(tau.statistic, abs=1e-12)
        assert result.kendall_tau[metric][1] == pytest.approx(tau.pvalue, abs=1e-12)
    assert "overall" in result.kendall_tau


def test_compare_command(two_families):
    db, clip_run, siglip_run = two_families
    out = CliRunner().invoke(cli, ["compare", clip_run, siglip_run, "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert f"A: run {clip_run}" in out.output and "wilcoxon_p" in out.output
    assert "severity" not in out.output  # the paper's augmentations have no levels
    assert "Kendall tau" in out.output
    out = CliRunner().invoke(
        cli, ["compare", clip_run, siglip_run, "--db", str(db), "--format", "json"]
    )
    document = json.loads(out.stdout)
    assert document["run_b"]["family"] == "siglip" and len(document["rows"]) == 18
    assert {t["metric"] for t in document["kendall_tau"]} == {
        "cosine",
        "attention_similarity",
        "overall",
    }
    same = CliRunner().invoke(cli, ["compare", clip_run, clip_run, "--db", str(db)])
    assert same.exit_code == 1 and "give two runs" in same.output
    assert "Traceback" not in same.output


def test_report_adds_model_comparison_figures(two_families, tmp_path):
    from clipshift.report import report

    db, clip_run, siglip_run = two_families
    result = report(db, run=siglip_run, out=tmp_path / "out", samples=1)
    drawn = {f.name: f for f in result.figures}
    assert result.run.run_id == siglip_run
    for name in ("model_bars", "model_layer_drift", "model_rank_agreement"):
        assert drawn[name].path is not None and drawn[name].path.stat().st_size > 10_000
    assert drawn["attention_grid"].path is not None  # the per-run figures of --run
    page = result.index.read_text()
    assert 'id="model_bars"' in page and "model_rank_agreement.png" in page


def test_vector_search_and_text_per_run(two_families):
    db, clip_run, siglip_run = two_families
    for run_id, table in ((clip_run, "variants_16"), (siglip_run, "variants_24")):
        original = rows_of(db, table, run_id)[0]["image_id"]
        out = CliRunner().invoke(
            cli, ["neighbors", original, "--db", str(db), "--run", run_id, "--format", "json"]
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)[0]["image_id"] == original
    out = CliRunner().invoke(
        cli,
        ["neighbors", "--text", "a photo of a cat", "--db", str(db), "--run", siglip_run]
        + ["-k", "3", "--format", "json"],
    )
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)) == 3


def test_siglip_text_matches_get_text_features(tiny_siglip):
    from transformers import AutoTokenizer, SiglipModel

    from clipshift.encoder import Encoder

    texts = ["a photo of a cat", "rocket"]
    encoded = Encoder(str(tiny_siglip), device="cpu").encode_text(texts)
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_siglip)(
        texts, padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model.get_text_features(input_ids=tokens["input_ids"]).pooler_output
    np.testing.assert_allclose(encoded, expected.numpy(), atol=1e-5)


def test_migration_0003_moves_an_old_store_to_tables_by_width(tmp_path):
    """A schema-2 store (one `variants` table, runs without family) upgrades in place."""
    from datetime import datetime, timezone

    db = tmp_path / "db"
    store = Store.connect(db, create=True)
    store.migrate(target=2)
    # the variants table of schema 2: one table, no severity column yet
    old_schema = variants_schema(8)
    old_schema = old_schema.remove(old_schema.get_field_index("severity"))
    store.db.create_table("variants", schema=old_schema)
    runs = store.table("runs")
    run = {
        "run_id": "old",
        "model": "openai/clip-vit-base-patch32",
        "model_revision": "abc",
        "embedding_dim": 8,
        "patch_grid": 1,
        "num_layers": 1,
        "image_size": 224,
        "seed": 0,
        "augmentations": "[]",
        "augmentation_hash": "h",
        "clipshift_version": "0",
        "created_at": datetime.now(timezone.utc),
    }
    runs.add(pa.Table.from_pylist([run], schema=runs.schema))
    row = {
        "run_id": "old",
        "image_id": "i",
        "variant": "original",
        "embedding": [0.5] * 8,
        "attention": [1.0],
        "attention_layers": [1.0],
    }
    store.table("variants").add(pa.Table.from_pylist([row], schema=old_schema))

    out = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "applied 0003 model_families" in out.output
    upgraded = Store.open(db)
    assert upgraded.schema_version() == latest_schema_version()
    assert upgraded.variants_tables() == ["variants_8"] and not upgraded.has_table("variants")
    assert upgraded.table("variants_8").count_rows() == 1
    # migration 0004 found the renamed table: the rows take a severity, NULL for these
    assert upgraded.dataset("variants_8").to_table().column("severity").to_pylist() == [None]
    (migrated,) = upgraded.dataset("runs").to_table().to_pylist()
    assert migrated["family"] == "clip" and migrated["preprocessing"] is None
    assert migrated["attention_maps"].startswith("cls_row")
    assert sql(db, "SELECT len(embedding) FROM variants").rows == [(8,)]


def test_siglip2_embeddings_match_get_image_features(tmp_path):
    """SigLIP 2 (NaFlex) takes patch sequences: clipshift's patchify must equal its image
    processor's, so the embedding equals get_image_features on the processor's patches."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Siglip2Model"):
        pytest.skip("this transformers has no Siglip2Model")
    from transformers import Siglip2Config, Siglip2Model
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        convert_image_to_patches,
    )

    from clipshift.encoder import Encoder

    torch.manual_seed(2)
    layers = dict(intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    config = Siglip2Config(
        text_config=dict(
            hidden_size=20,
            vocab_size=6,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            **layers,
        ),
        vision_config=dict(hidden_size=20, patch_size=32, num_patches=16, **layers),
    )
    Siglip2Model(config).eval().save_pretrained(tmp_path)
    encoder = Encoder(str(tmp_path), device="cpu")
    assert (encoder.family.name, encoder.embedding_dim, encoder.num_layers) == ("siglip2", 20, 3)
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    encoded = encoder.encode(images)
    x = normalised_input(images, [0.5] * 3, [0.5] * 3).numpy()
    patches = torch.from_numpy(np.stack([convert_image_to_patches(i, 32) for i in x]))
    model = Siglip2Model.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model.get_image_features(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(2, 49, dtype=torch.long),
            spatial_shapes=torch.tensor([[7, 7], [7, 7]]),
        ).pooler_output.numpy()
    assert cosines(encoded.embeddings, expected).min() >= 0.9999
    assert encoded.attention.shape == (2, 3, 49)
    np.testing.assert_allclose(encoded.attention.sum(-1), 1.0, atol=1e-5)

    # text: padded to max_length with the attention mask, as Siglip2Processor does
    from transformers import AutoTokenizer

    save_word_tokenizer(tmp_path, [*SPECIAL_WORDS, "a", "photo", "cat"])
    texts = ["a photo", "cat cat a"]
    tokens = AutoTokenizer.from_pretrained(tmp_path)(
        texts, padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected_text = model.get_text_features(**tokens).pooler_output.numpy()
    np.testing.assert_allclose(encoder.encode_text(texts), expected_text, atol=1e-5)


def test_a_model_of_another_family_is_a_one_line_error(tmp_path, photos):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    out = CliRunner().invoke(
        cli, ["ingest", str(photos), "--db", str(tmp_path / "db"), "--model", str(tmp_path / "vit")]
    )
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "'vit'" in out.output and "clip, siglip, siglip2" in out.output
    assert not (tmp_path / "db").exists()
