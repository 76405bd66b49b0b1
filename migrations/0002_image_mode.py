"""Record each image's decoded PIL mode (RGB, CMYK, I;16, P, RGBA, ...).

The mode tells a user which images went through a conversion to 8-bit RGB before augmentation.
Rows stored before this migration get NULL.
"""

import pyarrow as pa


def upgrade(store) -> None:
    images = store.dataset("images")
    if "mode" not in images.schema.names:
        images.add_columns(pa.field("mode", pa.string()))
