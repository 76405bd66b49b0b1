"""The writer lease of an object-storage store: one writing process at a time.

Object storage has no file lock: there one writing process at a time holds a lease
(`_writer_lease.lance`, taken by a Lance conditional update, renewed at each commit) and a
second writer is refused with a one-line error (docs/scale-out.md).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import time
import uuid

import lance
import pyarrow as pa

from .. import ClipshiftError
from ..filters import sql_literal, where
from ..location import Location

# On object storage: the writer's lease, and how long an unrenewed lease blocks other writers
# (a writer renews it at every commit, at most every LEASE_RENEW seconds).
LEASE_TABLE = "_writer_lease"
LEASE_SECONDS = 300.0
LEASE_RENEW = 30.0


class WriterLease:
    """One writing process at a time on an object-storage store.

    The lease is a one-row Lance dataset beside the tables. Taking it is a Lance update with a
    condition (free, expired, or left by a dead process on this host), then read back. Lance
    commits a version atomically (a put-if-absent of its manifest where the store supports
    one), so of two processes racing for it one update lands and the other conflicts or,
    retried on the newer version, matches no row. Renewed at each commit; released at exit. A
    crashed writer's lease blocks others for LEASE_SECONDS at most.
    """

    def __init__(self, location: Location):
        self.location = location
        self.uri = location.child(f"{LEASE_TABLE}.lance")
        self.token = uuid.uuid4().hex
        self.renewed = 0.0

    def _dataset(self):
        options = self.location.storage_options
        try:
            return lance.dataset(self.uri, storage_options=options)
        except (ValueError, OSError, FileNotFoundError):
            free = pa.table(
                {
                    "holder": [""],
                    "host": [""],
                    "pid": pa.array([0], pa.int64()),
                    "heartbeat": pa.array([0.0], pa.float64()),
                }
            )
            try:
                return lance.write_dataset(free, self.uri, mode="create", storage_options=options)
            except (ValueError, OSError):  # another process created it first
                return lance.dataset(self.uri, storage_options=options)

    def hold(self) -> None:
        now = time.time()
        if now - self.renewed < LEASE_RENEW:
            return
        try:
            dataset = self._dataset()
        except (ValueError, OSError):  # its first version is being written
            raise ClipshiftError(self.refusal(None, now)) from None
        current = self._holder(dataset)
        if self.renewed:
            condition = where(holder=self.token)  # renewing: only while still ours
        else:  # free, ours, left by a dead process on this host, or expired
            holders = ["", self.token]
            if current and current["host"] == socket.gethostname() and not _alive(current["pid"]):
                holders.append(current["holder"])
            expired = f"heartbeat < {sql_literal(now - LEASE_SECONDS)}"
            condition = f"{where(holder=holders)} OR {expired}"
        try:
            dataset.update(
                {
                    "holder": sql_literal(self.token),
                    "host": sql_literal(socket.gethostname()),
                    "pid": str(os.getpid()),
                    "heartbeat": repr(now),
                },
                where=condition,
            )
        except (OSError, ValueError, RuntimeError):
            pass  # a commit conflict: another process took it first; the read below says who
        try:
            row = self._holder(
                lance.dataset(self.uri, storage_options=self.location.storage_options)
            )
        except (ValueError, OSError):
            row = None
        if row is None or row["holder"] != self.token:
            raise ClipshiftError(self.refusal(row, now))
        if not self.renewed:
            atexit.register(self.release)
        self.renewed = now

    @staticmethod
    def _holder(dataset) -> dict | None:
        """The lease's row; None while it has none that reads (being written)."""
        try:
            rows = dataset.to_table().to_pylist()
        except (ValueError, OSError):
            return None
        return rows[0] if rows else None

    def refusal(self, row: dict | None, now: float) -> str:
        """Why this process may not write: who holds the lease, or, when the lease read back
        names no process (its row is the free one, or none reads: another process is creating
        or updating it at this moment), that the lease is being taken. Seen in 1 of 14
        simultaneous S3 ingests, which otherwise reported pid 0 on no host, last seen 56
        years ago."""
        tail = (
            f"an object-storage store takes one writer at a time; wait for it to finish (a dead "
            f"writer's lease expires after {LEASE_SECONDS:.0f} s)"
        )
        named = row and row["holder"] and row["pid"] > 0 and row["host"] and row["heartbeat"] > 0
        if not named:
            return (
                f"another clipshift process is taking the writer lease of {self.location} right "
                f"now: {tail}; if this persists while no clipshift writes, remove {self.uri}"
            )
        age = max(0.0, now - row["heartbeat"])
        return (
            f"another clipshift process (pid {row['pid']} on {row['host']}, last seen "
            f"{age:.0f} s ago) is writing to {self.location}: {tail}"
        )

    def release(self) -> None:
        if not self.renewed:
            return
        self.renewed = 0.0
        with contextlib.suppress(Exception):  # at exit; an unreleased lease just expires
            lance.dataset(self.uri, storage_options=self.location.storage_options).update(
                {"holder": "''", "heartbeat": "0.0"}, where=where(holder=self.token)
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return pid > 0
