"""DuckDB over the store: one connection per command, the store's tables as views, and the
named queries in sql/.

The Lance tables are scanned through Arrow (a pylance dataset registered with DuckDB), so no
DuckDB extension is needed. The connection is read-only towards the store: file access from
SQL is switched off and the setting locked before any user SQL runs.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa

from . import ClipshiftError
from .resources import resource_dir
from .store import Store, variants_schema

TABLES = ("runs", "images", "variants", "errors")


def connect(db: str | os.PathLike | Store) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views runs, images, variants, errors and shifts."""
    store = db if isinstance(db, Store) else Store.open(db)
    con = duckdb.connect(":memory:")
    for name in TABLES:
        if store.has_table(name):
            con.register(name, store.dataset(name))
        elif name == "variants":
            # no ingest has finished a batch yet: an empty table keeps every query valid
            con.register(
                name, pa.table({f.name: [] for f in variants_schema(1)}, variants_schema(1))
            )
    for path in sorted((resource_dir("sql") / "views").glob("*.sql")):
        con.execute(path.read_text())
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def named_query(
    con: duckdb.DuckDBPyConnection, name: str, **params
) -> duckdb.DuckDBPyRelation | None:
    """Run `sql/NAME.sql` with its $parameters bound; returns DuckDB's result."""
    path = resource_dir("sql") / f"{name}.sql"
    return con.execute(path.read_text(), params)


def query_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("sql").glob("*.sql"))


# -- run selection ---------------------------------------------------------------------------

RUN_COLUMNS = (
    "run_id, model, model_revision, embedding_dim, patch_grid, num_layers, image_size, seed, "
    "augmentations, augmentation_hash, clipshift_version, created_at"
)


def resolve_run(
    con: duckdb.DuckDBPyConnection, run: str | None = None, model: str | None = None
) -> dict:
    """The `runs` row a command works on, chosen by `--run ID | --model M`.

    `run` is a run_id or a unique prefix of one; `model` picks that model's most recent run.
    With neither, the only run, or the most recent one of several. The returned dict is the
    runs row plus `selection_note`: None when the choice was unambiguous, else one line saying
    which run was picked and how to pick another (commands print it on stderr).
    Raises ClipshiftError for an empty store, an unknown run or an unknown model.
    """
    try:
        result = con.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, run_id")
    except duckdb.CatalogException:
        result = None
    rows = [] if result is None else _as_dicts(result)
    if not rows:
        raise ClipshiftError("the store holds no runs yet: run `clipshift ingest IMAGES` first")
    listing = "; ".join(f"{r['run_id']} ({r['model']}, {_when(r)})" for r in rows)
    candidates = rows
    if run is not None:
        candidates = [r for r in rows if r["run_id"] == run] or [
            r for r in rows if r["run_id"].startswith(run)
        ]
        if not candidates:
            raise ClipshiftError(f"no run {run!r} in the store; its runs: {listing}")
        if len(candidates) > 1:
            raise ClipshiftError(
                f"--run {run!r} matches {len(candidates)} runs: "
                + ", ".join(r["run_id"] for r in candidates)
                + "; give more of the run id"
            )
    if model is not None:
        matching = [r for r in candidates if r["model"] == model]
        if not matching:
            if run is not None:
                raise ClipshiftError(
                    f"run {candidates[0]['run_id']} is of model {candidates[0]['model']!r}, "
                    f"not {model!r}"
                )
            models = ", ".join(sorted({r["model"] for r in rows}))
            raise ClipshiftError(f"no run of model {model!r} in the store; its models: {models}")
        candidates = matching
    chosen = dict(candidates[0])
    chosen["selection_note"] = None
    if len(candidates) > 1:
        others = "; ".join(f"{r['run_id']} ({r['model']}, {_when(r)})" for r in candidates[1:6]) + (
            "; ..." if len(candidates) > 6 else ""
        )
        chosen["selection_note"] = (
            f"showing run {chosen['run_id']} ({chosen['model']}, {_when(chosen)}), the most "
            f"recent of {len(candidates)} runs; pick another with --run ID: {others}"
        )
    return chosen


def _when(row: dict) -> str:
    created = row.get("created_at")
    return created.strftime("%Y-%m-%d %H:%M") if created is not None else "unknown time"


def _as_dicts(result: duckdb.DuckDBPyConnection) -> list[dict]:
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
