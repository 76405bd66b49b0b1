"""Shift against accuracy: does an image (an augmentation) whose embedding moves further lose
its true class more often?

`accuracy` classifies a run's labelled images zero-shot (clipshift.zeroshot: predictions
stored, read back on a second call) and returns
- the accuracy per augmentation and severity (top-1, top-5, error; sql/accuracy.sql) and,
  for levelled perturbations, ImageNet-C's CE, relative CE and mCE against a reference run
  (sql/corruption_error.sql);
- per augmentation, across images: the point-biserial correlation between a variant's cosine
  to its original and whether it lost the true class, over the images whose original is
  classified right (sql/shift_accuracy_summary.sql), with a bootstrap 95% CI (images
  resampled, sql/shift_accuracy.sql's rows);
- across augmentations (each augmentation and severity a point): the correlation between the
  mean cosine and the top-1 accuracy drop, the least-squares line through them, and bootstrap
  95% CIs of both (points resampled).

The point estimates are SQL's (DuckDB's corr, regr_slope, regr_intercept); only the
resampling is here, with numpy's same Pearson formula on each resample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import ClipshiftError
from .defaults import DEFAULT_LABELS, DEFAULT_TEMPLATE
from .query import Rows, connect, named_query
from .runs import Run, resolve_run
from .store import Store
from .zeroshot import ZeroshotResult, check_run_labels, load_labels, zeroshot

# bootstrap resamples behind each 95% CI: the CI's ends move by ~0.01 between seeds at 1,000
RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass
class Correlation:
    """A Pearson (point-biserial where one side is 0/1) correlation with its bootstrap CI."""

    r: float | None  # None where a side is constant
    low: float | None
    high: float | None
    n: int


@dataclass
class Fit:
    """The least-squares line accuracy drop = slope * mean cosine + intercept, across points,
    with the bootstrap 95% band of the line at each of `xs`."""

    slope: float
    intercept: float
    xs: list[float]
    low: list[float]
    high: list[float]


@dataclass
class AccuracyResult:
    zeroshot: ZeroshotResult  # flip rates, and sections "accuracy", "corruption_error"
    points: Rows  # per augmentation and severity: n, mean_cosine, top1_drop, point_biserial
    per_augmentation: dict[str, Correlation]  # cosine vs lost, across images
    across: Correlation  # mean cosine vs top-1 drop, across augmentations and severities
    fit: Fit | None  # None with fewer than two distinct points

    @property
    def run(self):
        return self.zeroshot.rows.run


def accuracy(
    db: str | os.PathLike,
    labels: str = DEFAULT_LABELS,
    template: str = DEFAULT_TEMPLATE,
    run: str | None = None,
    reference: str | None = None,
    device: str = "auto",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> AccuracyResult:
    """Accuracy, CE/mCE and shift-against-accuracy of a run's labelled images (see the module
    docstring). A run whose images carry no labels, or a label not in `labels`, is a
    ClipshiftError."""
    store = Store.open(db)
    chosen = resolve_run(store, run)
    # before anything is classified (or the model loaded): labels there, and in the set
    if not check_run_labels(connect(store), chosen, load_labels(labels)):
        raise ClipshiftError(
            f"run {chosen.run_id}'s images carry no labels: ingest a dataset with its labels "
            "(--labels-from folder, --label-key, --label-column)"
        )
    result = zeroshot(db, labels=labels, template=template, run=chosen.run_id, device=device)
    if reference is not None:  # the reference's predictions, then the sections against it
        zeroshot(db, labels=labels, template=template, run=reference, device=device)
        result = zeroshot(
            db,
            labels=labels,
            template=template,
            run=chosen.run_id,
            device=device,
            reference=reference,
        )
    key = {"label_set": result.label_set.key, "template": result.template}
    found = shift_against_accuracy(
        connect(db), result.rows.run, **key, resamples=resamples, seed=seed
    )
    return AccuracyResult(result, found.points, found.per_augmentation, found.across, found.fit)


@dataclass
class ShiftAccuracy:
    """Shift against accuracy of one run, label set and template (the module docstring)."""

    points: Rows
    per_augmentation: dict[str, Correlation]
    across: Correlation
    fit: Fit | None


def shift_against_accuracy(
    con,
    run: Run,
    label_set: str,
    template: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> ShiftAccuracy:
    """From the stored predictions of `run` against `label_set` (a LabelSet key) and
    `template`: the points, the per-augmentation correlations and the correlation and fit
    across augmentations, with their bootstrap CIs. Classifies nothing."""
    key = {"run_id": run.run_id, "label_set": label_set, "template": template}
    summary = named_query(con, "shift_accuracy_summary", **key)
    points = Rows([d[0] for d in summary.description], summary.fetchall(), run)
    per_image = named_query(con, "shift_accuracy", **key).fetchall()
    rng = np.random.default_rng(seed)
    biserial = {r["augmentation"]: r["point_biserial"] for r in points.records()}
    per_augmentation = {}
    for augmentation in biserial:
        rows = [(c, lost) for a, _, _, c, lost in per_image if a == augmentation]
        x, y = (np.array(v, np.float64) for v in zip(*rows, strict=True)) if rows else ([], [])
        per_augmentation[augmentation] = _with_ci(
            _finite(biserial[augmentation]), np.asarray(x), np.asarray(y), resamples, rng
        )
    across, fit = _across(con, key, points, resamples, rng)
    return ShiftAccuracy(points, per_augmentation, across, fit)


def _across(
    con, key: dict, points: Rows, resamples: int, rng: np.random.Generator
) -> tuple[Correlation, Fit | None]:
    records = points.records()
    x = np.array([r["mean_cosine"] for r in records], np.float64)
    y = np.array([r["top1_drop"] for r in records], np.float64)
    # the point estimates in SQL, over the same points
    r, slope, intercept = con.execute(
        "SELECT corr(x, y), regr_slope(y, x), regr_intercept(y, x) "
        "FROM (SELECT unnest($x::DOUBLE[]) AS x, unnest($y::DOUBLE[]) AS y)",
        {"x": x.tolist(), "y": y.tolist()},
    ).fetchone()
    correlation = _with_ci(_finite(r), x, y, resamples, rng)
    if slope is None or not np.isfinite(slope):
        return correlation, None
    xs = np.linspace(x.min(), x.max(), 50)
    lines = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        if np.ptp(x[pick]) > 0:
            b, a = np.polyfit(x[pick], y[pick], 1)
            lines.append(b * xs + a)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (
        np.percentile(lines, [tail, 100 - tail], axis=0) if lines else (xs * np.nan, xs * np.nan)
    )
    return correlation, Fit(
        float(slope), float(intercept), xs.tolist(), low.tolist(), high.tolist()
    )


def _with_ci(
    r: float | None, x: np.ndarray, y: np.ndarray, resamples: int, rng: np.random.Generator
) -> Correlation:
    """`r` with the percentile bootstrap CI of the Pearson correlation of (x, y); resamples
    where a side is constant are dropped (their correlation is undefined)."""
    n = len(x)
    if r is None or n < 3:
        return Correlation(r, None, None, n)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        a, b = x[pick], y[pick]
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            draws.append(np.corrcoef(a, b)[0, 1])
    if not draws:
        return Correlation(r, None, None, n)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Correlation(r, float(low), float(high), n)


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
