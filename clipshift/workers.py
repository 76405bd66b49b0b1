"""A pool of worker processes that run the per-image CPU stages (`stages.prepare_image`).

The main process keeps the model and the store; workers read, decode, augment, measure and
PNG-encode. Results come back in discovery order whatever worker finished first.

How, and why (figures in docs/ingest.md, from benchmarks/ingest.py):
- Workers are fresh interpreters (`python -m clipshift.workers`), started with subprocess: the
  main process has loaded torch and its OpenMP threads by then, and a fork of a threaded
  process can deadlock; multiprocessing's spawn would also re-import the parent's main script
  (the `clipshift` command imports lance, ~1.2 s and tens of MB per worker). A worker imports
  only numpy, PIL, albumentations and clipshift's CPU stages, never torch.
- The ten variants of an image (1.5 MB at 224 x 224) come back through shared memory, one
  slot per task in flight: pickled through a pipe they cost the main process 8-13 ms per image
  here, through a shared-memory slot 0.35 ms. Everything else (metrics, parameters, PNGs)
  is pickled over a socket pair, one per worker.
- The shared memory is a nameless file (memfd; an unlinked temporary file elsewhere) whose
  descriptor the workers inherit, not a named `multiprocessing.shared_memory` segment: a named
  segment outlives a main process killed with kill -9 until Python's resource tracker unlinks
  it (printing "leaked shared_memory" on every such kill), and a worker still starting up then
  fails to attach it (a FileNotFoundError traceback). The kernel frees a nameless file with
  its last descriptor, whoever dies first.
- A worker that dies (segfault, OOM kill, kill -9) is replaced; the images it held are retried
  once, alone on a worker, then recorded as failed at stage "worker". A worker that hangs
  (returns nothing for HANG_SECONDS while the main process waits on it) is killed and
  handled the same way. Ctrl-C and errors in
  the main process close the pool: workers ignore SIGINT (the main process decides), are
  terminated by `close`, and exit by themselves, quietly, on EOF of their socket if the main
  process dies without closing it (kill -9), be it while they start up or mid-run.
"""

from __future__ import annotations

import collections
import contextlib
import math
import mmap
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import ClipshiftError
from .sources import ObjectFile

if TYPE_CHECKING:
    from .datasets import Sample

# Tasks each worker holds at once: one in work, one queued, so it never waits for the main
# process between images.
TASKS_PER_WORKER = 2
# A worker that dies this many times in a row without returning anything means workers cannot
# start here at all (a broken install); fail rather than respawn forever.
MAX_FRUITLESS_STARTS = 3
ATTEMPTS = 2  # the first try and one retry
# A worker that holds tasks and returns nothing for this long, while the main process waits
# on it, is taken to hang (a decoder in an endless loop) and is killed, like one that died.
# 300 s is a hundred times the slowest image tried here: a 100-megapixel PNG through the 84
# variants of the paper and corruptions suites took 3.2 s (as a JPEG, 0.6 s).
HANG_SECONDS = 300.0
# a worker's first message, once its stages are imported and warmed up (never a pickled result)
READY = b"ready"
# The pool is the parallelism: each worker runs its libraries on one thread. Left to
# themselves, OpenBLAS (the pixel metrics' grey conversion) and OpenCV (the augmentations)
# start a thread per core in every worker, and N workers beside the model's threads contend
# for the cores.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# What the default --workers weighs (`default_workers`), from benchmarks/ingest.py on this
# 2-core machine. The CPU stages of one model input (one variant of one image): one worker
# prepared 40.6 images of 10 variants a second, 2.5 ms each; the 75 ImageNet-C variants of an
# image take 186 ms, as much per variant.
PREPARE_SECONDS_PER_INPUT = 0.0025
# fp32 GFLOP a second that one core gives the model's forward: the full-size ViT-B/32
# (`inference_gflop`: 8.8 GFLOP at 224 px) ran 16.5 inputs/s on 2 cores, 73 per core.
CPU_GFLOPS_PER_CORE = 70.0


def available_cores() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(
    device: str, cores: int, model_seconds_per_image: float | None, cpu_seconds_per_image: float
) -> int:
    """The default --workers: as many worker processes as the CPU stages' share of the work
    needs, and no more, since each takes a core from whatever else runs on the CPU.

    `model_seconds_per_image` and `cpu_seconds_per_image` are core-seconds per image (all its
    variants) of the model's forward on the CPU and of the CPU stages. Where the model runs
    elsewhere (`device` not "cpu", or `model_seconds_per_image` None) the CPU stages are the
    CPU's whole job: one worker per core. On the CPU, the model and the CPU stages share the
    cores: the workers get the stages' share of them, rounded up, and 1 (the stages in a thread
    of this process, no process at all) where that share is under one core. Measured with
    `--workers 2` on 2 cores: the full-size ViT-B/32, whose forward is 98% of the work, reached
    0.79-0.98 of its bare forward, the workers' start-up and idle cores taken from the model;
    the tiny CLIP, whose forward is a third of it, ran x1.34 faster than with 1.
    """
    cores = max(1, cores)
    if device != "cpu" or model_seconds_per_image is None:
        return cores
    work = model_seconds_per_image + cpu_seconds_per_image
    share = cpu_seconds_per_image / work if work > 0 else 1.0
    # a share within rounding of a whole number of cores is that number
    return max(1, min(cores, math.ceil(cores * share - 1e-9)))


def inference_gflop(vision_config: dict, image_size: int) -> float:
    """The forward's GFLOP per input of a ViT vision tower, from its config.json section
    (missing keys take ViT-B/16's values): per layer, the projections and the MLP (2 FLOP a
    multiply-add) and the attention's two token-by-token products; then the patch embedding.
    The text tower does not run per image."""
    width = vision_config.get("hidden_size", 768)
    mlp = vision_config.get("intermediate_size", 4 * width)
    layers = vision_config.get("num_hidden_layers", 12)
    patch = vision_config.get("patch_size", 16)
    tokens = (image_size // patch) ** 2 + 1
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    embedding = 2 * tokens * width * 3 * patch * patch
    return (layers * per_layer + embedding) / 1e9


# FLOP per cycle and core of the widest fp32 multiply-add units a CPU's flags (as
# /proc/cpuinfo names them) show, two units a core as on Xeon Scalable, Zen 2-4 and recent
# desktop cores (a part with one 512-bit unit has half): lanes x 2 (multiply and add) x 2 units
FP32_FLOP_PER_CYCLE = (("avx512f", "AVX-512", 64), ("fma", "AVX2/FMA", 32), ("sse2", "SSE2", 16))
# bf16: AMX's tile unit, 1024 bf16 FLOP a cycle and core (Intel's figure for Sapphire Rapids);
# AVX512-BF16's dot product, 16 lanes x 2 pairs x 2 FLOP x 2 units
BF16_FLOP_PER_CYCLE = (("amx_bf16", "AMX", 1024), ("avx512_bf16", "AVX512-BF16", 128))


@dataclass(frozen=True)
class CpuPeak:
    """A CPU's peak arithmetic rate, cores x clock x FLOP per cycle, from its flags
    (`cpu_peak`): what benchmarks/ingest.py sets the model's achieved GFLOP/s against."""

    cores: int
    ghz: float
    fp32_unit: str
    fp32_flop_per_cycle: int
    bf16_unit: str | None  # None: no native bf16 (it is converted to fp32 and back)
    bf16_flop_per_cycle: int | None

    @property
    def fp32_gflops(self) -> float:
        return self.cores * self.ghz * self.fp32_flop_per_cycle

    @property
    def bf16_gflops(self) -> float | None:
        if self.bf16_flop_per_cycle is None:
            return None
        return self.cores * self.ghz * self.bf16_flop_per_cycle


def cpu_peak(flags: Collection[str], cores: int, ghz: float) -> CpuPeak:
    """The peak of `cores` cores at `ghz` with `flags` (/proc/cpuinfo's names). The clock is
    what the caller gives: /proc/cpuinfo's "cpu MHz" is the nominal one in a VM, and a core
    may run faster (turbo), so an achieved rate can come near or past this peak."""
    fp32 = next((unit for unit in FP32_FLOP_PER_CYCLE if unit[0] in flags), ("", "scalar", 2))
    bf16 = next((unit for unit in BF16_FLOP_PER_CYCLE if unit[0] in flags), (None, None, None))
    return CpuPeak(cores, ghz, fp32[1], fp32[2], bf16[1], bf16[2])


@dataclass
class _Task:
    index: int
    path: str | ObjectFile | Sample
    keep_pixels: bool
    attempts: int = 0
    slot: int | None = None


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    tasks: dict[int, _Task] = field(default_factory=dict)
    exclusive: bool = False  # holds a retried task: nothing else goes to it meanwhile
    returned: bool = False  # has returned at least one result
    dead: bool = False  # a send failed: its EOF is yet to be handled
    # has imported its stages: start-up (albumentations and OpenCV, 1-2 s, over 5 s on a loaded
    # machine) is not a hang
    started: bool = False
    silent: float = 0.0  # seconds the main process has waited on it in vain, holding tasks
    hung: bool = False  # killed for hanging


class PreparePool:
    """`workers` processes running `prepare(path, settings, keep_pixels, skip)` per image.

    `prepare` must be importable by name in a fresh interpreter (a module-level function);
    `settings` must pickle. `pixel_shape` is the shape of `Prepared.pixels`, which travels
    through shared memory. The workers start at once and each runs `warm_up(settings)` (the
    imports and pipelines of the stages, 1-2 s) before it says it is ready, so that their
    start-up overlaps the main process loading the model; `skip` can be given later with
    `set_skip`. `grow` adds workers, up to `capacity` (default `workers`), for a count decided
    once the device is known.
    """

    def __init__(
        self,
        workers: int,
        settings: Any,
        pixel_shape: tuple[int, ...],
        prepare: Callable | None = None,
        warm_up: Callable | None = None,
        hang_seconds: float = HANG_SECONDS,
        capacity: int | None = None,
    ):
        if prepare is None:
            from .stages import augmenter_for as warm_up
            from .stages import prepare_image as prepare
        self.size = 0
        self.hang_seconds = hang_seconds
        self.retried = 0  # images retried after their worker died
        self.worker_deaths = 0
        self._payload = pickle.dumps((prepare, warm_up, settings), protocol=5)
        self._skip = pickle.dumps(("skip", frozenset()))
        self._shape = tuple(pixel_shape)
        self._slot_bytes = int(np.prod(self._shape))
        self._capacity = max(workers, capacity or 0)
        # the whole capacity's slots in one file, sized now (the workers map it as they start)
        # but touched only as slots are handed out: a slot per task of the workers running
        self._shm_fd, self._shm = _shared_file(
            max(1, self._capacity * TASKS_PER_WORKER * self._slot_bytes)
        )
        self._free_slots: collections.deque[int] = collections.deque()
        self._workers: list[_Worker] = []
        self._fruitless = 0
        self._closed = False
        try:
            self.grow(workers)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> _Worker:
        parent, child = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "clipshift.workers", str(child.fileno())],
                pass_fds=[child.fileno(), self._shm_fd],
                stdin=subprocess.DEVNULL,
                env={
                    **os.environ,
                    **SINGLE_THREADED,
                    "PYTHONPATH": os.pathsep.join(p or "." for p in sys.path),
                },
            )
        finally:
            child.close()
        conn = Connection(parent.detach())
        conn.send_bytes(pickle.dumps((self._shm_fd, self._shape, TASKS_PER_WORKER)))
        conn.send_bytes(self._payload)
        conn.send_bytes(self._skip)
        return _Worker(process, conn)

    def grow(self, workers: int) -> None:
        """Run `workers` workers (at most the capacity), starting those missing."""
        workers = min(workers, self._capacity)
        while self.size < workers:
            self._free_slots.extend(
                range(self.size * TASKS_PER_WORKER, (self.size + 1) * TASKS_PER_WORKER)
            )
            self._workers.append(self._start())
            self.size += 1

    def set_skip(self, skip: Collection[str]) -> None:
        """The image_ids to skip (already stored): workers hash, then skip them unprocessed."""
        self._skip = pickle.dumps(("skip", frozenset(skip)), protocol=5)
        for worker in self._workers:
            try:
                worker.conn.send_bytes(self._skip)
            except OSError:
                worker.dead = True  # replaced (with this skip set) when its EOF is read

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker and free the shared memory.

        Workers hold nothing worth a polite exit (they only read files and fill slots), and
        one may still be importing: SIGTERM at once, SIGKILL if it is not gone in 2 s.
        """
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.conn.close()
            if worker.process.poll() is None:
                worker.process.terminate()
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self._workers = []
        self._shm.close()
        os.close(self._shm_fd)

    def __enter__(self) -> PreparePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the work --------------------------------------------------------------------------

    def imap(
        self, paths: Sequence[str | Path | ObjectFile], keep_pixels: Sequence[bool]
    ) -> Iterator[Any]:
        """prepare() of every path, in the order given; at most `window` results ahead."""
        window = self.size * TASKS_PER_WORKER * 2
        todo = collections.deque(
            # an object in object storage travels with its storage options, a dataset's
            # sample (clipshift.datasets.Sample) with its bytes and label
            _Task(i, str(p) if isinstance(p, os.PathLike) else p, bool(k))
            for i, (p, k) in enumerate(zip(paths, keep_pixels, strict=True))
        )
        retry: collections.deque[_Task] = collections.deque()
        done: dict[int, Any] = {}
        next_out = 0
        while next_out < len(paths) and not self._closed:
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if next_out >= len(paths):
                break
            self._dispatch(todo, retry, limit=next_out + window)
            # a timeout, so that a closed pool ends this loop even while a worker is busy
            waited = time.perf_counter()
            ready = wait([w.conn for w in self._workers], timeout=0.5)
            self._watch(ready, time.perf_counter() - waited)
            for worker in [w for w in self._workers if w.conn in ready]:
                clock = time.perf_counter()
                try:
                    message = worker.conn.recv_bytes()
                except (EOFError, OSError):
                    self._replace(worker, retry, done)
                    continue
                if message == READY:
                    worker.started = True
                    continue
                index, result = pickle.loads(message)
                task = worker.tasks.pop(index)
                if getattr(result, "pixels", None) is not None and result.pixels.size == 0:
                    result.pixels = self._slot(task.slot).copy()
                self._free_slots.append(task.slot)
                result.timings["transfer"] = time.perf_counter() - clock
                worker.returned, worker.exclusive = True, False
                self._fruitless = 0
                done[index] = result

    def _watch(self, ready: list, waited: float) -> None:
        """Count the time each busy worker let the main process wait; kill the hung ones (their
        EOF then comes through `_replace`, as for a worker that died). Only time spent waiting
        counts: a worker blocked on a full socket while the model ran is not hung."""
        for worker in self._workers:
            if worker.conn in ready or not worker.tasks or not worker.started:
                worker.silent = 0.0
                continue
            worker.silent += waited
            if worker.silent > self.hang_seconds and not worker.hung:
                worker.hung = True
                worker.process.kill()

    def _dispatch(self, todo: collections.deque, retry: collections.deque, limit: int) -> None:
        # a retried task runs alone on an idle worker, so that an image which kills its worker
        # again cannot take an innocent image with it
        for worker in self._workers:
            if retry and not worker.tasks and not worker.dead:
                worker.exclusive = self._send(worker, retry)
        for worker in self._workers:
            while (
                not worker.exclusive
                and not worker.dead
                and len(worker.tasks) < TASKS_PER_WORKER
                and todo
                and todo[0].index < limit
            ):
                self._send(worker, todo)

    def _send(self, worker: _Worker, queue: collections.deque) -> bool:
        """Hand the first task of `queue` to `worker`; a worker found dead keeps it queued (the
        death is handled when its socket reports EOF)."""
        task = queue[0]
        message = ("task", task.index, task.path, task.keep_pixels, self._free_slots[0])
        try:
            worker.conn.send_bytes(pickle.dumps(message))
        except OSError:
            worker.dead = True
            return False
        queue.popleft()
        task.slot = self._free_slots.popleft()
        task.attempts += 1
        worker.tasks[task.index] = task
        return True

    def _replace(self, worker: _Worker, retry: collections.deque, done: dict[int, Any]) -> None:
        from .stages import Failure

        if self._closed:
            return
        code = worker.process.wait()
        worker.conn.close()
        self.worker_deaths += 1
        self._fruitless = 0 if worker.returned else self._fruitless + 1
        ending = (
            f"stopped answering for {self.hang_seconds:g} s and was killed, on the last of "
            f"{ATTEMPTS} attempts"
            if worker.hung
            else f"died {ATTEMPTS} times (last exit status {_describe_exit(code)})"
        )
        for task in sorted(worker.tasks.values(), key=lambda t: t.index):
            self._free_slots.append(task.slot)
            if task.attempts < ATTEMPTS:
                self.retried += 1
                retry.append(task)
            else:
                done[task.index] = Failure(
                    str(task.path), "worker", f"the worker process preparing this image {ending}"
                )
        self._workers.remove(worker)
        if self._fruitless >= MAX_FRUITLESS_STARTS:
            raise ClipshiftError(
                f"ingest worker processes die before preparing any image (exit status "
                f"{_describe_exit(code)}); try --workers 0 to see the error in this process"
            )
        self._workers.append(self._start())

    def _slot(self, slot: int) -> np.ndarray:
        start = slot * self._slot_bytes
        return np.ndarray(self._shape, np.uint8, self._shm, offset=start)


def _shared_file(size: int) -> tuple[int, mmap.mmap]:
    """A nameless file of `size` bytes, mapped shared: its descriptor (for the workers to
    inherit) and the mapping."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("clipshift-pixels")
    else:
        with tempfile.TemporaryFile() as file:  # unlinked at once where memfd is missing
            fd = os.dup(file.fileno())
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"{code}, {signal.Signals(-code).name}"
        except ValueError:
            return str(code)
    return str(code)


# -- the worker side -----------------------------------------------------------------------


def _serve(fd: int) -> None:
    """A worker's loop: tasks in, results out, until the main process closes the socket (or
    dies: the kernel closes its end, and this worker reads EOF)."""
    # Ctrl-C reaches the whole process group; the main process decides, and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)  # see SINGLE_THREADED
    conn = Connection(fd)
    try:
        shm_fd, shape, _ = pickle.loads(conn.recv_bytes())
        slot_bytes = int(np.prod(shape))
        shm = mmap.mmap(shm_fd, os.fstat(shm_fd).st_size)
        prepare, warm_up, settings = pickle.loads(conn.recv_bytes())
        if warm_up is not None:
            # an error here is met again, and reported per image, by `prepare`
            with contextlib.suppress(Exception):
                warm_up(settings)
        conn.send_bytes(READY)
    except (EOFError, OSError):
        return  # the main process went away while this worker started
    # A thread keeps reading the socket while this worker prepares or sends a result: a task
    # that carries a dataset sample's bytes (hundreds of KB) fills the socket's buffer, and the
    # main process, blocked sending it, would never read the result this worker is blocked
    # sending (a 6-sample shard hung --workers 2 that way).
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, inbox), daemon=True).start()
    skip: frozenset[str] = frozenset()
    while True:
        raw = inbox.get()
        if raw is None:
            break
        message = pickle.loads(raw)
        if message[0] == "skip":
            skip = message[1]
            continue
        _, index, path, keep, slot = message
        result = prepare(path, settings, keep, skip)
        pixels = getattr(result, "pixels", None)
        if isinstance(pixels, np.ndarray) and pixels.shape == tuple(shape):
            target = np.ndarray(shape, np.uint8, shm, offset=slot * slot_bytes)
            np.copyto(target, pixels)
            result.pixels = np.empty((0,), np.uint8)
            del target
        try:
            conn.send_bytes(pickle.dumps((index, result), protocol=5))
        except (BrokenPipeError, OSError):
            break
    shm.close()


def _receive(conn: Connection, inbox: queue.SimpleQueue) -> None:
    """Every message from the main process into `inbox`, then None at its end (EOF)."""
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)


if __name__ == "__main__":
    # albumentations imports torch only for its optional ToTensor transforms (and catches the
    # ImportError); blocking it saves each worker ~2 s of start-up and ~300 MB.
    sys.modules.setdefault("torch", None)
    _serve(int(sys.argv[1]))
