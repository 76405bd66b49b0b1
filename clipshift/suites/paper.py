"""The `paper` suite: the nine augmentations of the paper, one strength each.

Each entry's stored definition is exactly what runs recorded before suites existed
({"name", "transform": the call as written in docs/metrics.md, "albumentations"}), so stores
ingested then keep their meaning and their run_ids. Prompts are not part of that definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import albumentations as A

from ..defaults import AUGMENTATION_NAMES


def _shift_scale_rotate() -> A.BasicTransform:
    # The paper's transform, exactly; albumentations 2.x warns that it is a special Affine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return A.ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15, p=1.0)


# name -> (transform factory, the call as written in metrics.md, prompt). Order is the paper's.
PAPER: dict[str, tuple[Callable[[], A.BasicTransform], str, str]] = {
    "noise": (
        lambda: A.GaussNoise(std_range=(0.44, 0.88), p=1.0),
        "GaussNoise(std_range=(0.44, 0.88))",
        "a noisy photo",
    ),
    "blur": (
        lambda: A.GaussianBlur(blur_limit=(3, 7), p=1.0),
        "GaussianBlur(blur_limit=(3, 7))",
        "a blurry photo",
    ),
    "color_jitter": (
        lambda: A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, p=1.0),
        "ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)",
        "a photo with distorted colors",
    ),
    "shift_scale_rotate": (
        _shift_scale_rotate,
        "ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15)",
        "a rotated and shifted photo",
    ),
    "horizontal_flip": (lambda: A.HorizontalFlip(p=1.0), "HorizontalFlip()", "a mirrored photo"),
    "elastic": (
        lambda: A.ElasticTransform(alpha=30, sigma=60, p=1.0),
        "ElasticTransform(alpha=30, sigma=60)",
        "a warped photo",
    ),
    "perspective": (
        lambda: A.Perspective(scale=(0.05, 0.1), p=1.0),
        "Perspective(scale=(0.05, 0.1))",
        "a photo taken at a slanted angle",
    ),
    "random_brightness_contrast": (
        lambda: A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
        "RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2)",
        "a photo with altered brightness and contrast",
    ),
    "coarse_dropout": (
        lambda: A.CoarseDropout(
            num_holes_range=(6, 8),
            hole_height_range=(16, 16),
            hole_width_range=(16, 16),
            fill="random",
            p=1.0,
        ),
        "CoarseDropout(num_holes_range=(6, 8), hole_height_range=(16, 16), "
        'hole_width_range=(16, 16), fill="random")',
        "a photo with small squares blanked out",
    ),
}

assert tuple(PAPER) == AUGMENTATION_NAMES, "defaults.AUGMENTATION_NAMES is the list"
