"""The nine augmentations of the paper: registry, seeding and the parameters each one applied.

Every random draw is seeded from (run seed, image content hash, augmentation name), so the
same image gives byte-identical augmented pixels on every run, in any order, on any machine
with the same albumentations.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

from . import ClipshiftError  # noqa: E402
from .defaults import AUGMENTATION_NAMES, ORIGINAL  # noqa: E402


def _shift_scale_rotate() -> A.BasicTransform:
    # The paper's transform, exactly; albumentations 2.x warns that it is a special Affine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return A.ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15, p=1.0)


# name -> (transform factory, the call as written in metrics.md). Order is the paper's.
AUGMENTATIONS: dict[str, tuple[Callable[[], A.BasicTransform], str]] = {
    "noise": (
        lambda: A.GaussNoise(std_range=(0.44, 0.88), p=1.0),
        "GaussNoise(std_range=(0.44, 0.88))",
    ),
    "blur": (
        lambda: A.GaussianBlur(blur_limit=(3, 7), p=1.0),
        "GaussianBlur(blur_limit=(3, 7))",
    ),
    "color_jitter": (
        lambda: A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, p=1.0),
        "ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)",
    ),
    "shift_scale_rotate": (
        _shift_scale_rotate,
        "ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15)",
    ),
    "horizontal_flip": (lambda: A.HorizontalFlip(p=1.0), "HorizontalFlip()"),
    "elastic": (
        lambda: A.ElasticTransform(alpha=30, sigma=60, p=1.0),
        "ElasticTransform(alpha=30, sigma=60)",
    ),
    "perspective": (
        lambda: A.Perspective(scale=(0.05, 0.1), p=1.0),
        "Perspective(scale=(0.05, 0.1))",
    ),
    "random_brightness_contrast": (
        lambda: A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
        "RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2)",
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
    ),
}

assert tuple(AUGMENTATIONS) == AUGMENTATION_NAMES, "defaults.AUGMENTATION_NAMES is the list"
__all__ = ["AUGMENTATIONS", "ORIGINAL", "Augmenter", "parse_augmentations"]
# Arrays in the applied parameters larger than this are stored as a summary, not in full
# (GaussNoise's noise map, ElasticTransform's displacement fields).
_MAX_STORED_ARRAY = 16


def parse_augmentations(spec: str | Sequence[str] | None) -> list[str]:
    """Names from a comma list (or a sequence); None or "all" means all nine, in paper order."""
    if spec is None:
        return list(AUGMENTATIONS)
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if names == ["all"]:
        return list(AUGMENTATIONS)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ClipshiftError(
            f"unknown augmentation {', '.join(unknown)}: choose from {', '.join(AUGMENTATIONS)}"
        )
    if not names:
        raise ClipshiftError("--augmentations is empty: name at least one, or leave it out")
    return list(dict.fromkeys(names))


def augmentation_config(names: Sequence[str]) -> list[dict]:
    """What a run records: each augmentation's name and its albumentations call."""
    return [
        {"name": name, "transform": AUGMENTATIONS[name][1], "albumentations": A.__version__}
        for name in names
    ]


def config_hash(config: list[dict]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def augmentation_seed(seed: int, image_id: str, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class Augmented:
    name: str
    pixels: np.ndarray  # S x S x 3 uint8
    params: dict


class Augmenter:
    """Applies a fixed list of augmentations to an original, each with its own seed."""

    def __init__(self, names: Sequence[str], seed: int):
        self.names = list(names)
        self.seed = seed
        self._pipelines = {
            name: A.Compose([AUGMENTATIONS[name][0]()], save_applied_params=True)
            for name in self.names
        }

    def __call__(self, original: np.ndarray, image_id: str) -> list[Augmented]:
        out = []
        for name, pipeline in self._pipelines.items():
            pipeline.set_random_seed(augmentation_seed(self.seed, image_id, name))
            result = pipeline(image=original)
            applied = result.get("applied_transforms") or [(name, {})]
            out.append(
                Augmented(
                    name,
                    np.ascontiguousarray(result["image"], dtype=np.uint8),
                    _jsonable(applied[0][1]),
                )
            )
        return out


def _jsonable(value):
    """Applied parameters as plain JSON values; big arrays become a shape/mean/std summary."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "shape"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.size > _MAX_STORED_ARRAY:
            return {
                "array_shape": list(value.shape),
                "mean": float(value.mean()),
                "std": float(value.std()),
            }
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
