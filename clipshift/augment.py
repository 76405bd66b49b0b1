"""Applying a run's perturbations: seeding, and the parameters each one applied.

What the perturbations are (the paper's nine, the ImageNet-C corruptions, a user's suite file)
is clipshift.suites' business; this module applies them. Every random draw is seeded from
(run seed, image content hash, variant label), so the same image gives byte-identical
perturbed pixels on every run, in any order, on any machine with the same albumentations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .defaults import ORIGINAL
from .suites import Perturbation, resolve

__all__ = ["ORIGINAL", "Augmented", "Augmenter", "augmentation_config", "config_hash"]
# Arrays in the applied parameters larger than this are stored as a summary, not in full
# (GaussNoise's noise map, ElasticTransform's displacement fields).
_MAX_STORED_ARRAY = 16


def augmentation_config(perturbations: Sequence[Perturbation]) -> list[dict]:
    """What a run records: each perturbation's stored definition (see clipshift.suites)."""
    return [p.definition for p in perturbations]


def config_hash(config: list[dict]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def augmentation_seed(seed: int, image_id: str, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{image_id}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class Augmented:
    name: str  # the variant label: the perturbation's name, or NAME@SEVERITY
    pixels: np.ndarray  # S x S x 3 uint8
    params: dict
    severity: int | None = None


class Augmenter:
    """Applies a fixed list of perturbations to an original, each with its own seed.

    Built from plain settings, so a worker process can build its own: `perturbations` is a
    suite spec (as `--augmentations` takes it), a run's stored definitions (dicts), or
    Perturbations. It pickles as its definitions and seed.
    """

    def __init__(
        self, perturbations: str | Sequence[str] | Sequence[Perturbation | dict] | None, seed: int
    ):
        if perturbations is None or isinstance(perturbations, str):
            chosen = resolve(perturbations)
        elif all(isinstance(p, str) for p in perturbations):
            chosen = resolve(list(perturbations))
        else:
            chosen = [
                p if isinstance(p, Perturbation) else Perturbation.from_definition(p)
                for p in perturbations
            ]
        self.perturbations = chosen
        self.names = [p.label for p in chosen]
        self.seed = seed
        # here, not at the top: the main process of an ingest with worker processes names the
        # run from this module and never applies a transform (clipshift/suites/paper.py)
        import albumentations as A

        self._pipelines = [
            (p, A.Compose([p.transform()], save_applied_params=True)) for p in chosen
        ]

    def __reduce__(self):
        return (Augmenter, ([p.definition for p in self.perturbations], self.seed))

    def __call__(self, original: np.ndarray, image_id: str) -> list[Augmented]:
        out = []
        for perturbation, pipeline in self._pipelines:
            label = perturbation.label
            pipeline.set_random_seed(augmentation_seed(self.seed, image_id, label))
            result = pipeline(image=original)
            applied = result.get("applied_transforms") or [(label, {})]
            out.append(
                Augmented(
                    label,
                    np.ascontiguousarray(result["image"], dtype=np.uint8),
                    _jsonable(applied[0][1]),
                    perturbation.severity,
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
