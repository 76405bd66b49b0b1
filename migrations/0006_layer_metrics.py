"""Add the layer metrics to the variant rows: `layer_cosine`, `token_drift`,
`token_drift_layers` and `hidden_states` (docs/metrics.md, "Inside the network").

Rows stored before this migration get NULL in all four: their ingest ran no layer probe, and
the metrics cannot be recomputed without the model. `clipshift layers` names such runs.
Every `variants_<D>` table gets the columns (a store without any gets them from its first
ingest), on a local folder and on object storage alike.
"""

import re

import pyarrow as pa

COLUMNS = (
    pa.field("layer_cosine", pa.list_(pa.float32())),
    pa.field("token_drift", pa.list_(pa.float32())),
    pa.field("token_drift_layers", pa.list_(pa.float32())),
    pa.field("hidden_states", pa.binary()),
)


def upgrade(store) -> None:
    for name in store.table_names():
        if not re.fullmatch(r"variants(_\d+)?", name):
            continue
        variants = store.dataset(name)
        missing = [f for f in COLUMNS if f.name not in variants.schema.names]
        if missing:
            variants.add_columns(missing)
