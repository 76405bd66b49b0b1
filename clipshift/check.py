"""`check`: verify every table of a store, and repair a damaged one.

The check reads each table's manifest and every fragment of its latest version in full, then
checks that every stored image holds all its run's variants, that each has its `images` row,
and the schema version; it also measures the space old versions hold (reclaimable). A store on
object storage is checked (and repaired) where it is: its files are listed, with their sizes,
and read through the store's Location with its storage options.

A repair makes the store whole again, losing as little as the user chooses:
- "rollback": the table goes back to its newest version whose every fragment reads (what
  later commits added is lost);
- "drop": the unreadable fragments are dropped (only their rows are lost).
Then the variants of images left incomplete, or left without an `images` row, are deleted too,
so that every stored image is again whole. Each loss is recorded in `errors` (stage "repair")
and printed; a later ingest of the same images re-embeds exactly what was lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta

import lance
import pyarrow as pa
import pyarrow.compute as pc

from . import ClipshiftError, first_line
from .defaults import REPAIRS
from .filters import where
from .location import Location
from .store import MIGRATIONS_TABLE, Store, latest_schema_version
from .store.core import now
from .store.damage import describe, fragment_problems


@dataclass
class TableReport:
    name: str
    version: int | None = None
    versions: int = 0
    rows: int | None = None
    bytes_on_disk: int = 0
    reclaimable: int | None = None
    problems: list[str] = field(default_factory=list)
    bad_fragments: list[int] = field(default_factory=list)
    # a manifest in _versions: the table has (or had: a damage may have removed it) a version
    committed: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckResult:
    db: str  # the local folder or the object-storage URI
    tables: list[TableReport]
    schema_version: int | None
    latest_schema_version: int
    # (run_id, image_id) pairs with some but not all of the run's variants
    incomplete_images: list[tuple[str, str]] = field(default_factory=list)
    # image_ids with variants but no `images` row
    missing_image_rows: list[str] = field(default_factory=list)
    # `images` rows without any variants: an ingest stopped between its two commits
    unfinished_images: int = 0
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what each repair step lost

    @property
    def problems(self) -> list[str]:
        found = [f"table {t.name}: {p}" for t in self.tables for p in t.problems]
        if self.incomplete_images:
            found.append(f"{len(self.incomplete_images)} stored images miss some of their variants")
        if self.missing_image_rows:
            found.append(f"{len(self.missing_image_rows)} stored images have no `images` row")
        if self.schema_version is not None and self.schema_version != self.latest_schema_version:
            found.append(
                f"schema version {self.schema_version}, this clipshift's is "
                f"{self.latest_schema_version}"
                + (
                    ": run `clipshift migrate`"
                    if self.schema_version < self.latest_schema_version
                    else ""
                )
            )
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reclaimable(self) -> int:
        return sum(t.reclaimable or 0 for t in self.tables)


def check(db: str | os.PathLike, repair: str | None = None) -> CheckResult:
    """Verify every table of the store at `db`; with `repair` ("rollback" or "drop"), repair
    the damaged tables that way and the incomplete images, then check again."""
    if repair is not None and repair not in REPAIRS:
        raise ClipshiftError(f"--repair {repair}: choose {' or '.join(REPAIRS)}")
    store = Store.connect(Location.parse(db), create=False)
    if not store.table_names():
        raise ClipshiftError(f"no clipshift store at {db}: nothing to check")
    result = _check(store)
    if repair is None or result.ok:
        return result
    repaired: list[str] = []
    try:
        with store.lock():  # on object storage: the writer lease, given back below
            for table in result.tables:
                if not table.ok:
                    repaired.append(_repair_table(store, table, repair))
            after = _check(store)
            repaired += _drop_incomplete(store, after)
            _record(store, repaired)
    finally:
        store.close()
    result = _check(store)
    result.repaired = repaired
    return result


# -- checking ---------------------------------------------------------------------------------


def _check(store: Store) -> CheckResult:
    tables = [_check_table(store.location, name) for name in store.table_names()]
    by_name = {t.name: t for t in tables}
    version = None
    if by_name.get(MIGRATIONS_TABLE) and by_name[MIGRATIONS_TABLE].ok:
        version = store.schema_version()
    result = CheckResult(str(store.path), tables, version, latest_schema_version())
    if version is None:
        result.notes.append("no schema_migrations table that reads: schema version unknown")
    needed = ["runs", "images", *store.variants_tables()]
    if all(by_name.get(n) and by_name[n].ok for n in needed):
        _check_images(store, result)
    return result


def _check_table(location: Location, name: str) -> TableReport:
    # every file of the table with its size: one listing, local or on object storage
    sizes = location.file_sizes(f"{name}.lance")
    report = TableReport(name, bytes_on_disk=sum(sizes.values()))
    report.committed = any(path.startswith("_versions/") for path in sizes)
    try:
        ds = _dataset(location, name)
        fragments = ds.get_fragments()
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage reported
        report.problems.append(f"its manifest cannot be read ({first_line(exc, typed=True)})")
        return report
    report.version, report.versions = ds.version, len(ds.versions())
    report.rows = sum(f.metadata.num_rows for f in fragments)
    report.bad_fragments = _unreadable_fragments(ds, sizes, report.problems)
    try:
        explained = ds.explain_cleanup_old_versions(
            older_than=timedelta(0), delete_unverified=True, error_if_tagged_old_versions=False
        )
        report.reclaimable = explained.stats.bytes_removed
    except Exception:  # noqa: BLE001 - old versions of a damaged table may not explain
        report.reclaimable = None
    return report


def _dataset(location: Location, name: str, version: int | None = None):
    return lance.dataset(
        location.child(f"{name}.lance"), version=version, storage_options=location.storage_options
    )


def _unreadable_fragments(ds, sizes: dict[str, int], problems: list[str]) -> list[int]:
    """The fragments of `ds` that cannot be read in full; `sizes`: its table's files."""
    damaged = fragment_problems(ds, lambda path: sizes.get(f"data/{path}"), read=True)
    problems.extend(describe(fragment, problem) for fragment, problem in damaged)
    return [fragment.fragment_id for fragment, _ in damaged]


def _check_images(store: Store, result: CheckResult) -> None:
    runs = store.dataset("runs").to_table(columns=["run_id", "augmentations"]).to_pylist()
    expected = {r["run_id"]: 1 + len(json.loads(r["augmentations"])) for r in runs}
    tables = [
        store.dataset(n).to_table(columns=["run_id", "image_id"]) for n in store.variants_tables()
    ]
    if not tables:
        return
    variants = pa.concat_tables(tables)
    counts = variants.group_by(["run_id", "image_id"]).aggregate([([], "count_all")])
    for run_id, image_id, count in zip(
        counts["run_id"].to_pylist(),
        counts["image_id"].to_pylist(),
        counts["count_all"].to_pylist(),
        strict=True,
    ):
        if count != expected.get(run_id):
            result.incomplete_images.append((run_id, image_id))
    stored = pc.unique(variants["image_id"])
    images = store.dataset("images").to_table(columns=["image_id"])["image_id"]
    result.missing_image_rows = pc.filter(stored, pc.invert(pc.is_in(stored, images))).to_pylist()
    result.unfinished_images = int(pc.sum(pc.invert(pc.is_in(images, stored))).as_py() or 0)
    if result.unfinished_images:
        result.notes.append(
            f"{result.unfinished_images} `images` rows have no variants yet (an ingest stopped "
            "before storing them; the next ingest of those files reuses the rows)"
        )


# -- repairing --------------------------------------------------------------------------------


def _repair_table(store: Store, table: TableReport, how: str) -> str:
    location = store.location
    uri = location.child(f"{table.name}.lance")
    if table.version is None and not table.committed:
        # a process died while creating the table (its first ingest, or a migration): no
        # version ever held data, and the next ingest creates the table again
        location.remove(f"{table.name}.lance")
        removed = f"table {table.name}: removed: it was being created when a process stopped "
        removed += "and never had a committed version"
        if table.bytes_on_disk:
            removed += f", {table.bytes_on_disk / 1e6:.1f} MB of files no version referenced"
        return removed
    if table.version is None:
        raise ClipshiftError(
            f"table {table.name}: its manifest cannot be read, so it cannot be repaired here: "
            f"restore {uri} from a backup"
        )
    ds = _dataset(location, table.name)
    if how == "drop":
        lost = sum(
            f.metadata.num_rows for f in ds.get_fragments() if f.fragment_id in table.bad_fragments
        )
        operation = lance.LanceOperation.Delete([], table.bad_fragments, "")
        lance.LanceDataset.commit(
            uri, operation, read_version=ds.version, storage_options=location.storage_options
        )
        return (
            f"table {table.name}: dropped {len(table.bad_fragments)} unreadable fragment(s), "
            f"{lost} rows"
        )
    sizes = location.file_sizes(f"{table.name}.lance")
    for entry in sorted(ds.versions(), key=lambda v: v["version"], reverse=True):
        version = entry["version"]
        if version == ds.version:
            continue
        try:
            old = _dataset(location, table.name, version)
        except Exception:  # noqa: BLE001 - a version whose manifest is gone: go older
            continue
        if _unreadable_fragments(old, sizes, []):
            continue
        rows = sum(f.metadata.num_rows for f in old.get_fragments())
        old.restore()
        return (
            f"table {table.name}: rolled back from version {ds.version} to version {version}, "
            f"{(table.rows or 0) - rows} rows fewer"
        )
    raise ClipshiftError(
        f"table {table.name}: no earlier version reads in full; use `clipshift check --db "
        f"{store.path} --repair drop` instead (it drops only the unreadable files)"
    )


def _drop_incomplete(store: Store, result: CheckResult) -> list[str]:
    """Delete the variants of images that are not whole, so the next ingest redoes them."""
    lost = []
    by_run: dict[str, list[str]] = {}
    for run_id, image_id in result.incomplete_images:
        by_run.setdefault(run_id, []).append(image_id)
    for run_id, image_ids in by_run.items():
        store.table(store.variants_table_of(run_id)).delete(
            where(run_id=run_id, image_id=image_ids)
        )
        lost.append(
            f"run {run_id}: deleted the remaining variants of {len(image_ids)} incomplete images"
        )
    if result.missing_image_rows:
        for name in store.variants_tables():
            store.table(name).delete(where(image_id=result.missing_image_rows))
        lost.append(
            f"deleted the variants of {len(result.missing_image_rows)} images without an "
            "`images` row"
        )
    return lost


def _record(store: Store, repaired: list[str]) -> None:
    if not repaired or not store.has_table("errors"):
        return
    errors = store.table("errors")
    rows = [
        {"path": str(store.path), "stage": "repair", "message": m, "run_id": None, "time": now()}
        for m in repaired
    ]
    errors.add(pa.Table.from_pylist(rows, schema=errors.schema))
