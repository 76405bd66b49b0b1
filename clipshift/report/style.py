"""One look for every figure: a fixed colour per augmentation, score names, fonts."""

from __future__ import annotations

import textwrap

import matplotlib
from matplotlib.colors import to_hex

from ..defaults import AUGMENTATION_NAMES, CORRUPTION_NAMES, ORIGINAL, SCORES

# tab10 without its grey (index 7): nine distinct hues for the nine augmentations, so that
# grey stays free for the original.
_TAB10 = [to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
AUGMENTATION_COLOURS: dict[str, str] = dict(zip(AUGMENTATION_NAMES, _TAB10, strict=True))
# the 15 corruptions on tab20, in suite order
AUGMENTATION_COLOURS.update(
    zip(CORRUPTION_NAMES, (to_hex(c) for c in matplotlib.colormaps["tab20"].colors), strict=False)
)
ORIGINAL_COLOUR = "#4d4d4d"
# an augmentation unknown to this clipshift (a newer store): still drawn, in black
UNKNOWN_COLOUR = "#000000"

SCORE_LABELS = {
    "cosine": "embedding similarity",
    "attention_similarity": "attention similarity",
    "patch_similarity": "patch similarity",
    "edge_preservation": "edge preservation",
    "detail_preservation": "detail preservation",
    "overall": "overall",
}
# the scores are bars side by side in one figure: a palette apart from the augmentations'
SCORE_COLOURS = dict(
    zip(SCORES, ("#264653", "#2a9d8f", "#8ab17d", "#e9c46a", "#e76f51"), strict=True)
)

SEQUENTIAL_CMAP = "viridis"
ATTENTION_CMAP = "jet"

# sizes chosen for print: a 7 in wide figure keeps 9 pt text readable in a two-column paper
RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.1,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
}
DPI = 150


def colour(variant: str) -> str:
    """The colour of an augmentation (or of the original) in every figure; every severity
    NAME@K of a perturbation has its colour."""
    if variant == ORIGINAL:
        return ORIGINAL_COLOUR
    return AUGMENTATION_COLOURS.get(variant.split("@")[0], UNKNOWN_COLOUR)


def paper_order(names) -> list[str]:
    """Augmentation names (or NAME@SEVERITY labels) in the built-in suites' order, the paper's
    first, severities ascending; unknown names last, sorted."""
    order = {name: i for i, name in enumerate((ORIGINAL, *AUGMENTATION_COLOURS))}

    def key(name: str):
        base, _, level = name.partition("@")
        return (order.get(base, len(order)), base, int(level) if level.isdigit() else 0, name)

    return sorted(names, key=key)


def label(name: str, width: int | None = None) -> str:
    """A readable label: underscores to spaces, wrapped onto lines of `width` characters."""
    text = SCORE_LABELS.get(name, name).replace("_", " ")
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) if width else text


# Bounds on what a figure draws per augmentation (variant), so that a run of the 75-variant
# corruptions suite stays readable (one bar group per variant made model_bars 14177 px wide):
# image columns and small multiples are capped, evenly over the suite, with a note saying how
# many are shown; bar groups and heatmap columns wrap into rows of at most PER_ROW; an axes
# holds at most CURVES lines; a list with one row per variant (a tree, ranked bars) grows to
# at most LIST_INCHES tall, its rows and text shrinking to fit.
MAX_IMAGE_COLUMNS = 12
MAX_PANELS = 15
PER_ROW = 16
CURVES = 10
LIST_INCHES = 16.0
