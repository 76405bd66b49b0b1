"""`report`: render the figures of one run into a folder, with index.html showing them."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import matplotlib
from PIL import Image

from .. import ClipshiftError
from ..defaults import (
    DEFAULT_LINKAGE,
    FIGURE_FORMATS,
    HEATMAP_IMAGES,
    LINKAGE_METHODS,
    REPORT_OUT,
    REPORT_SAMPLES,
)
from ..query import connect
from ..runs import Run, resolve_run
from ..store import Store
from .comparison import MODEL_FIGURES
from .data import FigureUnavailable, LeftOutRun, ReportData
from .figures import FIGURES, FigureSpec
from .page import render_page
from .style import DPI, RC

# the per-run figures, then the model comparison (drawn by default when the store holds 2+ runs)
ALL_FIGURES: dict[str, FigureSpec] = {**FIGURES, **MODEL_FIGURES}


@dataclass
class FigureResult:
    name: str
    path: Path | None  # None: the store lacks what the figure needs, `note` says what
    seconds: float
    note: str | None = None


@dataclass
class ReportResult:
    out: Path
    index: Path
    run: Run
    figures: list[FigureResult]
    # runs of the store the model comparison leaves out, with the reason (empty when it is
    # not drawn)
    left_out: list[LeftOutRun] = field(default_factory=list)


def report(
    db: str | os.PathLike,
    run: str | None = None,
    model: str | None = None,
    out: str | os.PathLike = REPORT_OUT,
    figures: Sequence[str] | str | None = None,
    samples: int = REPORT_SAMPLES,
    fmt: str = "png",
    on_figure: Callable[[FigureResult], None] | None = None,
    method: str = DEFAULT_LINKAGE,
    reference: str | None = None,
) -> ReportResult:
    """Render the figures of one run into `out` (one file each) and `out/index.html`; where
    the store holds several runs, the model-comparison figures of the runs that stored the
    same augmented variants as well (`ReportResult.left_out` names the others, and why).

    `figures` picks some (default all, in the page's order); `samples` is the number of
    images in attention_grid; `method` the scipy linkage of the dendrograms; `reference` a run
    (id or unique prefix) the corruption mean is compared with, as `stats --reference`. A
    figure whose data the store lacks (pixels not kept) is named on the page instead; the rest
    render.
    Files of an earlier report in `out` are replaced, never mixed with this one, and only
    once this one is complete: it is drawn in a hidden folder beside `out`, so a report that
    fails or is killed midway leaves the earlier one whole.
    """
    if fmt not in FIGURE_FORMATS:
        raise ClipshiftError(f"--format {fmt}: use one of {', '.join(FIGURE_FORMATS)}")
    if samples < 1:
        raise ClipshiftError(f"--samples {samples}: use at least 1")
    if method not in LINKAGE_METHODS:
        raise ClipshiftError(f"linkage method {method}: use one of {', '.join(LINKAGE_METHODS)}")
    store = Store.open(db)
    con = connect(store)
    try:
        chosen = resolve_run(store, run, model)
        reference_id = resolve_run(store, reference).run_id if reference is not None else None
        data = ReportData(
            con,
            chosen,
            samples=samples,
            heatmap_images=HEATMAP_IMAGES,
            method=method,
            reference=reference_id,
            store=store,
        )
        names = _figure_names(figures, several_runs=_run_count(con) > 1)
        images = data.images()
        if not images["images"]:
            raise ClipshiftError(f"run {chosen.run_id} holds no images yet: nothing to draw")
        out = _prepare(Path(out))
        # rendered beside `out`, then swapped in: a report killed while drawing (minutes on a
        # large store) leaves the previous one whole
        staging = _staging(out)
        try:
            results = []
            with matplotlib.rc_context(RC):
                for name in names:
                    results.append(_render(name, data, staging, out, fmt))
                    if on_figure:
                        on_figure(results[-1])
            compared = any(r.name in MODEL_FIGURES for r in results)
            left_out = data.comparable_runs()[1] if compared else []
            page = render_page(
                chosen,
                images,
                [
                    (r.name, r.path.name if r.path else None, ALL_FIGURES[r.name].caption, r.note)
                    for r in results
                ],
                data.summary(),
                corruption_mean=data.corruption_mean(),
                reference=reference_id,
                widths={r.name: _display_width(staging / r.path.name) for r in results if r.path},
                left_out=left_out,
            )
            (staging / "index.html").write_text(page, encoding="utf-8")
            _swap(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        con.close()
    return ReportResult(
        out=out, index=out / "index.html", run=chosen, figures=results, left_out=left_out
    )


def _render(name: str, data: ReportData, staging: Path, out: Path, fmt: str) -> FigureResult:
    """Draw one figure into `staging`; its result names where it will be once swapped in."""
    start = perf_counter()
    try:
        figure = ALL_FIGURES[name].draw(data)
    except FigureUnavailable as missing:
        return FigureResult(name, None, perf_counter() - start, str(missing))
    filename = f"{name}.{fmt}"
    figure.savefig(staging / filename, format=fmt, dpi=DPI)
    return FigureResult(name, out / filename, perf_counter() - start)


def _display_width(path: Path) -> int | None:
    """A PNG's width in CSS pixels at its print size (96 per inch), so that every figure
    shows its text at the same size on the page; SVG and PDF carry their size themselves."""
    if path.suffix != ".png":
        return None
    with Image.open(path) as image:
        return round(image.width * 96 / DPI)


def _run_count(con) -> int:
    return con.execute("SELECT count(*) FROM runs").fetchone()[0]


def _figure_names(figures: Sequence[str] | str | None, several_runs: bool = False) -> list[str]:
    if figures is None:
        return list(ALL_FIGURES if several_runs else FIGURES)
    if isinstance(figures, str):
        figures = [f.strip() for f in figures.split(",") if f.strip()]
    unknown = [f for f in figures if f not in ALL_FIGURES]
    if unknown:
        raise ClipshiftError(
            f"unknown figure {', '.join(unknown)}: choose from {', '.join(ALL_FIGURES)}"
        )
    if not figures:
        raise ClipshiftError(f"no figure named: choose from {', '.join(ALL_FIGURES)}")
    return list(dict.fromkeys(figures))  # each once, in the order asked


def _prepare(out: Path) -> Path:
    """Make `out` (an earlier report there stays until the new one is complete)."""
    if out.exists() and not out.is_dir():
        raise ClipshiftError(f"--out {out} is a file: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClipshiftError(f"cannot write the report into {out}: {exc.strerror}") from None
    return out


def _staging(out: Path) -> Path:
    """A fresh hidden folder beside `out` (the same file system, so the swap is renames),
    named with this process's id; those a killed report left behind are removed first."""
    prefix = f".{out.name}."
    for folder in out.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid = folder.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    try:
        return Path(
            tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".partial", dir=out.parent)
        )
    except OSError as exc:
        raise ClipshiftError(f"cannot write the report beside {out}: {exc.strerror}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _report_files(folder: Path) -> set[str]:
    """The names of the files a report writes that are in `folder` (other files are the
    user's, left alone)."""
    names = {f"{name}.{fmt}" for name in ALL_FIGURES for fmt in FIGURE_FORMATS} | {"index.html"}
    return {name for name in names if (folder / name).is_file()}


def _swap(staging: Path, out: Path) -> None:
    """Replace the report in `out` by the one in `staging`: each file by a rename, index.html
    after every figure it shows, the earlier report's other files last. A kill in between
    leaves a page whose every figure exists."""
    new = _report_files(staging)
    old = _report_files(out)
    try:
        for name in sorted(new - {"index.html"}):
            os.replace(staging / name, out / name)
        os.replace(staging / "index.html", out / "index.html")
        for name in old - new:
            (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise ClipshiftError(f"cannot write the report into {out}: {exc.strerror}") from None
