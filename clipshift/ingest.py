"""Ingest: discover -> read -> decode -> augment -> pixel metrics -> encode -> write.

The stages themselves live in `clipshift.stages` (one function per image or per batch); this
module is the local engine that orchestrates them: it keeps discovery order, resolves skipped
and duplicate files, batches, and writes. A batch is written in one commit; an image is stored
when, and only when, all its variant rows are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import ClipshiftError, __version__
from .defaults import (
    BATCH_SIZE,
    DEFAULT_DB,
    DEFAULT_MODEL,
    IMAGE_SIZE,
    IMAGE_SUFFIXES,
    KEEP_PIXELS,
    ORIGINAL,
    PRECISION,
    PRECISIONS,
    STAGES,
)
from .filters import matches, where
from .hub import require_model, weights_revision
from .sources import discover
from .store import Store
from .workers import PreparePool, default_workers

# The stages and the suites import albumentations, and with it torch (about 5 s here): they are
# imported once the cheap checks have passed, so that a wrong path, --db or an unreachable model
# fails at once (issue 13: offline, within about 2 s).
if TYPE_CHECKING:
    from .encoder import Pending
    from .stages import Duplicate, Failure, Prepared, PrepareSettings
    from .suites import Perturbation

T = TypeVar("T")


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
    skipped: int = 0  # already held by the run (stored earlier, or by another writer)
    duplicate_files: list[Duplicate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    precision: str = PRECISION
    retried: int = 0  # images retried after their worker process died
    # seconds spent in each stage (STAGES); the per-image CPU stages are summed over images
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # whether this process loaded the model: a rerun with nothing new to encode does not
    model_loaded: bool = False

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_files)

    @property
    def held(self) -> int:
        """Images of the given files that the run holds after this ingest, whoever stored
        them: the nightly rerun of a folder with a few unreadable files still succeeds."""
        return self.stored + self.skipped

    @property
    def images_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[int, "IngestSummary"], None]


def run_identity(
    model: str, revision: str, image_size: int, seed: int, aug_hash: str, precision: str = PRECISION
) -> str:
    """A run is a configuration: the same weights, size, seed, augmentations and precision give
    the same run_id, so the same command again resumes (or extends) it instead of starting anew.
    The number of workers is not part of it: results do not depend on it."""
    key = {"revision": revision, "image_size": image_size, "seed": seed, "augmentations": aug_hash}
    if precision != "fp32":
        key["precision"] = precision  # fp32 runs keep the run_ids they had before precisions
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
    workers: int | None = None,
    precision: str = PRECISION,
    engine: str = "local",
    actors: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
    hidden_states: bool = False,
) -> IngestSummary:
    """Embed every image under `paths`, original and augmented, into the store at `db`.

    Idempotent: images this run already holds are skipped, and the model is loaded only once
    an image is new (a run the store holds is found by the weights' hash alone).
    `keep_pixels` N keeps PNG pixels for the run's first N images, counting those it already
    holds with pixels. `on_start(total)` is called once the paths are known,
    `on_progress(images_done, summary)` after each batch.

    `workers` processes (default: one per core this process may use) run the per-image CPU
    stages; 1 runs them in a thread of this process. The results do not depend on it.
    `precision` (fp32, bf16, fp16) is the model's compute precision, part of the run's identity.
    `engine` "local" runs here; "ray" runs the same stages on a Ray cluster
    (clipshift.ray_engine) with `actors` model actors (default: one per GPU of the cluster,
    else one); `workers` applies to the local engine only.
    """
    started = time.perf_counter()
    workers = default_workers() if workers is None else workers
    _check_options(image_size, batch_size, limit, keep_pixels, workers, precision)
    if engine not in ENGINES:
        raise ClipshiftError(f"--engine {engine}: one of {', '.join(ENGINES)}")
    if engine != "local" and precision != PRECISION:
        raise ClipshiftError(
            f"--precision {precision}: --engine {engine} runs the model in {PRECISION}"
        )
    files = list(discover(paths))
    Store.check_location(db)
    if not files:
        raise ClipshiftError(
            f"no supported images found under {', '.join(map(str, paths))} "
            f"(looked for {', '.join(IMAGE_SUFFIXES)}, in folders recursively)"
        )
    if limit is not None:
        files = files[:limit]
    # offline, a model neither local nor cached fails here at once (no hub retries), before
    # transformers is imported and before any worker starts
    require_model(model)
    # The model's idle OpenMP threads sleep instead of spinning, so that they leave the cores to
    # the preparing thread or the worker processes beside them (benchmarks/ingest.py: end to
    # end with the tiny CLIP 10-30% faster; the full-size forward alone unchanged). It takes
    # effect where torch is not imported yet, as in `clipshift ingest`; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .stages import PrepareSettings
    from .suites import resolve, spec_items

    perturbations = resolve(augmentations)
    names = [p.label for p in perturbations]
    # the spec, not the labels: a worker resolves it to the same perturbations (a user suite
    # file included, by its absolute path)
    settings = PrepareSettings(image_size, spec_items(augmentations), seed, hidden_states)
    # started before the model loads, so that the workers' own start-up overlaps it
    pool = None
    if engine == "local" and workers > 1 and len(files) > 1:
        pool = PreparePool(
            min(workers, len(files)), settings, (1 + len(names), image_size, image_size, 3)
        )
    try:
        return _ingest(
            files,
            db,
            model,
            settings,
            perturbations,
            pool,
            batch_size=batch_size,
            keep_pixels=keep_pixels,
            device=device,
            precision=precision,
            engine=engine,
            actors=actors,
            started=started,
            on_start=on_start,
            on_progress=on_progress,
        )
    finally:
        if pool is not None:
            pool.close()


def _ingest(
    files: list[Path],
    db: str | Path,
    model: str,
    settings: PrepareSettings,
    perturbations: list[Perturbation],
    pool: PreparePool | None,
    *,
    batch_size: int,
    keep_pixels: int,
    device: str,
    precision: str,
    engine: str,
    actors: int | None,
    started: float,
    on_start: Callable[[int], None] | None,
    on_progress: ProgressCallback | None,
) -> IngestSummary:
    from .augment import augmentation_config, config_hash
    from .encoder import Encoder
    from .stages import (
        Duplicate,
        EncodeError,
        Failure,
        Skipped,
        finish_batch,
        image_rows,
        prepare_image,
        start_batch,
        variant_rows,
    )

    names = [p.label for p in perturbations]
    image_size, seed = settings.image_size, settings.seed
    store = Store.open(db, create=True)
    config = augmentation_config(perturbations)
    aug_hash = config_hash(config)
    local = Path(model).expanduser()
    model_id = str(local.resolve()) if local.is_dir() else model  # a folder by its full path

    def load_encoder() -> Encoder:
        # under another engine the model runs elsewhere: here it only names the run
        encoder = Encoder(
            model,
            device=device if engine == "local" else "cpu",
            image_size=image_size,
            precision=precision,
            hidden_states=settings.hidden_states,
        )
        summary.model_loaded = True
        run_id = run_identity(model, encoder.revision, image_size, seed, aug_hash, precision)
        if summary.run_id and run_id != summary.run_id:
            # its weight files changed after they were hashed above
            raise ClipshiftError(
                f"--model {model} changed while this ingest ran (its weights are "
                f"{encoder.revision} now): run the same command again"
            )
        summary.run_id, summary.model_revision = run_id, encoder.revision
        store.ensure_run(
            {
                "run_id": run_id,
                "model": model_id,
                "model_revision": encoder.revision,
                "family": encoder.family.name,
                "preprocessing": encoder.preprocessing_json(),
                "attention_maps": encoder.family.attention_maps,
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
        return encoder

    summary = IngestSummary(
        db=str(db),
        run_id="",
        model=model_id,
        model_revision="",
        image_size=image_size,
        seed=seed,
        augmentations=names,
        discovered=len(files),
        workers=pool.size if pool else 1,
        precision=precision,
    )
    # A run the store already holds is found by the weights' identity, read without loading
    # the model (a folder's weight files hashed, or the cached hub commit): the model loads
    # only once an image needs encoding, so a rerun with nothing new skips loading it.
    revision = weights_revision(model)
    held_run = None
    if revision is not None:
        run_id = run_identity(model, revision, image_size, seed, aug_hash, precision)
        held_run = _stored_run(store, run_id)
    encoder: Encoder | None = None
    if held_run is None:
        encoder = load_encoder()
        embedding_dim = encoder.embedding_dim
    else:
        summary.run_id, summary.model_revision = run_id, revision
        embedding_dim = held_run["embedding_dim"]
    run_id = summary.run_id
    if on_start:
        on_start(len(files))

    already = store.stored_images(run_id)
    failed_before = _failed_paths(store, run_id)
    keep = _keep_pixels(store, run_id, files, already, keep_pixels)
    if engine != "local":
        job = IngestJob(
            files=files,
            keep=keep,
            settings=settings,
            store=store,
            model=model,
            device=device,
            run_id=run_id,
            embedding_dim=embedding_dim,
            batch_size=batch_size,
            already=already,
            failed_before=failed_before,
            summary=summary,
            started=started,
            on_progress=on_progress,
        )
        # the engine's workers write fragment files that its driver commits later, and a
        # compaction deletes every file no version uses: the run holds the store's lock (the
        # lease on object storage) throughout, so no other writer compacts meanwhile
        summary.model_loaded = True  # by the engine's model actors, whatever is new
        with store.lock():
            ENGINES[engine](job, actors)
        return _finish(store, summary, started, on_progress, len(files))
    batch: list[Prepared] = []
    failures: list[Failure] = []
    seen: dict[str, str] = {}  # image_id -> the first file with its bytes

    # The batch whose forward pass is queued on the device: it is written after the next
    # batch's forward has been queued, so an accelerator never waits on a write.
    in_flight: tuple[list[Prepared], Pending] | None = None

    def timed(stage: str, work: Callable[[], T]) -> T:
        clock = time.perf_counter()
        try:
            return work()
        finally:
            summary.timings[stage] += time.perf_counter() - clock

    def write(batch: list[Prepared], pending: Pending) -> None:
        try:
            encoded = timed("encode", lambda: finish_batch(encoder, pending))
        except EncodeError as exc:
            failures.extend(Failure(p.path, "encode", str(exc), p.image_id) for p in batch)
            return
        clock = time.perf_counter()
        variants = variant_rows(run_id, batch, encoded, encoder.embedding_dim)
        written = store.write_batch(run_id, image_rows(batch), variants)
        summary.stored += len(written)
        summary.skipped += len(batch) - len(written)  # another writer stored them
        recovered = [p.path for p in batch if p.image_id in written]
        store.clear_errors(run_id, [p for p in recovered if p in failed_before])
        summary.timings["write"] += time.perf_counter() - clock

    def flush(last: bool = False) -> None:
        nonlocal batch, failures, in_flight, encoder
        started_now = None
        if batch and encoder is None:
            encoder = load_encoder()
        if batch:
            try:
                started_now = (batch, timed("encode", lambda: start_batch(encoder, batch)))
            except EncodeError as exc:
                failures.extend(Failure(p.path, "encode", str(exc), p.image_id) for p in batch)
        if in_flight:
            write(*in_flight)
        in_flight = started_now
        if last and in_flight:
            write(*in_flight)
            in_flight = None
        record_failures(store, summary, failures)
        batch, failures = [], []

    if pool is not None:
        pool.set_skip(already)
        items = pool.imap(files, keep)
    else:
        items = (prepare_image(path, settings, keep[i], already) for i, path in enumerate(files))
    # a batch's worth and more prepared while the model runs on the current one; closed
    # (its thread stopped) before the caller closes the pool, whatever ends the loop
    with contextlib.closing(in_background(items, depth=2 * batch_size)) as prepared:
        for done, item in enumerate(prepared, start=1):
            for stage, seconds in item.timings.items():
                summary.timings[stage] += seconds
            if isinstance(item, Skipped):
                summary.skipped += 1
            elif item.image_id is not None and item.image_id in seen:
                # the first file with these bytes is the one stored
                summary.duplicate_files.append(Duplicate(item.path, seen[item.image_id]))
            elif isinstance(item, Failure):
                if item.image_id is not None:
                    seen[item.image_id] = item.path
                failures.append(item)
            else:
                seen[item.image_id] = item.path
                batch.append(item)
                if len(batch) >= batch_size:
                    flush()
                    if on_progress:
                        summary.seconds = time.perf_counter() - started
                        on_progress(done, summary)
    flush(last=True)
    if pool is not None:
        summary.retried = pool.retried
    return _finish(store, summary, started, on_progress, len(files))


def _finish(
    store: Store,
    summary: IngestSummary,
    started: float,
    on_progress: ProgressCallback | None,
    files: int,
) -> IngestSummary:
    store.compact()
    store.close()
    summary.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(files, summary)
    return summary


@dataclass
class IngestJob:
    """One run handed to an engine other than the in-process one: what to ingest, where,
    and the summary the engine fills in. The engine calls clipshift.stages, never its own
    version of a stage."""

    files: list
    keep: list[bool]  # keep the PNG pixels of files[i]
    settings: PrepareSettings
    store: Store
    model: str
    device: str
    run_id: str
    embedding_dim: int
    batch_size: int
    already: set[str]  # image_ids this run holds: skipped
    failed_before: set[str]  # paths with an `errors` row, cleared once stored
    summary: IngestSummary
    started: float
    on_progress: ProgressCallback | None

    def record_failures(self, failures: list[Failure]) -> None:
        record_failures(self.store, self.summary, failures)


def record_failures(store: Store, summary: IngestSummary, failures: list[Failure]) -> None:
    """Record failures in `errors` and in the summary: every engine the same way."""
    if failures:
        store.record_errors(
            [
                {"path": f.path, "stage": f.stage, "message": f.message, "run_id": summary.run_id}
                for f in failures
            ]
        )
        summary.failures.extend(failures)


def _ray_engine(job: IngestJob, actors: int | None) -> None:
    from .ray_engine import run  # imports Ray: only when asked for

    run(job, actors)


# the engines besides "local" (the loop in ingest): each runs an IngestJob to completion
ENGINES: dict[str, Callable[[IngestJob, int | None], None] | None] = {
    "local": None,
    "ray": _ray_engine,
}


def _check_options(
    image_size: int,
    batch_size: int,
    limit: int | None,
    keep_pixels: int,
    workers: int,
    precision: str,
) -> None:
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
    if workers < 1:
        raise ClipshiftError(f"--workers {workers}: use 1 or more (1 runs in this process)")
    if precision not in PRECISIONS:
        raise ClipshiftError(f"unknown --precision {precision}: choose {', '.join(PRECISIONS)}")


def _stored_run(store: Store, run_id: str) -> dict | None:
    """The store's `runs` row of `run_id`, or None."""
    rows = store.dataset("runs").to_table(filter=matches(run_id=run_id)).to_pylist()
    return rows[0] if rows else None


def _keep_pixels(
    store: Store, run_id: str, files: list, already: set[str], keep_pixels: int
) -> list[bool]:
    """Which files keep their PNG pixels: --keep-pixels N counts the run's images, so those
    it already holds with pixels use up N, and a file it already holds under that path (to
    be skipped) takes none of what is left. An image the run holds under another path is
    skipped all the same: the run never keeps pixels for more than N images."""
    if keep_pixels < 0:
        return [True] * len(files)
    left = keep_pixels
    held_paths: set[str] = set()
    table = store.variants_table_of(run_id)
    if table is not None and already:
        rows = f"{where(run_id=run_id, variant=ORIGINAL)} AND pixels IS NOT NULL"
        left -= store.dataset(table).count_rows(filter=rows)
        images = store.dataset("images").to_table(
            columns=["path"], filter=matches(image_id=list(already))
        )
        held_paths = set(images.column("path").to_pylist())
    keep = []
    for path in files:
        new = str(path) not in held_paths
        keep.append(new and left > 0)
        if new:
            left -= 1
    return keep


def _failed_paths(store: Store, run_id: str) -> set[str]:
    errors = store.dataset("errors").to_table(columns=["path"], filter=matches(run_id=run_id))
    return set(errors.column("path").to_pylist())


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
