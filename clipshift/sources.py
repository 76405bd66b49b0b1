"""The reader stages: discover image paths, read and hash their bytes, decode to S x S RGB."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from . import ClipshiftError
from .defaults import IMAGE_SUFFIXES
from .location import Location, is_object_uri, read_object

# PIL's own guard against decompression bombs stays on: past this many pixels an image is
# recorded as an error rather than taking the machine's memory.
Image.MAX_IMAGE_PIXELS = 178_956_970
ImageFile.LOAD_TRUNCATED_IMAGES = False
_EXIF_ORIENTATION = 0x0112


class DecodeError(Exception):
    """An image that cannot be turned into RGB pixels; recorded in `errors`, never fatal."""


def is_image_path(path: Path | str) -> bool:
    return Path(str(path)).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class ObjectFile:
    """An image in object storage (s3://bucket/key), read with its location's credentials."""

    uri: str
    storage_options: dict

    def read_bytes(self) -> bytes:
        return read_object(self.uri, self.storage_options)

    def __str__(self) -> str:
        return self.uri


def discover(paths: Iterable[str | os.PathLike]) -> Iterator[Path | ObjectFile]:
    """Image paths under each PATH, in a stable order.

    A folder is walked recursively (sorted); an image file is itself; any other file is a
    list of paths, one per line (blank lines and lines starting with # skipped, relative
    paths relative to the list file). A PATH that does not exist is a user error. An
    s3:// (gs://, az://) prefix is listed recursively (sorted) with the storage credentials.
    """
    for raw in paths:
        if is_object_uri(raw):
            location = Location.parse(raw)
            for uri in location.list_files():
                if is_image_path(uri):
                    yield ObjectFile(uri, location.storage_options)
            continue
        path = Path(raw).expanduser().absolute()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if is_image_path(candidate):
                        yield candidate
        elif path.is_file() and is_image_path(path):
            yield path
        elif path.is_file():
            yield from _listed(path)
        else:
            raise ClipshiftError(f"no such file or folder: {raw}")


def _listed(list_file: Path) -> Iterator[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        raise ClipshiftError(
            f"{list_file} is neither an image ({', '.join(IMAGE_SUFFIXES)}) "
            "nor a text file listing image paths"
        ) from None
    for _, entry in list_entries(lines):
        listed = Path(entry).expanduser()
        yield listed if listed.is_absolute() else (list_file.parent / listed).absolute()


def list_entries(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """The entries of a file of one entry a line (image paths, labels, prompts), each with its
    line number from 1: surrounding spaces dropped, blank lines and lines starting with #
    skipped, so a list may end in a blank line and carry comments."""
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield number, entry


@dataclass
class Source:
    path: Path | ObjectFile | str  # str: a dataset's sample (shard#key, file#row)
    data: bytes
    image_id: str  # sha256 of the file's bytes
    label: str | None = None  # the class name, where the dataset gives one
    label_index: int | None = None


def read_source(path: Path | ObjectFile) -> Source:
    """The file's bytes and content hash. OSError for a file that cannot be read."""
    data = path.read_bytes()
    return Source(path, data, hashlib.sha256(data).hexdigest())


@dataclass
class Decoded:
    pixels: np.ndarray  # S x S x 3 uint8, the "original"
    width: int  # as decoded, after EXIF orientation
    height: int
    format: str
    mode: str  # PIL mode before conversion to RGB


def decode(data: bytes, size: int) -> Decoded:
    """Decode to 8-bit RGB and resize to size x size, as docs/metrics.md step 1-2 says.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images become 8-bit RGB;
    transparency is composited on white. The resize ignores the aspect ratio, as the paper's did.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt, mode = image.format or "unknown", image.mode
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            if image.format == "JPEG":
                # decode big JPEGs at a reduced scale straight away; the resize follows anyway
                image.draft("RGB", (size, size))
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
    except Image.DecompressionBombWarning as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"cannot decode: {exc}") from None
    return Decoded(np.asarray(resized, dtype=np.uint8).copy(), width, height, fmt, mode)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and 32-bit grayscale: scale the full range down to 8 bits
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        gray = np.clip(np.round(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
