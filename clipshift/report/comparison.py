"""Model-comparison figures: drawn when the store holds two or more runs (models) with
augmented rows, beside the per-run figures of the run chosen with --run.

The means, population std and n come from sql/summary_runs.sql; Python turns std and n into a
Student-t 95% interval (DuckDB has no t quantile) and ranks with scipy's Kendall tau.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import kendalltau
from scipy.stats import t as student_t

from .data import FigureUnavailable, ReportData
from .figures import FigureSpec, _annotate
from .style import SEQUENTIAL_CMAP, colour, label, paper_order

# the model metrics: pixel metrics do not depend on the model, l2 is on each model's own scale
MODEL_METRICS = ("cosine", "attention_similarity")


def _runs(data: ReportData) -> tuple[list[str], dict[str, str], dict[tuple[str, str], dict]]:
    """Run ids (the report's run first), their labels, and summary rows by (run, augmentation)."""
    rows = data.runs_summary()
    run_ids = list(dict.fromkeys(rows["run_id"]))
    if len(run_ids) < 2:
        raise FigureUnavailable(
            "the store holds one run with augmented rows: ingest another model into it "
            "to compare models"
        )
    run_ids.sort(key=lambda r: (r != data.run_id, r))
    labels = {}
    for run_id, model in zip(rows["run_id"], rows["model"], strict=True):
        labels[run_id] = f"{Path(str(model)).name} ({run_id[:6]})"
    by_key = {}
    for i, run_id in enumerate(rows["run_id"]):
        # a perturbation with levels is drawn once per level, as its stored label NAME@SEVERITY
        augmentation, severity = rows["augmentation"][i], rows["severity"][i]
        name = augmentation if _missing(severity) else f"{augmentation}@{int(severity)}"
        by_key[(run_id, name)] = {column: values[i] for column, values in rows.items()}
    return run_ids, labels, by_key


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _ci95(std_pop: float, n: float) -> float:
    """Half-width of the Student-t 95% interval of a mean, from the population std."""
    if not n or n < 2 or not np.isfinite(std_pop):
        return float("nan")
    sample_std = std_pop * np.sqrt(n / (n - 1))
    return float(student_t.ppf(0.975, n - 1) * sample_std / np.sqrt(n))


def model_bars(data: ReportData) -> Figure:
    """Per augmentation, one bar per model: mean cosine and attention similarity, 95% CI."""
    run_ids, labels, rows = _runs(data)
    names = paper_order({augmentation for _, augmentation in rows})
    fig = Figure(figsize=(max(8.0, 1.1 * len(names) + 2), 7.2), layout="constrained")
    axes = fig.subplots(len(MODEL_METRICS), 1, sharex=True)
    x = np.arange(len(names))
    width = 0.8 / len(run_ids)
    palette = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d", "#6d597a", "#b56576"]
    for ax, metric in zip(axes, MODEL_METRICS, strict=True):
        lows = []
        for i, run_id in enumerate(run_ids):
            found = [rows.get((run_id, n)) for n in names]
            means = np.array([r[f"{metric}_mean"] if r else np.nan for r in found], float)
            errors = np.array(
                [_ci95(r[f"{metric}_std"], r["n"]) if r else np.nan for r in found], float
            )
            ax.bar(
                x + (i - (len(run_ids) - 1) / 2) * width,
                means,
                width=width,
                yerr=errors,
                capsize=2,
                color=palette[i % len(palette)],
                label=labels[run_id],
            )
            lows.append(np.nanmin(means - np.nan_to_num(errors)))
        ax.set_ylabel(f"mean {label(metric)}\n(95% CI)")
        ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    axes[-1].set_xticks(x, [label(n, 13) for n in names], fontsize=8.5)
    for tick, name in zip(axes[-1].get_xticklabels(), names, strict=True):
        tick.set_color(colour(name))
        tick.set_fontweight("bold")
    axes[0].set_title("Which model moves less? Mean similarity to the original per augmentation")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False
    )
    return fig


def model_rank_agreement(data: ReportData) -> Figure:
    """Kendall tau between every two models' rankings of the augmentations (by mean cosine)."""
    run_ids, labels, rows = _runs(data)
    names = sorted({augmentation for _, augmentation in rows})
    matrix = np.full((len(run_ids), len(run_ids)), np.nan)
    for i, a in enumerate(run_ids):
        for j, b in enumerate(run_ids):
            shared = [n for n in names if (a, n) in rows and (b, n) in rows]
            if len(shared) >= 2:
                tau = kendalltau(
                    [rows[(a, n)]["cosine_mean"] for n in shared],
                    [rows[(b, n)]["cosine_mean"] for n in shared],
                ).statistic
                matrix[i, j] = tau
    size = 1.3 * len(run_ids) + 3
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=SEQUENTIAL_CMAP, vmin=-1, vmax=1)
    ticks = np.arange(len(run_ids))
    _annotate(ax, matrix, image, xs=ticks, ys=ticks)
    ax.set_xticks(ticks, [labels[r] for r in run_ids], rotation=30, ha="right", fontsize=8.5)
    ax.set_yticks(ticks, [labels[r] for r in run_ids], fontsize=8.5)
    ax.set_title("Rank agreement of the augmentations\n(Kendall tau, by mean cosine)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Kendall tau")
    return fig


MODEL_FIGURES: dict[str, FigureSpec] = {
    "model_bars": FigureSpec(
        model_bars,
        "Beyond the paper: every model of the store side by side, per augmentation: mean "
        "cosine and attention similarity to the original with Student-t 95% confidence "
        "intervals over the images.",
    ),
    "model_rank_agreement": FigureSpec(
        model_rank_agreement,
        "Beyond the paper: Kendall tau between two models' rankings of the augmentations by "
        "mean cosine (1: the same order; -1: reversed).",
    ),
}
