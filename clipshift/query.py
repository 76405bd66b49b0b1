"""DuckDB over the store: one connection per command, the store's tables as views, and the
named queries in sql/.

The Lance tables are scanned through Arrow (a pylance dataset registered with DuckDB), so no
DuckDB extension is needed. The connection is read-only towards the store: file access from
SQL is switched off and the setting locked before any user SQL runs.

Every metric is computed in SQL (sql/views/*.sql, sql/*.sql); Python picks the run
(clipshift.runs), binds the parameters and shapes the result (`Rows`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from . import ClipshiftError
from .resources import resource_dir
from .runs import Run
from .store import Store, variants_schema

TABLES = ("runs", "images", "errors", "zeroshot", "zeroshot_labels", "layer_cka")


def connect(db: str | os.PathLike | Store) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views runs, images, variants, errors, zeroshot,
    zeroshot_labels, layer_cka (the store's tables)
    and shifts, summary, pairwise, layer_shifts (sql/views/), locked read-only."""
    store = db if isinstance(db, Store) else Store.open(db)
    con = duckdb.connect(":memory:")
    for name in TABLES:
        if store.has_table(name):
            con.register(name, store.dataset(name))
    con.execute(_variants_view(con, store))
    for path in sorted((resource_dir("sql") / "views").glob("*.sql")):
        con.execute(path.read_text())
    # a query over the paper-size store can pass DuckDB's 2 s progress-bar delay: its bar
    # would mix into the command's output
    con.execute("SET enable_progress_bar = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _variants_view(con: duckdb.DuckDBPyConnection, store: Store) -> str:
    """`variants`: the union of the store's `variants_<D>` tables (each registered under its own
    name too, with its FLOAT[D] embedding for DuckDB's array_* functions). In the union the
    embedding is a FLOAT[] list, whose width varies by run; every view computes on lists
    (list_cosine_similarity, list_distance) and joins within a run, so widths never meet.
    A run_id filter on the view reaches each table's scan."""
    selects = []
    for name in store.variants_tables():
        con.register(name, store.dataset(name))
        selects.append(f"SELECT * REPLACE (embedding::FLOAT[] AS embedding) FROM {name}")
    if not selects:
        # no ingest has finished a batch yet: an empty table keeps every query valid
        empty = variants_schema(1)
        con.register("variants_empty", pa.table({f.name: [] for f in empty}, empty))
        selects.append("SELECT * REPLACE (embedding::FLOAT[] AS embedding) FROM variants_empty")
    return "CREATE OR REPLACE VIEW variants AS " + " UNION ALL BY NAME ".join(selects)


def named_query(con: duckdb.DuckDBPyConnection, name: str, **params) -> duckdb.DuckDBPyConnection:
    """Run `sql/NAME.sql` with its $parameters bound; returns DuckDB's result to fetch from."""
    return con.execute(_query_text(name), params)


def named_arrow(con: duckdb.DuckDBPyConnection, name: str, **params) -> pa.Table:
    """`named_query`'s rows as one Arrow table, without a copy through the DB-API result."""
    return con.sql(_query_text(name), params=params).to_arrow_table()


def named_count(con: duckdb.DuckDBPyConnection, name: str, **params) -> int:
    """How many rows `sql/NAME.sql` would return (DuckDB reads none of the unused columns)."""
    query = _query_text(name).strip().rstrip(";")
    return con.execute(f"SELECT count(*) FROM ({query})", params).fetchall()[0][0]


def _query_text(name: str) -> str:
    path = resource_dir("sql") / f"{name}.sql"
    if not path.is_file():
        raise ClipshiftError(f"no named query {name!r}: one of {', '.join(query_names())}")
    return path.read_text()


def query_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("sql").glob("*.sql"))


# -- results ---------------------------------------------------------------------------------


@dataclass
class Rows:
    """A query's result: column names and row tuples, with the run it describes (if any).

    `total_rows` is the full count where only the first rows were fetched (see `analysis.sql`).
    """

    columns: list[str]
    rows: list[tuple]
    run: Run | None = None
    total_rows: int | None = None
    # further tables about the same run, by name (stats: "severity", "corruption_mean")
    sections: dict[str, Rows] = field(default_factory=dict)

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def fetch(result: duckdb.DuckDBPyConnection, run: Run | None = None) -> Rows:
    """A DuckDB result's rows, about `run`."""
    return Rows([d[0] for d in result.description], result.fetchall(), run)


def as_dicts(result: duckdb.DuckDBPyConnection) -> list[dict]:
    """A DuckDB result's rows as dicts, one per row."""
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def require_augmented_rows(con: duckdb.DuckDBPyConnection, run: Run) -> None:
    """Say why a run has nothing to compare (a scan of variants: only when needed)."""
    counts = dict(
        con.execute(
            "SELECT variant = 'original', count(*) FROM variants WHERE run_id = $run_id "
            "GROUP BY ALL",
            {"run_id": run.run_id},
        ).fetchall()
    )
    if not counts:
        raise ClipshiftError(
            f"run {run.run_id} ({run.model}) holds no images yet: "
            'its ingest stored nothing (see `clipshift sql "SELECT * FROM errors"`)'
        )
    if not counts.get(False):
        raise ClipshiftError(
            f"run {run.run_id} ({run.model}) has no augmented rows, only originals: "
            "ingest with --augmentations all (or a list) to compare augmentations"
        )
