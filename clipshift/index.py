"""The vectors behind `neighbors` and `retrieval`: a run's embeddings, LanceDB vector search
over them, and the vector index (`build_index`, `clipshift index`).

Distances are cosine distances, 1 - cos, on the stored (un-normalised) embeddings; docs/
neighbors.md has the measurements behind each threshold here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import ClipshiftError
from .defaults import ORIGINAL
from .filters import matches, where
from .knn import normalise
from .runs import Run, resolve_run
from .store import Store

# At the paper's 133k rows a `neighbors` query is about as fast flat as through the index,
# which takes minutes to build (README, Benchmarks: benchmarks/retrieval.py); a flat scan grows
# to ~1 s around a million rows, so below that an index is not built unasked. One built with
# `clipshift index` is used at any size.
INDEX_MIN_ROWS = 1_000_000
# HNSW search breadth: recall@10 against exact 0.91 at 50, 0.96 at 200 on the synthetic store.
HNSW_EF = 150
ANN_RECALL_SAMPLE = 200


# -- a run's embeddings ---------------------------------------------------------------------


def open_run(db: str | os.PathLike | Store, run: str | None) -> tuple[Store, Run]:
    """The store and the run (`runs.resolve_run`) whose embeddings a command searches."""
    store = db if isinstance(db, Store) else Store.open(db)
    if not store.variants_tables():
        raise ClipshiftError(
            f"the store at {store.path} holds no embeddings yet: run `clipshift ingest` first"
        )
    chosen = resolve_run(store, run=run)
    # the run's rows live in the table of its embedding width (Run.variants_table)
    if store.variants_table_of(chosen.run_id) is None:
        raise ClipshiftError(f"run {chosen.run_id} holds no embeddings yet")
    return store, chosen


def run_filter(run_id: str, among: str = "originals") -> dict[str, str]:
    """The conditions selecting a run's candidates: for `filters.matches` or `filters.where`."""
    if among == "originals":
        return {"run_id": run_id, "variant": ORIGINAL}
    return {"run_id": run_id}


def augmented_rows(run_id: str) -> pc.Expression:
    """A run's augmented rows (every variant but the original)."""
    return matches(run_id=run_id) & (pc.field("variant") != ORIGINAL)


@dataclass
class Embeddings:
    image_ids: np.ndarray  # (N,) str
    variants: np.ndarray  # (N,) str
    vectors: np.ndarray  # (N, D) float32, as stored

    def normalised(self) -> np.ndarray:
        return normalise(self.vectors)


def load_embeddings(store: Store, variants_table: str, rows: pc.Expression) -> Embeddings:
    """The embeddings of the `variants` rows an expression (see `filters.matches`) selects."""
    table = store.dataset(variants_table).to_table(
        columns=["image_id", "variant", "embedding"], filter=rows
    )
    return _embeddings(table)


def stream_embeddings(
    store: Store, variants_table: str, rows: pc.Expression, block: int
) -> Iterator[Embeddings]:
    """`load_embeddings` in blocks of at most `block` rows, in the same order: one block in
    memory at a time (a run's 1.2M augmented rows are 2.4 GB as float32)."""
    for batch in store.dataset(variants_table).to_batches(
        columns=["image_id", "variant", "embedding"], filter=rows, batch_size=block
    ):
        if batch.num_rows:
            yield _embeddings(pa.Table.from_batches([batch]))


def count_embeddings(store: Store, variants_table: str, rows: pc.Expression) -> int:
    return store.dataset(variants_table).count_rows(filter=rows)


def _embeddings(table) -> Embeddings:
    dim = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks()
    vectors = flat.values.to_numpy(zero_copy_only=False).reshape(table.num_rows, dim)
    return Embeddings(
        np.asarray(table.column("image_id").to_pylist(), dtype=object),
        np.asarray(table.column("variant").to_pylist(), dtype=object),
        np.ascontiguousarray(vectors, dtype=np.float32),
    )


# -- the index ----------------------------------------------------------------------------


def has_vector_index(store: Store, variants_table: str) -> bool:
    # through pylance, not LanceDB: `clipshift serve` asks on every new store version, and
    # importing lancedb takes ~3 s
    return any(
        "embedding" in index.field_names and index.index_type.upper().startswith(("IVF", "HNSW"))
        for index in store.dataset(variants_table).describe_indices()
    )


@dataclass
class IndexInfo:
    rows: int
    index_type: str
    seconds: float
    ann_recall_at_10: float | None  # ANN top-10 against exact top-10, on a sample of queries
    sample: int


def build_index(
    db: str | os.PathLike | Store, *, run: str | None = None, measure: bool = True
) -> IndexInfo:
    """(Re)build the HNSW cosine index on the embedding of the run's `variants_<D>` table (and
    bitmap indexes on run_id and variant for the filters), which serves every run of that
    width; with `measure`, report ANN recall@10 against exact on a sample."""
    import time

    from lancedb.index import Bitmap, HnswSq

    store, chosen = open_run(db, run)
    table = store.table(chosen.variants_table)
    rows = table.count_rows()
    if rows < 256:
        raise ClipshiftError(
            f"the store has {rows} variant rows: an index needs at least 256 (and pays from "
            f"{INDEX_MIN_ROWS:,}); exact search is used meanwhile"
        )
    started = time.perf_counter()
    with store.lock():
        # one partition: a single HNSW graph; partitioned IVF loses recall on CLIP-like data
        # with little cluster structure and gains speed only far beyond the paper's size
        partitions = max(1, rows // 1_000_000)
        table.create_index(
            "embedding",
            config=HnswSq(distance_type="cosine", num_partitions=partitions),
            replace=True,
        )
        table.create_index("run_id", config=Bitmap(), replace=True)
        table.create_index("variant", config=Bitmap(), replace=True)
    seconds = time.perf_counter() - started
    recall, sample = (None, 0)
    if measure:
        recall, sample = ann_recall(store, chosen.variants_table, chosen.run_id)
    return IndexInfo(rows, "IVF_HNSW_SQ (cosine)", seconds, recall, sample)


def ensure_index(store: Store, run: Run, notes: list[str]) -> bool:
    """Use the index on the run's table if there is one; build it, once, when the table is big
    enough to pay (saying so in `notes`)."""
    if has_vector_index(store, run.variants_table):
        return True
    if store.table(run.variants_table).count_rows() < INDEX_MIN_ROWS:
        return False
    info = build_index(store, run=run.run_id, measure=False)
    notes.append(
        f"built the vector index once ({info.rows:,} rows, {info.seconds:.0f} s); "
        "`clipshift index` rebuilds it"
    )
    return True


def search(
    store: Store,
    variants_table: str,
    vectors: np.ndarray,
    prefilter: str,
    limit: int,
    use_index: bool,
    columns: Sequence[str] = ("image_id", "variant"),
):
    """LanceDB cosine search for one or many query vectors: an Arrow table with query_index
    (when many), the columns and _distance. The index's _distance is on its own scale (the
    HNSW index gives 2 x the cosine distance); only its order is used from an index search."""
    query = (
        store.table(variants_table)
        .search(vectors, vector_column_name="embedding")
        .distance_type("cosine")
        .where(prefilter, prefilter=True)
        .select([*columns, "_distance"])
        .limit(limit)
    )
    query = query.ef(max(HNSW_EF, limit)) if use_index else query.bypass_vector_index()
    return query.to_arrow()


def query_index(found) -> np.ndarray:
    # a search with a single vector returns no query_index column
    if "query_index" in found.column_names:
        return found.column("query_index").to_numpy()
    return np.zeros(found.num_rows, np.int64)


def ann_recall(
    store: Store,
    variants_table: str,
    run_id: str,
    k: int = 10,
    sample: int = ANN_RECALL_SAMPLE,
    seed: int = 0,
    *,
    queries: np.ndarray | None = None,
    originals: Embeddings | None = None,
) -> tuple[float, int]:
    """Share of the exact top-k originals that the index returns, over augmented queries:
    `queries` when given (a caller that streams the run's rows picks them with
    `ann_sample_rows`), else a sample of them loaded here."""
    if queries is None:
        augmented = load_embeddings(store, variants_table, augmented_rows(run_id))
        queries = augmented.vectors[ann_sample_rows(len(augmented.vectors), sample, seed)]
    if not len(queries):
        return float("nan"), 0
    if originals is None:
        originals = load_embeddings(store, variants_table, matches(**run_filter(run_id)))
    similarities = normalise(queries) @ originals.normalised().T
    k = min(k, len(originals.vectors))
    exact = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    found = search(store, variants_table, queries, where(**run_filter(run_id)), k, use_index=True)
    index = query_index(found)
    ids = np.asarray(found.column("image_id").to_pylist(), dtype=object)
    hits = [
        len(set(ids[index == q]) & set(originals.image_ids[exact[q]])) for q in range(len(queries))
    ]
    return float(np.sum(hits) / (k * len(queries))), len(queries)


def ann_sample_rows(rows: int, sample: int = ANN_RECALL_SAMPLE, seed: int = 0) -> np.ndarray:
    """The positions, among a run's augmented rows, of the queries `ann_recall` samples."""
    return np.random.default_rng(seed).choice(rows, min(sample, rows), replace=False)
