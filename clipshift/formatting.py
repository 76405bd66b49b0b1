"""One formatter for the commands that print rows: an aligned table for people, CSV and JSON for
programs. Only the table is truncated (past `max_rows` rows, with a note saying so); CSV and JSON
always carry every row at full precision."""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import io
import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

from . import ClipshiftError
from .defaults import DEFAULT_MAX_ROWS, FORMATS

# a cell wider than this is cut (an embedding would otherwise fill the screen)
MAX_CELL_WIDTH = 48


def format_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str = "table",
    max_rows: int | None = DEFAULT_MAX_ROWS,
    total_rows: int | None = None,
) -> str:
    """`rows` (tuples in the order of `columns`) as text in `fmt`: table, csv or json.

    JSON is a list of objects keyed by column name. The table shows at most `max_rows` rows
    (None: all) and ends with a note giving the number left out; `total_rows` is the full
    count where the caller fetched only the first rows (a big query need not be fetched whole).
    """
    if fmt == "table":
        return _table(columns, rows, max_rows, len(rows) if total_rows is None else total_rows)
    if fmt == "csv":
        return _csv(columns, rows)
    if fmt == "json":
        records = [
            {name: _plain(value) for name, value in zip(columns, row, strict=True)} for row in rows
        ]
        return json.dumps(records, indent=2, allow_nan=False)
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def pick_columns(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], wanted: Sequence[str]
) -> tuple[list[str], list[tuple]]:
    """Only the `wanted` columns of `rows`, in that order; a name that is not one of `columns`
    is a one-line ClipshiftError naming the valid ones."""
    unknown = [name for name in wanted if name not in columns]
    if unknown:
        raise ClipshiftError(
            f"--columns: no column {unknown[0]!r}; choose from {', '.join(columns)}"
        )
    keep = [list(columns).index(name) for name in wanted]
    return list(wanted), [tuple(row[i] for i in keep) for row in rows]


def _plain(value: Any) -> Any:
    """A JSON-ready value: NaN and infinities become null, dates ISO text, bytes base64."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return _plain(float(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "item"):  # a numpy scalar
        return _plain(value.item())
    if hasattr(value, "tolist"):  # a numpy array
        return _plain(value.tolist())
    return str(value)


def _text(value: Any) -> str:
    """A cell for the table and CSV: floats with 6 significant digits, bytes as their size."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            [repr(v) if isinstance(v, float) and math.isfinite(v) else _text(v) for v in row]
        )
    return buffer.getvalue().rstrip("\n")


def _table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], max_rows: int | None, total: int
) -> str:
    shown = rows if max_rows is None else rows[:max_rows]
    cells = [[_cut(_text(v)) for v in row] for row in shown]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in shown) and bool(shown)
        for i in range(len(columns))
    ]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in cells]
    left_out = total - len(shown)
    if left_out > 0:
        lines.append(
            f"... {left_out} more {'row' if left_out == 1 else 'rows'} not shown ({total} in all): "
            "use --format csv or json, or a LIMIT"
        )
    elif not rows:
        lines.append("(no rows)")
    return "\n".join(lines)


def _cut(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL_WIDTH else text[: MAX_CELL_WIDTH - 3] + "..."
