"""`clipshift ingest` of datasets as they are shipped: each format stores the same images,
embeddings and metrics as the same photos from a plain folder, with their labels and sources;
bad samples go to `errors` and the run goes on."""

from __future__ import annotations

import io
import tarfile

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from dataset_builders import (
    CLASSES,
    LABELS,
    class_tree,
    parquet,
    photo_files,
    s3_bucket_fixture,  # noqa: F401 (the s3_bucket fixture)
    saved_dataset,
    shards,
)
from PIL import Image

from cli import cli
from clipshift.datasets import DatasetOptions
from clipshift.formatting import format_ingest_summary
from clipshift.ingest import ingest

SPEC = "blur,noise"
METRICS = ("patch_similarity", "edge_preservation", "detail_preservation")


def run_ingest(paths, db, model, dataset=None, workers=0, **options):
    return ingest(
        [str(p) for p in paths],
        db,
        str(model),
        augmentations=SPEC,
        keep_pixels=0,
        device="cpu",
        workers=workers,
        dataset=dataset,
        **options,
    )


def table(db, name: str, **options) -> list[dict]:
    return lance.dataset(f"{db}/{name}.lance", **options).to_table().to_pylist()


def variants(db, **options) -> dict[tuple, dict]:
    name = next(n for n in lance_names(db, **options) if n.startswith("variants_"))
    rows = table(db, name, **options)
    return {(r["image_id"], r["variant"]): r for r in rows}


def lance_names(db, **options) -> list[str]:
    from clipshift.store import Store

    return Store.open(db).table_names()


def assert_same_images(db, plain, **options) -> None:
    """The same image_ids, embeddings and pixel metrics as the plain folder's store."""
    got, want = variants(db, **options), variants(plain)
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key]["embedding"] == pytest.approx(row["embedding"], abs=1e-6), key
        for metric in METRICS:
            assert got[key][metric] == pytest.approx(row[metric]), (key, metric)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_model, photos):
    db = tmp_path_factory.mktemp("plain") / "db"
    run_ingest([photos], db, tiny_model)
    return db


@pytest.fixture(scope="module")
def names_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return str(path)


def truth() -> dict[str, tuple[str, int]]:
    return {stem: (name, CLASSES.index(name)) for stem, name in LABELS.items()}


def stored_labels(db, photos, **options) -> dict[str, tuple]:
    import hashlib

    stem = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in photo_files(photos)}
    return {
        stem[r["image_id"]]: (r["label"], r["label_index"]) for r in table(db, "images", **options)
    }


@pytest.mark.parametrize("kind", ["shards", "parquet", "tree", "saved"])
def test_each_format_stores_the_plain_folders_images(
    kind, plain, tiny_model, photos, tmp_path, names_file
):
    if kind == "shards":
        shards(photos, tmp_path / "shards")
        path = str(tmp_path / "shards/{000000..000001}.tar")
        options = DatasetOptions(label_key="cls", label_names=names_file)
    elif kind == "parquet":
        path = parquet(photos, tmp_path / "train.parquet")
        options = DatasetOptions(label_column="label", id_column="name")
    elif kind == "tree":
        path = class_tree(photos, tmp_path / "tree")
        options = DatasetOptions(labels_from="folder", label_names=names_file)
    else:
        path = saved_dataset(photos, tmp_path / "saved")
        options = DatasetOptions(label_column="label")
    db = tmp_path / "db"
    # the worker pool for two of them: a sample travels to a worker process with its bytes
    summary = run_ingest([path], db, tiny_model, options, workers=2 if kind in "shards tree" else 0)
    assert (summary.stored, summary.failed) == (6, 0)
    assert_same_images(db, plain)
    assert stored_labels(db, photos) == truth()
    sources = {r["source"] for r in table(db, "images")}
    if kind == "shards":
        assert f"{tmp_path}/shards/000000.tar#astronaut" in sources
    if kind == "parquet":
        assert f"{path}#coffee" in sources


def test_large_samples_through_worker_processes(tiny_model, tmp_path):
    """A sample travels to a worker with its bytes: 3 MB of noise PNG each, more than a
    socket's buffer, so the main process blocks sending while a worker sends its result back.
    With two workers this hung until the workers read on a thread of their own."""
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    shard = tmp_path / "big.tar"
    with tarfile.open(shard, "w") as tar:
        for number in range(6):
            pixels = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
            data = io.BytesIO()
            Image.fromarray(pixels).save(data, format="PNG")
            info = tarfile.TarInfo(f"noise{number}.png")
            info.size = data.tell()
            data.seek(0)
            tar.addfile(info, data)
    # pixels kept: each result carries its variants' PNGs, so a worker blocks sending too
    summary = ingest(
        [str(shard)], tmp_path / "db", str(tiny_model), augmentations=SPEC, keep_pixels=-1,
        device="cpu", workers=2,
    )  # fmt: skip
    assert (summary.stored, summary.failed, summary.workers) == (6, 0, 2)


def test_the_same_bytes_through_a_folder_and_a_shard_are_one_image(tiny_model, photos, tmp_path):
    db = tmp_path / "db"
    run_ingest([photos], db, tiny_model)
    shards(photos, tmp_path / "shards")
    again = run_ingest([tmp_path / "shards/{000000..000001}.tar"], db, tiny_model)
    assert (again.stored, again.skipped) == (0, 6)
    assert len(table(db, "images")) == 6


@pytest.mark.parametrize("same_run", [True, False], ids=["same run", "another run"])
def test_labels_reach_images_stored_without_them(
    tiny_model, photos, tmp_path, names_file, same_run
):
    """Photos ingested from a plain folder, then from their class folders: the stored images
    get their labels, whether the run held them (skipped) or another run stored them; a label
    once stored is never changed."""
    db = tmp_path / "db"
    run_ingest([photos], db, tiny_model)
    assert set(stored_labels(db, photos).values()) == {(None, None)}
    tree = class_tree(photos, tmp_path / "tree")
    options = DatasetOptions(labels_from="folder", label_names=names_file)
    extra = {} if same_run else {"seed": 7}
    summary = run_ingest([tree], db, tiny_model, options, **extra)
    assert (summary.stored, summary.skipped) == ((0, 6) if same_run else (6, 0))
    assert summary.labelled == 6
    assert "labelled   6 stored images that had no label" in format_ingest_summary(summary)
    assert stored_labels(db, photos) == truth()
    assert len(table(db, "images")) == 6
    # labelled differently now: the stored labels stay
    renamed = tmp_path / "renamed"
    for file in tree.glob("*/*"):
        other = CLASSES[(CLASSES.index(file.parent.name) + 1) % len(CLASSES)]
        (renamed / other).mkdir(parents=True, exist_ok=True)
        (renamed / other / file.name).write_bytes(file.read_bytes())
    again = run_ingest([renamed], db, tiny_model, options, **extra)
    assert again.labelled == 0
    assert stored_labels(db, photos) == truth()


def test_bad_samples_go_to_errors_and_the_run_goes_on(tiny_model, photos, tmp_path, names_file):
    (first, second) = shards(photos, tmp_path / "shards")
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    broken = members[4]  # the third sample's image
    first.write_bytes(first.read_bytes()[: broken.offset_data + broken.size // 2])
    with tarfile.open(second, "a") as tar:  # a sample without its label (bytes of its own)
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="PNG")
        info = tarfile.TarInfo("zz-unlabelled.png")
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))
    db = tmp_path / "db"
    out = CliRunner().invoke(
        cli,
        [
            "ingest",
            str(tmp_path / "shards/{000000..000001}.tar"),
            "--db",
            str(db),
            "--model",
            str(tiny_model),
            "--augmentations",
            SPEC,
            "--label-key",
            "cls",
            "--label-names",
            names_file,
            "--workers",
            "1",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert out.exit_code == 0, out.output
    errors = {(r["path"].rsplit("/", 1)[-1], r["stage"]) for r in table(db, "errors")}
    assert errors == {("000000.tar#chelsea", "read"), ("000001.tar#zz-unlabelled", "label")}
    # the two before the break and the second shard's three are stored
    assert len(table(db, "images")) == 5


def test_missing_shard_is_one_line_and_nothing_written(tiny_model, photos, tmp_path):
    shards(photos, tmp_path / "shards")
    db = tmp_path / "db"
    out = CliRunner().invoke(
        cli,
        [
            "ingest",
            str(tmp_path / "shards/{000000..000004}.tar"),
            "--db",
            str(db),
            "--model",
            str(tiny_model),
        ],
    )
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert out.output.strip().count("\n") == 0
    assert "no such shard" in out.output and "000002.tar and 2 more" in out.output
    assert not db.exists()


def test_shards_and_store_on_s3(s3_bucket, plain, tiny_model, photos, tmp_path, names_file):
    folder = tmp_path / "shards"
    for path in shards(photos, folder):
        s3_bucket.put_object(
            Bucket="clipshift-test", Key=f"shards/{path.name}", Body=path.read_bytes()
        )
    remote = "s3://clipshift-test/store"
    options = DatasetOptions(label_key="cls", label_names=names_file)
    summary = run_ingest(
        ["s3://clipshift-test/shards/{000000..000001}.tar"], remote, tiny_model, options
    )
    assert (summary.stored, summary.failed) == (6, 0)
    from clipshift.store import Store

    store = Store.open(remote)
    rows = store.dataset("images").to_table().to_pylist()
    assert {r["label"] for r in rows} == set(LABELS.values())
    assert all(r["source"].startswith("s3://clipshift-test/shards/00000") for r in rows)
    name = next(n for n in store.table_names() if n.startswith("variants_"))
    got = {(r["image_id"], r["variant"]): r for r in store.dataset(name).to_table().to_pylist()}
    want = variants(plain)
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key]["embedding"] == pytest.approx(row["embedding"], abs=1e-6)
