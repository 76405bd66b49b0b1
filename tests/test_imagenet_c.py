"""The deterministic corruptions of the `corruptions` suite against ImageNet-C's published code.

The reference functions below restate Hendrycks & Dietterich's make_imagenet_c.py (224-px
tables, the same as `imagecorruptions` at 224 px): the same libraries, calls and parameters,
so a change in clipshift's implementation that moves its pixels away from ImageNet-C's shows
here. The random corruptions draw their noise differently and are not compared pixel by pixel.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom as scipy_zoom
from skimage.color import hsv2rgb, rgb2hsv
from test_suites import photo_pixels

from clipshift.suites import resolve


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    span = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    x, y = np.meshgrid(span, span)
    disk = np.array((x**2 + y**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    img = scipy_zoom(img[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def brightness(x: np.ndarray, severity: int) -> np.ndarray:
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    hsv = rgb2hsv(x / 255.0)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def contrast(x: np.ndarray, severity: int) -> np.ndarray:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def defocus_blur(x: np.ndarray, severity: int) -> np.ndarray:
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    x = x / 255.0
    kernel = _disk(radius=c[0], alias_blur=c[1])
    channels = np.array([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)])
    return np.clip(channels.transpose((1, 2, 0)), 0, 1) * 255


def zoom_blur(x: np.ndarray, severity: int) -> np.ndarray:
    c = [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in c:
        out += _clipped_zoom(x, factor)
    return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def pixelate(x: np.ndarray, severity: int) -> np.ndarray:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    image = Image.fromarray(x).resize((int(224 * c), int(224 * c)), Image.BOX)
    return np.asarray(image.resize((224, 224), Image.BOX), dtype=np.float64)


def jpeg_compression(x: np.ndarray, severity: int) -> np.ndarray:
    c = [25, 18, 15, 10, 7][severity - 1]
    output = io.BytesIO()
    Image.fromarray(x).save(output, "JPEG", quality=c)
    return np.asarray(Image.open(output), dtype=np.float64)


PUBLISHED = {
    f.__name__: f
    for f in (defocus_blur, zoom_blur, brightness, contrast, pixelate, jpeg_compression)
}


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return photo_pixels(224)  # ImageNet-C corrupts 224-px crops


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_deterministic_corruption_matches_the_published_code(photos, name):
    """At every severity, the mean absolute difference from ImageNet-C's pixels over the six
    photos is within 5% of the corruption's own mean change (measured: at most 3.4%, defocus
    at severity 1; pixelate and jpeg_compression are byte-identical)."""
    for perturbation in resolve(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transform = perturbation.transform()
        difference, effect = [], []
        for x in photos:
            published = PUBLISHED[name](x, perturbation.severity)
            ours = transform(image=x)["image"].astype(np.float64)
            difference.append(np.abs(ours - published).mean())
            effect.append(np.abs(published - x).mean())
        ratio = np.mean(difference) / np.mean(effect)
        assert ratio < 0.05, (perturbation.label, round(float(ratio), 4))
        assert np.mean(effect) > 1, perturbation.label  # the corruption does change the pixels


def test_pixelate_enlarges_as_imagecorruptions_does(photos):
    """imagecorruptions enlarges with NEAREST where make_imagenet_c.py uses BOX: the same bytes
    at every published scale, so clipshift follows both."""
    for c in (0.6, 0.5, 0.4, 0.3, 0.25):
        for x in photos:
            small = Image.fromarray(x).resize((int(224 * c), int(224 * c)), Image.BOX)
            box = np.asarray(small.resize((224, 224), Image.BOX))
            nearest = np.asarray(small.resize((224, 224), Image.NEAREST))
            assert np.array_equal(box, nearest), c


def test_changed_corruptions_have_new_definitions_and_the_others_keep_theirs():
    """A run's identity hashes its definitions: the three corruptions whose pixels changed name
    new transforms (so a run made before gets a new run_id), the rest are what they were."""
    classes = {
        p.name: p.definition["transform"]["__class_fullname__"] for p in resolve("corruptions")
    }
    assert classes["zoom_blur"] == "clipshift.ZoomBlurC"
    assert classes["pixelate"] == "clipshift.Pixelate"
    assert classes["jpeg_compression"] == "clipshift.JpegCompression"
    assert classes["defocus_blur"] == "Defocus"
    assert classes["brightness"] == "clipshift.Brightness"
    assert classes["contrast"] == "clipshift.Contrast"
