"""One function per figure of the paper: each reads named queries (or stored pixels and
attention maps) through ReportData and returns a matplotlib Figure.

No metric is computed here: every number drawn comes out of a query in sql/. Python only
smooths (the KDE of a distribution, as the paper draws it), clusters the `pairwise` distances
for the dendrograms, and lays things out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from scipy.cluster import hierarchy
from scipy.stats import gaussian_kde

from .. import ClipshiftError
from ..analysis import DEFAULT_THRESHOLD_FRACTION, Clusters, cluster_pairs
from ..defaults import ORIGINAL
from ..runs import Run
from .data import FigureUnavailable, ReportData
from .style import (
    ATTENTION_CMAP,
    CURVES,
    LIST_INCHES,
    MAX_IMAGE_COLUMNS,
    MAX_PANELS,
    ORIGINAL_COLOUR,
    PER_ROW,
    SCORE_COLOURS,
    SCORES,
    SEQUENTIAL_CMAP,
    colour,
    label,
    paper_order,
)

KDE_POINTS = 200


# -- the images ---------------------------------------------------------------------------


def augmentations(data: ReportData) -> Figure:
    """One image, original and its augmentations in a row (Fig. 4a)."""
    image = data.pixel_sample()[0]
    names, shown = _pick(paper_order(image["variants"]), MAX_IMAGE_COLUMNS)
    fig = Figure(figsize=(1.6 * len(names), 2.3), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        ax.imshow(image["variants"][name]["pixels"])
        ax.set_title(label(name, 13), color=colour(name), fontsize=10, fontweight="bold")
        _bare(ax)
    _note(fig, shown)
    return fig


def attention_grid(data: ReportData) -> Figure:
    """Sampled images: each row original + augmentations with the run's attention map (the
    last-layer CLS row for CLIP) overlaid, the cosine to the original in each title (Fig. 1)."""
    images = data.pixel_sample()
    names, shown = _pick(paper_order(images[0]["variants"]), MAX_IMAGE_COLUMNS)
    grid = int(data.run.patch_grid)
    fig = Figure(figsize=(1.5 * len(names), 1.85 * len(images) + 0.5), layout="constrained")
    axes = fig.subplots(len(images), len(names), squeeze=False)
    for row, image in enumerate(images):
        for col, name in enumerate(names):
            ax = axes[row, col]
            variant = image["variants"].get(name)
            _bare(ax)
            if variant is None:
                continue
            pixels = variant["pixels"]
            height, width = pixels.shape[:2]
            ax.imshow(pixels)
            attention = _min_max(variant["attention"]).reshape(grid, grid)
            # bilinear upsampling of the g x g map onto the image, drawn translucent on top
            ax.imshow(
                attention,
                cmap=ATTENTION_CMAP,
                alpha=0.45,
                vmin=0,
                vmax=1,
                interpolation="bilinear",
                extent=(0, width, height, 0),
            )
            ax.set_title(
                "original" if name == ORIGINAL else f"cos {variant['cosine']:.3f}", fontsize=9
            )
            if row == 0:
                # the column header above the first title, in the augmentation's colour
                ax.annotate(
                    label(name, 13),
                    (0.5, 1.0),
                    xycoords="axes fraction",
                    xytext=(0, 16),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=10,
                    fontweight="bold",
                    color=colour(name),
                )
        axes[row, 0].set_ylabel(_short_path(image["path"]), fontsize=8)
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), ATTENTION_CMAP),
        ax=axes,
        location="bottom",
        shrink=0.25,
        aspect=30,
        label=f"{_attention_label(data.run)} (each map min-max scaled)",
    )
    _note(fig, shown)
    return fig


# -- distributions ------------------------------------------------------------------------


def l2_kde(data: ReportData) -> Figure:
    """Gaussian KDE of l2 per augmentation, each curve labelled at its peak (Fig. 4b)."""
    values = _by_augmentation(data.query("shift_values"), "l2")
    low = min(v.min() for v in values.values())
    high = max(v.max() for v in values.values())
    pad = 0.05 * (high - low or 1.0)
    grid = np.linspace(max(0.0, low - pad), high + pad, KDE_POINTS)
    # at most CURVES curves to a panel: a corruptions run has 75
    groups = _chunks(list(values), CURVES)
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    size = (8, 4.5) if len(groups) == 1 else (11, 3.6 * rows + 0.6)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, group in zip(axes, groups, strict=False):
        peaks = []
        for name in group:
            density = _kde(values[name], grid)
            ax.plot(grid, density, color=colour(name), lw=1.8)
            ax.fill_between(grid, density, color=colour(name), alpha=0.12, lw=0)
            peaks.append(density.max())
        ax.set_ylim(0, max(peaks) * 1.25)
    title = "Embedding shift: KDE of l2 distance per augmentation"
    if len(groups) == 1:
        axes[0].set_xlabel("l2 distance to the original embedding")
        axes[0].set_ylabel("density")
        axes[0].set_title(title)
    else:
        fig.supxlabel("l2 distance to the original embedding")
        fig.supylabel("density")
        fig.suptitle(title)
    # laid out once for every panel's labels (a draw per panel took most of a 75-variant run)
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    for ax, group in zip(axes, groups, strict=False):
        peaks = []
        for line, name in zip(ax.get_lines(), group, strict=True):
            x, y = line.get_data()
            peak = int(np.argmax(y))
            peaks.append((x[peak], y[peak], name))
        _label_peaks(renderer, ax, peaks)
    return fig


def cosine_distribution(data: ReportData) -> Figure:
    """Histogram and KDE of cosine per augmentation, mean and std in the legend (Fig. 4c).

    One panel per augmentation on a shared x axis: overlaid, a tight distribution (cosine
    near 1 for a mild augmentation) would flatten every wide one to the floor.
    """
    values = _by_augmentation(data.query("shift_values"), "cosine")
    names, shown = _pick(list(values), MAX_PANELS)
    values = {name: values[name] for name in names}
    summary = _rows(data.summary(), "augmentation")
    low = min(v.min() for v in values.values())
    high = max(v.max() for v in values.values())
    pad = 0.02 * (high - low or 1.0)
    grid = np.linspace(low - pad, min(1.0, high + pad), KDE_POINTS)
    bins = np.linspace(low - pad, min(1.0, high + pad), 50)
    cols = 3
    rows = math.ceil(len(values) / cols)
    fig = Figure(figsize=(10, 2.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax, (name, cosine) in zip(axes, values.items(), strict=False):
        stats = summary[name]
        ax.hist(cosine, bins=bins, density=True, color=colour(name), alpha=0.35, lw=0)
        ax.plot(grid, _kde(cosine, grid), color=colour(name), lw=1.6)
        ax.axvline(stats["cosine_mean"], color=colour(name), ls="--", lw=1)
        ax.legend(
            handles=[
                Patch(
                    color=colour(name),
                    alpha=0.6,
                    label=f"mean {stats['cosine_mean']:.3f}\nstd {stats['cosine_std']:.3f}",
                )
            ],
            loc="best",
            frameon=False,
            fontsize=8.5,
            handlelength=1,
        )
        ax.set_title(label(name), color=colour(name), fontweight="bold", fontsize=10)
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
    for ax in axes[len(values) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.tick_params(labelbottom=True)
    fig.supxlabel("cosine similarity to the original embedding")
    fig.supylabel("density")
    fig.suptitle("Embedding similarity: distribution of cosine per augmentation")
    _note(fig, shown)
    return fig


# -- clustering -----------------------------------------------------------------------------


def dendrogram(data: ReportData) -> Figure:
    """Hierarchical clustering of the augmentations on their mean pairwise cosine distance,
    with the cluster threshold line (Fig. 4d)."""
    found = _clusters(data)
    names, linkage, threshold = found.augmentations, found.linkage, found.threshold
    clusters = len(set(found.labels))
    row, text = _list_rows(len(names), 0.42)
    fig = Figure(figsize=(8, row * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    tree = hierarchy.dendrogram(
        linkage,
        labels=[label(n) for n in names],
        ax=ax,
        orientation="left",  # root on the left, leaf names on the right: horizontal, apart
        link_color_func=_link_colours(linkage, threshold),
        leaf_font_size=text,
    )
    for tick, leaf in zip(ax.get_yticklabels(), tree["leaves"], strict=True):
        tick.set_color(colour(names[leaf]))
        tick.set_fontweight("bold")
    ax.axvline(threshold, color="#c0392b", ls="--", lw=1.2)
    ax.annotate(
        f"threshold {threshold:.3g} ({DEFAULT_THRESHOLD_FRACTION} x max merge)",
        (threshold, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(-4, 0),
        textcoords="offset points",
        color="#c0392b",
        ha="right",
        va="top",
        fontsize=8.5,
    )
    ax.spines["right"].set_visible(False)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"merge distance ({data.method} linkage of mean cosine distance)")
    ax.set_title(f"Augmentation clusters: {clusters} at the threshold")
    return fig


def clustermap(data: ReportData) -> Figure:
    """The five scores as a heatmap, augmentations reordered by their dendrogram (Fig. 8a)."""
    found = _clusters(data)
    names, linkage = found.augmentations, found.linkage
    scores = _rows(data.scores(), "augmentation")
    row, text = _list_rows(len(names), 0.5)
    fig = Figure(figsize=(8.5, row * len(names) + 1.6), layout="constrained")
    tree_ax, heat_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3.2], "wspace": 0})
    tree = hierarchy.dendrogram(
        linkage,
        orientation="left",
        ax=tree_ax,
        no_labels=True,
        link_color_func=lambda _: ORIGINAL_COLOUR,
    )
    tree_ax.set_axis_off()
    ordered = [names[leaf] for leaf in tree["leaves"]]  # bottom to top, as the tree draws them
    matrix = np.array([[scores[name][s] for s in SCORES] for name in ordered])
    # the tree puts leaf k at y = 10k + 5: rows of height 10 line the heatmap up with it
    extent = (0, len(SCORES), 0, 10 * len(ordered))
    image = heat_ax.imshow(
        matrix, cmap=SEQUENTIAL_CMAP, aspect="auto", origin="lower", extent=extent
    )
    tree_ax.set_ylim(0, 10 * len(ordered))
    _annotate(
        heat_ax,
        matrix,
        image,
        xs=np.arange(len(SCORES)) + 0.5,
        ys=10 * np.arange(len(ordered)) + 5,
        size=min(8.5, text),
    )
    heat_ax.set_xticks(np.arange(len(SCORES)) + 0.5, [label(s, 12) for s in SCORES])
    heat_ax.set_yticks(10 * np.arange(len(ordered)) + 5, [label(n) for n in ordered], fontsize=text)
    heat_ax.yaxis.tick_right()
    for tick, name in zip(heat_ax.get_yticklabels(), ordered, strict=True):
        tick.set_color(colour(name))
        tick.set_fontweight("bold")
    heat_ax.tick_params(length=0)
    for side in heat_ax.spines.values():
        side.set_visible(False)
    fig.colorbar(image, ax=heat_ax, location="top", shrink=0.5, label="mean score")
    fig.suptitle("Five scores, augmentations ordered by their dendrogram")
    return fig


# -- the five scores ---------------------------------------------------------------------


def radar(data: ReportData) -> Figure:
    """One radar per augmentation over the five scores; the best and worst value of each
    score over all augmentations shaded (Fig. 5)."""
    scores = _rows(data.scores(), "augmentation")
    names = paper_order(scores)
    matrix = np.array([[scores[n][s] for s in SCORES] for n in names], dtype=np.float64)
    best, worst = np.nanmax(matrix, axis=0), np.nanmin(matrix, axis=0)  # over every one
    names, shown = _pick(names, MAX_PANELS)
    matrix = np.array([[scores[n][s] for s in SCORES] for n in names], dtype=np.float64)
    angles = np.linspace(0, 2 * np.pi, len(SCORES), endpoint=False)
    closed = np.append(angles, angles[0])
    # zoomed to the scores' range (the scale is labelled): from 0 they all hug the rim
    inner = max(-1.0, math.floor(np.nanmin(worst) * 10) / 10 - 0.1)
    outer = max(1.0, math.ceil(np.nanmax(best) * 10) / 10)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.3 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, subplot_kw={"projection": "polar"}, squeeze=False).ravel()
    for ax, name, values in zip(axes, names, matrix, strict=False):
        ax.set_theta_offset(np.pi / 2)  # the first score on top
        ax.fill(closed, np.append(best, best[0]), color="#2e7d32", alpha=0.10, lw=0)
        ax.plot(closed, np.append(best, best[0]), color="#2e7d32", lw=1, ls="--")
        ax.fill(closed, np.append(worst, worst[0]), color="#c62828", alpha=0.10, lw=0)
        ax.plot(closed, np.append(worst, worst[0]), color="#c62828", lw=1, ls=":")
        ax.plot(closed, np.append(values, values[0]), color=colour(name), lw=2)
        ax.fill(closed, np.append(values, values[0]), color=colour(name), alpha=0.25)
        ax.set_ylim(inner, outer)
        ax.set_xticks(angles, [label(s, 12) for s in SCORES], fontsize=7.5)
        ax.tick_params(axis="x", pad=1)
        ax.tick_params(axis="y", labelsize=7, labelcolor="#555555")
        ax.yaxis.set_major_locator(MaxNLocator(4))
        for tick in ax.get_yticklabels():  # readable where a polygon crosses them
            tick.set_bbox({"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
        ax.set_rlabel_position(180 / len(SCORES))  # between the first two spokes
        ax.set_title(label(name), color=colour(name), fontweight="bold", pad=14)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.legend(
        handles=[
            (
                Patch(facecolor="#2e7d32", alpha=0.2),
                Line2D([], [], color="#2e7d32", ls="--", lw=1),
            ),
            (
                Patch(facecolor="#c62828", alpha=0.2),
                Line2D([], [], color="#c62828", ls=":", lw=1),
            ),
        ],
        labels=["best augmentation on each score", "worst augmentation on each score"],
        loc="outside lower center",
        ncols=2,
        frameon=False,
    )
    _note(fig, shown)
    return fig


def metrics_heatmap(data: ReportData) -> Figure:
    """The five scores (and overall) x augmentations, columns sorted by overall (Fig. 3)."""
    scores = data.scores()  # sorted by rank: best overall first
    names = [str(n) for n in scores["augmentation"]]
    rows = (*SCORES, "overall")
    matrix = np.array([scores[s] for s in rows], dtype=np.float64)
    # at most PER_ROW columns to a panel, the panels stacked, one colour scale
    spans = _spans(len(names), PER_ROW)
    width = max(stop - start for start, stop in spans)
    height = 4.6 if len(spans) == 1 else 3.4
    fig = Figure(figsize=(1.0 * width + 2.2, height * len(spans)), layout="constrained")
    axes = fig.subplots(len(spans), 1, squeeze=False)[:, 0]
    low, high = np.nanmin(matrix), np.nanmax(matrix)
    for ax, (start, stop) in zip(axes, spans, strict=True):
        part = matrix[:, start:stop]
        image = ax.imshow(part, cmap=SEQUENTIAL_CMAP, aspect="auto", vmin=low, vmax=high)
        ax.set_xlim(-0.5, width - 0.5)
        _annotate(ax, part, image, xs=np.arange(stop - start), ys=np.arange(len(rows)))
        ax.axhline(len(SCORES) - 0.5, color="white", lw=3)
        ax.set_xticks(
            np.arange(stop - start), [label(n, 13) for n in names[start:stop]], fontsize=8.5
        )
        ax.set_yticks(np.arange(len(rows)), [label(s) for s in rows])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean score")
    axes[0].set_title("Mean scores, augmentations sorted by overall score (best left)")
    return fig


def rank(data: ReportData) -> Figure:
    """Overall score per augmentation as bars, ranked (Fig. 6)."""
    scores = data.scores()
    names = [str(n) for n in scores["augmentation"]]
    overall = np.asarray(scores["overall"], dtype=np.float64)
    ranks = [int(r) for r in scores["rank"]]
    row, text = _list_rows(len(names), 0.42)
    fig = Figure(figsize=(7.5, row * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]  # rank 1 on top
    ax.barh(y, overall, color=[colour(n) for n in names], height=0.7)
    for yi, value in zip(y, overall, strict=True):
        ax.text(value, yi, f" {value:.3f}", va="center", fontsize=text)
    ax.set_yticks(y, [f"{r}. {label(n)}" for r, n in zip(ranks, names, strict=True)], fontsize=text)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlim(min(0.0, np.nanmin(overall)), np.nanmax(overall) * 1.12)
    ax.set_xlabel("overall score (mean of the five scores)")
    ax.set_title("Augmentations ranked by overall score (1 = least shift)")
    return fig


def l2_bar(data: ReportData) -> Figure:
    """Mean l2 per augmentation with std error bars (Fig. 7)."""
    summary = _rows(data.summary(), "augmentation")
    names = sorted(summary, key=lambda n: summary[n]["l2_mean"])
    means = np.array([summary[n]["l2_mean"] for n in names])
    stds = np.array([summary[n]["l2_std"] for n in names])
    spans = _spans(len(names), PER_ROW)
    width = max(stop - start for start, stop in spans)
    height = 4.4 if len(spans) == 1 else 3.2
    fig = Figure(figsize=(max(8, 0.75 * width), height * len(spans)), layout="constrained")
    axes = fig.subplots(len(spans), 1, squeeze=False)[:, 0]
    for ax, (start, stop) in zip(axes, spans, strict=True):
        x = np.arange(stop - start)
        ax.bar(
            x,
            means[start:stop],
            yerr=stds[start:stop],
            color=[colour(n) for n in names[start:stop]],
            capsize=4,
            width=0.7,
        )
        ax.set_xticks(x, [label(n, 13) for n in names[start:stop]], fontsize=8.5)
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylim(0, np.nanmax(means + stds) * 1.1)
    ylabel = "mean l2 distance to the original (± std)"
    if len(spans) == 1:
        axes[0].set_ylabel(ylabel)
    else:
        fig.supylabel(ylabel)
    axes[0].set_title("Embedding shift: mean l2 distance per augmentation")
    return fig


def metric_averages(data: ReportData) -> Figure:
    """Mean of each score per augmentation, in the paper's order, unsorted (Fig. 8b)."""
    scores = _rows(data.scores(), "augmentation")
    names = paper_order(scores)
    values = np.array([[scores[n][s] for s in SCORES] for n in names], dtype=np.float64)
    spans = _spans(len(names), PER_ROW)
    groups = max(stop - start for start, stop in spans)
    height = 4.6 if len(spans) == 1 else 3.4
    fig = Figure(figsize=(max(10, 1.1 * groups), height * len(spans)), layout="constrained")
    axes = fig.subplots(len(spans), 1, squeeze=False)[:, 0]
    width = 0.8 / len(SCORES)
    for ax, (start, stop) in zip(axes, spans, strict=True):
        part = names[start:stop]
        x = np.arange(len(part))
        for i, score in enumerate(SCORES):
            ax.bar(
                x + (i - (len(SCORES) - 1) / 2) * width,
                [scores[n][score] for n in part],
                width=width,
                color=SCORE_COLOURS[score],
                label=label(score),
            )
        ax.scatter(
            x,
            [scores[n]["overall"] for n in part],
            marker="D",
            color="black",
            zorder=3,
            label="overall",
            s=22,
        )
        ax.set_xticks(x, [label(n, 13) for n in part], fontsize=8.5)
        for tick, name in zip(ax.get_xticklabels(), part, strict=True):
            tick.set_color(colour(name))
            tick.set_fontweight("bold")
        ax.set_xlim(-0.6, groups - 0.4)
        ax.set_ylim(min(0.0, np.nanmin(values)), 1.0)
        ax.set_ylabel("mean score")
    axes[0].set_title("Mean of each score per augmentation")
    axes[-1].legend(ncols=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return fig


# -- per image ----------------------------------------------------------------------------


def cosine_heatmap(data: ReportData) -> Figure:
    """Seeded random images x augmentations, the cosine to the original in each cell (Fig. 9)."""
    rows = data.query("cosine_sample", samples=data.heatmap_images)
    picks = sorted(set(int(p) for p in rows["pick"]))
    names, shown = _pick(paper_order(set(str(a) for a in rows["augmentation"])), PER_ROW)
    matrix = np.full((len(picks), len(names)), np.nan)
    paths = {}
    for pick, path, name, cosine in zip(
        rows["pick"], rows["path"], rows["augmentation"], rows["cosine"], strict=True
    ):
        paths[int(pick)] = path
        if name in names:
            matrix[picks.index(int(pick)), names.index(name)] = cosine
    fig = Figure(figsize=(1.0 * len(names) + 3, 0.24 * len(picks) + 2.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=SEQUENTIAL_CMAP, aspect="auto")
    _annotate(ax, matrix, image, xs=np.arange(len(names)), ys=np.arange(len(picks)), size=7)
    ax.set_xticks(np.arange(len(names)), [label(n, 13) for n in names], fontsize=8.5)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(picks)), [_short_path(paths[p]) for p in picks], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.5, label="cosine to the original")
    ax.set_title(f"Cosine similarity of {len(picks)} random images (seed {data.run.seed})")
    _note(fig, shown)
    return fig


def layer_drift(data: ReportData) -> Figure:
    """Mean attention similarity to the original at every layer, per augmentation."""
    rows = data.query("layers")
    if not len(rows["layer"]):
        raise FigureUnavailable("this run stored no per-layer attention maps (attention_layers)")
    names = paper_order(set(str(a) for a in rows["augmentation"]))
    # at most CURVES lines to a panel, each panel with its own legend
    groups = _chunks(names, CURVES)
    cols = min(2, len(groups))
    panels = math.ceil(len(groups) / cols)
    size = (8.5, 4.6) if len(groups) == 1 else (13, 3.8 * panels + 0.6)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(panels, cols, sharex=True, sharey=True, squeeze=False).ravel()
    count = int(np.max(rows["layer"])) + 1
    for ax, group in zip(axes, groups, strict=False):
        for name in group:
            mine = rows["augmentation"] == name
            order = np.argsort(rows["layer"][mine])
            layers = rows["layer"][mine][order] + 1
            ax.plot(
                layers,
                rows["attention_similarity"][mine][order],
                color=colour(name),
                marker="o",
                ms=3.5,
                lw=1.6,
                label=label(name),
            )
        ax.set_xticks(np.arange(1, count + 1))
        if len(groups) > 1:
            ax.legend(frameon=False, fontsize=7.5, ncols=2, loc="lower left")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    title = "Attention drift through the layers"
    if len(groups) == 1:
        axes[0].set_xlabel("transformer layer")
        axes[0].set_ylabel("mean attention similarity to the original")
        axes[0].set_title(title)
        fig.legend(loc="outside right center", frameon=False)
    else:
        fig.supxlabel("transformer layer")
        fig.supylabel("mean attention similarity to the original")
        fig.suptitle(title)
    return fig


# -- inside the network: the layer metrics ------------------------------------------------


def representation_drift(data: ReportData) -> Figure:
    """Mean cosine of the pooled token with the original's at every layer's output, one line
    per augmentation with its 95% confidence band (layer_onset.sql); the onset layer marked."""
    rows = data.layer_curves()
    names = paper_order(set(str(a) for a in rows["augmentation"]))
    groups = _chunks(names, CURVES)
    cols = min(2, len(groups))
    panels = math.ceil(len(groups) / cols)
    size = (8.5, 4.6) if len(groups) == 1 else (13, 3.8 * panels + 0.6)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(panels, cols, sharex=True, sharey=True, squeeze=False).ravel()
    head = rows["is_head"].astype(bool)
    blocks = int(np.max(rows["layer"][~head]))
    for ax, group in zip(axes, groups, strict=False):
        for name in group:
            mine = (rows["augmentation"] == name) & ~head
            order = np.argsort(rows["layer"][mine])
            layers = rows["layer"][mine][order]
            mean = rows["cosine_mean"][mine][order].astype(float)
            band = np.nan_to_num(rows["cosine_ci95"][mine][order].astype(float))
            ax.plot(layers, mean, color=colour(name), marker="o", ms=3, lw=1.5, label=label(name))
            ax.fill_between(layers, mean - band, mean + band, color=colour(name), alpha=0.15, lw=0)
            onset = rows["onset_layer"][mine][order][0]
            if not np.isnan(onset):
                ax.plot(onset, mean[list(layers).index(int(onset))], "v", color=colour(name), ms=8)
            pooled = (rows["augmentation"] == name) & head
            if pooled.any():  # SigLIP's pooling head: one more point, past the last layer
                ax.plot(blocks + 1, rows["cosine_mean"][pooled][0], "s", color=colour(name), ms=5)
        ax.set_xticks(np.arange(0, blocks + 1 + int(head.any())))
        if len(groups) > 1:
            ax.legend(frameon=False, fontsize=7.5, ncols=2, loc="lower left")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    title = "Where the representation moves: pooled-token cosine through the layers"
    xlabel = "layer (0: embeddings" + (f"; {blocks + 1}: pooling head)" if head.any() else ")")
    ylabel = "mean cosine to the original's pooled token"
    if len(groups) == 1:
        axes[0].set(xlabel=xlabel, ylabel=ylabel, title=title)
        fig.legend(loc="outside right center", frameon=False)
    else:
        fig.supxlabel(xlabel)
        fig.supylabel(ylabel)
        fig.suptitle(title)
    return fig


def layer_cka(data: ReportData) -> Figure:
    """Linear CKA between the originals' and the variants' pooled hidden states, per
    augmentation (rows) and layer (columns); rows shrink to fit a long suite."""
    cka = data.layer_cka()
    names = paper_order({name for name, _ in cka})
    layers = sorted({layer for _, layer in cka})
    matrix = np.full((len(names), len(layers)), np.nan)
    for (name, layer), value in cka.items():
        if value is not None:
            matrix[names.index(name), layers.index(layer)] = value
    row, text = _list_rows(len(names), 0.4)
    fig = Figure(figsize=(2.4 + 0.45 * len(layers), row * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=SEQUENTIAL_CMAP, aspect="auto", vmax=1)
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_yticks(range(len(names)), [label(n) for n in names], fontsize=text)
    ax.set_xlabel("layer (0: embeddings)")
    fig.colorbar(image, ax=ax, shrink=0.6, label="linear CKA, originals vs variants")
    ax.set_title("Representation similarity (CKA) per augmentation and layer")
    return fig


def token_drift_grid(data: ReportData) -> Figure:
    """Per augmentation, the mean token-drift map at the last layer beside the variants' mean
    attention map (token_drift.sql); at most MAX_PANELS augmentations, evenly spread."""
    maps = data.token_drift()
    names, shown = _pick(paper_order(set(str(a) for a in maps["augmentation"])), MAX_PANELS)
    index = {str(a): i for i, a in enumerate(maps["augmentation"])}
    grid = int(data.run.patch_grid)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.0 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    high = max(float(np.max(maps["token_drift"][index[n]])) for n in names) or 1.0
    for ax in axes.ravel():
        _bare(ax)
    for k, name in enumerate(names):
        row, col = divmod(k, cols)
        drift_ax, attention_ax = axes[row, 2 * col], axes[row, 2 * col + 1]
        drift = np.asarray(maps["token_drift"][index[name]], float).reshape(grid, grid)
        attention = _min_max(np.asarray(maps["attention"][index[name]], float))
        drift_image = drift_ax.imshow(drift, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=high)
        attention_ax.imshow(attention.reshape(grid, grid), cmap=ATTENTION_CMAP, vmin=0, vmax=1)
        drift_ax.set_title(label(name, 18), color=colour(name), fontsize=9, fontweight="bold")
        attention_ax.set_title("attention", fontsize=8, color="#555")
    fig.colorbar(drift_image, ax=axes, shrink=0.6, label="mean 1 - cosine of the patch token")
    fig.suptitle(
        "Which patches moved (last layer), beside where the model looked "
        f"({_attention_label(data.run)}, min-max scaled)"
    )
    _note(fig, shown)
    return fig


# -- severities ---------------------------------------------------------------------------


def severity(data: ReportData) -> Figure:
    """Mean cosine and patch similarity against severity, one curve per levelled perturbation,
    with its 95% confidence band (severity_curves.sql)."""
    curves = data.severity_curves()
    names = paper_order(set(str(a) for a in curves["augmentation"]))
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("cosine", "patch_similarity"), strict=True):
        for name in names:
            mine = curves["augmentation"] == name
            order = np.argsort(curves["severity"][mine])
            levels = curves["severity"][mine][order].astype(float)
            mean = curves[f"{metric}_mean"][mine][order].astype(float)
            band = np.nan_to_num(curves[f"{metric}_ci95"][mine][order].astype(float))
            ax.plot(levels, mean, color=colour(name), marker="o", ms=3, lw=1.4, label=label(name))
            ax.fill_between(levels, mean - band, mean + band, color=colour(name), alpha=0.15, lw=0)
        ax.set_xlabel("severity")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"mean {label(metric)} to the original")
        ax.set_title(label(metric).capitalize())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False, fontsize=8)
    fig.suptitle("Shift against severity (bands: 95% confidence interval of the mean)")
    return fig


def severity_heatmap(data: ReportData) -> Figure:
    """Mean 1 - cosine per (perturbation, severity), perturbations in suite order."""
    curves = data.severity_curves()
    names = paper_order(set(str(a) for a in curves["augmentation"]))
    levels = sorted({int(s) for s in curves["severity"]})
    matrix = np.full((len(names), len(levels)), np.nan)
    for name, level, cosine in zip(
        curves["augmentation"], curves["severity"], curves["cosine_mean"], strict=True
    ):
        matrix[names.index(str(name)), levels.index(int(level))] = 1 - float(cosine)
    row, text = _list_rows(len(names), 0.4)
    fig = Figure(figsize=(2.2 + 0.9 * len(levels), row * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=SEQUENTIAL_CMAP, aspect="auto")
    ax.set_xticks(range(len(levels)), [str(level) for level in levels])
    ax.set_yticks(range(len(names)), [label(n) for n in names], fontsize=text)
    ax.set_xlabel("severity")
    high = np.nanmax(matrix)
    for i, j in np.argwhere(~np.isnan(matrix)):
        value = matrix[i, j]
        ax.text(
            j,
            i,
            f"{value:.3g}",
            ha="center",
            va="center",
            fontsize=min(7, text),
            color="white" if value < 0.6 * high else "black",
        )
    fig.colorbar(image, ax=ax, shrink=0.6, label="mean 1 - cosine to the original")
    ax.set_title("Embedding shift per corruption and severity")
    return fig


# -- what the model sees: zero-shot labels and text directions ------------------------------


def flip_rate(data: ReportData) -> Figure:
    """Zero-shot flip rate per augmentation, one bar per model (run) in the store."""
    rows = data.zeroshot_models()
    runs = list(dict.fromkeys(str(r) for r in rows["run_id"]))
    models = {str(r): str(m) for r, m in zip(rows["run_id"], rows["model"], strict=True)}
    # this run's augmentations only: another run's own suite would add groups of one bar
    mine = rows["run_id"] == data.run_id
    if not mine.any():
        mine = np.ones(len(mine), dtype=bool)
    names = paper_order(set(str(a) for a in rows["augmentation"][mine]))
    value = {
        (str(r), str(a)): float(f)
        for r, a, f in zip(rows["run_id"], rows["augmentation"], rows["flip_rate"], strict=True)
    }
    runs = [run for run in runs if any((run, n) in value for n in names)]
    # bar groups wrap into rows that stay under LIST_INCHES wide
    group = 0.9 * max(1, len(runs) / 2)
    spans = _spans(len(names), max(1, min(PER_ROW, int(LIST_INCHES // group))))
    groups = max(stop - start for start, stop in spans)
    fig = Figure(figsize=(max(7.5, group * groups), (4.6 if len(spans) == 1 else 3.4) * len(spans)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(spans), 1, squeeze=False)[:, 0]
    width = 0.8 / len(runs)
    greys = _model_colours(len(runs))
    for ax, (start, stop) in zip(axes, spans, strict=True):
        part = names[start:stop]
        x = np.arange(len(part))
        for i, run in enumerate(runs):
            heights = [value.get((run, n), np.nan) for n in part]
            colours = [colour(n) for n in part] if len(runs) == 1 else greys[i]
            ax.bar(
                x + (i - (len(runs) - 1) / 2) * width,
                heights,
                width,
                color=colours,
                label=f"{_short_model(models[run])} ({run[:8]})",
            )
        ax.set_xticks(x, [label(n, 13) for n in part], fontsize=8.5)
        ax.set_xlim(-0.6, groups - 0.4)
        ax.set_ylim(0, 1)
    ylabel = "flip rate (share of images whose top-1 label changes)"
    if len(spans) == 1:
        axes[0].set_ylabel(ylabel)
    else:
        fig.supylabel(ylabel)
    axes[0].set_title(
        f"Zero-shot flip rate: {rows['label_set'][0]} labels, template {rows['template'][0]!r}"
    )
    if len(runs) > 1:
        axes[0].legend(frameon=False, fontsize=8.5)
    return fig


def alignment(data: ReportData) -> Figure:
    """Mean cosine between each augmentation's shifts and each prompt's text direction."""
    result = data.alignment()
    cells: dict[tuple[str, str], list[tuple[float, int]]] = {}
    accuracy: dict[str, list[tuple[float, int]]] = {}
    for row in result.matrix.records():  # severities pooled, weighted by their images
        cells.setdefault((row["augmentation"], row["prompt"]), []).append(
            (row["mean_cosine"], row["n"])
        )
        if row["describes"] == row["augmentation"]:
            accuracy.setdefault(row["augmentation"], []).append((row["picked"], row["n"]))
    names = paper_order({a for a, _ in cells})
    prompts = [p.text for p in result.prompts]
    matrix = np.array([[_pooled(cells.get((a, p), [])) for p in prompts] for a in names])
    limit = max(float(np.nanmax(np.abs(matrix))), 1e-6)
    row, text = _list_rows(len(names), 0.5)
    column = min(0.95, LIST_INCHES / max(1, len(prompts)))
    fig = Figure(figsize=(column * len(prompts) + 3.2, row * len(names) + 2.4))
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    _annotate(
        ax,
        matrix,
        image,
        xs=np.arange(len(prompts)),
        ys=np.arange(len(names)),
        size=min(7.5, text, 8 * column),
    )
    ax.set_xticks(np.arange(len(prompts)), [label(p, 12) for p in prompts], fontsize=7.5)
    ax.set_yticks(
        np.arange(len(names)),
        [
            f"{label(n)} (identified {_pooled(accuracy[n]):.0%})" if n in accuracy else label(n)
            for n in names
        ],
        fontsize=text,
    )
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean cos(shift, text direction)")
    ax.set_title('Shifts against text directions embed(prompt) - embed("a photo")')
    return fig


def _pooled(values: list[tuple[float, int]]) -> float:
    """The mean of per-severity means, weighted by their images (NaN where none)."""
    values = [(v, n) for v, n in values if v is not None and n]
    if not values:
        return float("nan")
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def _short_model(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1] if model.startswith("/") else model


def _model_colours(count: int) -> list[str]:
    """`count` distinct colours (viridis) for the models of a grouped bar chart."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [to_hex(cmap(i / max(1, count - 1) * 0.85)) for i in range(count)]


# -- the registry -------------------------------------------------------------------------


# -- shift against accuracy (clipshift accuracy) -------------------------------------------


def shift_accuracy(data: ReportData) -> Figure:
    """Shift against accuracy of the run's labelled images, from the stored predictions."""
    return shift_accuracy_plot(data.shift_accuracy())


def shift_accuracy_plot(result) -> Figure:
    """Mean cosine against top-1 accuracy drop, one point per augmentation and severity, with
    the least-squares line and its bootstrap 95% band (clipshift.accuracy's AccuracyResult or
    ShiftAccuracy; every number drawn is sql/shift_accuracy_summary.sql's or the
    bootstrap's)."""
    records = result.points.records()
    if not records:
        raise ClipshiftError("no labelled augmented images to draw")
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for name in dict.fromkeys(r["augmentation"] for r in records):
        mine = [r for r in records if r["augmentation"] == name]
        ax.scatter(
            [r["mean_cosine"] for r in mine],
            [r["top1_drop"] for r in mine],
            color=colour(name),
            label=label(name),
            s=28,
            zorder=3,
        )
    if result.fit is not None:
        fit = result.fit
        xs = np.asarray(fit.xs)
        ax.plot(xs, fit.slope * xs + fit.intercept, color=ORIGINAL_COLOUR, lw=1.2)
        ax.fill_between(xs, fit.low, fit.high, color=ORIGINAL_COLOUR, alpha=0.15, lw=0)
    across = result.across
    r = "undefined" if across.r is None else f"{across.r:.3f}"
    ci = "" if across.low is None else f" (95% CI {across.low:.3f} to {across.high:.3f})"
    ax.set_title(f"shift against accuracy: r = {r}{ci}, {across.n} points", fontsize=9)
    ax.set_xlabel("mean cosine to the original")
    ax.set_ylabel("top-1 accuracy drop")
    ax.legend(fontsize=7, loc="best")
    return fig


@dataclass(frozen=True)
class FigureSpec:
    draw: Callable[[ReportData], Figure]
    caption: str


FIGURES: dict[str, FigureSpec] = {
    "augmentations": FigureSpec(
        augmentations, "One image, original and its augmentations (paper Fig. 4a)."
    ),
    "attention_grid": FigureSpec(
        attention_grid,
        "The run's attention map over the image (its family's, named on the colour bar: the "
        "last-layer CLS row for CLIP, the pooling head's probe for SigLIP), original and each "
        "augmentation; the title gives the cosine similarity of the augmented embedding to "
        "the original (paper Fig. 1).",
    ),
    "l2_kde": FigureSpec(
        l2_kde,
        "Gaussian KDE of the l2 distance between original and augmented embeddings, one curve "
        "per augmentation labelled at its peak (paper Fig. 4b).",
    ),
    "cosine_distribution": FigureSpec(
        cosine_distribution,
        "Histogram and KDE of the cosine similarity to the original, per augmentation; mean "
        "and std in the legend (paper Fig. 4c).",
    ),
    "dendrogram": FigureSpec(
        dendrogram,
        "Hierarchical clustering of the augmentations on their mean pairwise cosine distance; "
        "the dashed line is the cluster threshold, 0.7 x the largest merge (paper Fig. 4d).",
    ),
    "radar": FigureSpec(
        radar,
        "The five mean scores of each augmentation; green and red shade the best and worst "
        "augmentation on each score (paper Fig. 5).",
    ),
    "metrics_heatmap": FigureSpec(
        metrics_heatmap,
        "Mean scores per augmentation, columns sorted by overall score (paper Fig. 3).",
    ),
    "rank": FigureSpec(
        rank, "Overall score (mean of the five scores) per augmentation, ranked (paper Fig. 6)."
    ),
    "l2_bar": FigureSpec(
        l2_bar, "Mean l2 distance to the original per augmentation, ± std (paper Fig. 7)."
    ),
    "clustermap": FigureSpec(
        clustermap,
        "The five mean scores, augmentations reordered by the dendrogram of their pairwise "
        "cosine distance (paper Fig. 8a).",
    ),
    "metric_averages": FigureSpec(
        metric_averages,
        "Mean of each score per augmentation, unsorted; the diamond is the overall score "
        "(paper Fig. 8b).",
    ),
    "cosine_heatmap": FigureSpec(
        cosine_heatmap,
        "Cosine similarity to the original for random images of the run (seeded by the run's "
        "seed) and every augmentation (paper Fig. 9).",
    ),
    "flip_rate": FigureSpec(
        flip_rate,
        "Beyond the paper: zero-shot flip rate, the share of images whose top-1 label changes "
        "under each augmentation, per model in the store (`clipshift zeroshot`; drawn from "
        "the stored predictions).",
    ),
    "alignment": FigureSpec(
        alignment,
        "Beyond the paper: mean cosine between each augmentation's shifts (unit variant minus "
        'unit original embedding) and each text direction embed(prompt) - embed("a photo"); '
        "in brackets, how often the augmentation's own description is the closest "
        "(`clipshift directions`).",
    ),
    "shift_accuracy": FigureSpec(
        shift_accuracy,
        "Beyond the paper: for labelled images (a dataset's labels), the mean cosine to the "
        "original against the top-1 accuracy drop, one point per augmentation and severity, "
        "with the least-squares line and its bootstrap 95% band; r across the points in the "
        "title (`clipshift accuracy`; drawn from the stored predictions).",
    ),
    "layer_drift": FigureSpec(
        layer_drift,
        "Beyond the paper: mean attention similarity to the original at every transformer "
        "layer, per augmentation.",
    ),
    "representation_drift": FigureSpec(
        representation_drift,
        "Beyond the paper: where inside the model does each augmentation's representation "
        "start to move? Mean cosine between the variant's and the original's pooled token "
        "(CLIP: CLS; SigLIP: mean patch token, then its pooling head's output as a square) at "
        "each layer's output, with 95% confidence bands; the triangle marks the onset layer, "
        "where 1 - cosine first reaches half its last-layer value.",
    ),
    "layer_cka": FigureSpec(
        layer_cka,
        "Beyond the paper: does the representation of the whole image set keep its geometry "
        "under each augmentation, layer by layer? Linear CKA between the originals' and the "
        "variants' pooled hidden states over the run's images (runs ingested with "
        "--hidden-states).",
    ),
    "token_drift_grid": FigureSpec(
        token_drift_grid,
        "Beyond the paper: which parts of the image moved? Per augmentation, the mean 1 - "
        "cosine of each patch token to the original's at the last layer, beside the variants' "
        "mean attention map. For flips, rotations, perspective and elastic transforms a "
        "position compares the same place in the frame, not the same content.",
    ),
    "severity": FigureSpec(
        severity,
        "Beyond the paper: mean cosine and patch similarity to the original against severity, "
        "per perturbation with severity levels; bands are 95% confidence intervals of the mean.",
    ),
    "severity_heatmap": FigureSpec(
        severity_heatmap,
        "Beyond the paper: mean 1 - cosine to the original per corruption and severity.",
    ),
}


# -- helpers ------------------------------------------------------------------------------


def _rows(columns: dict[str, np.ndarray], key: str) -> dict[str, dict]:
    """Query columns as {key value: {column: value}}."""
    names = list(columns)
    return {
        str(row[names.index(key)]): dict(zip(names, row, strict=True))
        for row in zip(*columns.values(), strict=True)
    }


def _by_augmentation(columns: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """One metric's finite values per augmentation, in the paper's order."""
    augmentation = columns["augmentation"]
    values = np.asarray(columns[metric], dtype=np.float64)
    result = {}
    for name in paper_order(set(str(a) for a in augmentation)):
        mine = values[augmentation == name]
        mine = mine[np.isfinite(mine)]
        if len(mine):
            result[name] = mine
    if not result:
        raise FigureUnavailable(f"the run has no {metric} values yet")
    return result


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """scipy's gaussian_kde (default bandwidth) on `grid`; a spike where all values agree."""
    if len(values) > 1 and np.ptp(values) > 0:
        return gaussian_kde(values)(grid)
    density = np.zeros_like(grid)
    density[np.argmin(np.abs(grid - values[0]))] = 1.0 / (grid[1] - grid[0])
    return density


def _clusters(data: ReportData) -> Clusters:
    """The shared clustering of the `pairwise` query (the same as `clipshift clusters`)."""
    pairwise = data.query("pairwise")
    pairs = zip(
        pairwise["augmentation_a"], pairwise["augmentation_b"], pairwise["distance"], strict=True
    )
    try:
        return cluster_pairs(data.run, pairs, data.method)
    except ClipshiftError as exc:
        raise FigureUnavailable(str(exc)) from None


def _link_colours(linkage: np.ndarray, threshold: float) -> Callable[[int], str]:
    """Links within a cluster dark, links above the threshold light: neutral greys, since
    every hue already names an augmentation."""
    leaves = len(linkage) + 1

    def link_colour(node: int) -> str:
        return "#222222" if linkage[node - leaves, 2] <= threshold else "#9e9e9e"

    return link_colour


def _annotate(ax, matrix, image, xs, ys, size: float = 8.5) -> None:
    """Each cell's value, in white on dark cells and black on light ones."""
    cmap, norm = image.get_cmap(), image.norm
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            value = matrix[i, j]
            if not np.isfinite(value):
                ax.text(x, y, "n/a", ha="center", va="center", fontsize=size, color="grey")
                continue
            r, g, b, _ = cmap(norm(value))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(x, y, f"{value:.3f}", ha="center", va="center", fontsize=size, color=ink)


def _label_peaks(renderer, ax, peaks: list[tuple[float, float, str]]) -> None:
    """Name each curve above its peak, nudging labels up until none overlap (in pixels: the
    figure is laid out first)."""
    placed = []
    for x, y, name in sorted(peaks, key=lambda p: -p[1]):
        text = ax.annotate(
            label(name),
            (x, y),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color=colour(name),
            fontsize=9,
            fontweight="bold",
            arrowprops={"arrowstyle": "-", "color": colour(name), "lw": 0.6, "shrinkA": 0},
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
        step = 0.5 * text.get_fontsize()  # points
        for _ in range(60):
            # the text's own box: an Annotation's extent would include its growing arrow
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.06, 1.5)
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = text.get_position()  # the offset, in points
            text.set_position((dx, dy + step))
        placed.append(Text.get_window_extent(text, renderer))
    # keep the highest label inside the axes
    top = ax.transData.inverted().transform((0, max(box.y1 for box in placed)))[1]
    if top > ax.get_ylim()[1]:
        ax.set_ylim(0, top * 1.03)


def _pick(names: list[str], limit: int) -> tuple[list[str], str | None]:
    """At most `limit` of `names`, spread evenly over them (the first, the original where
    it is one, always kept), and the note that says so; no note when all fit."""
    if len(names) <= limit:
        return list(names), None
    picks = np.unique(np.linspace(0, len(names) - 1, limit).round().astype(int))
    note = f"showing {len(picks)} of {len(names)} variants, evenly spread over the suite"
    return [names[i] for i in picks], note


def _spans(count: int, limit: int) -> list[tuple[int, int]]:
    """(start, stop) of the fewest rows of at most `limit` items, as even as they go."""
    rows = max(1, math.ceil(count / limit))
    size = math.ceil(count / rows)
    return [(start, min(count, start + size)) for start in range(0, count, size)]


def _chunks(names: list[str], limit: int) -> list[list[str]]:
    return [names[start:stop] for start, stop in _spans(len(names), limit)]


def _list_rows(count: int, inches: float) -> tuple[float, float]:
    """Row height (inches) and text size (points) of a figure with a row per item: `inches`
    a row and 9 pt text, both shrinking once the list would pass LIST_INCHES."""
    row = min(inches, LIST_INCHES / max(1, count))
    return row, max(5.0, min(9.0, 0.6 * row * 72))


def _note(fig: Figure, note: str | None) -> None:
    """Say under the figure that it shows only some of the variants."""
    if note:
        fig.text(0.5, 0, note, ha="center", va="top", fontsize=9, style="italic", color="#555")


def _attention_label(run: Run) -> str:
    """What the run's attention map is, as its model family defines it (families.py)."""
    from ..families import FAMILIES  # imports torch: only when an attention map is drawn

    family = FAMILIES.get(str(run.family))
    return family.attention_label if family else "attention map"


def _min_max(values: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] for display (a constant map shows as zeros)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def _short_path(path, width: int = 26) -> str:
    name = str(path).rsplit("/", 1)[-1] if path else "?"
    return name if len(name) <= width else name[: width - 1] + "…"


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
