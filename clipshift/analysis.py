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
