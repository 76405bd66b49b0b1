"""clipshift: how a vision-language model's representation moves when the image changes."""

__version__ = "0.1.0"

# The CLIP the paper used; any hub id or local save_pretrained folder works in its place.
DEFAULT_MODEL = "openai/clip-vit-base-patch32"


class ClipshiftError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
