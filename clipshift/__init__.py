"""clipshift: how a vision-language model's representation moves when the image changes."""

from .defaults import DEFAULT_MODEL

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "ClipshiftError", "__version__"]


class ClipshiftError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
