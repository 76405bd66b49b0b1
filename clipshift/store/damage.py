"""Table damage and its detection: a table whose latest version cannot be read (a data file
missing, short or unreadable), found quickly from manifests and file sizes, or by reading every
fragment. `Store` raises it before any work; `clipshift check` reports and repairs it."""

from __future__ import annotations

import os
from collections.abc import Callable
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


def fragment_problems(
    dataset, size_of: Callable[[str], int | None] | None, *, read: bool, first: bool = False
) -> list[tuple[object, str]]:
    """The fragments of the Lance `dataset`'s version that cannot be read, each with what is
    wrong: one of its data files missing or not the size its manifest records (where `size_of`
    gives a file's size by its path under data/, None when it is absent), or, with `read`, a
    read of the whole fragment failing. With `first`, only the first such fragment. The one
    reader of damage: `Store`'s quick check (sizes, no data), its diagnosis and `clipshift
    check` (every fragment read)."""
    found = []
    for fragment in dataset.get_fragments():
        problem = None
        for data_file in fragment.metadata.files if size_of else []:
            size, expected = size_of(data_file.path), data_file.file_size_bytes
            if size is None:
                problem = f"data file data/{data_file.path} is missing"
            elif expected and size != expected:
                problem = (
                    f"data file data/{data_file.path} has {size:,} bytes, not the "
                    f"{expected:,} it was written with (truncated?)"
                )
            if problem:
                break
        if problem is None and read:
            try:
                for _ in fragment.to_batches(batch_size=4096):
                    pass
            except Exception as exc:  # noqa: BLE001 - any read failure is the damage reported
                problem = f"cannot be read ({first_line(exc, typed=True)})"
        if problem:
            found.append((fragment, problem))
            if first:
                break
    return found


def describe(fragment, problem: str) -> str:
    """One damaged fragment in a line: its id, rows and files, and the problem."""
    files = ", ".join(f"data/{f.path}" for f in fragment.metadata.files)
    rows = fragment.metadata.num_rows
    return f"fragment {fragment.fragment_id} ({rows} rows, {files}): {problem}"


def table_damage(table_dir: Path, *, read: bool = False) -> str | None:
    """What is wrong with the latest version of the local Lance table at `table_dir`, None
    when nothing is: from its manifest and the file sizes it records, without reading any data
    (milliseconds; a file damaged in place is found with `read`, which reads every fragment)."""

    def size_of(path: str) -> int | None:
        file = table_dir / "data" / path
        return file.stat().st_size if file.is_file() else None

    try:
        dataset = lance.dataset(str(table_dir))
        damaged = fragment_problems(dataset, size_of, read=read, first=True)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage reported
        return f"its manifest cannot be read ({first_line(exc, typed=True)})"
    return describe(*damaged[0]) if damaged else None


def ever_committed(table_dir: Path) -> bool:
    """Whether the Lance table at `table_dir` has (or had: a damage may have removed it) a
    committed version: a manifest in _versions."""
    versions = table_dir / "_versions"
    return versions.is_dir() and any(versions.iterdir())


def object_damage(dataset, name: str, *, read: bool) -> str | None:
    """What is wrong with the table `name` of an object-storage store (`dataset` opens it):
    its manifest cannot be read, or with `read`, a fragment cannot (file sizes are checked by
    `clipshift check`, which lists them)."""
    try:
        damaged = fragment_problems(dataset(name), None, read=read, first=True)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage reported
        return f"its manifest cannot be read ({first_line(exc, typed=True)})"
    return describe(*damaged[0]) if damaged else None
