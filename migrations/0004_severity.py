"""Add `severity` to the variant rows: the level of a perturbation that has severity levels
(the ImageNet-C corruptions 1-5, a user suite's levels); NULL where it has none.

Every row stored before this migration is of the paper's nine augmentations, which have no
levels: they get NULL, and keep their variant names and their run's run_id.

Since migration 0003 the variant rows live in one table per embedding width, `variants_<D>`:
each gets the column (a store without any yet gets it from its first ingest).
"""

import re

import pyarrow as pa


def upgrade(store) -> None:
    for name in store.table_names():
        if not re.fullmatch(r"variants(_\d+)?", name):
            continue
        variants = store.dataset(name)
        if "severity" not in variants.schema.names:
            variants.add_columns(pa.field("severity", pa.int32()))
