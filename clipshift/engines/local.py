"""The local engine: the stages in this process (the CPU stages in a thread beside the model,
or in worker processes), in discovery order. A batch is written in one commit; an image is
stored when, and only when, all its variant rows are."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
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

T = TypeVar("T")


def run(job: IngestJob) -> None:
    """Run `job` here, filling in job.summary."""
    triage = Triage(job.summary, held_labels=job.held_labels)
    writer = _Writer(job, triage)
    pool = job.pool
    if pool is not None:
        pool.set_skip(job.already)
        items = pool.imap(job.files, job.keep)
    else:
        items = (
            prepare_image(path, job.settings, job.keep[i], job.already)
            for i, path in enumerate(job.files)
        )
    # a batch's worth and more prepared while the model runs on the current one; closed
    # (its thread stopped) before the caller closes the pool, whatever ends the loop
    with contextlib.closing(in_background(items, depth=2 * job.batch_size)) as prepared:
        for done, item in enumerate(prepared, start=1):
            outcome = None if isinstance(item, Prepared) else item
            if triage.keeps(item.path, item.image_id, outcome, item.timings):
                writer.batch.append(item)
                if len(writer.batch) >= job.batch_size:
                    writer.flush()
                    job.progress(done)
    writer.flush(last=True)
    if pool is not None:
        job.summary.retried = pool.retried


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
