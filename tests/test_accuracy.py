"""Accuracy of labelled images (sql/accuracy.sql, sql/corruption_error.sql) and shift against
accuracy (clipshift/accuracy.py) against an independent numpy computation from the stored
Lance tables."""

from __future__ import annotations

import json
import shutil

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from dataset_builders import CLASSES, LABELS, class_tree, s3_bucket_fixture  # noqa: F401 (s3_bucket)

from cli import cli
from clipshift.accuracy import accuracy
from clipshift.store import Store
from clipshift.zeroshot import zeroshot

# six labels (top-5 is then not trivially every label)
NAMES = (*CLASSES, "plant", "vehicle", "food")
SPEC = "gaussian_noise,contrast,blur"


def set_labels(db, photos) -> None:
    """Give the stored photos their classes (as an ingest of a labelled dataset stores them)."""
    import hashlib

    table = Store.open(db).table("images")
    for path in sorted(photos.glob("*.png")):
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        name = LABELS[path.stem]
        table.update(
            where=f"image_id = '{image_id}'",
            values={"label": name, "label_index": NAMES.index(name)},
        )


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_text_model, photos):
    """Two runs (seeds 0 and 1) of the six photos with three perturbations (two levelled),
    ingested from class folders with their labels."""
    from clipshift.datasets import DatasetOptions
    from clipshift.ingest import ingest

    root = tmp_path_factory.mktemp("labelled")
    names = root / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    tree = class_tree(photos, root / "tree")
    db = root / "db"
    runs = [
        ingest(
            [tree],
            db,
            str(tiny_text_model),
            augmentations=SPEC,
            seed=seed,
            keep_pixels=0,
            device="cpu",
            workers=0,
            dataset=DatasetOptions(labels_from="folder", label_names=str(names)),
        ).run_id
        for seed in (0, 1)
    ]
    return db, runs, str(names)


def _table(db, name: str) -> list[dict]:
    return lance.dataset(f"{db}/{name}.lance").to_table().to_pylist()


def expected_accuracy(db, run_id: str) -> dict[tuple, dict]:
    """Per (augmentation, severity): n, top1, top5, error, from the zeroshot rows in numpy."""
    truth = {r["image_id"]: NAMES.index(r["label"]) for r in _table(db, "images") if r["label"]}
    cells: dict[tuple, list] = {}
    for row in _table(db, "zeroshot"):
        if row["run_id"] != run_id:
            continue
        augmentation = row["variant"].split("@")[0]
        true = truth[row["image_id"]]
        cells.setdefault((augmentation, row["severity"]), []).append(
            (row["top_labels"][0] == true, true in row["top_labels"])
        )
    return {
        key: {
            "n": len(v),
            "top1": np.mean([a for a, _ in v]),
            "top5": np.mean([b for _, b in v]),
            "error": 1 - np.mean([a for a, _ in v]),
        }
        for key, v in cells.items()
    }


def test_accuracy_and_ce_equal_numpy(labelled):
    db, (run, reference), names = labelled
    result = zeroshot(db, labels=names, run=run, device="cpu")
    zeroshot(db, labels=names, run=reference, device="cpu")
    result = zeroshot(db, labels=names, run=run, device="cpu", reference=reference)
    mine, theirs = expected_accuracy(db, run), expected_accuracy(db, reference)
    got = {
        (r["augmentation"], r["severity"]): r for r in result.rows.sections["accuracy"].records()
    }
    assert set(got) == set(mine)
    assert next(iter(got)) == ("original", None)  # the originals first
    for key, want in mine.items():
        for column in ("n", "top1", "top5", "error"):
            assert got[key][column] == pytest.approx(want[column]), (key, column)
        assert got[key]["reference_error"] == pytest.approx(theirs[key]["error"])
    # CE, relative CE and mCE (Hendrycks and Dietterich, 2019)
    clean, clean_ref = mine[("original", None)]["error"], theirs[("original", None)]["error"]
    ce, relative = {}, {}
    for corruption in ("gaussian_noise", "contrast"):
        e = np.array([mine[(corruption, s)]["error"] for s in range(1, 6)])
        e_ref = np.array([theirs[(corruption, s)]["error"] for s in range(1, 6)])
        ce[corruption] = e.sum() / e_ref.sum() if e_ref.sum() else None
        excess = (e_ref - clean_ref).sum()
        relative[corruption] = (e - clean).sum() / excess if excess else None
    rows = {r["augmentation"]: r for r in result.rows.sections["corruption_error"].records()}
    assert set(rows) == {"gaussian_noise", "contrast", "mean"}
    for corruption in ce:
        assert rows[corruption]["ce"] == pytest.approx(ce[corruption])
        assert rows[corruption]["relative_ce"] == pytest.approx(relative[corruption])
    defined = [v for v in ce.values() if v is not None]
    assert rows["mean"]["ce"] == pytest.approx(np.mean(defined) if defined else None)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x)


def test_shift_against_accuracy_equals_numpy(labelled, tmp_path):
    source, (run, _), names = labelled
    # a copy whose images are labelled with their originals' top-1: every original is right,
    # so that losing the label varies (with the tiny random model's labels it seldom would)
    db = tmp_path / "db"
    shutil.copytree(source, db)
    label_set = zeroshot(db, labels=names, run=run, device="cpu").label_set.key
    table = Store.open(db).table("images")
    for row in _table(db, "zeroshot"):
        if (row["run_id"], row["label_set"], row["variant"]) == (run, label_set, "original"):
            top1 = row["top_labels"][0]
            table.update(
                where=f"image_id = '{row['image_id']}'",
                values={"label": NAMES[top1], "label_index": top1},
            )
    result = accuracy(db, labels=names, run=run, device="cpu", resamples=200)
    truth = {r["image_id"]: NAMES.index(r["label"]) for r in _table(db, "images") if r["label"]}
    variants = lance.dataset(next(db.glob("variants_*.lance"))).to_table().to_pylist()
    embedding = {
        (r["image_id"], r["variant"]): r["embedding"] for r in variants if r["run_id"] == run
    }
    label_set = result.zeroshot.label_set.key
    correct = {
        (r["image_id"], r["variant"]): r["top_labels"][0] == truth[r["image_id"]]
        for r in _table(db, "zeroshot")
        if r["run_id"] == run and r["label_set"] == label_set
    }
    per_aug: dict[str, list] = {}
    cells: dict[tuple, list] = {}
    for (image_id, variant), vector in embedding.items():
        if variant == "original":
            continue
        cosine = float(_unit(vector) @ _unit(embedding[(image_id, "original")]))
        augmentation, _, severity = variant.partition("@")
        cells.setdefault((augmentation, int(severity) if severity else None), []).append(
            (cosine, correct[(image_id, variant)])
        )
        if correct[(image_id, "original")]:
            per_aug.setdefault(augmentation, []).append((cosine, not correct[(image_id, variant)]))
    defined = 0
    for augmentation, pairs in per_aug.items():
        x, lost = np.array(pairs, np.float64).T
        got = result.per_augmentation[augmentation]
        if np.ptp(lost) == 0:
            assert got.r is None
        else:
            assert got.r == pytest.approx(np.corrcoef(x, lost)[0, 1])
            assert got.low is not None and got.low - 1e-9 <= got.r <= got.high + 1e-9
            defined += 1
    assert defined, "no augmentation where some images lost their label: the test says nothing"
    originals = [correct[(i, v)] for i, v in correct if v == "original"]
    clean = np.mean(originals)
    keys = sorted(cells, key=lambda k: (k[0], k[1] or 0))
    mean_cosine = np.array([np.mean([c for c, _ in cells[k]]) for k in keys])
    drop = np.array([clean - np.mean([ok for _, ok in cells[k]]) for k in keys])
    points = {(r["augmentation"], r["severity"]): r for r in result.points.records()}
    for key, x, y in zip(keys, mean_cosine, drop, strict=True):
        assert points[key]["mean_cosine"] == pytest.approx(x, abs=1e-6)
        assert points[key]["top1_drop"] == pytest.approx(y)
    assert result.across.n == len(keys)
    assert np.ptp(drop) > 0
    assert result.across.r == pytest.approx(np.corrcoef(mean_cosine, drop)[0, 1], abs=1e-6)
    slope, intercept = np.polyfit(mean_cosine, drop, 1)
    assert result.fit.slope == pytest.approx(slope, rel=1e-4, abs=1e-6)
    assert result.fit.intercept == pytest.approx(intercept, rel=1e-4, abs=1e-6)


def test_accuracy_command_and_figure(labelled, tmp_path):
    db, (run, reference), names = labelled
    figure = tmp_path / "shift.png"
    args = ["accuracy", "--db", str(db), "--labels", names, "--run", run, "--device", "cpu"]
    out = CliRunner().invoke(cli, [*args, "--reference", reference, "--figure", str(figure)])
    assert out.exit_code == 0, out.output
    assert "corruption error" in out.output and "point_biserial" in out.output
    assert figure.stat().st_size > 1000
    out = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows[-1]["augmentation"] == "across augmentations"
    # and the report draws the same figure from the stored predictions
    from clipshift.report import report

    result = report(db, run=run, out=tmp_path / "report", figures=["shift_accuracy"])
    (drawn,) = [f for f in result.figures if f.name == "shift_accuracy"]
    assert drawn.path is not None and drawn.path.stat().st_size > 1000, drawn.note


def test_label_not_in_the_set_is_one_line(labelled, tmp_path):
    db, (run, _), _ = labelled
    other = tmp_path / "other.txt"
    other.write_text("animal\nobject\n")
    before = Store.open(db).dataset("zeroshot").count_rows()
    for command in ("zeroshot", "accuracy"):
        out = CliRunner().invoke(
            cli, [command, "--db", str(db), "--labels", str(other), "--run", run]
        )
        assert out.exit_code != 0
        assert out.output.strip().count("\n") == 0 and "Traceback" not in out.output
        assert "label 'person' of 2 images is not in the label set" in out.output
    assert Store.open(db).dataset("zeroshot").count_rows() == before


def test_unlabelled_run_has_no_accuracy(ingested_store, tiny_model):
    out = CliRunner().invoke(cli, ["accuracy", "--db", str(ingested_store), "--labels", "cifar100"])
    assert out.exit_code != 0 and out.output.strip().count("\n") == 0


def test_accuracy_on_an_s3_store_equals_the_local_one(s3_bucket, labelled, tiny_text_model, photos):
    """The same run ingested into a store on the S3 test server (moto), its images labelled:
    the same accuracy and shift-against-accuracy figures as the local store's."""
    from clipshift.ingest import ingest

    local, (run, _), names = labelled
    remote = "s3://clipshift-test/store"
    summary = ingest(
        [photos], remote, str(tiny_text_model), augmentations=SPEC, keep_pixels=0, device="cpu"
    )
    assert summary.run_id == run
    set_labels(remote, photos)
    there = accuracy(remote, labels=names, run=run, device="cpu", resamples=50)
    here = accuracy(local, labels=names, run=run, device="cpu", resamples=50)
    for name in ("accuracy", "corruption_error"):
        mine, theirs = (r.zeroshot.rows.sections[name] for r in (there, here))
        assert mine.columns == theirs.columns
        for a, b in zip(mine.rows, theirs.rows, strict=True):
            assert a == pytest.approx(b, nan_ok=True, abs=1e-9), name
    for a, b in zip(there.points.rows, here.points.rows, strict=True):
        assert a == pytest.approx(b, nan_ok=True, abs=1e-6)
