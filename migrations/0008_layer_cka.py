"""Add the table `layer_cka`: the linear CKA between a run's originals' and variants' pooled
hidden states, per (augmentation, severity, layer), kept in the store (docs/metrics.md,
"Inside the network").

The exact CKA reads every hidden state of the run and costs about images x width^2
multiply-adds per (augmentation, layer): minutes on a laptop's CPU for the paper-size run of
ViT-B/32, where `clipshift layers` must answer in seconds. So it is computed once per state of
the run, at the end of an ingest with --hidden-states (or by the first `clipshift layers` that
finds it missing or stale), and read back after that. `run_rows`, the run's variant rows when
it was computed, says which state that was: a run that grows is computed again.

A store before this migration gets the empty table; its runs' CKA is computed on the first
`clipshift layers` after it.
"""

import pyarrow as pa

LAYER_CKA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("augmentation", pa.string(), nullable=False),
        pa.field("severity", pa.int32()),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("cka", pa.float64()),
        pa.field("estimator", pa.string(), nullable=False),
        pa.field("images", pa.int64(), nullable=False),
        pa.field("run_rows", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64()),
        pa.field("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def upgrade(store) -> None:
    store.create_table("layer_cka", LAYER_CKA)
