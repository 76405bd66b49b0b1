"""The dataset readers (clipshift/datasets.py): each shipped format gives the photos' exact
bytes with their labels, streamed, and a bad sample is an error sample, not the end."""

from __future__ import annotations

import io
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_builders import (
    CLASSES,
    LABELS,
    class_tree,
    hf_table,
    parquet,
    photo_files,
    s3_bucket_fixture,  # noqa: F401 (the s3_bucket fixture)
    saved_dataset,
    shards,
)

from clipshift import ClipshiftError
from clipshift.datasets import DatasetOptions, expand_braces, label_names, samples


def by_name(found) -> dict:
    """{photo name: Sample}"""
    return {s.source.rsplit("/", 1)[-1].split("#")[-1].split(".")[0]: s for s in found}


def expected(photos) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in photo_files(photos)}


def labelled(found) -> dict[str, tuple]:
    return {k: (s.label, s.label_index) for k, s in by_name(found).items()}


def truth(names=True) -> dict[str, tuple]:
    return {k: (v, CLASSES.index(v)) if names else v for k, v in LABELS.items()}


def test_expand_braces():
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ClipshiftError, match="backwards"):
        expand_braces("{5..1}.tar")


def test_label_names_shipped_and_file(tmp_path):
    assert len(label_names("imagenet")) == 1000 and label_names("cifar100")[1] == "aquarium fish"
    (tmp_path / "names.txt").write_text("# classes\nanimal\nobject\n\nperson\n")
    assert label_names(str(tmp_path / "names.txt")) == CLASSES
    with pytest.raises(ClipshiftError, match="no such file"):
        label_names(str(tmp_path / "nope.txt"))


def test_class_folders(photos, tmp_path):
    root = class_tree(photos, tmp_path / "tree")
    found = list(samples([root], DatasetOptions(labels_from="folder")))
    assert {k: s.data for k, s in by_name(found).items()} == expected(photos)
    assert {k: s.label for k, s in by_name(found).items()} == LABELS
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES))
    found = samples([root], DatasetOptions(labels_from="folder", label_names=str(names)))
    assert labelled(found) == truth()


@pytest.mark.parametrize("label_key", ["cls", "txt", "json"])
def test_webdataset_shards(photos, tmp_path, label_key):
    shards(photos, tmp_path / "shards", label_key=label_key)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES))
    options = DatasetOptions(label_key=label_key, label_names=str(names))
    found = list(samples([str(tmp_path / "shards/{000000..000001}.tar")], options))
    assert [s.error for s in found] == [None] * 6
    assert {k: s.data for k, s in by_name(found).items()} == expected(photos)
    assert labelled(found) == truth()
    assert found[0].source == f"{tmp_path}/shards/000000.tar#astronaut"


def test_shards_without_labels_asked_have_none(photos, tmp_path):
    shards(photos, tmp_path / "shards")
    found = list(samples([str(tmp_path / "shards/{000000..000001}.tar")], DatasetOptions()))
    assert {s.label for s in found} == {None} and len(found) == 6


def test_missing_shard_is_one_line_before_anything(photos, tmp_path):
    shards(photos, tmp_path / "shards")
    with pytest.raises(ClipshiftError, match=r"no such shard: .*000002\.tar and 1 more"):
        samples_iter = samples([str(tmp_path / "shards/{000000..000003}.tar")], DatasetOptions())
        next(samples_iter)


def test_truncated_shard_loses_only_its_broken_member(photos, tmp_path):
    (first,) = shards(photos, tmp_path / "shards", per_shard=6)
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    # cut inside the data of the third sample's image (chelsea.png)
    broken = members[4]
    assert broken.name == "chelsea.png"
    raw = first.read_bytes()
    first.write_bytes(raw[: broken.offset_data + broken.size // 2])
    found = list(samples([first], DatasetOptions(label_key="cls")))
    assert [s.source.split("#")[1] for s in found] == ["astronaut", "camera", "chelsea"]
    assert [s.error is None for s in found] == [True, True, False]
    assert "breaks off" in found[-1].error and found[-1].stage == "read"


def test_corrupt_member_and_missing_label(photos, tmp_path):
    path = tmp_path / "odd.tar"
    files = photo_files(photos)
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("a.png", b"not a png at all"),
            ("a.cls", b"0"),
            ("b.png", files[0].read_bytes()),  # no label member
            ("c.png", files[1].read_bytes()),
            ("c.cls", b"7"),  # not a class of the names
            ("d.cls", b"1"),  # no image
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES))
    found = by_name(samples([path], DatasetOptions(label_key="cls", label_names=str(names))))
    # the corrupt image is left to decode, which records it; the sample itself is whole
    assert found["a"].error is None and found["a"].data == b"not a png at all"
    assert (found["b"].stage, found["b"].error) == ("label", "no cls label member")
    assert found["c"].stage == "label" and "label 7 is not a class" in found["c"].error
    assert found["d"].stage == "read" and "no image member" in found["d"].error


def test_hf_parquet_with_null_bytes(photos, tmp_path):
    path = parquet(photos, tmp_path / "train.parquet")
    found = list(samples([path], DatasetOptions(label_column="label")))
    # sources are file#row; the labels come from the export's ClassLabel names
    assert [s.source for s in found] == [f"{path}#{i}" for i in range(6)]
    bytes_by_row = [s.data for s in found]
    assert bytes_by_row == [p.read_bytes() for p in photo_files(photos)]
    assert [(s.label, s.label_index) for s in found] == [
        truth()[p.stem] for p in photo_files(photos)
    ]
    # --id-column names rows by their id
    found = list(samples([path], DatasetOptions(id_column="name")))
    assert [s.source for s in found] == [f"{path}#{p.stem}" for p in photo_files(photos)]
    # a row with null bytes is an error sample; the others are read
    table = hf_table(photos)
    image = table.column("image").combine_chunks()
    nulled = pa.StructArray.from_arrays(
        [pa.array([None] + image.field("bytes").to_pylist()[1:], pa.binary()), image.field("path")],
        names=["bytes", "path"],
    )
    pq.write_table(table.set_column(0, "image", nulled), tmp_path / "nulls.parquet")
    found = list(samples([tmp_path / "nulls.parquet"], DatasetOptions()))
    assert found[0].error == "the image bytes are null" and found[0].data is None
    assert all(s.error is None for s in found[1:]) and len(found) == 6


def test_parquet_missing_column_is_one_line(photos, tmp_path):
    path = parquet(photos, tmp_path / "train.parquet")
    with pytest.raises(ClipshiftError, match="has no column 'img' \\(--image-column\\)"):
        list(samples([path], DatasetOptions(image_column="img")))


def test_arrow_file_and_lance_table(photos, tmp_path):
    import lance

    table = hf_table(photos)
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    lance.write_dataset(table, str(tmp_path / "t.lance"))
    want = [p.read_bytes() for p in photo_files(photos)]
    for name in ("t.arrow", "t.lance"):
        found = list(samples([tmp_path / name], DatasetOptions(label_names="imagenet")))
        assert [s.data for s in found] == want
        # --label-names wins over the export's own names
        assert found[0].label == "great white shark"  # astronaut: person, class 2
        assert [s.label_index for s in found] == [
            CLASSES.index(LABELS[p.stem]) for p in photo_files(photos)
        ]


def test_saved_dataset_folder(photos, tmp_path):
    folder = saved_dataset(photos, tmp_path / "saved")
    found = list(samples([folder], DatasetOptions(label_column="label")))
    assert [s.data for s in found] == [p.read_bytes() for p in photo_files(photos)]
    assert [(s.label, s.label_index) for s in found] == [
        truth()[p.stem] for p in photo_files(photos)
    ]
    assert found[0].source == f"{folder}/data-00000-of-00001.arrow#0"


# -- object storage ---------------------------------------------------------------------------


def upload(client, folder, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket="clipshift-test", Key=key, Body=path.read_bytes())


def test_every_source_on_s3(s3_bucket, photos, tmp_path):
    local = tmp_path / "local"
    shards(photos, local / "shards")
    parquet(photos, local / "train.parquet")
    saved_dataset(photos, local / "saved")
    class_tree(photos, local / "tree")
    upload(s3_bucket, local, "data")
    want = expected(photos)
    base = "s3://clipshift-test/data"
    options = DatasetOptions(label_column="label", label_key="cls")
    for spec in (f"{base}/shards/{{000000..000001}}.tar", f"{base}/train.parquet", f"{base}/saved"):
        found = list(samples([spec], options))
        assert sorted(s.data for s in found) == sorted(want.values()), spec
        assert sorted(s.label_index for s in found) == sorted(
            CLASSES.index(v) for v in LABELS.values()
        )
    found = list(samples([f"{base}/tree"], DatasetOptions(labels_from="folder")))
    assert {k: s.label for k, s in by_name(found).items()} == LABELS
    with pytest.raises(ClipshiftError, match="no such shard"):
        list(samples([f"{base}/shards/{{000000..000002}}.tar"], options))
    shutil.rmtree(local)


# -- through the stages: the same bytes, the same image ------------------------------------------


def test_every_source_prepares_to_the_plain_folders_images(photos, tmp_path):
    """Each format's samples give, through stages.prepare_sample, the same image_ids, pixels
    and pixel metrics as the photos read from a plain folder, with their labels and sources
    in the `images` rows."""
    import numpy as np

    from clipshift.stages import PrepareSettings, image_rows, prepare_image, prepare_sample

    settings = PrepareSettings(64, ("blur", "noise"), 0)
    plain = {p.stem: prepare_image(p, settings, False) for p in photo_files(photos)}
    shards(photos, tmp_path / "shards")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES))
    specs = {
        "tree": (class_tree(photos, tmp_path / "tree"), DatasetOptions(labels_from="folder")),
        "shards": (str(tmp_path / "shards/{000000..000001}.tar"), DatasetOptions(label_key="cls")),
        "parquet": (parquet(photos, tmp_path / "t.parquet"), DatasetOptions(id_column="name")),
        "saved": (saved_dataset(photos, tmp_path / "saved"), DatasetOptions(label_column="label")),
    }
    for kind, (spec, options) in specs.items():
        options = DatasetOptions(**{**options.__dict__, "label_names": str(names)})
        found = {}
        for sample in samples([spec], options):
            prepared = prepare_sample(sample, settings, False)
            found[prepared.path] = prepared
        assert len(found) == 6, kind
        for stem, want in plain.items():
            (got,) = [p for p in found.values() if p.image_id == want.image_id]
            assert np.array_equal(got.pixels, want.pixels), kind
            assert got.metrics == want.metrics and got.params == want.params, kind
            assert (got.label, got.label_index) == truth()[stem], (kind, stem)
        rows = image_rows(list(found.values())).to_pylist()
        assert {r["source"] for r in rows} == set(found)
        assert {(r["label"], r["label_index"]) for r in rows} == set(truth().values())


def test_sample_errors_are_failures_at_their_stage(photos, tmp_path):
    from clipshift.datasets import Sample
    from clipshift.stages import Failure, PrepareSettings, Skipped, prepare_sample

    settings = PrepareSettings(64, ("blur",), 0)
    data = photo_files(photos)[0].read_bytes()
    unlabelled = prepare_sample(Sample("s.tar#a", data, error="no cls", stage="label"), settings, 0)
    assert isinstance(unlabelled, Failure) and unlabelled.stage == "label"
    assert unlabelled.image_id is not None
    broken = prepare_sample(Sample("s.tar#b", None, error="breaks off"), settings, False)
    assert isinstance(broken, Failure) and (broken.stage, broken.image_id) == ("read", None)
    corrupt = prepare_sample(Sample("s.tar#c", b"not an image"), settings, False)
    assert isinstance(corrupt, Failure) and corrupt.stage == "decode"
    done = prepare_sample(Sample("s.tar#d", data), settings, False, skip={unlabelled.image_id})
    assert isinstance(done, Skipped)
