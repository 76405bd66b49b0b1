"""Add `variants.severity`: the level of a perturbation that has severity levels (the ImageNet-C
corruptions 1-5, a user suite's levels); NULL where it has none.

Every row stored before this migration is of the paper's nine augmentations, which have no
levels: they get NULL, and keep their variant names and their run's run_id.
"""

import pyarrow as pa


def upgrade(db) -> None:
    try:
        variants = db.open_table("variants")
    except ValueError:
        return  # not created yet: the first ingest creates it with the column
    if "severity" not in variants.schema.names:
        variants.add_columns(pa.field("severity", pa.int32()))
