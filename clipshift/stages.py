"""The stages of ingest as plain functions: what an engine (in-process, worker processes, Ray)
runs, and nothing about how it schedules them.

The contract, kept stable for every engine:

- Per image, on any CPU worker: `prepare_image(path, settings, keep_pixels, skip)` reads and
  hashes the file, then decodes, augments, measures the pixel metrics and PNG-encodes the
  variants (when `keep_pixels`). It returns a `Prepared`, a `Failure` naming its stage, or a
  `Skipped` for an image_id in `skip` (already stored by this run). It never raises for a bad
  image, and its result depends only on the file's bytes and `settings`: any worker, in any
  order, gives byte-identical pixels, parameters, metrics and PNGs. Every argument and result
  pickles; `Prepared.timings` holds the seconds spent in each sub-stage.
- Per batch, where the model lives: `encode_batch(encoder, batch)` runs the model over the
  images of a batch (in their order, original first within an image), raising `EncodeError`
  with a one-line message (`start_batch` + `finish_batch` are its two halves, for keeping an
  accelerator busy while the previous batch is written); `image_rows(batch)` and
  `variant_rows(run_id, batch, encoded, dim)` build the Arrow tables `Store.write_batch`
  takes.
- Duplicate files (the same bytes twice) are resolved by the caller in discovery order: the
  first is stored, later ones are counted as duplicates (`Prepared.image_id`,
  `Failure.image_id`).

This module imports neither torch nor the store at import time, so worker processes that run
only `prepare_image` start quickly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image

from . import first_line
from .augment import ORIGINAL, Augmenter
from .defaults import AUGMENTATION_NAMES, IMAGE_SIZE
from .pixels import IDENTICAL, PixelReference
from .sources import DecodeError, ObjectFile, Source, decode, read_source

if TYPE_CHECKING:
    from .datasets import Sample
    from .encoder import Encoded, Encoder, Pending


@dataclass(frozen=True)
class PrepareSettings:
    """Everything the CPU stages need besides the path: the same settings, the same bytes."""

    image_size: int = IMAGE_SIZE
    # what --augmentations names (suites, suite files, perturbations; clipshift.suites.resolve)
    augmentations: tuple[str, ...] = AUGMENTATION_NAMES
    seed: int = 0
    # --hidden-states: the encoder also keeps every layer's pooled hidden state (the CPU
    # stages ignore it)
    hidden_states: bool = False


@dataclass
class Prepared:
    """One image ready for the model: its original and augmented pixels, with pixel metrics."""

    path: str
    image_id: str  # sha256 of the file's bytes
    width: int
    height: int
    format: str
    mode: str
    names: list[str]  # "original" first, then the variant labels in settings order
    pixels: np.ndarray  # (1 + augmentations, S, S, 3) uint8, original first
    params: list[dict]
    metrics: list[dict]
    pngs: list[bytes | None]  # lossless PNG of each variant, or None where pixels are not kept
    timings: dict[str, float] = field(default_factory=dict)
    # each name's severity level (None: the original, a perturbation without levels)
    severities: list[int | None] = field(default_factory=list)
    label: str | None = None  # the class name a dataset gives (clipshift.datasets)
    label_index: int | None = None


@dataclass
class Failure:
    """An image that could not be prepared or encoded; `stage` says where it failed."""

    path: str
    stage: str
    message: str
    image_id: str | None = None  # None when the file could not be read
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Skipped:
    """An image this run already holds (its image_id was in `skip`), with the label its dataset
    gives, for an `images` row stored without one."""

    path: str
    image_id: str
    timings: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    label_index: int | None = None


@dataclass
class Duplicate:
    """A file with the same bytes as `first`, found before it in discovery order: only the
    first is stored."""

    path: str
    first: str


class EncodeError(Exception):
    """The model failed on a batch; its images are recorded as failed and the run goes on."""


_augmenters: dict[PrepareSettings, Augmenter] = {}


def augmenter_for(settings: PrepareSettings) -> Augmenter:
    """The settings' Augmenter, built once per process (building the pipelines costs ~ms)."""
    if settings not in _augmenters:
        _augmenters[settings] = Augmenter(settings.augmentations, settings.seed)
    return _augmenters[settings]


def prepare_image(
    path: str | Path | ObjectFile | Sample,
    settings: PrepareSettings,
    keep_pixels: bool,
    skip: Collection[str] = frozenset(),
) -> Prepared | Failure | Skipped:
    """Read, hash, decode, augment, measure and PNG-encode one image; never raises for a bad
    image (its `Failure` names the stage). A dataset's `Sample` (clipshift.datasets) goes to
    `prepare_sample`, so an engine may hand either."""
    if not isinstance(path, (str, Path, ObjectFile)):
        return prepare_sample(path, settings, keep_pixels, skip)
    started = time.perf_counter()
    try:
        source = read_source(path if isinstance(path, ObjectFile) else Path(path))
    except OSError as exc:
        return Failure(str(path), "read", exc.strerror or str(exc))
    timings = {"read": time.perf_counter() - started}
    if source.image_id in skip:
        return Skipped(str(path), source.image_id, timings)
    return prepare_source(source, settings, keep_pixels, timings)


def prepare_sample(
    sample: Sample,
    settings: PrepareSettings,
    keep_pixels: bool,
    skip: Collection[str] = frozenset(),
) -> Prepared | Failure | Skipped:
    """`prepare_image` of a dataset's sample (clipshift.datasets): its bytes are read already,
    its label carried to the `images` row. A sample that came with an error (a shard that
    breaks off, null bytes, no label where labels were asked for) is a Failure at its stage."""
    started = time.perf_counter()
    image_id = hashlib.sha256(sample.data).hexdigest() if sample.data is not None else None
    timings = {"read": time.perf_counter() - started}
    if sample.error is not None:
        return Failure(sample.source, sample.stage, sample.error, image_id, timings)
    if image_id in skip:
        return Skipped(sample.source, image_id, timings, sample.label, sample.label_index)
    source = Source(sample.source, sample.data, image_id, sample.label, sample.label_index)
    return prepare_source(source, settings, keep_pixels, timings)


def prepare_source(
    source: Source,
    settings: PrepareSettings,
    keep_pixels: bool,
    timings: dict[str, float] | None = None,
) -> Prepared | Failure:
    """The stages after read: decode, augment, pixel metrics and PNG of one image's bytes."""
    timings = dict(timings or {})
    path = str(source.path)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        clock = now

    try:
        decoded = decode(source.data, settings.image_size)
    except DecodeError as exc:
        return Failure(path, "decode", str(exc), source.image_id, timings)
    lap("decode")
    try:
        augmented = augmenter_for(settings)(decoded.pixels, source.image_id)
        lap("augment")
        reference = PixelReference(decoded.pixels)
        metrics = [IDENTICAL] + [reference.compare(a.pixels) for a in augmented]
        lap("metrics")
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
        return Failure(path, "augment", f"{type(exc).__name__}: {exc}", source.image_id, timings)
    pixels = np.stack([decoded.pixels] + [a.pixels for a in augmented])
    pngs = [png(variant) for variant in pixels] if keep_pixels else [None] * len(pixels)
    lap("png")
    return Prepared(
        path=path,
        image_id=source.image_id,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        mode=decoded.mode,
        names=[ORIGINAL] + [a.name for a in augmented],
        severities=[None] + [a.severity for a in augmented],
        pixels=pixels,
        params=[{}] + [a.params for a in augmented],
        metrics=metrics,
        pngs=pngs,
        timings=timings,
        label=source.label,
        label_index=source.label_index,
    )


def png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of one S x S x 3 uint8 variant (compress level 1: ~4 ms, the level
    barely changes the size of photographic pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_batch(encoder: Encoder, batch: Sequence[Prepared]) -> Encoded:
    """The model over every variant of the batch, image by image in batch order."""
    return finish_batch(encoder, start_batch(encoder, batch))


def start_batch(encoder: Encoder, batch: Sequence[Prepared]) -> Pending:
    """`encode_batch` in two halves: queue the forward pass (on an accelerator it runs while
    the caller goes on), then `finish_batch` waits for its outputs."""
    with _encode_errors():
        return encoder.start(np.concatenate([p.pixels for p in batch]), references(batch))


def references(batch: Sequence[Prepared]) -> np.ndarray:
    """Each row's original's row index in the batch (an image's original comes first): the
    layer metrics compare every variant with it inside the same forward."""
    starts = np.cumsum([0] + [len(p.pixels) for p in batch[:-1]])
    rows = [np.full(len(p.pixels), start) for p, start in zip(batch, starts, strict=True)]
    return np.concatenate(rows)


def finish_batch(encoder: Encoder, pending: Pending) -> Encoded:
    with _encode_errors():
        return encoder.finish(pending)


@contextlib.contextmanager
def _encode_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the batch fails, the run goes on
        raise EncodeError(first_line(exc, typed=True)) from exc


def image_rows(batch: Sequence[Prepared]) -> pa.Table:
    """The `images` rows of a batch."""
    return pa.table(
        {
            "image_id": [p.image_id for p in batch],
            "path": [p.path for p in batch],
            "width": pa.array([p.width for p in batch], pa.int32()),
            "height": pa.array([p.height for p in batch], pa.int32()),
            "format": [p.format for p in batch],
            "mode": [p.mode for p in batch],
            # migration 0007: the class name and index a dataset gives, and where the bytes
            # came from (the path; shard#key; table file#row)
            "label": pa.array([p.label for p in batch], pa.string()),
            "label_index": pa.array([p.label_index for p in batch], pa.int32()),
            "source": [p.path for p in batch],
        }
    )


def variant_rows(run_id: str, batch: Sequence[Prepared], encoded: Encoded, dim: int) -> pa.Table:
    """The `variants` rows of a batch: one per (image, variant), with the model's outputs."""
    # imported here: lance costs a second to import, which CPU workers need not pay
    from .store import variants_schema

    rows = [(p, i) for p in batch for i in range(len(p.names))]
    n, layers, cells = encoded.attention.shape

    def column(key: str) -> list:
        return [p.metrics[i][key] for p, i in rows]

    def float_lists(values: np.ndarray, width: int) -> pa.Array:
        offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
        return pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values.reshape(-1), pa.float32())
        )

    embeddings = pa.FixedSizeListArray.from_arrays(
        pa.array(encoded.embeddings.reshape(-1), pa.float32()), dim
    )
    nulls = pa.nulls(n, pa.list_(pa.float32()))
    layer_cosine = token_drift = token_drift_layers = nulls
    if encoded.layer_cosine is not None:
        layer_cosine = float_lists(encoded.layer_cosine, encoded.layer_cosine.shape[1])
        drift_layers = encoded.token_drift.shape[1]
        token_drift = float_lists(encoded.token_drift[:, -1], cells)
        token_drift_layers = float_lists(encoded.token_drift, drift_layers * cells)
    hidden_states = pa.nulls(n, pa.binary())
    if encoded.hidden_states is not None:
        # little-endian float16, (L + 1) x width a row: DuckDB has no 16-bit float type
        hidden_states = pa.array(
            [row.astype("<f2").tobytes() for row in encoded.hidden_states], pa.binary()
        )
    return pa.table(
        {
            "run_id": [run_id] * n,
            "image_id": [p.image_id for p, _ in rows],
            "variant": [p.names[i] for p, i in rows],
            "embedding": embeddings,
            "attention": float_lists(encoded.attention[:, -1], cells),
            "attention_layers": float_lists(encoded.attention, layers * cells),
            "patch_similarity": pa.array(column("patch_similarity"), pa.float64()),
            "edge_preservation": pa.array(column("edge_preservation"), pa.float64()),
            "detail_preservation": pa.array(column("detail_preservation"), pa.float64()),
            "params": [json.dumps(p.params[i], sort_keys=True) for p, i in rows],
            "pixels": pa.array([p.pngs[i] for p, i in rows], pa.binary()),
            "severity": pa.array(
                [p.severities[i] if p.severities else None for p, i in rows], pa.int32()
            ),
            "layer_cosine": layer_cosine,
            "token_drift": token_drift,
            "token_drift_layers": token_drift_layers,
            "hidden_states": hidden_states,
        },
        schema=variants_schema(dim),
    )
