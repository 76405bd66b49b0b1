"""The Ray engine: one ingest spread over the machines of a Ray cluster.

Only the orchestration lives here; every stage is clipshift.stages, the same functions the
local engine calls:

- CPU stages (read, decode, augment, pixel metrics, PNG) run as Ray tasks, one task per batch
  of files (`stages.prepare_image` per file). A task returns a small summary of each file to
  the driver and leaves the pixels in Ray's object store.
- The model runs in a pool of actors: one per GPU (`num_gpus=1`), or `actors` CPU actors.
  An actor encodes a batch (`stages.encode_batch`), builds its rows (`stages.image_rows`,
  `stages.variant_rows`) and writes them as Lance fragments straight into the store's tables;
  only the fragments' metadata goes back to the driver.
- The driver commits the fragments as they arrive, COMMIT_GROUP batches per commit (images
  first, then variants, as the local engine does). A crash loses at most the uncommitted group
  (its fragment files stay unreferenced); a rerun of the same command resumes, idempotent by
  (run_id, image_id) since tasks skip what the run already holds.
- Duplicate files and failures are resolved by the driver in discovery order, by the triage
  the local engine uses too (clipshift.engines.job), and failures are recorded in `errors`
  alike.

Ray is imported only when this engine runs, and this module only when `--engine ray` is asked
for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ClipshiftError, first_line
from ..procs import command_line, descendants, stat_field
from ..stages import (
    EncodeError,
    Failure,
    Prepared,
    PrepareSettings,
    Skipped,
    encode_batch,
    image_rows,
    prepare_image,
    variant_rows,
)
from ..store import variants_table_name
from .job import IngestJob, Triage

if TYPE_CHECKING:
    from ..hub import ResolvedModel
    from ..location import Location

# Batches per driver commit: a crash loses at most this many batches' work; fewer commits keep
# the store's fragment count (and its compaction) down.
COMMIT_GROUP = 4
# Batches an actor holds at once: one encoding, one queued, so the model never waits on Ray.
ACTOR_QUEUE = 2
# Object store of a local cluster started here: enough for ~40 in-flight batches of 8 images.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
# Passed to every worker: the driver's environment for the stages, not the cluster's defaults.
WORKER_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "NO_ALBUMENTATIONS_UPDATE", "TOKENIZERS_PARALLELISM")
# The environment of the processes of a local cluster started here (they inherit the driver's).
LOCAL_CLUSTER_ENV = {
    # Every process takes 127.0.0.1 as its node's address. On Linux Ray otherwise replaces
    # 127.0.0.1 by the machine's network address, and binds there: a cluster of this machine
    # alone has no use for the network. Read by Ray when imported, hence set before that.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
# The node agents Ray starts whatever include_dashboard says. A driver killed with kill -9 takes
# its GCS and raylet with it (Ray's kernel fate-sharing), but these two notice the dead raylet,
# then try for 60 s (a fixed timeout of Ray's) to report it to the dead GCS before they exit:
# they outlived the driver by 61 s here. A watchdog process kills them when the driver dies.
NODE_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
# The watchdog: reads its stdin, a pipe from the driver, until EOF (the driver is gone, however
# it ended), then kills the processes given as pid:start-time, those still the same process.
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
for arg in sys.argv[1:]:
    pid, started = arg.split(":")
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[19] == started:
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""
_watchdog: subprocess.Popen | None = None


def _import_ray():
    if not os.environ.get("RAY_ADDRESS"):
        for name, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise ClipshiftError(
            'the Ray engine needs Ray: pip install "clipshift[ray]" (or use --engine local)'
        ) from None
    return ray


def connect(ray) -> bool:
    """Join the cluster at RAY_ADDRESS (Ray's own convention) or start a local one; True when
    this call connected (and so must disconnect)."""
    if ray.is_initialized():
        return False
    import clipshift

    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    # the workers run the driver's clipshift, whatever version the nodes have installed
    runtime_env = {"py_modules": [str(Path(clipshift.__file__).parent)], "env_vars": env}
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {}
    if not address:
        # "local": a new cluster of this machine, never another one found running on it
        address = "local"
        kwargs = {
            "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
            # no web dashboard, nor its port: Ray starts only the head process that it needs
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",  # see LOCAL_CLUSTER_ENV
        }
    try:
        with warnings.catch_warnings():
            # Ray starts its processes by fork+exec: the child runs no Lance code
            warnings.filterwarnings("ignore", message="lancedb fork support")
            ray.init(
                address=address,
                runtime_env=runtime_env,
                logging_level="WARNING",
                log_to_driver=False,
                **kwargs,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClipshiftError(
            f"cannot reach the Ray cluster at {address}: {first_line(exc)}"
        ) from None
    if address == "local":
        _watch_agents()
    return True


def _watch_agents() -> None:
    """Start the watchdog (see NODE_AGENTS) over the agents of the local cluster just started;
    it replaces the one of a previous local cluster of this process (gone with its shutdown)."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.stdin.close()
        _watchdog.wait()
        _watchdog = None
    agents = [
        f"{pid}:{stat_field(pid, 19)}"
        for pid in descendants(os.getpid())
        if command_line(pid).startswith(NODE_AGENTS)
    ]
    if agents:
        _watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *agents],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of reach of the terminal's Ctrl-C: it waits for EOF
        )


@dataclass
class _FileResult:
    """What the driver learns of one file from a prepare task (no pixels)."""

    path: str
    image_id: str | None
    outcome: Prepared | Failure | Skipped | None  # None for a Prepared left in the store
    timings: dict[str, float]


def _prepare_batch(
    items: list[tuple[Any, bool]], settings: PrepareSettings, skip: frozenset
) -> tuple[list[_FileResult], list[Prepared]]:
    """A Ray task: the CPU stages of one batch of files."""
    results, prepared = [], []
    for path, keep in items:
        item = prepare_image(path, settings, keep, skip)
        if isinstance(item, Prepared):
            prepared.append(item)
            results.append(_FileResult(item.path, item.image_id, None, item.timings))
        else:
            results.append(_FileResult(item.path, item.image_id, item, item.timings))
    return results, prepared


@dataclass
class _BatchResult:
    """What an actor sends back: the fragments it wrote, or why the batch failed."""

    image_ids: list[str]
    paths: list[str]
    images: list = field(default_factory=list)  # lance FragmentMetadata
    variants: list = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class _Embedder:
    """A Ray actor: the model, and the writer of this actor's fragments."""

    def __init__(
        self,
        model: ResolvedModel,
        device: str,
        image_size: int,
        precision: str,
        run_id: str,
        store: Location,
        variants_table: str,
        hidden_states: bool = False,
    ):
        import lance

        from ..encoder import Encoder

        # the same Encoder as the local engine's, --hidden-states included: the rows are
        # the same whichever engine wrote them (tests/test_scale_out.py)
        self.encoder = Encoder(
            model,
            device=device,
            image_size=image_size,
            precision=precision,
            hidden_states=hidden_states,
        )
        self.run_id = run_id
        self.store = store
        self.images_uri = store.child("images.lance")
        # the run's own table, of its embedding width (created by ensure_run)
        self.variants_uri = store.child(f"{variants_table}.lance")
        self.images_schema = lance.dataset(
            self.images_uri, storage_options=store.storage_options
        ).schema

    def encode_and_write(
        self, batch: list[Prepared], keep_ids: list[str], new_image_ids: set[str]
    ) -> _BatchResult:
        import pyarrow as pa
        from lance.fragment import write_fragments

        order = {image_id: i for i, image_id in enumerate(keep_ids)}
        batch = sorted((p for p in batch if p.image_id in order), key=lambda p: order[p.image_id])
        result = _BatchResult([p.image_id for p in batch], [p.path for p in batch])
        clock = time.perf_counter()
        try:
            encoded = encode_batch(self.encoder, batch)
        except EncodeError as exc:
            result.failures = [Failure(p.path, "encode", str(exc), p.image_id) for p in batch]
            return result
        result.timings["encode"] = time.perf_counter() - clock
        clock = time.perf_counter()
        options = self.store.storage_options
        images = image_rows([p for p in batch if p.image_id in new_image_ids])
        if images.num_rows:
            images = pa.Table.from_arrays(
                [images.column(f.name) for f in self.images_schema], schema=self.images_schema
            )
            result.images = write_fragments(
                images, self.images_uri, self.images_schema, storage_options=options
            )
        variants = variant_rows(self.run_id, batch, encoded, self.encoder.embedding_dim)
        result.variants = write_fragments(
            variants, self.variants_uri, variants.schema, storage_options=options
        )
        result.timings["write"] = time.perf_counter() - clock
        return result


def run(job: IngestJob) -> None:
    """Run `job` on Ray, filling in job.summary; see the module docstring."""
    ray = _import_ray()
    clock = time.perf_counter()
    connected_here = connect(ray)
    try:
        job.summary.timings["ray_connect"] = time.perf_counter() - clock
        _run(ray, job, job.actors)
    finally:
        if connected_here:
            ray.shutdown()


def _run(ray, job: IngestJob, actors: int | None) -> None:
    if actors is not None and actors < 1:
        raise ClipshiftError(f"--actors {actors}: use 1 or more")
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if job.device in ("auto", "cuda") else 0
    embedder = ray.remote(_Embedder).options(
        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_restarts=1, max_task_retries=1
    )
    clock = time.perf_counter()
    location = job.store.location
    settings = job.settings
    variants_table = variants_table_name(job.embedding_dim)
    pool = [
        embedder.remote(
            job.model,
            job.device,
            settings.image_size,
            job.precision,
            job.run_id,
            location,
            variants_table,
            settings.hidden_states,
        )
        for _ in range(actors or gpus or 1)
    ]
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool])
        job.summary.timings["actor_start"] = time.perf_counter() - clock
        _pipeline(ray, job, pool, cpus=max(1, int(resources.get("CPU", 1))))
    finally:
        for actor in pool:  # also after an error: a shared cluster gets its CPUs and GPUs back
            ray.kill(actor)


def _pipeline(ray, job: IngestJob, pool: list, cpus: int) -> None:
    """Feed the prepare tasks, hand their batches to the actors, commit what comes back."""
    store, summary = job.store, job.summary
    timings = summary.timings
    prepare = ray.remote(num_cpus=1, num_returns=2)(_prepare_batch)
    skip_ref = ray.put(frozenset(job.already))
    known_images = set(
        store.dataset("images").to_table(columns=["image_id"]).column("image_id").to_pylist()
    )
    items = list(zip(job.files, job.keep, strict=True))
    pending = deque(items[i : i + job.batch_size] for i in range(0, len(items), job.batch_size))
    preparing: deque = deque()  # (files, results_ref, prepared_ref), in discovery order
    encoding: dict = {}  # result ref -> actor index
    load = [0] * len(pool)
    group: list[_BatchResult] = []
    triage = Triage(summary, held_labels=job.held_labels)
    done = 0
    waited = 0.0

    def commit() -> None:
        nonlocal group
        clock = time.perf_counter()
        written, left = store.commit_fragments(
            job.run_id, [(r.image_ids, r.images, r.variants) for r in group]
        )
        files = [pair for r in group for pair in zip(r.paths, r.image_ids, strict=True)]
        triage.failures.extend(
            Failure(path, "write", "another writer was storing this batch: rerun to store it", i)
            for path, i in files
            if i in left
        )
        job.count_written(len(files), [path for path, i in files if i in written], len(left))
        job.record_failures(triage.take_failures())
        timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - clock
        group = []
        job.progress(done)

    while pending or preparing or encoding:
        while pending and len(preparing) < 2 * cpus:
            files = pending.popleft()
            results_ref, prepared_ref = prepare.remote(files, job.settings, skip_ref)
            preparing.append((files, results_ref, prepared_ref))
        free = min(range(len(pool)), key=load.__getitem__)
        waiting = list(encoding)
        if preparing and load[free] < ACTOR_QUEUE:
            waiting.insert(0, preparing[0][1])
        clock = time.perf_counter()
        ready, _ = ray.wait(waiting, num_returns=1)
        waited += time.perf_counter() - clock
        ref = ready[0]
        if ref in encoding:
            load[encoding.pop(ref)] -= 1
            result = ray.get(ref)
            for stage, seconds in result.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            triage.failures.extend(result.failures)
            if result.variants:
                group.append(result)
            if len(group) >= COMMIT_GROUP:
                commit()
            continue
        files, _, prepared_ref = preparing.popleft()
        keep_ids = []
        for item in ray.get(ref):
            done += 1
            if triage.keeps(item.path, item.image_id, item.outcome, item.timings):
                keep_ids.append(item.image_id)
        if keep_ids:
            new_images = {i for i in keep_ids if i not in known_images}
            known_images.update(new_images)
            load[free] += 1
            encoding[pool[free].encode_and_write.remote(prepared_ref, keep_ids, new_images)] = free
    if group or triage.failures:
        commit()
    timings["driver_wait"] = waited
