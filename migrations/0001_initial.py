"""The first schema: runs, images and errors.

The variants table is created by the first ingest, since its embedding column is a fixed-size
list whose width is the model's embedding dimension.
"""

import pyarrow as pa

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_revision", pa.string()),
        pa.field("embedding_dim", pa.int32()),
        pa.field("patch_grid", pa.int32()),
        pa.field("num_layers", pa.int32()),
        pa.field("image_size", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("augmentations", pa.string()),
        pa.field("augmentation_hash", pa.string()),
        pa.field("clipshift_version", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
    ]
)

ERRORS = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("message", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("time", pa.timestamp("us", tz="UTC")),
    ]
)


def upgrade(store) -> None:
    # create_table leaves a table that exists: an ingest killed after creating some of these
    # tables, before the migration was recorded, runs this again on its next start
    store.create_table("runs", RUNS)
    store.create_table("images", IMAGES)
    store.create_table("errors", ERRORS)
