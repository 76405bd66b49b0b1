"""Datasets as they are shipped: class folders, WebDataset shards, Parquet, Arrow and Lance
tables, and `datasets.save_to_disk` folders, each read as a stream of `Sample`s.

A `Sample` is one image's bytes, where they came from (`source`: the path, shard#key or
file#row) and its label, if labels were asked for. Nothing here holds a shard or a table
whole: a tar is read member by member (tarfile's streaming mode, which reads forward only, so
an object in S3 is one GET), a table row batch by row batch. A bad sample never stops the
stream: it comes as a Sample with `error` (and the `stage` it failed at), which ingest records
in `errors`:
- a shard that breaks off (truncated, a corrupt header) ends there: the samples before the
  break are kept, the one it broke in is an error at stage `read`;
- a table row whose image bytes are null is an error at stage `read`;
- a sample without a label when labels were asked for is an error at stage `label`.

A missing shard of a brace range (`shards/{000000..000099}.tar`) is a ClipshiftError before
anything is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import ClipshiftError
from .defaults import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    LABEL_KEYS,
    LABEL_SETS,
    LABELS_FROM,
    SHARD_IMAGE_KEYS,
    TABLE_BATCH_ROWS,
)
from .location import Location, is_object_uri
from .sources import ObjectFile, discover, list_entries

DATA_DIR = Path(__file__).resolve().parent / "data"
SHARD_SUFFIXES = (".tar",)
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".lance")
# the files `datasets.save_to_disk` writes beside its data-*.arrow files
SAVED_DATASET_FILES = ("state.json", "dataset_info.json")


@dataclass(frozen=True)
class Sample:
    """One image as a dataset ships it: its bytes, where they came from, and its label."""

    source: str  # the path; shard#key; table file#row (or #id with --id-column)
    data: bytes | None  # None where it could not be read (see error)
    label: str | None = None  # the class name
    label_index: int | None = None  # the class index, where the dataset or --label-names has one
    error: str | None = None  # why this sample cannot be stored
    stage: str = "read"  # where it failed: read (bytes) or label

    def __str__(self) -> str:  # as a path prints: where the bytes came from
        return self.source


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset's images and labels (ingest's --labels-from, --label-key,
    --image-column, --label-column, --id-column, --label-names)."""

    labels_from: str | None = None  # "folder": a plain folder's labels are its class folders
    label_key: str | None = None  # a shard's label member; None: the first of LABEL_KEYS present
    image_column: str = IMAGE_COLUMN
    label_column: str | None = None  # None: LABEL_COLUMN where the table has one
    id_column: str | None = None
    label_names: str | None = None  # imagenet, cifar100 or a file: names of integer labels

    def __post_init__(self) -> None:
        if self.labels_from is not None and self.labels_from not in LABELS_FROM:
            raise ClipshiftError(
                f"--labels-from {self.labels_from}: one of {', '.join(LABELS_FROM)}"
            )
        if self.label_key is not None and self.label_key not in LABEL_KEYS:
            raise ClipshiftError(f"--label-key {self.label_key}: one of {', '.join(LABEL_KEYS)}")

    @property
    def wants_labels(self) -> bool:
        return bool(self.labels_from or self.label_key or self.label_column or self.label_names)


# -- label names -------------------------------------------------------------------------------


def label_names(spec: str) -> tuple[str, ...]:
    """The class names of --label-names: a set shipped in clipshift/data/ (imagenet,
    cifar100) or a UTF-8 file of one name a line (blank lines and # comments skipped), in
    class-index order."""
    if spec in LABEL_SETS:
        return tuple((DATA_DIR / f"{spec}.txt").read_text(encoding="utf-8").splitlines())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ClipshiftError(
            f"--label-names {spec}: no such file (or one of: {', '.join(LABEL_SETS)})"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipshiftError(f"--label-names {spec}: cannot read it as UTF-8 ({exc})") from None
    names = tuple(entry for _, entry in list_entries(lines))
    if not names:
        raise ClipshiftError(f"--label-names {spec}: no names in it, give one per line")
    return names


class Labeler:
    """Turns a dataset's raw label (an integer, a name, or bytes of either) into (name, index)."""

    def __init__(self, names: Iterable[str] | None = None, spec: str = "") -> None:
        self.names = tuple(names) if names is not None else None
        self.spec = spec
        self.index = {}
        for i, name in enumerate(self.names or ()):
            self.index.setdefault(name, i)  # a repeated name (imagenet's "missile") keeps its first

    def __call__(self, raw) -> tuple[str, int | None]:
        """(name, index); ValueError naming the label where it cannot be one."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8").strip()
        if isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
            if self.names is None:  # a class folder "0001" keeps its name, index 1
                return raw.strip(), int(raw)
            raw = int(raw)
        if isinstance(raw, bool) or raw is None:
            raise ValueError(f"label {raw!r} is neither a class index nor a name")
        if isinstance(raw, int):
            if self.names is None:
                return str(raw), raw
            if not 0 <= raw < len(self.names):
                raise ValueError(
                    f"label {raw} is not a class of {self.spec} (0..{len(self.names) - 1})"
                )
            return self.names[raw], raw
        name = str(raw).strip()
        if not name:
            raise ValueError("empty label")
        return name, self.index.get(name) if self.names is not None else None


# -- discovery ---------------------------------------------------------------------------------

_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: `{000..012}` a zero-padded range (the
    width of its first bound), `{a,b}` a list; several braces multiply."""
    match = _BRACES.search(pattern)
    if not match:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        first, last = ranged.groups()
        if int(last) < int(first):
            raise ClipshiftError(f"{pattern}: the range {{{body}}} runs backwards")
        choices = [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ClipshiftError(f"{pattern}: {{{body}}} is neither a range (a..b) nor a list (a,b)")
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def _suffix(name: str) -> str:
    return os.path.splitext(name.rstrip("/"))[1].lower()


def _exists(names: list[str]) -> list[bool]:
    """Whether each local path or object URI exists (object URIs in one listing call each
    bucket's filesystem makes)."""
    found = []
    for name in names:
        if is_object_uri(name):
            location = Location.parse(name)
            filesystem, path = location.filesystem()
            found.append(filesystem.get_file_info(path).type.name != "NotFound")
        else:
            found.append(Path(name).expanduser().exists())
    return found


def _is_saved_dataset(name: str) -> bool:
    if is_object_uri(name):
        location = Location.parse(name)
        filesystem, path = location.filesystem()
        infos = filesystem.get_file_info([f"{path}/{f}" for f in SAVED_DATASET_FILES])
        return all(info.type.name == "File" for info in infos)
    return all((Path(name).expanduser() / f).is_file() for f in SAVED_DATASET_FILES)


def samples(paths: Iterable[str | os.PathLike], options: DatasetOptions) -> Iterator[Sample]:
    """Every image under `paths` as a Sample, streamed, in a stable order.

    Each PATH is a WebDataset shard (.tar, with brace ranges), a table (.parquet, .arrow,
    .feather, .lance), a `save_to_disk` folder, or what `sources.discover` takes (an image, a
    folder, a list file, an object-storage prefix). Every PATH is checked before the first
    sample is yielded: a missing one (a shard of a range included) is a ClipshiftError.
    """
    names = options and options.label_names
    labeler = Labeler(label_names(names), names) if names else Labeler()
    plan: list[tuple[str, str]] = []
    for raw in map(str, paths):
        expanded = expand_braces(raw) if _BRACES.search(raw) else [raw]
        kind = _kind(expanded[0])
        if kind in ("shard", "table"):
            missing = [name for name, ok in zip(expanded, _exists(expanded), strict=True) if not ok]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise ClipshiftError(f"no such shard: {missing[0]}{more} (from {raw})")
        plan += [(kind, name) for name in expanded]
    # plain folders are listed now, so that a missing path fails before anything is read
    listed = {name: list(discover([name])) for kind, name in plan if kind == "files"}
    for kind, name in plan:
        if kind == "shard":
            yield from shard_samples(name, options, labeler)
        elif kind == "table":
            yield from table_samples(name, options, labeler)
        elif kind == "saved":
            yield from saved_dataset_samples(name, options, labeler)
        else:
            yield from file_samples(listed[name], options, labeler)


def is_dataset(name: str) -> bool:
    """Whether PATH is a dataset as shipped (a shard or brace range of shards, a table, a
    save_to_disk folder), which `samples` reads and `sources.discover` does not."""
    if _BRACES.search(name):
        return True
    return _kind(name) != "files"


def _kind(name: str) -> str:
    suffix = _suffix(name)
    if suffix in SHARD_SUFFIXES:
        return "shard"
    if suffix in TABLE_SUFFIXES:
        return "table"
    with contextlib.suppress(OSError, ValueError):
        if _is_saved_dataset(name):
            return "saved"
    return "files"


# -- plain folders -----------------------------------------------------------------------------


def file_samples(
    files: Iterable[Path | ObjectFile], options: DatasetOptions, labeler: Labeler
) -> Iterator[Sample]:
    """Image files, one read at a time; with --labels-from folder each labelled by its parent
    folder's name."""
    for path in files:
        source = str(path)
        label = index = None
        if options.labels_from == "folder":
            parent = source.rstrip("/").rsplit("/", 2)
            label, index = labeler(parent[-2]) if len(parent) > 2 else (None, None)
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Sample(source, None, label, index, exc.strerror or str(exc))
            continue
        yield Sample(source, data, label, index)


# -- WebDataset shards -------------------------------------------------------------------------


@contextlib.contextmanager
def _open_stream(name: str):
    """A forward-only binary stream of a local file or an object (one GET, read as it goes)."""
    if is_object_uri(name):
        filesystem, path = Location.parse(name).filesystem()
        with filesystem.open_input_stream(path) as stream:
            yield stream
    else:
        with open(Path(name).expanduser(), "rb") as stream:
            yield stream


def _open_random(name: str):
    """A seekable file of a local path or an object (pyarrow reads ranges of it)."""
    if is_object_uri(name):
        filesystem, path = Location.parse(name).filesystem()
        return filesystem.open_input_file(path)
    return str(Path(name).expanduser())


def shard_samples(shard: str, options: DatasetOptions, labeler: Labeler) -> Iterator[Sample]:
    """The samples of one WebDataset shard, member by member (WebDataset's naming: a sample is
    the consecutive members whose names share the part before the first dot of the base name)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    in_member = False  # whether a break falls inside a member of `key` (else between members)
    try:
        with _open_stream(shard) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, extension = base.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key:
                    if key is not None:
                        yield _shard_sample(shard, key, members, options, labeler)
                    key, members = member_key, {}
                in_member = True
                # a member that breaks off raises here: tarfile reads its declared size
                members[extension.lower()] = tar.extractfile(member).read()
                in_member = False
    except (tarfile.TarError, OSError, EOFError) as exc:
        if key is not None and not in_member:
            yield _shard_sample(shard, key, members, options, labeler)
        where = f"{shard}#{key}" if key is not None and in_member else shard
        yield Sample(where, None, error=f"shard breaks off: {_first_line(exc)}")
        return
    if key is not None:
        yield _shard_sample(shard, key, members, options, labeler)


def _shard_sample(
    shard: str, key: str, members: dict[str, bytes], options: DatasetOptions, labeler: Labeler
) -> Sample:
    source = f"{shard}#{key}"
    image = next((members[k] for k in SHARD_IMAGE_KEYS if k in members), None)
    if image is None:
        return Sample(
            source, None, error=f"no image member ({', '.join(SHARD_IMAGE_KEYS)}) in the sample"
        )
    if not options.wants_labels:
        return Sample(source, image)
    label_key = options.label_key or next((k for k in LABEL_KEYS if k in members), None)
    if label_key is None or label_key not in members:
        wanted = label_key or "/".join(LABEL_KEYS)
        return Sample(source, image, error=f"no {wanted} label member", stage="label")
    raw = members[label_key]
    try:
        if label_key == "json":
            document = json.loads(raw)
            raw = next((document[k] for k in ("label", "cls", "class") if k in document), None)
            if raw is None:
                raise ValueError("its json member has no label, cls or class field")
        label, index = labeler(raw)
    except (ValueError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        return Sample(source, image, error=str(exc), stage="label")
    return Sample(source, image, label, index)


# -- tables ------------------------------------------------------------------------------------


def _class_names_of(schema, column: str) -> list[str] | None:
    """The ClassLabel names a Hugging Face export keeps in its schema metadata."""
    metadata = schema.metadata or {}
    raw = metadata.get(b"huggingface")
    if not raw:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        features = json.loads(raw)["info"]["features"]
        return _class_names(features, column)
    return None


def _class_names(features: dict, column: str) -> list[str] | None:
    feature = features.get(column) or {}
    if feature.get("_type") == "ClassLabel" and feature.get("names"):
        return list(feature["names"])
    return None


def _batches(name: str, columns: list[str]):
    """(schema, iterator of record batches with `columns`) of a Parquet, Arrow or Lance table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    suffix = _suffix(name)
    if suffix == ".parquet":
        parquet = pq.ParquetFile(_open_random(name))
        schema = parquet.schema_arrow
        present = [c for c in columns if c in schema.names]
        return schema, parquet.iter_batches(batch_size=TABLE_BATCH_ROWS, columns=present)
    if suffix == ".lance":
        import lance

        location = Location.parse(name)
        dataset = lance.dataset(location.uri, storage_options=location.storage_options or None)
        present = [c for c in columns if c in dataset.schema.names]
        return dataset.schema, dataset.to_batches(columns=present, batch_size=TABLE_BATCH_ROWS)
    # Arrow: the IPC file format (.arrow/.feather) or, as `datasets` writes it, the stream
    source = _open_random(name)
    try:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        source = _open_random(name)
        reader = pa.ipc.open_stream(source)
        batches = iter(reader)
    return reader.schema, _rebatched(batches)


def _rebatched(batches):
    """Record batches of at most TABLE_BATCH_ROWS rows (an Arrow file's batches may be large;
    slices are views, nothing is copied)."""
    for batch in batches:
        for start in range(0, batch.num_rows, TABLE_BATCH_ROWS):
            yield batch.slice(start, TABLE_BATCH_ROWS)


def table_samples(
    name: str,
    options: DatasetOptions,
    labeler: Labeler,
    class_names: list[str] | None = None,
) -> Iterator[Sample]:
    """The rows of a Parquet, Arrow or Lance table, a row batch at a time. The image column
    is binary or, as Hugging Face exports it, a struct{bytes, path}."""
    wanted_label = options.label_column or (LABEL_COLUMN if options.wants_labels else None)
    columns = [options.image_column] + [c for c in (wanted_label, options.id_column) if c]
    try:
        schema, batches = _batches(name, columns)
    except (OSError, ValueError) as exc:
        raise ClipshiftError(f"cannot read {name} as a table: {_first_line(exc)}") from None
    for column in columns:
        if column not in schema.names:
            flag = {options.image_column: "--image-column", options.id_column: "--id-column"}
            raise ClipshiftError(
                f"{name} has no column {column!r} ({flag.get(column, '--label-column')}); "
                f"it has: {', '.join(schema.names)}"
            )
    names = class_names or (_class_names_of(schema, wanted_label) if wanted_label else None)
    table_labeler = Labeler(names, name) if names and labeler.names is None else labeler
    row = 0
    try:
        for batch in batches:
            images = _image_bytes(batch.column(options.image_column))
            labels = batch.column(wanted_label).to_pylist() if wanted_label else None
            ids = batch.column(options.id_column).to_pylist() if options.id_column else None
            for i, data in enumerate(images):
                source = f"{name}#{ids[i]}" if ids else f"{name}#{row}"
                row += 1
                if data is None:
                    yield Sample(source, None, error="the image bytes are null")
                    continue
                if labels is None:
                    yield Sample(source, data)
                    continue
                if labels[i] is None:
                    yield Sample(source, data, error="the label is null", stage="label")
                    continue
                try:
                    label, index = table_labeler(labels[i])
                except ValueError as exc:
                    yield Sample(source, data, error=str(exc), stage="label")
                    continue
                yield Sample(source, data, label, index)
    except (OSError, ValueError) as exc:  # a file cut short: the rows before it are kept
        yield Sample(f"{name}#{row}", None, error=f"table breaks off: {_first_line(exc)}")


def _image_bytes(column) -> list[bytes | None]:
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return column.to_pylist()


# -- datasets.save_to_disk ----------------------------------------------------------------------


def saved_dataset_samples(
    folder: str, options: DatasetOptions, labeler: Labeler
) -> Iterator[Sample]:
    """A `datasets.save_to_disk` folder: its data-*.arrow files (Arrow IPC streams, in
    state.json's order), labelled with the ClassLabel names of its dataset_info.json."""
    state = json.loads(_read_small(f"{folder}/state.json"))
    info = json.loads(_read_small(f"{folder}/dataset_info.json"))
    wanted_label = options.label_column or LABEL_COLUMN
    names = _class_names(info.get("features") or {}, wanted_label)
    files = [entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        raise ClipshiftError(f"{folder}/state.json lists no _data_files")
    for filename in files:
        yield from table_samples(f"{folder.rstrip('/')}/{filename}", options, labeler, names)


def _read_small(name: str) -> bytes:
    with _open_stream(name) as stream:
        return stream.read()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
