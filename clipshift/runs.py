"""The run a command works on: `resolve_run` picks it from the store's `runs` table by
`--run ID | --model M`, and every command gets the same `Run`.

The runs table is read through Lance directly, not DuckDB: picking a run opens no variants
table and builds no view, so a command can name its run before any slow work.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import ClipshiftError
from .store import Store, variants_table_name

# the runs columns a Run carries
RUN_COLUMNS = (
    "run_id",
    "model",
    "model_revision",
    "family",
    "embedding_dim",
    "patch_grid",
    "num_layers",
    "image_size",
    "seed",
    "augmentations",
    "augmentation_hash",
    "clipshift_version",
    "created_at",
)


@dataclass(frozen=True)
class Run:
    """A row of the `runs` table, and how it was chosen."""

    run_id: str
    model: str
    model_revision: str | None
    family: str | None
    embedding_dim: int | None
    patch_grid: int | None
    num_layers: int | None
    image_size: int | None
    seed: int | None
    augmentations: str | None  # JSON: the perturbation definitions (suites.perturbations_of_run)
    augmentation_hash: str | None
    clipshift_version: str | None
    created_at: datetime | None  # in local time, as DuckDB shows a TIMESTAMPTZ
    # None when the choice was unambiguous, else one line saying which run was picked and how
    # to pick another (commands print it on stderr)
    selection_note: str | None = None

    @property
    def variants_table(self) -> str:
        """The `variants_<D>` table of the run's embedding width (store.variants_table_name)."""
        return variants_table_name(self.embedding_dim)

    def as_dict(self) -> dict:
        """The runs row as a dict, selection_note included (for JSON and dict consumers)."""
        return dataclasses.asdict(self)


def read_runs(store: Store) -> list[Run]:
    """Every run of the store, most recent first (then by run_id); none before an ingest."""
    if not store.has_table("runs"):
        return []
    rows = store.dataset("runs").to_table(columns=list(RUN_COLUMNS)).to_pylist()
    for row in rows:
        if row["created_at"] is not None:
            # the local time zone, as DuckDB's session shows a TIMESTAMPTZ (notes, the report)
            row["created_at"] = row["created_at"].astimezone()
    rows.sort(key=lambda r: r["run_id"])
    dated = [r for r in rows if r["created_at"] is not None]
    undated = [r for r in rows if r["created_at"] is None]  # last, as DuckDB sorts NULLs
    dated.sort(key=lambda r: r["created_at"], reverse=True)  # stable: ties stay by run_id
    return [Run(**row) for row in dated + undated]


def resolve_run(
    db: str | os.PathLike | Store, run: str | None = None, model: str | None = None
) -> Run:
    """The run a command works on, chosen by `--run ID | --model M`.

    `run` is a run_id or a unique prefix of one; `model` picks that model's most recent run.
    With neither, the only run, or the most recent one of several. `Run.selection_note` is
    None when the choice was unambiguous, else one line saying which run was picked and how to
    pick another. Raises ClipshiftError for an empty store, an unknown run or an unknown model.
    """
    store = db if isinstance(db, Store) else Store.open(db)
    rows = read_runs(store)
    if not rows:
        raise ClipshiftError("the store holds no runs yet: run `clipshift ingest IMAGES` first")
    listing = "; ".join(f"{r.run_id} ({r.model}, {_when(r)})" for r in rows)
    candidates = rows
    if run is not None:
        candidates = [r for r in rows if r.run_id == run] or [
            r for r in rows if r.run_id.startswith(run)
        ]
        if not candidates:
            raise ClipshiftError(f"no run {run!r} in the store; its runs: {listing}")
        if len(candidates) > 1:
            raise ClipshiftError(
                f"--run {run!r} matches {len(candidates)} runs: "
                + ", ".join(r.run_id for r in candidates)
                + "; give more of the run id"
            )
    if model is not None:
        # a local model folder is stored as its absolute path
        local = Path(model).expanduser()
        model = str(local.resolve()) if local.is_dir() else model
        matching = [r for r in candidates if r.model == model]
        if not matching:
            if run is not None:
                raise ClipshiftError(
                    f"run {candidates[0].run_id} is of model {candidates[0].model!r}, not {model!r}"
                )
            models = ", ".join(sorted({r.model for r in rows}))
            raise ClipshiftError(f"no run of model {model!r} in the store; its models: {models}")
        candidates = matching
    chosen = candidates[0]
    if len(candidates) == 1:
        return chosen
    others = "; ".join(f"{r.run_id} ({r.model}, {_when(r)})" for r in candidates[1:6]) + (
        "; ..." if len(candidates) > 6 else ""
    )
    note = (
        f"showing run {chosen.run_id} ({chosen.model}, {_when(chosen)}), the most "
        f"recent of {len(candidates)} runs; pick another with --run ID: {others}"
    )
    return dataclasses.replace(chosen, selection_note=note)


def _when(run: Run) -> str:
    created = run.created_at
    return created.strftime("%Y-%m-%d %H:%M") if created is not None else "unknown time"
