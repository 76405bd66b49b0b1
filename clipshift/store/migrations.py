"""The migrations runner's parts: its log table and the migrations shipped with clipshift
(migrations/NNNN_name.py, each with an `upgrade(store)` that changes the tables through the
`Store`: `create_table`, `dataset` (pylance), `table_names`); `Store.migrate` applies them."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..resources import resource_dir

MIGRATIONS_TABLE = "schema_migrations"

MIGRATIONS_SCHEMA = pa.schema(
    [
        pa.field("version", pa.int32(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("applied_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def apply(self, store) -> None:
        spec = importlib.util.spec_from_file_location(
            f"clipshift_migration_{self.version}", self.path
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.upgrade(store)


def available_migrations() -> list[Migration]:
    """Every migration shipped with this clipshift, oldest first."""
    found = []
    for path in sorted(resource_dir("migrations").glob("[0-9][0-9][0-9][0-9]_*.py")):
        match = re.match(r"(\d{4})_(.+)\.py$", path.name)
        found.append(Migration(int(match.group(1)), match.group(2), path))
    return found


def latest_schema_version() -> int:
    return available_migrations()[-1].version
