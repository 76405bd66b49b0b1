"""The `paper` suite: the nine augmentations of the paper, one strength each.

Each entry's stored definition is exactly what runs recorded before suites existed
({"name", "transform": the call as written in docs/metrics.md, "albumentations"}), so stores
ingested then keep their meaning and their run_ids. Prompts are not part of that definition.

That definition is text, so the default suite resolves, and a run is named, without importing
albumentations: an ingest whose worker processes apply the transforms never imports it in the
main process (1.7 s here, docs/ingest.md). `paper_transform` builds a transform when one runs.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ..defaults import AUGMENTATION_NAMES

if TYPE_CHECKING:
    import albumentations as A

# name -> (the call as written in metrics.md, prompt). Order is the paper's.
PAPER: dict[str, tuple[str, str]] = {
    "noise": ("GaussNoise(std_range=(0.44, 0.88))", "a noisy photo"),
    "blur": ("GaussianBlur(blur_limit=(3, 7))", "a blurry photo"),
    "color_jitter": (
        "ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)",
        "a photo with distorted colors",
    ),
    "shift_scale_rotate": (
        "ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15)",
        "a rotated and shifted photo",
    ),
    "horizontal_flip": ("HorizontalFlip()", "a mirrored photo"),
    "elastic": ("ElasticTransform(alpha=30, sigma=60)", "a warped photo"),
    "perspective": ("Perspective(scale=(0.05, 0.1))", "a photo taken at a slanted angle"),
    "random_brightness_contrast": (
        "RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2)",
        "a photo with altered brightness and contrast",
    ),
    "coarse_dropout": (
        "CoarseDropout(num_holes_range=(6, 8), hole_height_range=(16, 16), "
        'hole_width_range=(16, 16), fill="random")',
        "a photo with small squares blanked out",
    ),
}

assert tuple(PAPER) == AUGMENTATION_NAMES, "defaults.AUGMENTATION_NAMES is the list"


def paper_transform(name: str) -> A.BasicTransform:
    """A fresh transform of the paper's `name`: the call PAPER records, applied always."""
    import albumentations as A

    if name == "noise":
        return A.GaussNoise(std_range=(0.44, 0.88), p=1.0)
    if name == "blur":
        return A.GaussianBlur(blur_limit=(3, 7), p=1.0)
    if name == "color_jitter":
        return A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, p=1.0)
    if name == "shift_scale_rotate":
        # the paper's transform, exactly; albumentations 2.x warns that it is a special Affine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return A.ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15, p=1.0)
    if name == "horizontal_flip":
        return A.HorizontalFlip(p=1.0)
    if name == "elastic":
        return A.ElasticTransform(alpha=30, sigma=60, p=1.0)
    if name == "perspective":
        return A.Perspective(scale=(0.05, 0.1), p=1.0)
    if name == "random_brightness_contrast":
        return A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0)
    if name == "coarse_dropout":
        return A.CoarseDropout(
            num_holes_range=(6, 8),
            hole_height_range=(16, 16),
            hole_width_range=(16, 16),
            fill="random",
            p=1.0,
        )
    raise KeyError(name)
