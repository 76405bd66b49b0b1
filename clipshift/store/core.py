"""The Store: an open LanceDB store, its tables read and written under the write lock.

A store lives at a Location: a local folder or an object-storage prefix (s3://, gs://, az://),
whose storage options reach every Lance and LanceDB call made here.

In a local folder, writes are serialised by an advisory file lock (`<db>/.clipshift.lock`,
filelock) held only around each commit, so two ingests into one store interleave their batches
safely; under the lock each batch drops the images another writer stored meanwhile, so nothing
is stored twice. Object storage has no file lock: there one writing process at a time holds a
lease (lease.py) and a second writer is refused with a one-line error (docs/scale-out.md). Every
Lance commit is atomic: a process killed at any moment leaves whole batches or nothing.

The tables' schemas are in schema.py, the migrations in migrations.py, the detection of a
damaged table in damage.py, and `clipshift migrate` and `clipshift compact` in maintenance.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock

from .. import ClipshiftError
from ..defaults import ORIGINAL
from ..filters import matches, where
from ..location import Location
from .damage import (
    StoreDamaged,
    damage_error,
    ever_committed,
    object_damage,
    table_damage,
)
from .lease import WriterLease
from .migrations import (
    MIGRATIONS_SCHEMA,
    MIGRATIONS_TABLE,
    Migration,
    available_migrations,
    latest_schema_version,
)
from .schema import VARIANTS_PREFIX, variants_schema, variants_table_name

os.environ.setdefault("LANCE_LOG", "error")

LOCK_FILE = ".clipshift.lock"
# Small appends leave many small fragments; past this many, compact after the ingest.
COMPACT_FRAGMENTS = 64
# Versions older than this are deleted after every ingest (and their unreferenced files: old
# data a compaction rewrote, files of a write killed before its commit). A command reads the
# version that was latest when it started; none takes near this long on the paper-size store
# (report, the slowest, about a minute), so a reader never loses its files mid-read.
# CLIPSHIFT_KEEP_VERSIONS_SECONDS overrides it (tests use 0).
KEEP_VERSIONS = timedelta(minutes=10)


def now() -> datetime:
    """The time now, in UTC, as the tables store it (applied_at, errors.time)."""
    return datetime.now(timezone.utc)


def keep_versions() -> timedelta:
    """How long old table versions are kept (KEEP_VERSIONS unless the environment says)."""
    seconds = os.environ.get("CLIPSHIFT_KEEP_VERSIONS_SECONDS")
    if seconds is None:
        return KEEP_VERSIONS
    try:
        return timedelta(seconds=max(0.0, float(seconds)))
    except ValueError:
        raise ClipshiftError(
            f"CLIPSHIFT_KEEP_VERSIONS_SECONDS={seconds!r}: give a number of seconds"
        ) from None


class Store:
    """An open clipshift store: a LanceDB directory at a known schema version."""

    def __init__(self, location: str | os.PathLike | Location):
        self.location = Location.parse(location)
        # a local store's folder; an object store's URI (for messages)
        self.path: Path | str = self.location.path if self.location.is_local else self.location.uri
        self._lease: WriterLease | None = None
        # What this process knows is stored, and the table versions that knowledge reflects:
        # while a table is still at that version no other writer has committed, so a batch
        # needs no scan of the table (a scan per batch grows with the store).
        self._seen_version: dict[str, int] = {}
        self._stored: dict[str, set[str]] = {}
        self._image_ids: set[str] = set()
        # `images` rows that fill_labels gave a label, through this Store (the ingest's summary)
        self.labels_filled = 0
        self._lock: FileLock | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False) -> Store:
        """Open the store at `path`; with `create`, make it (and apply every migration).

        A store at an older schema must be upgraded with `clipshift migrate` first; one written
        by a newer clipshift is refused, since this version cannot know its layout.
        """
        store = cls.connect(Location.parse(path), create=create)
        if create and store.location.is_local:
            store.remove_uncommitted_tables()
        store.raise_if_damaged()
        if create and store.migrates_on_write():
            store.migrate()
        store.check_version()
        return store

    def migrates_on_write(self) -> bool:
        """Whether a writer brings this store to the latest schema itself: a new store, or one
        whose creation a killed process left part-way through its migrations (no run or image
        stored yet). An older store holding data waits for `clipshift migrate`."""
        if self.schema_version() == 0:
            return True
        return not any(
            self.has_table(name) and self.dataset(name).count_rows() for name in ("runs", "images")
        )

    def remove_uncommitted_tables(self) -> list[str]:
        """Delete the folders of tables that never had a committed version, and return their
        names. Every table is created under the store lock, so such a folder, seen under the
        lock, is left by a process killed while creating it: it holds nothing, and the writer
        creates the table again."""
        with self.lock():
            removed = self.uncommitted_tables()
            for name in removed:
                shutil.rmtree(self.path / f"{name}.lance")
        return removed

    def uncommitted_tables(self) -> list[str]:
        """The (local) tables that never had a committed version."""
        return [n for n in self.table_names() if not ever_committed(self.path / f"{n}.lance")]

    def raise_if_damaged(self, ignore: Sequence[str] = ()) -> None:
        """StoreDamaged, naming the table and the problem, if a table's latest version cannot
        be read (checked from manifests and file sizes: milliseconds, no data read)."""
        for name in self.table_names():
            if name in ignore:
                continue
            if self.location.is_local:
                problem = table_damage(self.path / f"{name}.lance")
            else:  # object storage: the manifest opens (file sizes are checked locally only)
                problem = object_damage(self.dataset, name, read=False)
            if problem:
                raise damage_error(self.path, name, problem)

    def diagnose(self, exc: BaseException) -> StoreDamaged | None:
        """After an unexpected failure reading the store: the damage behind it, if any (the
        quick check, then a full read of the table the error names)."""
        try:
            self.raise_if_damaged()
        except StoreDamaged as damaged:
            return damaged
        message = str(exc)
        names = self.table_names()
        named = [n for n in names if f"{n}.lance" in message or f"'{n}'" in message]
        if not named and "lance" in f"{type(exc).__name__} {message}".lower():
            named = names  # a Lance read error that names no table: read them all
        for name in named:
            if self.location.is_local:
                problem = table_damage(self.path / f"{name}.lance", read=True)
            else:
                problem = object_damage(self.dataset, name, read=True)
            if problem:
                return damage_error(self.path, name, problem)
        return None

    def check_version(self) -> None:
        version, latest = self.schema_version(), latest_schema_version()
        if version == 0:
            others = _other_files(self.path) if self.location.is_local else ""
            if others:
                # ingest refuses such a folder (check_location): the hint names one it takes
                raise ClipshiftError(
                    f"no clipshift store at {self.path}: it is a folder holding other files "
                    f"({others}); give --db a store, or ingest into a new or empty folder"
                )
            raise ClipshiftError(
                f"no clipshift store at {self.path}: "
                f"run `clipshift ingest IMAGES --db {self.path}` first"
            )
        if version > latest:
            raise ClipshiftError(
                f"the store at {self.path} has schema version {version}, newer than this clipshift "
                f"understands ({latest}): upgrade clipshift (pip install -U clipshift)"
            )
        if version < latest:
            raise ClipshiftError(
                f"the store at {self.path} has schema version {version}; this clipshift needs "
                f"{latest}: run `clipshift migrate --db {self.path}`"
            )

    @staticmethod
    def check_location(path: str | os.PathLike | Location) -> None:
        """Fail early, before any slow work, if a store cannot be made or opened at `path`."""
        location = Location.parse(path)
        if not location.is_local:
            store = Store(location)
            if store.schema_version():
                store.check_version()
            return
        path = location.path
        if path.exists() and not path.is_dir():
            raise ClipshiftError(f"--db {path} is a file, not a store directory: choose a folder")
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ClipshiftError(
                f"cannot create a store at {path}: {existing} is not a writable folder"
            )
        if existing == path:
            shown = _other_files(path)
            if shown:
                raise ClipshiftError(
                    f"--db {path} is a folder holding other files ({shown}), not a clipshift "
                    "store: give a new or empty folder, or an existing store"
                )
            store = Store(path)
            # a table that never committed is no damage to a writer: opening the store for
            # writing removes it (remove_uncommitted_tables)
            uncommitted = store.uncommitted_tables()
            store.raise_if_damaged(ignore=uncommitted)
            if not {MIGRATIONS_TABLE, "runs", "images"} & set(uncommitted) and not (
                store.migrates_on_write()
            ):
                store.check_version()

    @classmethod
    def connect(cls, location: str | os.PathLike | Location, *, create: bool) -> Store:
        """The store at `location` as it is, with no damage or schema check: `open` makes
        those; `check`, `compact` and `migrate` make their own. With `create`, a local folder
        that can hold a store is made."""
        location = Location.parse(location)
        if not location.is_local:
            return cls(location)
        path = location.path
        if create:
            cls.check_location(path)
            path.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            raise ClipshiftError(f"--db {path} is a file, not a clipshift store")
        elif not path.is_dir():
            raise ClipshiftError(
                f"no clipshift store at {path}: run `clipshift ingest IMAGES --db {path}` first"
            )
        return cls(path)

    # -- schema and migrations -----------------------------------------------------------

    @functools.cached_property
    def db(self):
        """The LanceDB connection, for writes and vector search.

        Reads go through pylance directly (`dataset`): importing lancedb takes most of a
        second, which a read-only command such as `clipshift stats` need not pay.
        """
        import lancedb

        return lancedb.connect(self.location.uri, storage_options=self.location.storage_options)

    def table_names(self) -> list[str]:
        if self.location.is_local:
            folders = [p.name for p in self.location.path.glob("*.lance") if p.is_dir()]
        else:
            folders = self.location.list_dirs()
        names = (f[: -len(".lance")] for f in folders if f.endswith(".lance"))
        return sorted(n for n in names if not n.startswith("_"))

    def latest_versions(self) -> dict[str, int]:
        """Each table's latest version."""
        return {name: self.dataset(name).version for name in self.table_names()}

    def has_table(self, name: str) -> bool:
        return name in self.table_names()

    def schema_version(self) -> int:
        if not self.has_table(MIGRATIONS_TABLE):
            return 0
        versions = self.dataset(MIGRATIONS_TABLE).to_table(columns=["version"])["version"]
        versions = versions.to_pylist()
        return max(versions, default=0)

    def migrate(self, target: int | None = None) -> list[Migration]:
        """Apply the pending migrations up to `target` (default: all); return those applied."""
        applied = []
        with self.lock():
            self.create_table(MIGRATIONS_TABLE, MIGRATIONS_SCHEMA)
            log = self.dataset(MIGRATIONS_TABLE)
            current = self.schema_version()
            for migration in available_migrations():
                if migration.version <= current or (
                    target is not None and migration.version > target
                ):
                    continue
                migration.apply(self)
                log.insert(
                    pa.table(
                        {
                            "version": pa.array([migration.version], pa.int32()),
                            "name": [migration.name],
                            "applied_at": pa.array([now()], pa.timestamp("us", tz="UTC")),
                        }
                    ),
                    storage_options=self.location.storage_options,
                )
                applied.append(migration)
        return applied

    def create_table(self, name: str, schema: pa.Schema) -> None:
        """Create the empty table `name` where the store has none (under the store lock, which
        every caller holds). Through pylance, as every write of the migrations and of an
        ingest: importing LanceDB took most of a new store's creation (README, Benchmarks)."""
        if self.has_table(name):
            return
        import lance

        lance.write_dataset(
            schema.empty_table(),
            self.location.child(f"{name}.lance"),
            schema=schema,
            mode="create",
            storage_options=self.location.storage_options,
        )

    # -- reading -------------------------------------------------------------------------

    def table(self, name: str):
        """The LanceDB table `name`."""
        return self.db.open_table(name)

    def dataset(self, name: str):
        """The table as a pylance dataset (an Arrow dataset DuckDB scans directly)."""
        return lance.dataset(
            self.location.child(f"{name}.lance"), storage_options=self.location.storage_options
        )

    def variants_tables(self) -> list[str]:
        """The `variants_<D>` tables, narrowest embedding first."""
        names = [n for n in self.table_names() if re.fullmatch(f"{VARIANTS_PREFIX}\\d+", n)]
        return sorted(names, key=lambda n: int(n[len(VARIANTS_PREFIX) :]))

    def variants_table_of(self, run_id: str) -> str | None:
        """The `variants_<D>` table that holds this run's rows (None before its first batch)."""
        runs = self.dataset("runs").to_table(
            columns=["embedding_dim"], filter=matches(run_id=run_id)
        )
        if not runs.num_rows:
            return None
        name = variants_table_name(runs.column("embedding_dim")[0].as_py())
        return name if self.has_table(name) else None

    def stored_images(self, run_id: str, image_ids: Sequence[str] | None = None) -> set[str]:
        """The image_ids whose variants this run has stored (all or nothing, by commit)."""
        table = self.variants_table_of(run_id)
        if table is None:
            return set()
        rows = matches(run_id=run_id, variant=ORIGINAL)
        if image_ids is not None:
            if not image_ids:
                return set()
            rows &= matches(image_id=list(image_ids))
        ds = self.dataset(table)
        return set(ds.to_table(columns=["image_id"], filter=rows).column("image_id").to_pylist())

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's write lock; the OS releases it if the process dies.

        filelock takes flock on POSIX and LockFileEx on Windows; the lock is re-entrant within
        this Store, so a locked step may call another. On object storage: hold (or renew) this
        process's writer lease instead; commits there are atomic by Lance's conditional puts,
        and the lease keeps a second writer out.
        """
        if not self.location.is_local:
            if self._lease is None:
                self._lease = WriterLease(self.location)
            self._lease.hold()
            yield
            return
        if self._lock is None:
            self._lock = FileLock(self.path / LOCK_FILE)
        try:
            self._lock.acquire()
        except OSError as exc:
            raise ClipshiftError(
                f"the store at {self.path} is read-only here (cannot open {LOCK_FILE} for "
                f"writing: {exc.strerror or exc}): this command writes, so run it where the "
                "store is writable"
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        """Give up this process's writer lease (object storage); a local store holds nothing."""
        if self._lease is not None:
            self._lease.release()

    def ensure_run(self, run: dict) -> None:
        """Record the run (once) and create the `variants_<D>` table of its embedding width."""
        with self.lock():
            name = variants_table_name(run["embedding_dim"])
            self.create_table(name, variants_schema(run["embedding_dim"]))
            runs = self.dataset("runs")
            row = pa.Table.from_pylist([run], schema=runs.schema)
            runs.merge_insert("run_id").when_not_matched_insert_all().execute(row)

    def write_batch(self, run_id: str, images: pa.Table, variants: pa.Table) -> set[str]:
        """Store whole images: their `images` rows and all their `variants` rows.

        Images this run already holds (another writer got there first) are dropped.
        Returns the image_ids actually written. Written through pylance, as every write of an
        ingest into an existing store: an ingest need not import LanceDB (README, Benchmarks).
        """
        name = variants_table_name(variants.schema.field("embedding").type.list_size)
        options = {"storage_options": self.location.storage_options}
        with self.lock():
            variants_table = self.dataset(name)
            if self._is_stale(name, variants_table) or run_id not in self._stored:
                self._stored = {run_id: self.stored_images(run_id)}
            stored = self._stored[run_id]
            written = set(variants.column("image_id").to_pylist()) - stored
            if not written:
                return set()
            new = pa.array(sorted(written))
            variants = variants.filter(pc.is_in(variants["image_id"], new))

            images_table = self.dataset("images")
            if self._is_stale("images", images_table):
                ids = images_table.to_table(columns=["image_id"]).column("image_id")
                self._image_ids = set(ids.to_pylist())
            ids = images["image_id"].to_pylist()
            held_images = images.filter([i in self._image_ids for i in ids])
            images = images.filter([i in written and i not in self._image_ids for i in ids])
            # images first: if the process dies before the variants commit, the image row is
            # reused on resume, while the variants commit alone marks an image as done.
            if images.num_rows:
                images_table.insert(images, **options)
                self._image_ids.update(images.column("image_id").to_pylist())
            self._seen_version["images"] = images_table.version
            variants_table.insert(variants, **options)
            self._seen_version[name] = variants_table.version
            stored.update(written)
            if "label" in held_images.schema.names:  # images another run stored: their label
                self.fill_labels(held_images.select(["image_id", "label", "label_index"]))
            return written

    def commit_fragments(
        self, run_id: str, batches: Sequence[tuple[Sequence[str], list, list]]
    ) -> tuple[set[str], set[str]]:
        """Commit Lance fragments that workers wrote: per batch (image_ids, `images` fragments,
        fragments of the run's `variants_<D>` table). One commit per table for all batches,
        images first, so an image is stored exactly when its variants commit lands (as in
        `write_batch`).

        A batch holding an image that another writer stored meanwhile is not committed (a
        written fragment cannot be filtered). Returns (image_ids stored, image_ids of the
        batches left out that are still not stored: a rerun stores them).
        """
        import lance

        with self.lock():
            variants = self.variants_table_of(run_id)
            if variants is None:
                raise ClipshiftError(f"run {run_id} is not recorded: ensure_run comes first")
            ids = sorted({i for batch in batches for i in batch[0]})
            stored = self.stored_images(run_id, ids)
            kept = [b for b in batches if not stored.intersection(b[0])]
            left = {i for b in batches if stored.intersection(b[0]) for i in b[0]} - stored
            for name, position in (("images", 1), (variants, 2)):
                fragments = [f for batch in kept for f in batch[position]]
                if fragments:
                    dataset = self.dataset(name)
                    lance.LanceDataset.commit(
                        dataset.uri,
                        lance.LanceOperation.Append(fragments),
                        read_version=dataset.version,
                        storage_options=self.location.storage_options,
                    )
            return {i for batch in kept for i in batch[0]}, left

    def _is_stale(self, name: str, dataset) -> bool:
        return dataset.version != self._seen_version.get(name)

    def write_zeroshot(self, predictions: pa.Table, labels: pa.Table) -> int:
        """Store zero-shot predictions of whole images (one commit) and their label set's names.

        `predictions` holds the rows of one (run_id, label_set, template); images that key
        already holds (another call got there first) are dropped. Returns the rows written.
        """
        if not predictions.num_rows:
            return 0
        run_id, label_set, template = (
            predictions[name][0].as_py() for name in ("run_id", "label_set", "template")
        )
        # through pylance, not LanceDB: `zeroshot` need not import lancedb (a second here)
        options = {"storage_options": self.location.storage_options}
        with self.lock():
            names = self.dataset("zeroshot_labels")
            if not names.count_rows(filter=matches(label_set=label_set)):
                names.insert(labels, **options)
            zeroshot = self.dataset("zeroshot")
            key = matches(run_id=run_id, label_set=label_set, template=template)
            stored = zeroshot.to_table(columns=["image_id"], filter=key)["image_id"]
            if len(stored):
                predictions = predictions.filter(
                    pc.invert(pc.is_in(predictions["image_id"], pc.unique(stored)))
                )
            if predictions.num_rows:
                zeroshot.insert(predictions, **options)
            return predictions.num_rows

    def record_errors(self, rows: list[dict]) -> None:
        """Record failures; a path that fails again in the same run updates its row."""
        if not rows:
            return
        with self.lock():
            errors = self.dataset("errors")
            data = pa.Table.from_pylist(
                [{**row, "time": row.get("time") or now()} for row in rows], schema=errors.schema
            )
            (
                errors.merge_insert(["run_id", "path"])
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

    def fill_labels(self, labels: pa.Table) -> int:
        """Give stored `images` rows without a label the one in `labels` (image_id, label,
        label_index): an image ingested from a plain folder, then from its dataset with labels.
        A stored label is never changed. Returns the rows that got one."""
        labels = labels.filter(pc.is_valid(labels["label"]))
        if not labels.num_rows:
            return 0
        with self.lock():
            images = self.dataset("images")
            result = (
                images.merge_insert("image_id")
                .when_matched_update_all("target.label IS NULL")
                .execute(
                    labels.cast(pa.schema([images.schema.field(n) for n in labels.schema.names]))
                )
            )
            self.labels_filled += result["num_updated_rows"]
            return result["num_updated_rows"]

    def clear_errors(self, run_id: str, paths: Sequence[str]) -> None:
        """Forget earlier failures of paths that have now been stored."""
        if not paths or not self.has_table("errors"):
            return
        with self.lock():
            self.dataset("errors").delete(where(run_id=run_id, path=list(paths)))

    def compact(self, *, force: bool = False, keep: timedelta | None = None) -> None:
        """Merge the small fragments that many batch commits leave (with `force`, whatever
        their number), then delete the versions older than `keep` (default `keep_versions()`)
        and every file no remaining version uses.

        That includes files no version ever used (a write killed before its commit): Lance
        keeps such "unverified" files for a week in case a writer is still committing them,
        but every clipshift write holds the store lock, which this holds too."""
        keep = keep_versions() if keep is None else keep
        with self.lock():
            for name in self.table_names():
                # counted through pylance: LanceDB (its optimize merges the files and brings
                # any vector index up to date) is imported only where a table needs it
                if force or len(self.dataset(name).get_fragments()) > COMPACT_FRAGMENTS:
                    with warnings.catch_warnings():
                        # LanceDB warns that a zero retention may fail a concurrent reader:
                        # the user asked for it (`compact --keep-versions 0s`), docs say so
                        warnings.filterwarnings("ignore", "optimize.cleanup_older_than=0")
                        self.table(name).optimize(cleanup_older_than=keep)
                self.dataset(name).cleanup_old_versions(
                    older_than=keep, delete_unverified=True, error_if_tagged_old_versions=False
                )


def _other_files(path: Path) -> str:
    """The first few names in a local folder that are no part of a store, for a message ("" when
    it holds none: a store, or an empty folder)."""
    if not path.is_dir():
        return ""
    others = sorted(
        p.name
        for p in path.iterdir()
        if not p.name.endswith(".lance") and p.name not in (LOCK_FILE, ".DS_Store")
    )
    return ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
