"""Each pixel metric against a case small enough to work out by hand."""

import numpy as np
import pytest

from clipshift.pixels import pixel_metrics


def gray(values) -> np.ndarray:
    """An RGB image whose three channels are `values` (so its grayscale Y equals `values`)."""
    values = np.asarray(values, dtype=np.uint8)
    return np.repeat(values[..., None], 3, axis=-1)


def test_patch_similarity_one_patch_fully_changed():
    original = np.zeros((8, 8, 3), np.uint8)
    augmented = original.copy()
    augmented[:2, :2] = 255  # the top-left of the 4 x 4 patches: MSE = 255^2, score 1/2
    assert pixel_metrics(original, augmented)["patch_similarity"] == pytest.approx((15 + 0.5) / 16)


def test_patch_similarity_uses_float_not_wrapping_uint8():
    original = np.full((8, 8, 3), 10, np.uint8)
    augmented = np.full((8, 8, 3), 20, np.uint8)  # uint8 10 - 20 would wrap to 246
    assert pixel_metrics(original, augmented)["patch_similarity"] == pytest.approx(
        1 / (1 + 100 / 255**2)
    )


def test_edge_preservation_step_edge():
    # rows [0, 0, 10, 10]: numpy.gradient -> [0, 5, 5, 0] -> normalised [0, 1, 1, 0]
    # rows [0, 10, 10, 10]: gradient -> [10, 5, 0, 0] -> normalised [1, .5, 0, 0]
    original = gray([[0, 0, 10, 10]] * 4)
    augmented = gray([[0, 10, 10, 10]] * 4)
    assert pixel_metrics(original, augmented)["edge_preservation"] == pytest.approx(1 - 0.625)


def test_edge_preservation_flat_images_are_identical():
    flat = np.full((8, 8, 3), 7, np.uint8)
    assert pixel_metrics(flat, flat)["edge_preservation"] == 1.0


def checkerboard(amplitude: int) -> np.ndarray:
    """16 x 16, every 2 x 2 patch of the 8 x 8 grid holds 0 and `amplitude` (std amplitude/2)."""
    return gray(np.indices((16, 16)).sum(axis=0) % 2 * amplitude)


def test_detail_preservation_ratio_two_scores_half():
    assert pixel_metrics(checkerboard(10), checkerboard(20))[
        "detail_preservation"
    ] == pytest.approx(0.5)


def test_detail_preservation_flattened_patches_score_zero():
    augmented = checkerboard(10)
    augmented[:8] = 0  # the top half of the grid loses all detail: r = 0 -> s = 0
    assert pixel_metrics(checkerboard(10), augmented)["detail_preservation"] == pytest.approx(0.5)


def test_detail_preservation_divides_by_valid_patches_only():
    original = checkerboard(10)
    original[:8] = 0  # 32 patches of 64 are flat, so invalid
    augmented = checkerboard(20)
    assert pixel_metrics(original, augmented)["detail_preservation"] == pytest.approx(0.5)


def test_detail_preservation_null_without_valid_patches():
    flat = np.zeros((16, 16, 3), np.uint8)
    assert pixel_metrics(flat, checkerboard(10))["detail_preservation"] is None


def test_identical_images_score_one():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert pixel_metrics(image, image) == {
        "patch_similarity": 1.0,
        "edge_preservation": 1.0,
        "detail_preservation": 1.0,
    }
