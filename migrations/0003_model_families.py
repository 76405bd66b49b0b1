"""Model families and embedding widths side by side.

- `variants` becomes one table per embedding width, `variants_<D>` (LanceDB vector search needs
  a fixed-size embedding column, and a store now holds models of several widths): the existing
  table is renamed to `variants_<its width>`. SQL still sees one view, `variants`.
- `runs` gains `family` (clip, siglip, siglip2), `preprocessing` (JSON: the normalisation and
  resize the model got) and `attention_maps` (which attention definition the maps follow; see
  docs/metrics.md). Runs stored before this migration were all CLIPModel runs with the CLS-row
  maps: they get family 'clip' and that definition; their preprocessing stays NULL (not
  recorded then).

Each step can be repeated, so a migration interrupted half-way completes when run again.
"""

import lance
import pyarrow as pa

NEW_COLUMNS = ("family", "preprocessing", "attention_maps")
CLS_ROW = "cls_row: per layer, the CLS row over the patches, mean over heads"


def upgrade(store) -> None:
    # the store's folder or object-storage prefix, with the options the store was opened with
    root = store.location
    if "variants" in store.table_names():
        old = lance.dataset(root.child("variants.lance"), storage_options=root.storage_options)
        width = old.schema.field("embedding").type.list_size
        # Lance's manifests address files relative to the dataset root: a local folder is
        # renamed atomically; on object storage the objects are copied, then the old deleted
        # (Location.rename; an interrupted move completes when the migration runs again)
        root.rename("variants.lance", f"variants_{width}.lance")
    runs = store.dataset("runs")
    missing = [n for n in NEW_COLUMNS if n not in runs.schema.names]
    if missing:
        # nullable columns (an SQL-expression column would be declared non-nullable)
        runs.add_columns([pa.field(name, pa.string()) for name in missing])
    # every run before this migration was a CLIPModel run with CLS-row maps
    runs.update({"family": "'clip'", "attention_maps": f"'{CLS_ROW}'"}, where="family IS NULL")
