"""The local engine: the stages in this process (the CPU stages in a thread beside the model,
or in worker processes), in discovery order. A batch is written in one commit; an image is
stored when, and only when, all its variant rows are."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..stages import (
    EncodeError,
    Failure,
    Prepared,
    finish_batch,
    image_rows,
    prepare_image,
    start_batch,
    variant_rows,
)
from .job import IngestJob, Triage

if TYPE_CHECKING:
    from ..encoder import Pending
    from ..stages import PrepareSettings
    from ..workers import PreparePool

T = TypeVar("T")


def run(job: IngestJob) -> None:
    """Run `job` here, filling in job.summary."""
    triage = Triage(job.summary, held_labels=job.held_labels)
    writer = _Writer(job, triage)
    prepared = job.prepared or prepare_ahead(
        job.files, job.settings, job.keep, job.already, job.pool, 2 * job.batch_size
    )
    # closed (its thread stopped) before the caller closes the pool, whatever ends the loop
    with contextlib.closing(prepared):
        for done, item in enumerate(prepared, start=1):
            outcome = None if isinstance(item, Prepared) else item
            if triage.keeps(item.path, item.image_id, outcome, item.timings):
                writer.batch.append(item)
                if len(writer.batch) >= job.batch_size:
                    writer.flush()
                    job.progress(done)
    writer.flush(last=True)
    if job.pool is not None:
        job.summary.retried = job.pool.retried


def prepare_ahead(
    files: list,
    settings: PrepareSettings,
    keep: list[bool],
    skip: Collection[str],
    pool: PreparePool | None,
    depth: int,
) -> InBackground:
    """`prepare_image` of each file, in discovery order, on a thread of its own (in `pool`'s
    worker processes, or on that thread itself), started now and kept up to `depth` images
    ahead of the consumer: a batch's worth and more prepared while the model runs on the
    current one, or loads. Close it before closing the pool."""
    if pool is not None:
        pool.set_skip(skip)
        items = pool.imap(files, keep)
    else:
        items = (prepare_image(path, settings, keep[i], skip) for i, path in enumerate(files))
    return InBackground(items, depth)


class _Writer:
    """Encodes and writes the batches: the batch whose forward pass is queued on the device
    is written after the next batch's forward has been queued, so an accelerator never waits
    on a write."""

    def __init__(self, job: IngestJob, triage: Triage):
        self.job = job
        self.triage = triage
        self.batch: list[Prepared] = []
        self.in_flight: tuple[list[Prepared], Pending] | None = None

    def timed(self, stage: str, work: Callable[[], T]) -> T:
        clock = time.perf_counter()
        try:
            return work()
        finally:
            self.job.summary.timings[stage] += time.perf_counter() - clock

    def flush(self, last: bool = False) -> None:
        """Queue the forward pass of the batch gathered, write the one queued before (with
        `last`, this one too) and record the failures so far."""
        batch, started_now = self.batch, None
        if batch:
            encoder = self.job.encoder()
            try:
                started_now = (batch, self.timed("encode", lambda: start_batch(encoder, batch)))
            except EncodeError as exc:
                self._failed(batch, exc)
        if self.in_flight:
            self._write(*self.in_flight)
        self.in_flight = started_now
        if last and self.in_flight:
            self._write(*self.in_flight)
            self.in_flight = None
        self.job.record_failures(self.triage.take_failures())
        self.batch = []

    def _write(self, batch: list[Prepared], pending: Pending) -> None:
        job = self.job
        encoder = job.encoder()
        try:
            encoded = self.timed("encode", lambda: finish_batch(encoder, pending))
        except EncodeError as exc:
            self._failed(batch, exc)
            return
        clock = time.perf_counter()
        variants = variant_rows(job.run_id, batch, encoded, encoder.embedding_dim)
        written = job.store.write_batch(job.run_id, image_rows(batch), variants)
        job.count_written(len(batch), [p.path for p in batch if p.image_id in written])
        job.summary.timings["write"] += time.perf_counter() - clock

    def _failed(self, batch: list[Prepared], exc: EncodeError) -> None:
        self.triage.failures.extend(Failure(p.path, "encode", str(exc), p.image_id) for p in batch)


class InBackground(Iterator[T]):
    """Iterates `items` on a thread of its own, started at once, up to `depth` items ahead of
    the consumer.

    The CPU stages of the next batch then overlap the model's forward pass of this one (numpy,
    OpenCV and torch release the GIL). An exception on the thread is raised in the consumer;
    `close` stops the thread, whether the consumer has started or not.
    """

    _finished = object()

    def __init__(self, items: Iterator[T], depth: int):
        self._channel: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(items,), name="clipshift-prepare", daemon=True
        )
        self._thread.start()

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._offer(_Raised(exc))
        self._offer(self._finished)

    def __next__(self) -> T:
        item = self._channel.get() if not self._stop.is_set() else self._finished
        if item is self._finished:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Raised):
            raise item.exception
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Raised:
    exception: BaseException
