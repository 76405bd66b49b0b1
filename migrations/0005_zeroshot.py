"""Zero-shot classification results: `zeroshot` and `zeroshot_labels`.

`clipshift zeroshot` stores, per (run, label set, template), each variant's top-5 labels and
probabilities, so a second call reads them back and SQL can join them with `shifts`.
"""

import pyarrow as pa

ZEROSHOT = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("label_set", pa.string(), nullable=False),
        pa.field("template", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("severity", pa.int32()),
        pa.field("top_labels", pa.list_(pa.int32())),
        pa.field("top_probs", pa.list_(pa.float32())),
        pa.field("original_top1_prob", pa.float32()),
    ]
)

ZEROSHOT_LABELS = pa.schema(
    [
        pa.field("label_set", pa.string(), nullable=False),
        pa.field("label_index", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
    ]
)


def upgrade(store) -> None:
    store.create_table("zeroshot", ZEROSHOT)
    store.create_table("zeroshot_labels", ZEROSHOT_LABELS)
