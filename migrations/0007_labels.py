"""Add `label`, `label_index` and `source` to the `images` rows (issue 20: datasets as they are
shipped, with their labels).

- `label`: the image's class name, as its dataset gives it (a class folder's name, a shard's
  cls/txt/json member, a table's label column with its ClassLabel or --label-names names);
- `label_index`: the class index, where the dataset (or --label-names) has one;
- `source`: where the bytes were read (the path; shard#key; table file#row).

An image stored before has no label (NULL) and its path as its source. Identity stays the
content hash: the same bytes reached through a folder and through a shard are one image.

Numbered 0007: 0006 (layer metrics) is another change's. The runner applies every shipped
migration above the store's version in order, so a store created while only one of them
existed is one version short of the other; migrate a development store afresh.
"""

import pyarrow as pa


def upgrade(store) -> None:
    images = store.dataset("images")
    names = images.schema.names
    if "label" not in names:
        images.add_columns([pa.field("label", pa.string()), pa.field("label_index", pa.int32())])
    if "source" not in names:
        images.add_columns({"source": "path"})
