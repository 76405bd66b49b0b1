"""The names and defaults that the CLI, the library and the docs share, in one light module.

Importing this pulls in nothing heavy (no albumentations, OpenCV, torch or LanceDB), so a module
that only needs a name such as ORIGINAL, or the CLI building its help text, stays cheap to import.
"""

from __future__ import annotations

# The CLIP the paper used; any hub id or local save_pretrained folder works in its place.
DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DB = "./clipshift-store"

# -- ingest ------------------------------------------------------------------------------------
# CLIP ViT-B/32's own input size: every image is resized to IMAGE_SIZE x IMAGE_SIZE
IMAGE_SIZE = 224
BATCH_SIZE = 8
# PNG pixels are kept for the first this many images of a run (the report's grids need a few)
KEEP_PIXELS = 64
# the unaugmented variant of every image
ORIGINAL = "original"
# the paper's nine augmentations, in its order (clipshift/augment.py defines each transform)
AUGMENTATION_NAMES = (
    "noise",
    "blur",
    "color_jitter",
    "shift_scale_rotate",
    "horizontal_flip",
    "elastic",
    "perspective",
    "random_brightness_contrast",
    "coarse_dropout",
)
# the suite --augmentations takes by default (`all` is another name for it): the paper's nine
DEFAULT_SUITE = "paper"
# the ImageNet-C corruptions of the `corruptions` suite, in its order (clipshift/suites/
# corruptions.py defines each, at severities 1-5)
CORRUPTION_NAMES = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# file suffixes a folder is searched for, lower case
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEVICES = ("auto", "cpu", "cuda", "mps")
# The timed stages of an ingest, in pipeline order. Per image on a CPU worker: read (and hash),
# decode, augment, metrics, png; in the process that holds the model, per batch: transfer
# (receiving prepared images from the workers), encode and write.
IMAGE_STAGES = ("read", "decode", "augment", "metrics", "png")
BATCH_STAGES = ("transfer", "encode", "write")
STAGES = IMAGE_STAGES + BATCH_STAGES
# --precision: the model's compute dtype; fp32 is the default and keeps pre-existing run_ids
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION = "fp32"


def check_precision(precision: str) -> None:
    """The one check of a --precision, made before torch is imported (ingest) and again by the
    encoder for library callers."""
    if precision not in PRECISIONS:
        from . import ClipshiftError  # clipshift/__init__ imports this module first

        raise ClipshiftError(f"unknown --precision {precision}: choose {', '.join(PRECISIONS)}")


# -- output ------------------------------------------------------------------------------------
FORMATS = ("table", "csv", "json")
SQL_FORMATS = (*FORMATS, "parquet")
# `clipshift suites --show`: the formats a suite file is written in
SUITE_FORMATS = ("yaml", "json")
DEFAULT_MAX_ROWS = 50

# -- analysis and report -----------------------------------------------------------------------
# the per-(image, augmentation) metrics of the `shifts` view, in docs/metrics.md's order
METRICS = (
    "cosine",
    "l2",
    "attention_similarity",
    "patch_similarity",
    "edge_preservation",
    "detail_preservation",
)
# the paper's five scores (radar, heatmap, rank); overall is their plain mean
SCORES = tuple(m for m in METRICS if m != "l2")
# `stats --part`: the summary, then the sections a run with severity levels adds
STATS_PARTS = ("summary", "severity", "corruption_mean")
LINKAGE_METHODS = ("ward", "average", "complete", "single")
DEFAULT_LINKAGE = "ward"  # the paper's
REPORT_OUT = "clipshift-report"
# the figures' file formats (beside FORMATS, the rows' text formats)
FIGURE_FORMATS = ("png", "svg", "pdf")
REPORT_SAMPLES = 4
# images in the cosine heatmap figure
HEATMAP_IMAGES = 50

# -- neighbors ---------------------------------------------------------------------------------
DEFAULT_KS = (1, 5, 10)
AMONG = ("originals", "all")

# -- zeroshot ----------------------------------------------------------------------------------
# the label sets shipped in clipshift/data, the default first
LABEL_SETS = ("imagenet", "cifar100")
DEFAULT_LABELS = LABEL_SETS[0]
DEFAULT_TEMPLATE = "a photo of a {}."

# -- check -------------------------------------------------------------------------------------
# `check --repair`: roll each damaged table back, or drop its unreadable fragments
REPAIRS = ("rollback", "drop")

# -- datasets as they are shipped (clipshift/datasets.py) ----------------------------------------
# --labels-from: where a plain folder's labels come from (an image's parent folder's name)
LABELS_FROM = ("folder",)
# a WebDataset sample's image member (its extension, lower case) and its label member (--label-key)
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("cls", "txt", "json")
# the columns of a Parquet, Arrow or Lance table (--image-column, --label-column), as the Hugging
# Face exports name them
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
# rows per Arrow batch a table is read in: 64 photos of ~100 kB is a few MB at a time
TABLE_BATCH_ROWS = 64
