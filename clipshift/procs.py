"""A process's descendants and their state, from Linux's /proc (nothing elsewhere): the Ray
engine's watchdog finds Ray's node agents with them, and the tests the processes an ingest
leaves behind."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """The processes under `pid`, children before their own children."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def command_line(pid: int) -> str:
    """The command line of `pid`, its arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stat_field(pid: int, index: int) -> str:
    """Field `index` after the command name of /proc/pid/stat (0: the state, 19: the start
    time); "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[index]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    return stat_field(pid, 0) not in ("", "Z")
