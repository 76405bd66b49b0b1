"""The contract every ingest engine keeps: the job it is handed, the summary it fills in, and
one triage of the prepared images, so that every engine skips, deduplicates, fails and keeps
the same files, counts them alike and records their failures alike.

Light: the stages (and with them torch) are imported by the engines, not here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..defaults import PRECISION, STAGES

if TYPE_CHECKING:
    from ..encoder import Encoder
    from ..hub import ResolvedModel
    from ..stages import Duplicate, Failure, Prepared, PrepareSettings, Skipped
    from ..store import Store
    from ..workers import PreparePool


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
    # the local engine's worker processes of the CPU stages (0: a thread of this process);
    # None under an engine that schedules them itself
    workers: int | None = 0
    precision: str = PRECISION
    retried: int = 0  # images retried after their worker process died
    # seconds spent in each stage (STAGES); the per-image CPU stages are summed over images
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # whether this process loaded the model: a rerun with nothing new to encode does not
    model_loaded: bool = False
    # stored images that had no label and got the one this ingest's dataset gives them
    labelled: int = 0
    # a one-line suggestion for the next run (ingest.bf16_hint), or None
    hint: str | None = None
    # --hidden-states: the run's CKA computed at the end and kept in layer_cka (clipshift.cka):
    # its seconds, images and estimator; None where the store already held it for these rows
    cka_seconds: float | None = None
    cka_images: int = 0
    cka_estimator: str | None = None

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


ProgressCallback = Callable[[int, IngestSummary], None]


@dataclass
class IngestJob:
    """One run handed to an engine: what to ingest, where, and the summary the engine fills
    in. An engine calls clipshift.stages, never its own version of a stage."""

    files: list
    keep: list[bool]  # keep the PNG pixels of files[i]
    settings: PrepareSettings
    store: Store
    model: ResolvedModel
    device: str
    precision: str
    run_id: str
    embedding_dim: int
    batch_size: int
    already: set[str]  # image_ids this run holds: skipped
    failed_before: set[str]  # paths with an `errors` row, cleared once stored
    summary: IngestSummary
    started: float
    on_progress: ProgressCallback | None
    # the local engine: the model, loaded on the first call (a rerun with nothing new never
    # makes it), and the worker processes of the CPU stages (None: a thread of this process)
    encoder: Callable[[], Encoder] | None = None
    pool: PreparePool | None = None
    # the local engine: these files' prepared images, already under way (started while the
    # model loaded; engines.local.prepare_ahead with this job's keep and already), or None
    prepared: Iterator | None = None
    # the Ray engine: model actors (None: one per GPU of the cluster, else one)
    actors: int | None = None
    # image_id -> (label, label_index) of the images this run held already, as the dataset
    # gives them: the ingest fills them into `images` rows stored without a label
    held_labels: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    def record_failures(self, failures: list[Failure]) -> None:
        record_failures(self.store, self.summary, failures)

    def count_written(self, offered: int, written: list[str], left: int = 0) -> None:
        """Count a write of `offered` images: the paths `written` are stored now, `left` are
        left to a rerun, and the rest another writer had stored. A stored file's `errors`
        rows from an earlier attempt are cleared."""
        self.summary.stored += len(written)
        self.summary.skipped += offered - len(written) - left
        self.store.clear_errors(self.run_id, [p for p in written if p in self.failed_before])

    def progress(self, done: int) -> None:
        if self.on_progress:
            self.summary.seconds = time.perf_counter() - self.started
            self.on_progress(done, self.summary)


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


@dataclass
class Triage:
    """What becomes of each prepared image, decided in discovery order: skipped (the run holds
    it), a duplicate (the bytes of an earlier file, which is the one stored), failed, or kept
    for the model. It counts each in the summary; failures wait in `failures` until the
    engine records them with its next write."""

    summary: IngestSummary
    failures: list[Failure] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # image_id -> first file with its bytes
    held_labels: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # IngestJob's

    def keeps(
        self,
        path: str,
        image_id: str | None,
        outcome: Prepared | Failure | Skipped | None,
        timings: dict[str, float],
    ) -> bool:
        """Sort one file's `outcome` of `stages.prepare_image` (None: prepared, its pixels
        held elsewhere); True when it goes to the model."""
        from ..stages import Duplicate, Failure, Skipped

        for stage, seconds in timings.items():
            self.summary.timings[stage] = self.summary.timings.get(stage, 0.0) + seconds
        if isinstance(outcome, Skipped):
            self.summary.skipped += 1
            if outcome.label is not None:
                self.held_labels[outcome.image_id] = (outcome.label, outcome.label_index)
            return False
        if image_id is not None and image_id in self.seen:
            self.summary.duplicate_files.append(Duplicate(path, self.seen[image_id]))
            return False
        if image_id is not None:
            self.seen[image_id] = path
        if isinstance(outcome, Failure):
            self.failures.append(outcome)
            return False
        return True

    def take_failures(self) -> list[Failure]:
        """The failures not recorded yet, handed over once."""
        failures, self.failures = self.failures, []
        return failures
