"""The LanceDB store (see core.py); `from clipshift.store import Store` and the names below."""

from .core import (
    MIGRATIONS_TABLE,
    Store,
    WriterLease,
    available_migrations,
    compact,
    latest_schema_version,
    migrate_store,
    parse_duration,
    variants_schema,
    variants_table_name,
)

__all__ = [
    "MIGRATIONS_TABLE",
    "Store",
    "WriterLease",
    "available_migrations",
    "compact",
    "latest_schema_version",
    "migrate_store",
    "parse_duration",
    "variants_schema",
    "variants_table_name",
]
