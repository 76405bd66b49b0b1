"""The tables' names and schemas: a contract, since users' SQL relies on them (docs/schema.md)."""

from __future__ import annotations

import pyarrow as pa

# Variant rows live in one Lance table per embedding width, `variants_<D>`: LanceDB vector
# search needs a fixed-size embedding column, and a store holds models of several widths.
# SQL sees them as one view, `variants` (analysis.connect); docs/schema.md.
VARIANTS_PREFIX = "variants_"


def variants_table_name(embedding_dim: int) -> str:
    """The Lance table holding the variant rows of every run of this embedding width."""
    return f"{VARIANTS_PREFIX}{int(embedding_dim)}"


def variants_schema(embedding_dim: int) -> pa.Schema:
    """The current schema of a `variants_<D>` table: one row per (run, image, variant)."""
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), embedding_dim)),
            pa.field("attention", pa.list_(pa.float32())),
            pa.field("attention_layers", pa.list_(pa.float32())),
            pa.field("patch_similarity", pa.float64()),
            pa.field("edge_preservation", pa.float64()),
            pa.field("detail_preservation", pa.float64()),
            pa.field("params", pa.string()),
            pa.field("pixels", pa.binary()),
            # NULL where the perturbation has no severity levels (migration 0004)
            pa.field("severity", pa.int32()),
            # the layer metrics (migration 0006; NULL in rows stored before it):
            # layer_cosine (L + 1 floats, SigLIP L + 2), token_drift (g*g), token_drift_layers
            # (L x g*g, laid out like attention_layers), hidden_states (--hidden-states only:
            # (L + 1) x width little-endian float16)
            pa.field("layer_cosine", pa.list_(pa.float32())),
            pa.field("token_drift", pa.list_(pa.float32())),
            pa.field("token_drift_layers", pa.list_(pa.float32())),
            pa.field("hidden_states", pa.binary()),
        ]
    )
