"""clipshift: how a vision-language model's representation moves when the image changes."""

import os

from .defaults import DEFAULT_MODEL

# albumentations asks PyPI for a newer version at import unless this is set: a network call
# (and a warning) in every process that imports it, workers included. Set here, before any
# clipshift module imports albumentations, so it is set once for all of them.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "ClipshiftError", "__version__", "first_line"]


class ClipshiftError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def first_line(exc: BaseException, *, typed: bool = False) -> str:
    """The first line of `exc`'s message (a library's error can run to many lines), or its
    type's name where it has none; `typed` puts the type's name before the line as well."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if typed else line
