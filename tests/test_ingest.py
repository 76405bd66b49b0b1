"""Ingest into a real LanceDB store with the tiny CLIP: rows, schema, determinism, model outputs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from clipshift.augment import Augmenter
from clipshift.defaults import DEFAULT_SUITE
from clipshift.formatting import SHOWN_DUPLICATES, format_ingest_summary
from clipshift.ingest import (
    BF16_INGEST_SPEEDUP,
    BF16_MEAN_COSINE,
    IngestSummary,
    bf16_hint,
    ingest,
)
from clipshift.knn import native_bf16
from clipshift.stages import Duplicate
from clipshift.store import Store
from clipshift.suites import resolve
from clipshift.suites.paper import PAPER as AUGMENTATIONS

VARIANTS = 1 + len(AUGMENTATIONS)


def table(db, name) -> pa.Table:
    """A store table read with pylance; "variants" is the tiny CLIP's 16-d table."""
    name = "variants_16" if name == "variants" else name
    return lance.dataset(str(db / f"{name}.lance")).to_table()


def test_row_counts_and_schema(ingested_store, photos):
    images = table(ingested_store, "images")
    variants = table(ingested_store, "variants")
    runs = table(ingested_store, "runs")
    n = len(list(photos.iterdir()))
    assert runs.num_rows == 1
    assert images.num_rows == n
    assert variants.num_rows == n * VARIANTS
    assert set(variants.column("variant").to_pylist()) == {"original", *AUGMENTATIONS}

    schema = variants.schema
    assert schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert schema.field("attention").type == pa.list_(pa.float32())
    run = runs.to_pylist()[0]
    assert (run["patch_grid"], run["num_layers"], run["embedding_dim"]) == (7, 3, 16)
    row = variants.slice(0, 1).to_pylist()[0]
    assert len(row["attention"]) == 49
    assert len(row["attention_layers"]) == 3 * 49
    assert row["attention_layers"][-49:] == row["attention"]
    assert set(images.column_names) >= {"image_id", "path", "width", "height", "format", "mode"}
    assert set(table(ingested_store, "errors").column_names) == {
        "path",
        "stage",
        "message",
        "run_id",
        "time",
    }
    config = json.loads(run["augmentations"])
    assert [c["name"] for c in config] == list(AUGMENTATIONS)
    assert run["seed"] == 0 and run["image_size"] == 224
    assert run["model_revision"].startswith("sha256:")


def test_original_rows_score_one_and_params_are_recorded(ingested_store):
    rows = table(ingested_store, "variants").drop(["embedding", "pixels"]).to_pylist()
    for row in rows:
        params = json.loads(row["params"])
        if row["variant"] == "original":
            assert row["patch_similarity"] == row["edge_preservation"] == 1.0
            assert params == {}
        else:
            assert 0 < row["patch_similarity"] <= 1
            assert 0 <= row["edge_preservation"] <= 1
    blur = next(json.loads(r["params"]) for r in rows if r["variant"] == "blur")
    assert "kernel" in blur  # the sigma-sampled kernel albumentations applied


def test_rerun_is_deterministic_and_byte_identical(tmp_path, tiny_model, photos):
    first = ingest([photos], tmp_path / "a", str(tiny_model), keep_pixels=-1, limit=2, device="cpu")
    second = ingest(
        [photos], tmp_path / "b", str(tiny_model), keep_pixels=-1, limit=2, device="cpu"
    )
    assert first.run_id == second.run_id
    key = ["image_id", "variant"]
    a = table(tmp_path / "a", "variants").sort_by([(k, "ascending") for k in key])
    b = table(tmp_path / "b", "variants").sort_by([(k, "ascending") for k in key])
    assert a.column("pixels").to_pylist() == b.column("pixels").to_pylist()
    assert a.column("params").to_pylist() == b.column("params").to_pylist()
    assert a.column("embedding").to_pylist() == b.column("embedding").to_pylist()


def test_augmentation_seed_depends_on_seed_image_and_name():
    original = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    same = [a.pixels for a in Augmenter(["noise", "elastic"], seed=0)(original, "img")]
    again = [a.pixels for a in Augmenter(["elastic", "noise"], seed=0)(original, "img")][::-1]
    other_seed = [a.pixels for a in Augmenter(["noise", "elastic"], seed=1)(original, "img")]
    other_image = [a.pixels for a in Augmenter(["noise", "elastic"], seed=0)(original, "img2")]
    assert all(np.array_equal(x, y) for x, y in zip(same, again, strict=True))
    assert not np.array_equal(same[0], other_seed[0])
    assert not np.array_equal(same[0], other_image[0])


def test_embeddings_and_attention_match_a_direct_transformers_forward(ingested_store, tiny_model):
    from transformers import CLIPImageProcessor, CLIPModel

    rows = table(ingested_store, "variants").slice(0, 5).to_pylist()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["pixels"]))) for r in rows])
    processor = CLIPImageProcessor(do_resize=False, do_center_crop=False)
    inputs = processor(images=list(pixels), return_tensors="pt")
    model = CLIPModel.from_pretrained(tiny_model, attn_implementation="eager").eval()
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
        features = getattr(features, "pooler_output", features)
        attentions = model.vision_model(
            pixel_values=inputs["pixel_values"], output_attentions=True
        ).attentions
    expected_attention = attentions[-1][:, :, 0, 1:].mean(dim=1).numpy()
    stored = np.array([r["embedding"] for r in rows])
    np.testing.assert_allclose(stored, features.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(
        np.array([r["attention"] for r in rows]), expected_attention, atol=1e-6
    )
    layers = np.stack([a[:, :, 0, 1:].mean(dim=1).numpy() for a in attentions], axis=1)
    np.testing.assert_allclose(
        np.array([r["attention_layers"] for r in rows]), layers.reshape(len(rows), -1), atol=1e-6
    )


def test_same_command_again_stores_nothing_twice(tmp_path, tiny_model, photos):
    args = [
        "ingest",
        str(photos),
        "--db",
        str(tmp_path / "db"),
        "--model",
        str(tiny_model),
        "--limit",
        "3",
        "--device",
        "cpu",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "stored     3 images (30 variant rows)" in first.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "stored     0 images" in again.output
    assert "skipped    3 already in the store" in again.output
    assert table(tmp_path / "db", "variants").num_rows == 3 * VARIANTS

    more = CliRunner().invoke(cli, args[:-4] + ["--device", "cpu"])  # all six: extends the run
    assert "stored     3 images" in more.output and "skipped    3" in more.output
    assert table(tmp_path / "db", "runs").num_rows == 1


def test_keep_pixels_limits_stored_pngs(tmp_path, tiny_model, photos):
    ingest([photos], tmp_path / "db", str(tiny_model), keep_pixels=2, limit=3, device="cpu")
    variants = table(tmp_path / "db", "variants")
    with_pixels = {r["image_id"] for r in variants.to_pylist() if r["pixels"] is not None}
    assert len(with_pixels) == 2
    png = next(r["pixels"] for r in variants.to_pylist() if r["pixels"] is not None)
    assert Image.open(io.BytesIO(png)).size == (224, 224)


def test_subset_of_augmentations_and_other_seed_make_another_run(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    a = ingest([photos], db, str(tiny_model), augmentations="noise,blur", limit=2, device="cpu")
    b = ingest(
        [photos], db, str(tiny_model), augmentations="noise,blur", limit=2, seed=7, device="cpu"
    )
    assert a.run_id != b.run_id
    variants = table(db, "variants")
    assert variants.num_rows == 2 * 2 * 3
    assert set(variants.column("variant").to_pylist()) == {"original", "noise", "blur"}


def test_list_file_and_single_file_paths(tmp_path, tiny_model, photos):
    listing = tmp_path / "list.txt"
    files = sorted(photos.iterdir())
    listing.write_text(f"# two photos\n{files[0]}\n\n{files[1].name}\n")
    (tmp_path / files[1].name).write_bytes(files[1].read_bytes())
    summary = ingest([listing, files[2]], tmp_path / "db", str(tiny_model), device="cpu")
    assert summary.stored == 3 and not summary.failures


def test_a_model_of_another_embedding_width_gets_its_own_table(tmp_path, tiny_model, photos):
    from conftest import make_tiny_clip
    from transformers import CLIPModel

    ingest([photos], tmp_path / "db", str(tiny_model), limit=1, device="cpu")
    other = make_tiny_clip(tmp_path / "wide")
    model = CLIPModel.from_pretrained(other)
    model.config.projection_dim = 24
    CLIPModel(model.config).save_pretrained(other)
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--db", str(tmp_path / "db"), "--model", str(other)]
    )
    assert result.exit_code == 0, result.output
    store = Store.open(tmp_path / "db")
    assert store.variants_tables() == ["variants_16", "variants_24"]
    assert store.table("variants_16").count_rows() == VARIANTS
    assert store.table("variants_24").count_rows() == len(list(photos.iterdir())) * VARIANTS


def test_precision_is_part_of_the_run_identity_but_fp32_keeps_its_run_ids(tmp_path, tiny_model):
    from clipshift.hub import ResolvedModel
    from clipshift.ingest import run_identity

    m = ResolvedModel("m", "m", None)
    # the run_id this configuration had before --precision existed
    assert run_identity(m, "sha256:abc", 224, 0, "h") == "657b36a90e3e"
    assert run_identity(m, "sha256:abc", 224, 0, "h", "fp32") == "657b36a90e3e"
    assert run_identity(m, "sha256:abc", 224, 0, "h", "bf16") != "657b36a90e3e"


def test_bf16_ingest_is_another_run_with_close_embeddings(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    options = dict(augmentations="noise", limit=2, device="cpu", workers=0, image_size=64)
    fp32 = ingest([photos], db, str(tiny_model), **options)
    bf16 = ingest([photos], db, str(tiny_model), precision="bf16", **options)
    assert fp32.run_id != bf16.run_id and bf16.stored == 2 and bf16.precision == "bf16"
    variants = table(db, "variants_16").sort_by(
        [("run_id", "ascending"), ("image_id", "ascending")]
    )
    rows = {}
    for row in variants.select(["run_id", "image_id", "variant", "embedding"]).to_pylist():
        rows.setdefault(row["run_id"], []).append(np.array(row["embedding"]))
    a, b = np.stack(rows[fp32.run_id]), np.stack(rows[bf16.run_id])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    # the summary suggests bf16 to an fp32 run on a CPU with native bf16 only (not this one's)
    assert bf16.hint is None and (fp32.hint is not None) == native_bf16()


# torch's capability dicts (knn.cpu_capability) of three CPUs, the flags that matter
XEON_AMX = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
COOPER_LAKE = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
EPYC_ZEN3 = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}


def test_the_bf16_hint_is_for_fp32_runs_on_cpus_with_native_bf16():
    hint = bf16_hint("cpu", "fp32", XEON_AMX)
    assert hint is not None and "\n" not in hint and "--precision bf16" in hint
    assert f"{BF16_INGEST_SPEEDUP:.1f}x" in hint and str(BF16_MEAN_COSINE) in hint
    assert "(AMX)" in hint and "(AVX512-BF16)" in bf16_hint("cpu", "fp32", COOPER_LAKE)
    # no native bf16, another precision, the model elsewhere: no hint
    assert bf16_hint("cpu", "fp32", EPYC_ZEN3) is None
    assert bf16_hint("cpu", "fp32", {}) is None  # a torch that cannot tell
    for precision in ("bf16", "fp16"):
        assert bf16_hint("cpu", precision, XEON_AMX) is None
    assert bf16_hint("cuda", "fp32", XEON_AMX) is None
    # the bar: at least 2x faster and a mean cosine of at least 0.9999
    assert bf16_hint("cpu", "fp32", XEON_AMX, speedup=2.0, cosine=0.9999) is not None
    assert bf16_hint("cpu", "fp32", XEON_AMX, speedup=1.9) is None
    assert bf16_hint("cpu", "fp32", XEON_AMX, cosine=0.9998) is None
    assert BF16_INGEST_SPEEDUP >= 2.0 and BF16_MEAN_COSINE >= 0.9999

    summary = IngestSummary("db", "run", "model", "rev", 224, 0, ["noise"])
    assert not any(line.startswith("hint") for line in format_ingest_summary(summary).split("\n"))
    summary.hint = hint
    assert format_ingest_summary(summary).splitlines()[-1] == f"hint       {hint}"


def test_unknown_precision_is_a_one_line_error(tmp_path, tiny_model, photos):
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--db", str(tmp_path / "db"), "--precision", "fp8"]
    )
    assert result.exit_code == 2 and "fp8" in result.output


def test_a_rerun_with_nothing_new_does_not_load_the_model(tmp_path, tiny_model, photos):
    """The run is found by the weights' hash alone: with the model's config.json gone (no
    model could load) the rerun still succeeds, skipping every image; a new image does need
    the model, and its load error loses nothing stored."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    db = tmp_path / "db"
    first = ingest([photos], db, str(model), device="cpu", limit=4)
    assert (first.stored, first.model_loaded) == (4, True)
    (model / "config.json").unlink()

    again = ingest([photos], db, str(model), device="cpu", limit=4)
    assert (again.stored, again.skipped, again.model_loaded) == (0, 4, False)
    assert (again.run_id, again.model_revision) == (first.run_id, first.model_revision)
    args = ["ingest", str(photos), "--db", str(db), "--model", str(model), "--limit", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "skipped    4 already in the store" in result.output
    assert "model      not loaded: nothing new to encode" in result.output

    result = CliRunner().invoke(cli, args[:-2])  # two new photos: they need the model
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        next(line for line in result.output.splitlines() if line.startswith("Error: "))
    ]
    assert "cannot load a model from" in result.output
    assert table(db, "variants").num_rows == 4 * VARIANTS


def test_duplicate_files_are_named(tmp_path, tiny_model, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / "coffee.png", folder / "a.png")
    shutil.copy(photos / "coffee.png", folder / "b.png")
    shutil.copy(photos / "coffee.png", folder / "c.png")
    shutil.copy(photos / "rocket.png", folder / "d.png")
    args = ["ingest", str(folder), "--db", str(tmp_path / "db"), "--model", str(tiny_model)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "skipped    0 already in the store, 2 duplicate files" in result.output
    for name in ("b.png", "c.png"):
        assert f"{folder / name}: the same bytes as {folder / 'a.png'}" in result.output

    summary = IngestSummary("db", "run", "model", "rev", 224, 0, ["noise"])
    summary.duplicate_files = [Duplicate(f"copy{i}.png", "first.png") for i in range(25)]
    lines = format_ingest_summary(summary).splitlines()
    assert sum("the same bytes as first.png" in line for line in lines) == SHOWN_DUPLICATES
    assert f"           ... {25 - SHOWN_DUPLICATES} more duplicate files" in lines


def test_keep_pixels_counts_the_run_not_each_ingest(tmp_path, tiny_model, photos):
    """Three ingests of two images each with --keep-pixels 3 keep pixels for the run's first
    three images, and a rerun over all of them adds none."""
    db = tmp_path / "db"
    files = sorted(photos.iterdir())
    for pair in (files[0:2], files[2:4], files[4:6]):
        ingest(pair, db, str(tiny_model), keep_pixels=3, device="cpu")
    ingest([photos], db, str(tiny_model), keep_pixels=3, device="cpu")
    images = {r["image_id"]: r["path"] for r in table(db, "images").to_pylist()}
    originals = [r for r in table(db, "variants").to_pylist() if r["variant"] == "original"]
    assert len(originals) == len(files)
    with_pixels = sorted(images[r["image_id"]] for r in originals if r["pixels"] is not None)
    assert with_pixels == [str(f) for f in files[:3]]


def test_the_augmentations_default_is_the_librarys_in_help_and_readme():
    help_text = CliRunner().invoke(cli, ["ingest", "--help"]).output
    assert f"[default: {DEFAULT_SUITE}]" in " ".join(help_text.split())
    assert [p.label for p in resolve(None)] == [p.label for p in resolve(DEFAULT_SUITE)]
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"`{DEFAULT_SUITE}` (the default" in readme
