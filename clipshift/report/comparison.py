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

from ..query import named_query
from .data import FigureUnavailable, ReportData, _unmask, variant_label
from .figures import FigureSpec, _annotate, _note, _pick, _spans
from .style import CURVES, MAX_PANELS, PER_ROW, SEQUENTIAL_CMAP, colour, label, paper_order

# the model metrics: pixel metrics do not depend on the model, l2 is on each model's own scale
MODEL_METRICS = ("cosine", "attention_similarity")


def _runs(data: ReportData) -> tuple[list[str], dict[str, str], dict[tuple[str, str], dict]]:
    """Run ids (the report's run first), their labels, and summary rows by (run, augmentation):
    only runs with this run's augmented variants (the rest are named on the page)."""
    rows, left_out = data.comparable_runs()
    run_ids = list(dict.fromkeys(rows["run_id"]))
    if len(run_ids) < 2:
        if left_out:
            raise FigureUnavailable(
                f"no other run stored the augmentations of run {data.run_id[:12]}: "
                f"{len(left_out)} left out (listed under the figures)"
            )
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
    # at most PER_ROW groups to a row, each row a pair of panels (one per metric)
    spans = _spans(len(names), PER_ROW)
    groups = max(stop - start for start, stop in spans)
    height = 7.2 if len(spans) == 1 else 2.3 * len(MODEL_METRICS)
    fig = Figure(figsize=(max(8.0, 1.1 * groups + 2), height * len(spans)), layout="constrained")
    axes = fig.subplots(len(spans) * len(MODEL_METRICS), 1, squeeze=False)[:, 0]
    width = 0.8 / len(run_ids)
    palette = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d", "#6d597a", "#b56576"]
    for row, (start, stop) in enumerate(spans):
        part = names[start:stop]
        x = np.arange(len(part))
        pair = axes[row * len(MODEL_METRICS) : (row + 1) * len(MODEL_METRICS)]
        for ax, metric in zip(pair, MODEL_METRICS, strict=True):
            lows = []
            for i, run_id in enumerate(run_ids):
                found = [rows.get((run_id, n)) for n in part]
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
            ax.set_xlim(-0.6, groups - 0.4)
            ax.set_xticks(x)
            ax.tick_params(labelbottom=ax is pair[-1])
        pair[-1].set_xticks(x, [label(n, 13) for n in part], fontsize=8.5)
        for tick, name in zip(pair[-1].get_xticklabels(), part, strict=True):
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


def model_layer_drift(data: ReportData) -> Figure:
    """Per augmentation (at most MAX_PANELS), one line per model (at most CURVES): the mean
    pooled-token cosine to the original against relative depth, with its 95% band."""
    run_ids, labels, _ = _runs(data)
    result = named_query(data.con, "layer_drift_runs", run_ids=run_ids[:CURVES]).fetchnumpy()
    rows = {column: _unmask(values) for column, values in result.items()}
    measured = [r for r in run_ids[:CURVES] if (rows["run_id"] == r).any()]
    if len(measured) < 2:
        raise FigureUnavailable(
            "fewer than two of the compared runs hold layer metrics (runs stored before "
            "migration 0006 have none)"
        )
    names = np.array(
        [variant_label(a, s) for a, s in zip(rows["augmentation"], rows["severity"], strict=True)],
        dtype=object,
    )
    shown, note = _pick(paper_order(set(names)), MAX_PANELS)
    cols = min(3, len(shown))
    panels = int(np.ceil(len(shown) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * panels + 1.0), layout="constrained")
    axes = fig.subplots(panels, cols, sharex=True, sharey=True, squeeze=False).ravel()
    palette = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d", "#6d597a", "#b56576"]
    for ax, name in zip(axes, shown, strict=False):
        for i, run_id in enumerate(measured):
            mine = (rows["run_id"] == run_id) & (names == name)
            order = np.argsort(rows["depth"][mine])
            depth = rows["depth"][mine][order].astype(float)
            mean = rows["cosine_mean"][mine][order].astype(float)
            band = np.nan_to_num(rows["cosine_ci95"][mine][order].astype(float))
            tint = palette[i % len(palette)]
            ax.plot(depth, mean, color=tint, lw=1.5, label=labels[run_id])
            ax.fill_between(depth, mean - band, mean + band, color=tint, alpha=0.15, lw=0)
        ax.set_title(label(name, 24), color=colour(name), fontsize=10, fontweight="bold")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    fig.supxlabel("relative depth (layer / number of layers)")
    fig.supylabel("mean cosine to the original's pooled token")
    fig.suptitle("Where inside each model the representation moves")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
    _note(fig, note)
    return fig


MODEL_FIGURES: dict[str, FigureSpec] = {
    "model_bars": FigureSpec(
        model_bars,
        "Beyond the paper: every run of the store with this run's augmented variants side by "
        "side, per augmentation: mean "
        "cosine and attention similarity to the original with Student-t 95% confidence "
        "intervals over the images.",
    ),
    "model_layer_drift": FigureSpec(
        model_layer_drift,
        "Beyond the paper: does the representation start to move at the same relative depth "
        "in every model? Per augmentation, the mean cosine between the variant's and the "
        "original's pooled token against layer / number of layers, one line per model, with "
        "95% confidence bands.",
    ),
    "model_rank_agreement": FigureSpec(
        model_rank_agreement,
        "Beyond the paper: Kendall tau between two models' rankings of the augmentations by "
        "mean cosine (1: the same order; -1: reversed).",
    ),
}
