"""Ingest: discover -> read -> decode -> augment -> pixel metrics -> encode -> write.

Each stage is a small function over one image (or one batch, for encode and write), so a
stage can be swapped or moved to another worker without touching the others. A batch is
written in one commit; an image is stored when, and only when, all its variant rows are.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
from PIL import Image

from . import ClipshiftError, __version__
from .augment import Augmenter, augmentation_config, config_hash, parse_augmentations
from .defaults import BATCH_SIZE, DEFAULT_DB, DEFAULT_MODEL, IMAGE_SIZE, KEEP_PIXELS, ORIGINAL
from .encoder import Encoder
from .filters import matches
from .pixels import IDENTICAL, PixelReference
from .sources import DecodeError, Source, decode, discover, read_source
from .store import Store, variants_schema

T = TypeVar("T")


@dataclass
class Prepared:
    """One image ready for the model: its original and augmented pixels, with pixel metrics."""

    source: Source
    width: int
    height: int
    format: str
    mode: str
    names: list[str]
    pixels: np.ndarray  # (1 + augmentations, S, S, 3) uint8, original first
    params: list[dict]
    metrics: list[dict]
    keep_pixels: bool


@dataclass
class Failure:
    path: str
    stage: str
    message: str


@dataclass
class IngestSummary:
    db: str
    run_id: str
    model: str
    model_revision: str
    image_size: int
    seed: int
    augmentations: list[str]
    discovered: int = 0
    stored: int = 0
    skipped: int = 0
    duplicates: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[int, "IngestSummary"], None]


def run_identity(model: str, revision: str, image_size: int, seed: int, aug_hash: str) -> str:
    """A run is a configuration: the same weights, size, seed and augmentations give the same
    run_id, so the same command again resumes (or extends) it instead of starting anew."""
    key = {"revision": revision, "image_size": image_size, "seed": seed, "augmentations": aug_hash}
    if revision == "unknown":
        key["model"] = model
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def ingest(
    paths: Sequence[str | Path],
    db: str | Path = DEFAULT_DB,
    model: str = DEFAULT_MODEL,
    *,
    image_size: int = IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    augmentations: str | Sequence[str] | None = None,
    limit: int | None = None,
    keep_pixels: int = KEEP_PIXELS,
    device: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestSummary:
    """Embed every image under `paths`, original and augmented, into the store at `db`.

    Idempotent: images this run already holds are skipped. `on_start(total)` is called once
    the paths are known, `on_progress(images_done, summary)` after each batch.
    """
    started = time.perf_counter()
    names = parse_augmentations(augmentations)
    _check_options(image_size, batch_size, limit, keep_pixels)
    files = list(discover(paths))
    if limit is not None:
        files = files[:limit]

    Store.check_location(db)
    encoder = Encoder(model, device=device, image_size=image_size)
    store = Store.open(db, create=True)
    config = augmentation_config(names)
    aug_hash = config_hash(config)
    run_id = run_identity(model, encoder.revision, image_size, seed, aug_hash)
    model_id = str(encoder.local_dir or model)  # a local folder as its absolute path
    store.ensure_run(
        {
            "run_id": run_id,
            "model": model_id,
            "model_revision": encoder.revision,
            "embedding_dim": encoder.embedding_dim,
            "patch_grid": encoder.patch_grid,
            "num_layers": encoder.num_layers,
            "image_size": image_size,
            "seed": seed,
            "augmentations": json.dumps(config),
            "augmentation_hash": aug_hash,
            "clipshift_version": __version__,
            "created_at": datetime.now(timezone.utc),
        }
    )

    summary = IngestSummary(
        db=str(db),
        run_id=run_id,
        model=model_id,
        model_revision=encoder.revision,
        image_size=image_size,
        seed=seed,
        augmentations=names,
        discovered=len(files),
    )
    if on_start:
        on_start(len(files))

    already = store.stored_images(run_id)
    failed_before = _failed_paths(store, run_id)
    augmenter = Augmenter(names, seed)
    batch: list[Prepared] = []
    failures: list[Failure] = []

    def flush() -> None:
        nonlocal batch, failures
        if batch:
            try:
                written = _encode_and_write(store, encoder, run_id, batch)
            except EncodeError as exc:
                failures.extend(Failure(str(p.source.path), "encode", str(exc)) for p in batch)
            else:
                summary.stored += len(written)
                summary.skipped += len(batch) - len(written)  # another writer stored them
                recovered = [str(p.source.path) for p in batch if p.source.image_id in written]
                store.clear_errors(run_id, [p for p in recovered if p in failed_before])
        if failures:
            store.record_errors(
                [
                    {"path": f.path, "stage": f.stage, "message": f.message, "run_id": run_id}
                    for f in failures
                ]
            )
            summary.failures.extend(failures)
        batch, failures = [], []

    prepared = _read_and_prepare(files, already, image_size, augmenter, keep_pixels)
    for done, item in enumerate(in_background(prepared, depth=2 * batch_size), start=1):
        if item is SKIPPED:
            summary.skipped += 1
        elif item is DUPLICATE:
            summary.duplicates += 1
        elif isinstance(item, Failure):
            failures.append(item)
        else:
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
                if on_progress:
                    summary.seconds = time.perf_counter() - started
                    on_progress(done, summary)
    flush()
    store.compact()
    summary.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(len(files), summary)
    return summary


def _check_options(image_size: int, batch_size: int, limit: int | None, keep_pixels: int) -> None:
    if image_size < 16:
        raise ClipshiftError(
            f"--image-size {image_size} is too small: use 16 or more ({IMAGE_SIZE} is CLIP's)"
        )
    if batch_size < 1:
        raise ClipshiftError(f"--batch-size {batch_size}: use 1 or more")
    if limit is not None and limit < 0:
        raise ClipshiftError(f"--limit {limit}: use 0 or more")
    if keep_pixels < -1:
        raise ClipshiftError(f"--keep-pixels {keep_pixels}: use a count, 0 for none or -1 for all")


def _failed_paths(store: Store, run_id: str) -> set[str]:
    errors = store.dataset("errors").to_table(columns=["path"], filter=matches(run_id=run_id))
    return set(errors.column("path").to_pylist())


SKIPPED = "skipped: already in the store"
DUPLICATE = "skipped: the same bytes as an earlier file"


def _read_and_prepare(
    files: Sequence[Path], already: set[str], size: int, augmenter: Augmenter, keep_pixels: int
) -> Iterator[Prepared | Failure | str]:
    """The CPU stages (read, decode, augment, pixel metrics): one item per file, in order."""
    seen: set[str] = set()
    for index, path in enumerate(files):
        try:
            source = read_source(path)
        except OSError as exc:
            yield Failure(str(path), "read", exc.strerror or str(exc))
            continue
        if source.image_id in already:
            yield SKIPPED
        elif source.image_id in seen:
            yield DUPLICATE
        else:
            seen.add(source.image_id)
            yield _prepare(source, size, augmenter, keep=keep_pixels < 0 or index < keep_pixels)


def in_background(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate `items` in a worker thread, up to `depth` items ahead of the consumer.

    The CPU stages of the next batch then overlap the model's forward pass of this one (numpy,
    OpenCV and torch release the GIL). An exception in the worker is raised in the consumer;
    a consumer that stops early stops the worker.
    """
    channel: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    finished = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer(_Raised(exc))
        offer(finished)

    worker = threading.Thread(target=work, name="clipshift-prepare", daemon=True)
    worker.start()
    try:
        while (item := channel.get()) is not finished:
            if isinstance(item, _Raised):
                raise item.exception
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass
class _Raised:
    exception: BaseException


def _prepare(source: Source, size: int, augmenter: Augmenter, keep: bool) -> Prepared | Failure:
    """Decode, augment and measure one image; a failure names its stage."""
    try:
        decoded = decode(source.data, size)
    except DecodeError as exc:
        return Failure(str(source.path), "decode", str(exc))
    try:
        augmented = augmenter(decoded.pixels, source.image_id)
        reference = PixelReference(decoded.pixels)
        metrics = [IDENTICAL] + [reference.compare(a.pixels) for a in augmented]
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
        return Failure(str(source.path), "augment", f"{type(exc).__name__}: {exc}")
    return Prepared(
        source=source,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        mode=decoded.mode,
        names=[ORIGINAL] + [a.name for a in augmented],
        pixels=np.stack([decoded.pixels] + [a.pixels for a in augmented]),
        params=[{}] + [a.params for a in augmented],
        metrics=metrics,
        keep_pixels=keep,
    )


class EncodeError(Exception):
    """The model failed on a batch; its images are recorded as failed and the run goes on."""


def _encode_and_write(
    store: Store, encoder: Encoder, run_id: str, batch: list[Prepared]
) -> set[str]:
    try:
        encoded = encoder.encode(np.concatenate([p.pixels for p in batch]))
    except Exception as exc:  # noqa: BLE001
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise EncodeError(f"{type(exc).__name__}: {first_line}") from exc
    images = pa.table(
        {
            "image_id": [p.source.image_id for p in batch],
            "path": [str(p.source.path) for p in batch],
            "width": pa.array([p.width for p in batch], pa.int32()),
            "height": pa.array([p.height for p in batch], pa.int32()),
            "format": [p.format for p in batch],
            "mode": [p.mode for p in batch],
        }
    )
    return store.write_batch(
        run_id, images, _variant_rows(run_id, batch, encoded, encoder.embedding_dim)
    )


def _variant_rows(run_id: str, batch: list[Prepared], encoded, dim: int) -> pa.Table:
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
    return pa.table(
        {
            "run_id": [run_id] * n,
            "image_id": [p.source.image_id for p, _ in rows],
            "variant": [p.names[i] for p, i in rows],
            "embedding": embeddings,
            "attention": float_lists(encoded.attention[:, -1], cells),
            "attention_layers": float_lists(encoded.attention, layers * cells),
            "patch_similarity": pa.array(column("patch_similarity"), pa.float64()),
            "edge_preservation": pa.array(column("edge_preservation"), pa.float64()),
            "detail_preservation": pa.array(column("detail_preservation"), pa.float64()),
            "params": [json.dumps(p.params[i], sort_keys=True) for p, i in rows],
            "pixels": pa.array(
                [_png(p.pixels[i]) if p.keep_pixels else None for p, i in rows], pa.binary()
            ),
        },
        schema=variants_schema(dim),
    )


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
