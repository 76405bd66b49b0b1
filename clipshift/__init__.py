"""clipshift: how a vision-language model's representation moves when the image changes."""

__version__ = "0.1.0"


class ClipshiftError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
