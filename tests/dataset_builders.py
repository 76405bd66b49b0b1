"""Datasets as they are shipped, built from scikit-image's photos for the tests: WebDataset
shards, a Parquet file in the Hugging Face export format, a class-folder tree and a
`datasets.save_to_disk` folder written with the Arrow layout `datasets` uses (no `datasets`
import: the layout is what is tested)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# each photo's class, and the class names in index order (a --label-names file)
CLASSES = ("animal", "object", "person")
LABELS = {
    "astronaut": "person",
    "coffee": "object",
    "chelsea": "animal",
    "rocket": "object",
    "camera": "person",
    "logo": "object",
}


def photo_files(folder: Path) -> list[Path]:
    """The photos of the `photos` fixture, in name order."""
    return sorted(folder.glob("*.png"))


def class_tree(photos: Path, root: Path) -> Path:
    """root/<class>/<photo>.png"""
    for path in photo_files(photos):
        target = root / LABELS[path.stem]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return root


def shards(photos: Path, folder: Path, per_shard: int = 3, label_key: str = "cls") -> list[Path]:
    """folder/000000.tar, ...: one sample per photo (key = its name), its label's class index
    in a cls member (or its name in txt, or {"label": index} in json)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = photo_files(photos)
    written = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        path = folder / f"{number:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for photo in files[start : start + per_shard]:
                index = CLASSES.index(LABELS[photo.stem])
                label = {
                    "cls": str(index).encode(),
                    "txt": LABELS[photo.stem].encode(),
                    "json": json.dumps({"label": index}).encode(),
                }[label_key]
                _add(tar, f"{photo.stem}.png", photo.read_bytes())
                _add(tar, f"{photo.stem}.{label_key}", label)
        written.append(path)
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def hf_table(photos: Path) -> pa.Table:
    """The photos as the Hugging Face exports write an image dataset: image struct{bytes, path},
    label int64 ClassLabel (names in the schema's `huggingface` metadata)."""
    files = photo_files(photos)
    image = pa.array(
        [{"bytes": p.read_bytes(), "path": p.name} for p in files],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    label = pa.array([CLASSES.index(LABELS[p.stem]) for p in files], pa.int64())
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(CLASSES), "_type": "ClassLabel"},
    }
    table = pa.table({"image": image, "label": label, "name": [p.stem for p in files]})
    return table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )


def parquet(photos: Path, path: Path) -> Path:
    pq.write_table(hf_table(photos), path, row_group_size=4)
    return path


def saved_dataset(photos: Path, folder: Path) -> Path:
    """A `datasets.save_to_disk` folder: data-00000-of-00001.arrow (an Arrow IPC stream),
    state.json and dataset_info.json with the ClassLabel names."""
    folder.mkdir(parents=True, exist_ok=True)
    table = hf_table(photos)
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    features["name"] = {"dtype": "string", "_type": "Value"}
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=4)
    (folder / "state.json").write_text(
        json.dumps(
            {
                "_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                "_fingerprint": "0",
                "_format_columns": None,
                "_format_kwargs": {},
                "_format_type": None,
                "_output_all_columns": False,
                "_split": "train",
            }
        )
    )
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_server):
    """conftest's moto S3 server, under the name the dataset tests use."""
    return s3_server
