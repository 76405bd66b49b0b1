"""`clipshift migrate` and `clipshift compact`: a store brought to the latest schema, and
compacted with its old versions deleted, on demand."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

from .. import ClipshiftError
from ..location import Location
from .core import Store, keep_versions
from .migrations import MIGRATIONS_TABLE, Migration, latest_schema_version


@dataclass(frozen=True)
class Compaction:
    """What `compact` did to a store: its size before and after, and the versions deleted."""

    db: str
    bytes_before: int
    bytes_after: int
    versions_removed: int
    kept: timedelta  # versions younger than this were kept (and the newest always)

    @property
    def reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """A duration written as a number and a unit: 0s, 90s, 10m, 1.5h, 7d."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not match:
        raise ClipshiftError(
            f"--keep-versions {text!r}: give a duration as a number and a unit "
            f"({', '.join(DURATION_UNITS)}), e.g. 10m, 1h or 0s"
        )
    return timedelta(seconds=float(match.group(1)) * DURATION_UNITS[match.group(2)])


def compact(db: str | os.PathLike, keep: timedelta | None = None) -> Compaction:
    """Compact every table of the store at `db` now and delete the versions older than `keep`
    (default `keep_versions()`), with every file no remaining version uses.

    An ingest that compacts rewrites its tables' data, and the old data stays, as part of the
    versions a reader may still hold, until the retention passes: the store is about twice its
    live data meanwhile (docs/schema.md#disk-space). This takes the writer lock (the lease on
    object storage) as an ingest does, so it never runs beside a writer; `keep` 0 s also
    deletes what a reader that is running may still need."""
    store = Store.connect(Location.parse(db), create=False)
    if not store.has_table(MIGRATIONS_TABLE):
        raise ClipshiftError(f"no clipshift store at {db}: nothing to compact")
    store.raise_if_damaged()
    keep = keep_versions() if keep is None else keep
    try:
        with store.lock():
            before, latest = store.location.file_sizes(), store.latest_versions()
            counts = sum(len(store.dataset(name).versions()) for name in latest)
            store.compact(force=True, keep=keep)
            after = store.location.file_sizes()
            added = sum(v - latest[n] for n, v in store.latest_versions().items())
            left = sum(len(store.dataset(name).versions()) for name in latest)
    finally:
        store.close()
    return Compaction(
        str(store.path), sum(before.values()), sum(after.values()), counts + added - left, keep
    )


def migrate_store(path: str | os.PathLike) -> tuple[list[Migration], int]:
    """Apply pending migrations to the store at `path`; return those applied and the version."""
    store = Store.connect(Location.parse(path), create=False)
    # on object storage an interrupted migration 0003 leaves an incomplete copy of `variants`
    # as `variants_<D>` beside it: not damage, 0003 copies it again
    moving = not store.location.is_local and store.has_table("variants")
    store.raise_if_damaged(ignore=store.variants_tables() if moving else ())
    version = store.schema_version()
    if version == 0:
        raise ClipshiftError(f"no clipshift store at {path}: nothing to migrate")
    if version > latest_schema_version():
        raise ClipshiftError(
            f"the store at {path} has schema version {version}, newer than this clipshift "
            f"understands ({latest_schema_version()}): upgrade clipshift"
        )
    if version == latest_schema_version():
        return [], version  # nothing to write: fine on a read-only store too
    applied = store.migrate()
    return applied, store.schema_version()
