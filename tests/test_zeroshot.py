"""zeroshot and directions: the metrics against an independent numpy computation from the
stored image embeddings and text embeddings computed directly with transformers."""

from __future__ import annotations

import json

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import direct_text_embeddings

from cli import cli
from clipshift.defaults import AUGMENTATION_NAMES
from clipshift.suites import BASE_PROMPT, prompt_for
from clipshift.zeroshot import DATA_DIR, load_labels


@pytest.fixture(scope="module")
def text_store(tmp_path_factory, tiny_text_model, photos):
    """The six photos, all nine augmentations, ingested by the tiny CLIP with a tokenizer."""
    from clipshift.ingest import ingest

    db = tmp_path_factory.mktemp("text-store") / "db"
    ingest([photos], db, str(tiny_text_model), batch_size=4, keep_pixels=0, device="cpu")
    return db


def _stored_embeddings(db) -> dict[tuple[str, str], np.ndarray]:
    from clipshift.query import connect

    rows = connect(db).execute("SELECT image_id, variant, embedding FROM variants").fetchall()
    return {(i, v): np.asarray(e, np.float64) for i, v, e in rows}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logit_scale(model_dir) -> float:
    from transformers import CLIPModel

    return float(CLIPModel.from_pretrained(str(model_dir)).logit_scale.detach().exp())


def _expected_zeroshot(db, model_dir, labels, template) -> dict[str, dict]:
    """flip_rate, top1_prob_drop, top5_retention per augmentation, in numpy (float64)."""
    texts = _unit(
        direct_text_embeddings(model_dir, [template.replace("{}", x) for x in labels]).astype(
            np.float64
        )
    )
    scale = _logit_scale(model_dir)
    embeddings = _stored_embeddings(db)

    def probs(vector):
        logits = scale * (texts @ _unit(vector))
        e = np.exp(logits - logits.max())
        return e / e.sum()

    per_aug: dict[str, list[tuple[float, float, float]]] = {}
    for (image_id, variant), vector in embeddings.items():
        if variant == "original":
            continue
        p_orig = probs(embeddings[(image_id, "original")])
        p_var = probs(vector)
        label = int(np.argmax(p_orig))
        top5 = np.argsort(-p_var, kind="stable")[:5]
        per_aug.setdefault(variant, []).append(
            (
                float(np.argmax(p_var) != label),
                float(p_orig[label] - p_var[label]),
                float(label in top5),
            )
        )
    return {
        aug: dict(
            zip(("flip_rate", "top1_prob_drop", "top5_retention"), np.mean(v, axis=0), strict=True)
        )
        | {"n": len(v)}
        for aug, v in per_aug.items()
    }


def _zeroshot_json(db, *args) -> list[dict]:
    out = CliRunner().invoke(
        cli, ["zeroshot", "--db", str(db), "--device", "cpu", "--format", "json", *args]
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_zeroshot_matches_numpy_and_is_read_back(text_store, tiny_text_model):
    from clipshift.zeroshot import zeroshot

    labels = load_labels("cifar100").labels
    expected = _expected_zeroshot(text_store, tiny_text_model, labels, "a photo of a {}.")
    rows = _zeroshot_json(text_store, "--labels", "cifar100")
    assert sorted(r["augmentation"] for r in rows) == sorted(expected)
    assert "severity" not in rows[0]  # the run has no severities
    for row in rows:
        want = expected[row["augmentation"]]
        assert row["n"] == want["n"] == 6
        for metric in ("flip_rate", "top1_prob_drop", "top5_retention"):
            assert row[metric] == pytest.approx(want[metric], abs=1e-5), metric
    # the second call reads the stored predictions back: nothing classified, same numbers
    again = zeroshot(text_store, labels="cifar100", device="cpu")
    assert again.classified_images == 0 and again.probability is None
    assert [r["flip_rate"] for r in again.rows.records()] == [r["flip_rate"] for r in rows]
    # the stored table joins with shifts in SQL; each label set is filed once, by name
    out = CliRunner().invoke(
        cli,
        [
            "sql",
            "--db",
            str(text_store),
            "--format",
            "json",
            "SELECT count(*) AS n, count(DISTINCT z.label_set) AS sets, "
            "(SELECT count(*) FROM zeroshot_labels) AS names "
            "FROM zeroshot z JOIN shifts s ON s.run_id = z.run_id "
            "AND s.image_id = z.image_id AND s.augmentation = z.variant",
        ],
    )
    assert json.loads(out.stdout) == [{"n": 54, "sets": 1, "names": 100}]


def test_zeroshot_label_file_and_template(text_store, tiny_text_model, tmp_path):
    labels = ["cat", "rocket", "coffee cup", "astronaut", "camera", "logo", "tree"]
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    template = "an image of {}"
    expected = _expected_zeroshot(text_store, tiny_text_model, labels, template)
    rows = _zeroshot_json(text_store, "--labels", str(path), "--template", template)
    for row in rows:
        for metric in ("flip_rate", "top1_prob_drop", "top5_retention"):
            assert row[metric] == pytest.approx(expected[row["augmentation"]][metric], abs=1e-5)
    # the same labels from another file are the same label set: read back
    copy = tmp_path / "copy.txt"
    copy.write_text("\n".join(labels), encoding="utf-8")
    out = CliRunner().invoke(
        cli,
        ["zeroshot", "--db", str(text_store), "--labels", str(copy), "--template", template],
    )
    assert out.exit_code == 0 and "stored predictions" in out.stdout


def test_builtin_label_sets_ship_with_the_package():
    imagenet, cifar = load_labels("imagenet"), load_labels("cifar100")
    assert len(imagenet.labels) == 1000 and len(cifar.labels) == 100
    assert imagenet.labels[:3] == ("tench", "goldfish", "great white shark")
    assert cifar.labels[:2] == ("apple", "aquarium fish") and cifar.labels[-1] == "worm"
    assert (DATA_DIR / "README.md").is_file()


def test_label_file_skips_blank_lines_and_comments_as_path_lists_do(text_store, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"# two animals\ncat\n\n  dog  \r\n\n")
    assert load_labels(str(path)).labels == ("cat", "dog")
    out = CliRunner().invoke(
        cli, ["zeroshot", "--db", str(text_store), "--device", "cpu", "--labels", str(path)]
    )
    assert out.exit_code == 0, out.output
    assert "2 labels" in out.stdout.splitlines()[0] and "Traceback" not in out.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# what blur looks like\nblur: a blurry photo\na dark photo\n\n")
    directions = CliRunner().invoke(
        cli, ["directions", "--db", str(text_store), "--device", "cpu", "--prompts", str(prompts)]
    )
    assert directions.exit_code == 0, directions.output
    assert "# what blur" not in directions.output


@pytest.mark.parametrize(
    "content, message",
    [
        (b"# animals\ncat\n\n# more to come\n", "1 labels: give at least two"),
        (b"cat\ndog\ncat\n", "line 3 repeats 'cat' (first on line 1)"),
        (b"cat\nd\xffg\n", "line 2 is not UTF-8"),
        (b"cat\n", "give at least two"),
    ],
)
def test_bad_label_file_is_a_one_line_error(text_store, tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    before = lance.dataset(str(text_store / "zeroshot.lance")).count_rows()
    out = CliRunner().invoke(cli, ["zeroshot", "--db", str(text_store), "--labels", str(path)])
    assert out.exit_code == 1
    assert message in out.output and len(out.output.strip().splitlines()) == 1
    assert lance.dataset(str(text_store / "zeroshot.lance")).count_rows() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labels", "no-such-file.txt"], "no label file"),
        (["--template", "a photo"], "put {} exactly once"),
    ],
)
def test_bad_zeroshot_options(text_store, args, message):
    out = CliRunner().invoke(cli, ["zeroshot", "--db", str(text_store), *args])
    assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output


def test_no_text_tower_is_a_one_line_error(tmp_path, ingested_store):
    from clipshift.synthetic import build_synthetic_store

    db = tmp_path / "synthetic"
    build_synthetic_store(db, n_images=8, dim=16)
    for command in (["zeroshot", "--labels", "cifar100"], ["directions"]):
        out = CliRunner().invoke(cli, [*command, "--db", str(db)])
        assert out.exit_code == 1, out.output
        assert "has no text tower" in out.output and len(out.output.strip().splitlines()) == 1
        # a model saved without its tokenizer cannot embed text either
        out = CliRunner().invoke(cli, [*command, "--db", str(ingested_store), "--device", "cpu"])
        assert out.exit_code == 1 and "tokenizer" in out.output
        assert len(out.output.strip().splitlines()) == 1


def _expected_directions(db, model_dir, prompts: dict[str, str | None]) -> dict:
    """Per (augmentation, prompt): mean cosine of shift and text direction, and the share
    of images whose shift is closest to the prompt among the describing prompts."""
    texts = list(prompts)
    vectors = _unit(direct_text_embeddings(model_dir, [BASE_PROMPT, *texts]).astype(float))
    directions = dict(zip(texts, vectors[1:] - vectors[0], strict=True))
    embeddings = _stored_embeddings(db)
    cosines: dict[tuple[str, str], list[float]] = {}
    picks: dict[tuple[str, str], list[float]] = {}
    for (image_id, variant), vector in embeddings.items():
        if variant == "original":
            continue
        shift = _unit(vector) - _unit(embeddings[(image_id, "original")])
        cos = {
            t: float(shift @ d / np.linalg.norm(shift) / np.linalg.norm(d))
            for t, d in directions.items()
        }
        candidates = [t for t in texts if prompts[t] is not None]
        best = max(candidates, key=cos.get)
        for t in texts:
            cosines.setdefault((variant, t), []).append(cos[t])
            if prompts[t] is not None:
                picks.setdefault((variant, t), []).append(float(t == best))
    return {
        key: (float(np.mean(values)), float(np.mean(picks[key])) if key in picks else None)
        for key, values in cosines.items()
    }


def test_directions_match_numpy(text_store, tiny_text_model):
    prompts = {prompt_for("paper", name): name for name in AUGMENTATION_NAMES}
    expected = _expected_directions(text_store, tiny_text_model, prompts)
    out = CliRunner().invoke(
        cli,
        ["directions", "--db", str(text_store), "--device", "cpu", "--matrix", "--format", "json"],
    )
    assert out.exit_code == 0, out.output
    matrix = json.loads(out.stdout)
    assert len(matrix) == 9 * 9
    for row in matrix:
        cosine, picked = expected[(row["augmentation"], row["prompt"])]
        assert row["describes"] == prompts[row["prompt"]]
        assert row["mean_cosine"] == pytest.approx(cosine, abs=1e-6)
        assert row["picked"] == pytest.approx(picked, abs=1e-9)
    out = CliRunner().invoke(
        cli, ["directions", "--db", str(text_store), "--device", "cpu", "--format", "json"]
    )
    summary = {r["augmentation"]: r for r in json.loads(out.stdout)}
    for name in AUGMENTATION_NAMES:
        own = expected[(name, prompt_for("paper", name))]
        assert summary[name]["prompt"] == prompt_for("paper", name)
        assert summary[name]["cosine"] == pytest.approx(own[0], abs=1e-6)
        assert summary[name]["identification"] == pytest.approx(own[1], abs=1e-9)
        assert summary[name]["chance"] == pytest.approx(1 / 9)


def test_directions_prompt_file(text_store, tiny_text_model, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("blur: a smeared photo\nnoise: a grainy photo\na photo of a cat\n")
    prompts = {"a smeared photo": "blur", "a grainy photo": "noise", "a photo of a cat": None}
    expected = _expected_directions(text_store, tiny_text_model, prompts)
    out = CliRunner().invoke(
        cli,
        ["directions", "--db", str(text_store), "--prompts", str(path), "--matrix"]
        + ["--device", "cpu", "--format", "json"],
    )
    assert out.exit_code == 0, out.output
    matrix = json.loads(out.stdout)
    assert len(matrix) == 9 * 3
    for row in matrix:
        cosine, picked = expected[(row["augmentation"], row["prompt"])]
        assert row["mean_cosine"] == pytest.approx(cosine, abs=1e-6)
        assert row["picked"] == (None if picked is None else pytest.approx(picked))
    path.write_text("blur: a smeared photo\n\n")
    out = CliRunner().invoke(cli, ["directions", "--db", str(text_store), "--prompts", str(path)])
    assert out.exit_code == 1 and "1 prompts: give at least two" in out.output


def test_severities_are_grouped(tmp_path, tiny_text_model, photos):
    """A run with levelled perturbations: a row per (augmentation, severity) in both."""
    from clipshift.ingest import ingest

    db = tmp_path / "db"
    ingest(
        [photos],
        db,
        str(tiny_text_model),
        image_size=64,
        limit=2,
        augmentations="blur,fog",
        keep_pixels=0,
        device="cpu",
    )
    labels = load_labels("cifar100").labels
    expected = _expected_zeroshot(db, tiny_text_model, labels, "a photo of a {}.")
    rows = _zeroshot_json(db, "--labels", "cifar100")
    keys = [(r["augmentation"], r["severity"]) for r in rows]
    assert keys == [("blur", None)] + [("fog", k) for k in range(1, 6)]
    for row in rows:
        label = row["augmentation"] + (f"@{row['severity']}" if row["severity"] else "")
        assert row["flip_rate"] == pytest.approx(expected[label]["flip_rate"], abs=1e-9)
        assert row["top1_prob_drop"] == pytest.approx(expected[label]["top1_prob_drop"], abs=1e-5)
    out = CliRunner().invoke(
        cli, ["directions", "--db", str(db), "--device", "cpu", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert [(r["augmentation"], r["severity"]) for r in summary] == keys
    assert {r["prompt"] for r in summary} == {prompt_for("blur,fog", n) for n in ("blur", "fog")}
    assert all(r["chance"] == pytest.approx(0.5) for r in summary)


def test_report_draws_flip_rate_per_model_and_alignment(text_store, tiny_text_model, photos):
    """Last in this module: it adds a second run to the shared store."""
    from PIL import Image

    from clipshift.ingest import ingest
    from clipshift.query import connect
    from clipshift.report import report
    from clipshift.runs import resolve_run
    from clipshift.zeroshot import zeroshot

    first = zeroshot(text_store, labels="cifar100", device="cpu").rows.run.run_id
    ingest(
        [photos],
        text_store,
        str(tiny_text_model),
        seed=1,
        limit=2,
        augmentations="blur,noise",
        keep_pixels=0,
        device="cpu",
    )
    second = zeroshot(text_store, labels="cifar100", device="cpu").rows.run.run_id
    assert second != first
    from clipshift.query import named_query

    con = connect(text_store)
    assert resolve_run(text_store).run_id == second
    models = named_query(
        con, "zeroshot_models", run_id=first, label_set="imagenet", template="x"
    ).fetchall()
    assert {row[0] for row in models} == {first, second}  # cifar100: the first run's only set
    assert len(models) == 9 + 2
    result = report(
        text_store, run=first, out=text_store.parent / "report", figures="flip_rate,alignment"
    )
    for figure in result.figures:
        assert figure.path is not None, figure.note
        with Image.open(figure.path) as image:
            assert np.asarray(image.convert("L")).std() > 10
