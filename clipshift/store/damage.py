"""Table damage and its detection: a table whose latest version cannot be read (a data file
missing, short or unreadable), found quickly from manifests and file sizes, or by reading every
fragment. `Store` raises it before any work; `clipshift check` reports and repairs it."""

from __future__ import annotations

import os
from pathlib import Path

import lance

from .. import ClipshiftError, first_line


class StoreDamaged(ClipshiftError):
    """A table of the store cannot be read: a data file is missing, short, or unreadable."""


def damage_error(path: Path, table: str, problem: str) -> StoreDamaged:
    return StoreDamaged(
        f"the store at {path} is damaged: table {table}: {problem}; run `clipshift check "
        f"--db {path}` to see what is affected and {repair_hint(path)}"
    )


def repair_hint(path: str | os.PathLike) -> str:
    """The command that repairs a damaged store, ready to paste, and what each repair loses
    (`--repair` alone is refused: it needs one of the two)."""
    return (
        f"`clipshift check --db {path} --repair rollback` to fix it (each damaged table back to "
        "its last version that reads in full; `--repair drop` instead drops only the unreadable "
        "files)"
    )


def table_damage(table_dir: Path) -> str | None:
    """What is wrong with the latest version of the Lance table at `table_dir`, found from its
    manifest and the file sizes it records, without reading any data; None when nothing is.

    Catches a missing manifest or data file and a data file of the wrong size (truncated); a
    file damaged in place is found by `clipshift check`, which reads every fragment."""
    try:
        ds = lance.dataset(str(table_dir))
        fragments = ds.get_fragments()
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage reported
        return f"its manifest cannot be read ({first_line(exc, typed=True)})"
    for fragment in fragments:
        for data_file in fragment.metadata.files:
            file = table_dir / "data" / data_file.path
            if not file.is_file():
                return f"data file data/{data_file.path} is missing"
            expected = data_file.file_size_bytes
            if expected and file.stat().st_size != expected:
                return (
                    f"data file data/{data_file.path} has {file.stat().st_size:,} bytes, "
                    f"not the {expected:,} it was written with (truncated?)"
                )
    return None


def ever_committed(table_dir: Path) -> bool:
    """Whether the Lance table at `table_dir` has (or had: a damage may have removed it) a
    committed version: a manifest in _versions."""
    versions = table_dir / "_versions"
    return versions.is_dir() and any(versions.iterdir())


def object_damage(dataset, name: str, *, read: bool) -> str | None:
    """What is wrong with the table `name` of an object-storage store (`dataset` opens it):
    its manifest cannot be read, or with `read`, a fragment cannot."""
    try:
        fragments = dataset(name).get_fragments()
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage reported
        return f"its manifest cannot be read ({first_line(exc, typed=True)})"
    for fragment in fragments if read else []:
        try:
            for _ in fragment.to_batches(batch_size=4096):
                pass
        except Exception as exc:  # noqa: BLE001 - any read failure is the damage reported
            return f"fragment {fragment.fragment_id} cannot be read: {first_line(exc, typed=True)}"
    return None


def read_damage(table_dir: Path) -> str | None:
    """As `table_damage`, and then every fragment of the latest version read in full."""
    problem = table_damage(table_dir)
    if problem:
        return problem
    for fragment in lance.dataset(str(table_dir)).get_fragments():
        try:
            for _ in fragment.to_batches(batch_size=4096):
                pass
        except Exception as exc:  # noqa: BLE001 - any read failure is the damage reported
            files = ", ".join(f"data/{f.path}" for f in fragment.metadata.files)
            problem = first_line(exc, typed=True)
            return f"fragment {fragment.fragment_id} ({files}) cannot be read: {problem}"
    return None
