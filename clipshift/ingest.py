"""Ingest: discover -> read -> decode -> augment -> pixel metrics -> encode -> write.

The stages themselves live in `clipshift.stages` (one function per image or per batch) and the
engines that orchestrate them in `clipshift.engines` (ENGINES). This module checks the options,
resolves the model once, names the run (`run_identity`), and hands the engine its job.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from . import ClipshiftError, __version__
from .datasets import DatasetOptions, is_dataset, samples
from .defaults import (
    BATCH_SIZE,
    DEFAULT_DB,
    DEFAULT_MODEL,
    IMAGE_SIZE,
    IMAGE_SUFFIXES,
    KEEP_PIXELS,
    ORIGINAL,
    PRECISION,
    check_precision,
)
from .engines.job import IngestJob, IngestSummary, ProgressCallback
from .filters import matches, where
from .hub import ResolvedModel, model_config, resolve_model
from .location import Location
from .sources import discover
from .store import MIGRATIONS_TABLE, Store
from .workers import (
    CPU_GFLOPS_PER_CORE,
    PREPARE_SECONDS_PER_INPUT,
    PreparePool,
    available_cores,
    default_workers,
    inference_gflop,
)

# The encoder imports torch (2-3 s here), and the stages and suites may import albumentations:
# they are imported once the cheap checks have passed, so that a wrong path, --db or an
# unreachable model fails at once (issue 13: offline, within about 2 s).
if TYPE_CHECKING:
    from .encoder import Encoder
    from .stages import PrepareSettings
    from .suites import Perturbation

__all__ = ["ENGINES", "IngestJob", "IngestSummary", "ingest", "run_identity"]

# A dataset (shards, tables, labelled folders) is streamed: its samples, bytes included, are
# handed to the engine this many at a time, so that no more than a chunk's bytes (a few
# hundred MB of photos) are held at once, whatever the dataset's size.
DATASET_CHUNK = 2048

# What the summary's bf16 hint says of a CPU that multiplies bf16 natively (AMX or
# AVX512-BF16). Measured in issue 22 on a 2-core Xeon with AMX and avx512_bf16: `ingest
# --precision bf16` encoded 240 inputs (24 images) in 4.1 s against 9.3 s in fp32. The cosine
# of bf16 embeddings to fp32 ones is docs/metrics.md's (benchmarks/ingest.py, full-size
# ViT-B/32 with random weights, the 20 variants of two photos: mean 0.999954, min 0.999943),
# taken on this project's AMD EPYC, which converts bf16 to fp32 where the Xeon multiplies it.
BF16_INGEST_SPEEDUP = 2.2
BF16_MEAN_COSINE = 0.99995
# issue 22's bar for suggesting bf16: at least this much faster than fp32, and this close
BF16_HINT_SPEEDUP = 2.0
BF16_HINT_COSINE = 0.9999


def run_identity(
    model: ResolvedModel,
    revision: str,
    image_size: int,
    seed: int,
    aug_hash: str,
    precision: str = PRECISION,
) -> str:
    """A run is a configuration: the same weights, size, seed, augmentations and precision give
    the same run_id, so the same command again resumes (or extends) it instead of starting anew.
    The number of workers is not part of it: results do not depend on it."""
    key = {"revision": revision, "image_size": image_size, "seed": seed, "augmentations": aug_hash}
    if precision != PRECISION:
        key["precision"] = precision  # fp32 runs keep the run_ids they had before precisions
    if revision == "unknown":
        key["model"] = model.name
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
    dataset: DatasetOptions | None = None,
) -> IngestSummary:
    """Embed every image under `paths`, original and augmented, into the store at `db`.

    Idempotent: images this run already holds are skipped, and the model is loaded only once
    an image is new (a run the store holds is found by the weights' hash alone).
    `keep_pixels` N keeps PNG pixels for the run's first N images, counting those it already
    holds with pixels. `on_start(total)` is called once the paths are known,
    `on_progress(images_done, summary)` after each batch.

    `workers` processes run the per-image CPU stages; 0 runs them in a thread of this process.
    The results do not depend on it. The default (`workers.default_workers`) leaves the cores
    to a model that runs on the CPU, and gives them to the CPU stages where it runs elsewhere.
    `precision` (fp32, bf16, fp16) is the model's compute precision, part of the run's identity.
    `engine` "local" runs here; "ray" runs the same stages on a Ray cluster
    (clipshift.engines.ray) with `actors` model actors (default: one per GPU of the cluster,
    else one); `workers` applies to the local engine only.

    A dataset as it is shipped (clipshift.datasets: WebDataset shards, Parquet, Arrow or Lance
    tables, a save_to_disk folder, or any PATH with `dataset` options such as labels from
    class folders) is streamed, DATASET_CHUNK samples at a time, with its labels and sources
    stored in `images`; `on_start` then gets 0 (the total is not known ahead).
    """
    started = time.perf_counter()
    _check_options(
        image_size, batch_size, limit, keep_pixels, 0 if workers is None else workers, precision
    )
    if engine not in ENGINES:
        raise ClipshiftError(f"--engine {engine}: one of {', '.join(ENGINES)}")
    rest: Iterator | None = None
    if dataset is not None or any(is_dataset(str(p)) for p in paths):
        # every PATH (each shard of a brace range) is checked before anything is read
        stream = samples(paths, dataset or DatasetOptions())
        if limit is not None:
            stream = itertools.islice(stream, limit)
        files = list(itertools.islice(stream, DATASET_CHUNK))
        rest = stream
    else:
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
    resolved = resolve_model(model)
    # What the model load and the store wait for runs beside the imports below: the hash of a
    # folder's weights, the run's identity (ViT-B/32: half a second, outside the GIL); the
    # worker processes' start-up (albumentations and the stages' pipelines); and on a thread
    # of its own the model's image tower with torch (`_import_ahead`, once torch's settings
    # below are made). The main process imports no albumentations where workers apply the
    # perturbations: the default suite resolves without it (clipshift/suites/paper.py).
    resolved.hash_ahead()
    from .stages import PrepareSettings
    from .suites import resolve, spec_items

    perturbations = resolve(augmentations)
    names = [p.label for p in perturbations]
    # the spec, not the labels: a worker resolves it to the same perturbations (a user suite
    # file included, by its absolute path)
    settings = PrepareSettings(image_size, spec_items(augmentations), seed, hidden_states)
    with contextlib.ExitStack() as cleanup:
        pool = None
        if engine == "local" and files and workers != 0:
            # Started before torch is imported: the default count depends on the device,
            # which torch finds, so the pool starts with the CPU's count (the least of any
            # device's) and grows once the device is known.
            model_cost = _model_cost(resolved, image_size, 1 + len(names))
            pool = PreparePool(
                min(workers or default_workers("cpu", available_cores(), *model_cost), len(files)),
                settings,
                (1 + len(names), image_size, image_size, 3),
                capacity=min(workers or available_cores(), len(files)),
            )
            cleanup.callback(pool.close)
        # The model's idle OpenMP threads sleep instead of spinning, so that they leave the
        # cores to the preparing thread or the worker processes beside them
        # (benchmarks/ingest.py: end to end with the tiny CLIP 10-30% faster; the full-size
        # forward alone unchanged). It takes effect where torch is not imported yet, as in
        # `clipshift ingest`; a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _import_ahead(resolved, db)

        def grow_pool() -> None:
            """The default count, once the device is known (torch imported)."""
            if workers is None and pool is not None:
                from .encoder import resolve_device

                kind = resolve_device(device).type
                pool.grow(min(default_workers(kind, available_cores(), *model_cost), len(files)))

        if rest is not None:
            rest = _chunks(rest, DATASET_CHUNK)
        # what _ingest starts is closed before the pool (the stack closes the last first)
        return _ingest(
            files,
            db,
            resolved,
            settings,
            perturbations,
            pool,
            cleanup,
            grow_pool,
            batch_size=batch_size,
            keep_pixels=keep_pixels,
            device=device,
            precision=precision,
            engine=engine,
            actors=actors,
            started=started,
            on_start=on_start,
            on_progress=on_progress,
            rest=rest,
        )


def bf16_hint(
    device: str,
    precision: str,
    capability: Mapping[str, object],
    speedup: float = BF16_INGEST_SPEEDUP,
    cosine: float = BF16_MEAN_COSINE,
) -> str | None:
    """The summary's one-line hint to try `--precision bf16`, or None: for an fp32 run on a
    CPU (`device`) whose `capability` (knn.cpu_capability) has native bf16, where bf16 was
    measured at least BF16_HINT_SPEEDUP times faster and BF16_HINT_COSINE close to fp32."""
    from .knn import native_bf16

    if device != "cpu" or precision != PRECISION or not native_bf16(capability):
        return None
    if speedup < BF16_HINT_SPEEDUP or cosine < BF16_HINT_COSINE:
        return None
    unit = "AMX" if capability.get("amx_bf16") else "AVX512-BF16"
    return (
        f"this CPU multiplies bf16 natively ({unit}): --precision bf16 ran ingest {speedup:.1f}x "
        f"faster than fp32 on such a CPU, embeddings at a mean cosine of {cosine} to fp32 "
        "(a run of its own beside this one)"
    )


def _import_ahead(model: ResolvedModel, db: str | Path) -> None:
    """Import on a daemon thread what an ingest into a new store needs later, since the model
    is then sure to load: the code that loads its image tower. An error there is left for the
    main thread to meet and report where it would have anyway."""

    def import_towers() -> None:
        try:
            importlib.import_module("clipshift.towers")
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    location = Location.parse(db)
    if location.is_local and not Store(location).has_table(MIGRATIONS_TABLE):
        threading.Thread(target=import_towers, daemon=True).start()


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _model_cost(model: ResolvedModel, image_size: int, variants: int) -> tuple[float, float]:
    """What `default_workers` weighs, per image (all its `variants`): the core-seconds of the
    model's forward on the CPU, estimated from its config (an unknown cost is taken as the
    model's, which leaves the cores to it), and of the CPU stages."""
    config = model_config(model) or {}
    vision = config.get("vision_config")
    if isinstance(vision, dict):
        model_seconds = variants * inference_gflop(vision, image_size) / CPU_GFLOPS_PER_CORE
    else:
        model_seconds = math.inf
    return model_seconds, variants * PREPARE_SECONDS_PER_INPUT


def _ingest(
    files: list[Path],
    db: str | Path,
    model: ResolvedModel,
    settings: PrepareSettings,
    perturbations: list[Perturbation],
    pool: PreparePool | None,
    cleanup: contextlib.ExitStack,
    grow_pool: Callable[[], None],
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
    rest: Iterator[list] | None = None,
) -> IngestSummary:
    from .augment import augmentation_config, config_hash

    names = [p.label for p in perturbations]
    image_size, seed = settings.image_size, settings.seed
    config = augmentation_config(perturbations)
    aug_hash = config_hash(config)
    encoder: Encoder | None = None
    store: Store | None = None

    def load_encoder() -> Encoder:
        nonlocal encoder
        if encoder is not None:
            return encoder
        # torch is imported here, not before: the first images are prepared meanwhile
        from .encoder import Encoder

        # under another engine the model runs elsewhere: here it only names the run
        encoder = Encoder(
            model,
            device=device if engine == "local" else "cpu",
            image_size=image_size,
            precision=precision,
            hidden_states=settings.hidden_states,
        )
        summary.model_loaded = True
        if engine == "local":
            from .knn import cpu_capability

            summary.hint = bf16_hint(encoder.device.type, precision, cpu_capability())
        run_id = run_identity(model, encoder.revision, image_size, seed, aug_hash, precision)
        if summary.run_id and run_id != summary.run_id:
            # its weight files changed after they were hashed above
            raise ClipshiftError(
                f"--model {model.name} changed while this ingest ran (its weights are "
                f"{encoder.revision} now): run the same command again"
            )
        summary.run_id, summary.model_revision = run_id, encoder.revision
        if store is not None:
            register_run(encoder)
        return encoder

    def register_run(encoder: Encoder) -> None:
        store.ensure_run(
            {
                "run_id": summary.run_id,
                **encoder.run_fields(),
                "seed": seed,
                "augmentations": json.dumps(config),
                "augmentation_hash": aug_hash,
                "clipshift_version": __version__,
                "created_at": datetime.now(timezone.utc),
            }
        )

    summary = IngestSummary(
        db=str(db),
        run_id="",
        model=model.source,
        model_revision="",
        image_size=image_size,
        seed=seed,
        augmentations=names,
        discovered=len(files),
        workers=0 if engine == "local" else None,
        precision=precision,
    )
    # A run the store already holds is found by the weights' identity, read without loading
    # the model (a folder's weight files hashed, or the cached hub commit): the model loads
    # only once an image needs encoding, so a rerun with nothing new skips loading it.
    held_run = None
    if model.revision is not None:
        run_id = run_identity(model, model.revision, image_size, seed, aug_hash, precision)
        held_run = _held_run(db, run_id)
    ahead, ahead_keep = None, []
    if held_run is None and model.revision is not None and engine == "local":
        # the store holds nothing of this run: its first images are prepared while the model
        # loads, so that the first batch is ready when the model is
        from .engines.local import prepare_ahead

        ahead_keep = _keep_pixels(None, run_id, files, set(), keep_pixels)
        ahead = prepare_ahead(files, settings, ahead_keep, set(), pool, 2 * batch_size)
        cleanup.callback(ahead.close)
    grow_pool()
    if pool is not None:
        summary.workers = pool.size
    if held_run is None:
        # a new run: the model loads before the store is made, so a model that cannot load
        # leaves no store behind
        embedding_dim = load_encoder().embedding_dim
    else:
        summary.run_id, summary.model_revision = run_id, model.revision
        embedding_dim = held_run["embedding_dim"]
    run_id = summary.run_id
    store = Store.open(db, create=True)
    if encoder is not None:
        register_run(encoder)
    if on_start:
        on_start(0 if rest is not None else len(files))

    failed_before = _failed_paths(store, run_id)
    done = 0
    # a dataset's further chunks, each a job of its own with the same summary: the pixels
    # kept and the images held are counted again from the store before each
    for chunk in itertools.chain([files], rest or ()):
        if chunk is not files:
            summary.discovered += len(chunk)
        if chunk is files and ahead is not None:
            already, keep = set(), ahead_keep
        else:
            already = store.stored_images(run_id)
            keep = _keep_pixels(store, run_id, chunk, already, keep_pixels)
        job = IngestJob(
            files=chunk,
            keep=keep,
            settings=settings,
            store=store,
            model=model,
            device=device,
            precision=precision,
            run_id=run_id,
            embedding_dim=embedding_dim,
            batch_size=batch_size,
            already=already,
            failed_before=failed_before,
            summary=summary,
            started=started,
            on_progress=_offset(on_progress, done),
            encoder=load_encoder,
            pool=pool,
            prepared=ahead if chunk is files else None,
            actors=actors,
        )
        if engine == "local":
            ENGINES[engine](job)
        else:
            # the engine's workers write fragment files that its driver commits later, and a
            # compaction deletes every file no version uses: the run holds the store's lock
            # (the lease on object storage) throughout, so no other writer compacts meanwhile
            summary.model_loaded = True  # by the engine's model actors, whatever is new
            with store.lock():
                ENGINES[engine](job)
        if job.held_labels:
            store.fill_labels(
                pa.table(
                    {
                        "image_id": list(job.held_labels),
                        "label": [label for label, _ in job.held_labels.values()],
                        "label_index": [index for _, index in job.held_labels.values()],
                    }
                )
            )
        done += len(chunk)
    summary.labelled = store.labels_filled
    if settings.hidden_states and run_id:
        _keep_cka(store, run_id, summary)
    store.compact()
    store.close()
    summary.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(done, summary)
    return summary


def _keep_cka(store: Store, run_id: str, summary: IngestSummary) -> None:
    """The run's CKA from its hidden states, computed once the rows are stored (both engines
    end here) and kept in layer_cka, so that `clipshift layers` reads it: minutes at the paper
    size on a CPU (clipshift.cka), against the hours of that ingest's forward passes."""
    from .cka import run_cka
    from .runs import resolve_run

    result = run_cka(store, resolve_run(store, run_id), hidden_states=True)
    if result.seconds is not None and result.rows:
        summary.cka_seconds = result.seconds
        summary.cka_images = result.images
        summary.cka_estimator = result.rows[0].estimator


def _offset(on_progress: ProgressCallback | None, done: int) -> ProgressCallback | None:
    """`on_progress` counting the images of the chunks before this one."""
    if on_progress is None or not done:
        return on_progress
    return lambda images, summary: on_progress(done + images, summary)


def _engine(name: str) -> Engine:
    """The run function of clipshift.engines.<name>, imported when it runs: an engine imports
    the stages, and with them torch (about 5 s here); the ray engine imports Ray as it starts."""

    def run(job: IngestJob) -> None:
        importlib.import_module(f".engines.{name}", __package__).run(job)

    return run


Engine = Callable[[IngestJob], None]
# --engine: each runs an IngestJob to completion, filling in its summary
ENGINES: dict[str, Engine] = {"local": _engine("local"), "ray": _engine("ray")}


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
    if workers < 0:
        raise ClipshiftError(
            f"--workers {workers}: use 0 or more (0 runs the CPU stages in this process)"
        )
    check_precision(precision)


def _held_run(db: str | Path, run_id: str) -> dict | None:
    """The `runs` row of `run_id` in the store at `db`, or None: also where there is no store
    yet, or one that only opens for writing (it needs a migration), so the model loads."""
    try:
        store = Store.open(db)
    except ClipshiftError:
        return None
    try:
        return _stored_run(store, run_id)
    finally:
        store.close()


def _stored_run(store: Store, run_id: str) -> dict | None:
    """The store's `runs` row of `run_id`, or None."""
    rows = store.dataset("runs").to_table(filter=matches(run_id=run_id)).to_pylist()
    return rows[0] if rows else None


def _keep_pixels(
    store: Store | None, run_id: str, files: list, already: set[str], keep_pixels: int
) -> list[bool]:
    """Which files keep their PNG pixels: --keep-pixels N counts the run's images, so those
    it already holds with pixels use up N, and a file it already holds under that path (to
    be skipped) takes none of what is left. An image the run holds under another path is
    skipped all the same: the run never keeps pixels for more than N images. The store is
    read only where the run holds images (`already`)."""
    if keep_pixels < 0:
        return [True] * len(files)
    left = keep_pixels
    held_paths: set[str] = set()
    table = store.variants_table_of(run_id) if already else None
    if table is not None:
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
