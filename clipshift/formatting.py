"""One formatter for the commands that print rows: an aligned table for people, CSV and JSON for
programs. Only the table is truncated (past `max_rows` rows, with a note saying so); CSV and JSON
always carry every row at full precision.

Also what a command's result looks like printed, where that is more than one call of
`format_rows`: the ingest summary, the stats table with its sections, compare's document. The
CLI parses options and prints these; the shaping lives here, beside the formatter.
"""

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
# duplicate files the ingest summary names, each with the file it repeats; the rest it counts
SHOWN_DUPLICATES = 10
# failed files the ingest summary names; the rest it counts (and says where they are listed)
SHOWN_FAILURES = 10

# what `clipshift stats` shows in a table by default: the every-score table was about 250
# characters wide; these fit 100 with the longest augmentation name. --columns picks others,
# --all-columns shows all; CSV and JSON carry every column of sql/summary.sql
STATS_TABLE_COLUMNS = (
    "augmentation",
    "severity",
    "n",
    "cosine_mean",
    "cosine_std",
    "l2_mean",
    "overall",
    "rank",
)
# the same with several runs (sql/summary_runs.sql): the run before its figures
STATS_RUNS_TABLE_COLUMNS = (
    "augmentation",
    "severity",
    "run_id",
    "model",
    "model_rank",
    "cosine_mean",
    "overall",
)
# the columns of the severity curves the stats table shows
SEVERITY_CURVE_COLUMNS = (
    "augmentation",
    "severity",
    "n",
    "cosine_mean",
    "cosine_ci95",
    "l2_mean",
    "patch_similarity_mean",
)


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


def drop_empty_severity(
    columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[list[str], list[tuple]]:
    """Leave out the severity column where no row has a severity (a run without levelled
    perturbations); `columns` without one come back as they are."""
    columns = list(columns)
    if "severity" not in columns:
        return columns, [tuple(row) for row in rows]
    where = columns.index("severity")
    if any(row[where] is not None for row in rows):
        return columns, [tuple(row) for row in rows]
    return (
        columns[:where] + columns[where + 1 :],
        [tuple(row[:where]) + tuple(row[where + 1 :]) for row in rows],
    )


def format_ingest_summary(summary) -> str:
    """What `clipshift ingest` prints when it is done (an ingest.IngestSummary)."""
    lines = [
        f"run        {summary.run_id}  ({summary.model}, {summary.model_revision})",
        f"           image size {summary.image_size}, seed {summary.seed}, "
        f"{len(summary.augmentations)} augmentations",
        f"stored     {summary.stored} images ({summary.stored * (1 + len(summary.augmentations))} "
        "variant rows)",
        f"skipped    {summary.skipped} already in the store"
        + (f", {summary.duplicates} duplicate files" if summary.duplicates else ""),
    ]
    for duplicate in summary.duplicate_files[:SHOWN_DUPLICATES]:
        lines.append(f"           {duplicate.path}: the same bytes as {duplicate.first}")
    if summary.duplicates > SHOWN_DUPLICATES:
        lines.append(f"           ... {summary.duplicates - SHOWN_DUPLICATES} more duplicate files")
    lines.append(f"failed     {summary.failed}")
    for failure in summary.failures[:SHOWN_FAILURES]:
        lines.append(f"           {failure.stage}: {failure.path}: {failure.message}")
    if summary.failed > SHOWN_FAILURES:
        lines.append(
            f'           ... {summary.failed - SHOWN_FAILURES} more: clipshift sql "SELECT * FROM '
            f"errors WHERE run_id = '{summary.run_id}'\""
        )
    if summary.retried:
        lines.append(f"           {summary.retried} images retried after a worker process died")
    if summary.labelled:
        lines.append(
            f"labelled   {summary.labelled} stored images that had no label, from this dataset"
        )
    if not summary.model_loaded:
        lines.append("model      not loaded: nothing new to encode")
    if summary.cka_seconds is not None:
        lines.append(
            f"cka        computed over {summary.cka_images:,} images in {summary.cka_seconds:.1f} "
            f"s ({summary.cka_estimator}), kept in layer_cka for `clipshift layers`"
        )
    speed = f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)"
    how = filter(None, [speed, _workers(summary.workers), summary.precision])
    lines += [
        f"time       {', '.join(how)}",
        "stages     "
        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in summary.timings.items()),
        "           (read to png: summed over the images, on every worker at once; "
        "transfer to write: in this process)",
        f"store      {summary.db}",
    ]
    if summary.hint:
        lines.append(f"hint       {summary.hint}")
    return "\n".join(lines)


def format_stats(
    result,
    fmt: str,
    *,
    part: str = "summary",
    wanted: Sequence[str] | None = None,
    all_columns: bool = False,
    reference: str | None = None,
) -> str:
    """`clipshift stats`'s output for an analysis.stats result (a query.Rows).

    csv and json carry `part` (the summary or one of its sections) with every column, or the
    `wanted` ones. The table shows the compact STATS_TABLE_COLUMNS (one run) or
    STATS_RUNS_TABLE_COLUMNS (several), every column with `all_columns`, or the `wanted`; the
    severity column only where some row has one; then, for a run with severity levels, its
    severity curves and its corruption mean (relative to `reference` where one is named).
    """
    if fmt != "table":
        chosen = result if part == "summary" else result.sections.get(part)
        if chosen is None and result.run is None:
            raise ClipshiftError(f"--part {part} is of one run: give one --run")
        if chosen is None:
            raise ClipshiftError(
                f"--part {part}: run {result.run.run_id} has no perturbations with severity levels"
            )
        names, rows = chosen.columns, chosen.rows
        if wanted:
            names, rows = pick_columns(names, rows, wanted)
        return format_rows(names, rows, fmt, max_rows=None)
    if wanted:
        shown = pick_columns(result.columns, result.rows, wanted)
    else:
        names = list(result.columns) if all_columns else None
        if names is None:
            names = list(STATS_TABLE_COLUMNS if result.run else STATS_RUNS_TABLE_COLUMNS)
        shown = drop_empty_severity(*pick_columns(result.columns, result.rows, names))
    blocks = [format_rows(*shown, fmt, max_rows=None)]
    curves = result.sections.get("severity")
    if curves is not None:
        blocks += [
            "\nseverity curves (mean and 95% interval half-width per severity):",
            format_rows(
                *pick_columns(curves.columns, curves.rows, SEVERITY_CURVE_COLUMNS),
                fmt,
                max_rows=None,
            ),
        ]
        means = result.sections["corruption_mean"]
        blocks += [
            "\ncorruption mean (shift = mean 1 - cosine over severities"
            + (f"; relative to run {reference}" if reference else "")
            + "):",
            format_rows(means.columns, means.rows, fmt, max_rows=None),
        ]
    return "\n".join(blocks)


def format_comparison(result, fmt: str) -> str:
    """`clipshift compare`'s output for an analysis.Comparison. json: one document with both
    runs, the rows and the Kendall taus; the table names the runs first, leaves out an empty
    severity column and ends with the taus; csv is the rows."""
    rows = [[row[c] for c in result.columns] for row in result.rows]
    if fmt == "json":

        def run(r) -> dict:
            return {k: getattr(r, k) for k in ("run_id", "model", "family")}

        taus = [[metric, tau, p] for metric, (tau, p) in result.kendall_tau.items()]
        document = {
            "run_a": run(result.run_a),
            "run_b": run(result.run_b),
            "rows": json.loads(format_rows(result.columns, rows, "json")),
            "kendall_tau": json.loads(format_rows(["metric", "tau", "p"], taus, "json")),
        }
        return json.dumps(document, indent=2)
    if fmt != "table":
        return format_rows(result.columns, rows, fmt, max_rows=None)
    lines = [
        f"{label}: run {run.run_id} ({run.model}, {run.family})"
        for label, run in (("A", result.run_a), ("B", result.run_b))
    ]
    lines.append(format_rows(*drop_empty_severity(result.columns, rows), fmt, max_rows=None))
    taus = ", ".join(
        f"{metric} {tau:.3f} (p {p:.3g})" for metric, (tau, p) in result.kendall_tau.items()
    )
    lines.append(f"Kendall tau of the augmentation rankings: {taus}")
    return "\n".join(lines)


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


def _workers(count: int | None) -> str | None:
    if count is None:  # another engine schedules the CPU stages
        return None
    if count == 0:
        return "CPU stages in this process"
    return f"{count} worker{'s' if count > 1 else ''}"
