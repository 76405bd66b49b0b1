"""The LanceDB store: the Store (core.py), the tables' schemas (schema.py), the migrations
(migrations.py), table damage (damage.py), the object-storage writer lease (lease.py), and
`clipshift migrate` and `clipshift compact` (maintenance.py)."""

from .core import Store
from .damage import repair_hint
from .lease import WriterLease
from .maintenance import Compaction, compact, migrate_store, parse_duration
from .migrations import MIGRATIONS_TABLE, Migration, available_migrations, latest_schema_version
from .schema import variants_schema, variants_table_name

__all__ = [
    "MIGRATIONS_TABLE",
    "Compaction",
    "Migration",
    "Store",
    "WriterLease",
    "available_migrations",
    "compact",
    "latest_schema_version",
    "migrate_store",
    "parse_duration",
    "repair_hint",
    "variants_schema",
    "variants_table_name",
]
