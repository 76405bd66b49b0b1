"""Retrieval scores: does an augmentation move an image out of its neighbourhood?

`retrieval` queries with every augmented embedding of a run against all its originals and
scores recall@k, MRR and k-NN overlap per augmentation.

The rank of an image's own original is 1 + the number of candidates strictly closer to the
query (ties count in the query's favour). Exact retrieval screens with a bfloat16 matrix
product over the normalised embeddings and settles the candidates in float32
(`knn.exact_neighbors`), which on the paper-size store is 100x faster than 120k index
queries; docs/neighbors.md has the measurements behind each threshold here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import ClipshiftError
from .defaults import DEFAULT_KS
from .filters import matches, where
from .index import (
    ann_recall,
    ann_sample_rows,
    augmented_rows,
    count_embeddings,
    ensure_index,
    load_embeddings,
    open_run,
    query_index,
    run_filter,
    search,
    stream_embeddings,
)
from .knn import ExactSearch, normalise
from .store import Store

# Bulk retrieval through the index costs ~100x the exact search per query at 13k originals
# (README, Benchmarks); the exact cost grows linearly with the originals, so the index only
# pays for the bulk evaluation of a run with about this many originals.
RETRIEVAL_INDEX_MIN_ORIGINALS = 1_000_000
ANN_BLOCK = 512
# augmented queries read from the store and searched at a time: 32,768 x 512-d float32 is
# 64 MB (plus its normalised copy), while the whole of a 133k-image run's is 2.4 GB
RETRIEVAL_BLOCK = 32_768


@dataclass
class RetrievalResult:
    run_id: str
    ks: list[int]
    method: str  # "exact" or "index"
    rows: list[dict]  # one per augmentation: augmentation, n, recall_at_K, mrr, overlap_at_K
    ann_recall_at_10: float | None = None
    ann_sample: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # for the user: which run, what was built
    columns: list[str] = field(default_factory=list)


def parse_ks(spec: str | Sequence[int]) -> list[int]:
    try:
        ks = [int(k) for k in spec.split(",") if k.strip()] if isinstance(spec, str) else spec
    except ValueError:
        raise ClipshiftError(
            f"-k {spec}: give a comma list of whole numbers, e.g. 1,5,10"
        ) from None
    if not ks or any(k < 1 for k in ks):
        raise ClipshiftError(f"-k {spec}: give a comma list of whole numbers of 1 or more")
    return sorted(set(ks))


def _cap_ks(ks: list[int], originals: int) -> tuple[list[int], str | None]:
    """The ks a run of this many originals can answer, and a note when any was cut. A query
    has originals - 1 neighbours besides its own original: at any k beyond that, recall is
    1 and k-NN overlap 1 by construction, which would read as a perfect score."""
    cap = max(1, originals - 1)
    if max(ks) <= cap:
        return ks, None
    asked = ",".join(str(k) for k in ks if k > cap)
    note = (
        f"-k {asked} capped at {cap}: the run has {originals} originals, so a query has "
        f"{cap} neighbours besides its own"
    )
    return sorted({min(k, cap) for k in ks}), note


def retrieval(
    db: str | os.PathLike,
    ks: str | Sequence[int] = DEFAULT_KS,
    *,
    exact: bool | None = None,
    run: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RetrievalResult:
    """Per augmentation: recall@k and MRR of the own original, and k-NN overlap, querying with
    every augmented embedding of the run against all its originals.

    `exact=None` chooses: the index when the run has enough originals for it to pay. The
    augmented queries stream from the store in blocks of `RETRIEVAL_BLOCK`, each reduced to
    running sums before the next is read, so memory holds the originals and one block
    (`on_progress(queries_done, queries_total)` after each)."""
    import time

    started = time.perf_counter()
    ks = parse_ks(ks)
    store, chosen = open_run(db, run)
    run_id = chosen.run_id
    table = chosen.variants_table
    originals = load_embeddings(store, table, matches(**run_filter(run_id)))
    if not len(originals.vectors):
        raise ClipshiftError(f"run {run_id} has no stored images yet")
    notes = [chosen.selection_note] if chosen.selection_note else []
    if exact is None:
        exact = len(originals.vectors) < RETRIEVAL_INDEX_MIN_ORIGINALS
        if not exact:
            notes.append(
                f"{len(originals.vectors):,} originals: searching through the vector index "
                f"(exact search pays below {RETRIEVAL_INDEX_MIN_ORIGINALS:,}); --exact for "
                "exact figures"
            )
    ks, capped = _cap_ks(ks, len(originals.vectors))
    if capped:
        notes.append(capped)
    use_index = not exact and ensure_index(store, chosen, notes)
    position = {image_id: i for i, image_id in enumerate(originals.image_ids)}
    depth = min(max(ks), len(originals.vectors) - 1)
    if use_index:

        def neighbors(queries: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return _ann_neighbors(store, table, run_id, position, queries, own, depth)

        unit = None
    else:
        unit = originals.normalised()
        search_exact = ExactSearch(unit)

        def neighbors(queries: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return search_exact(normalise(queries), own, depth)

    selected = augmented_rows(run_id)
    total = count_embeddings(store, table, selected) + len(originals.vectors)
    done = 0
    orig_knn = np.empty((len(originals.vectors), depth), np.int64)
    for start in range(0, len(originals.vectors), RETRIEVAL_BLOCK):
        stop = min(start + RETRIEVAL_BLOCK, len(originals.vectors))
        queries = unit[start:stop] if unit is not None else originals.vectors[start:stop]
        _, orig_knn[start:stop] = neighbors(queries, np.arange(start, stop))
        done += stop - start
        if on_progress:
            on_progress(done, total)

    sampled = ann_sample_rows(total - len(originals.vectors)) if use_index else None
    sample = None
    sums: dict[str, _Sums] = {}
    seen = 0
    for block in stream_embeddings(store, table, selected, RETRIEVAL_BLOCK):
        own = np.fromiter((position[i] for i in block.image_ids), np.int64, len(block.image_ids))
        ranks, aug_knn = neighbors(block.vectors, own)
        for name in dict.fromkeys(block.variants):
            mask = block.variants == name
            sums.setdefault(name, _Sums.empty(ks)).add(
                ranks[mask], aug_knn[mask], orig_knn[own[mask]]
            )
        if sampled is not None:
            if sample is None:
                sample = np.empty((len(sampled), block.vectors.shape[1]), np.float32)
            inside = (sampled >= seen) & (sampled < seen + len(block.vectors))
            sample[inside] = block.vectors[sampled[inside] - seen]
        seen += len(block.vectors)
        done += len(block.vectors)
        if on_progress:
            on_progress(done, total)

    rows = [{"augmentation": name, **entry.row(ks, depth)} for name, entry in sums.items()]
    columns = ["augmentation", "n", *(f"recall_at_{k}" for k in ks), "mrr"]
    columns += [f"overlap_at_{k}" for k in ks]
    result = RetrievalResult(
        run_id,
        ks,
        "index" if use_index else "exact",
        rows,
        notes=notes,
        columns=columns,
    )
    if use_index:
        result.ann_recall_at_10, result.ann_sample = ann_recall(
            store, table, run_id, queries=sample, originals=originals
        )
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class _Sums:
    """One augmentation's running sums over its queries: what its row of figures averages."""

    n: int
    hits: dict[int, int]  # queries whose own original ranks within k
    reciprocal: float
    jaccard: dict[int, float]

    @classmethod
    def empty(cls, ks: list[int]) -> _Sums:
        return cls(0, dict.fromkeys(ks, 0), 0.0, dict.fromkeys(ks, 0.0))

    def add(self, rank: np.ndarray, aug_knn: np.ndarray, orig_knn: np.ndarray) -> None:
        self.n += len(rank)
        for k in self.hits:
            self.hits[k] += int(np.sum((rank >= 1) & (rank <= k)))
            if aug_knn.shape[1]:
                self.jaccard[k] += float(np.sum(_jaccard(aug_knn, orig_knn, k)))
        self.reciprocal += float(np.sum(np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0)))

    def row(self, ks: list[int], depth: int) -> dict:
        row = {"n": self.n}
        row.update({f"recall_at_{k}": self.hits[k] / self.n for k in ks})
        row["mrr"] = self.reciprocal / self.n
        # no other original (a run of one): no neighbourhood to overlap
        row.update(
            {f"overlap_at_{k}": self.jaccard[k] / self.n if depth else float("nan") for k in ks}
        )
        return row


def _ann_neighbors(
    store: Store,
    variants_table: str,
    run_id: str,
    position: dict[str, int],
    queries: np.ndarray,
    own: np.ndarray,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """As `knn.exact_neighbors`, through the index. The own original's rank is its position in
    the depth + 1 nearest the index returns; beyond that it counts as 0 (reciprocal rank 0,
    not within any k). Missing neighbours (the index found fewer) are -1."""
    ranks = np.zeros(len(queries), np.int64)
    knn = np.full((len(queries), depth), -1, np.int64)
    prefilter = where(**run_filter(run_id))
    for start in range(0, len(queries), ANN_BLOCK):
        block = queries[start : start + ANN_BLOCK]
        found = search(store, variants_table, block, prefilter, depth + 1, use_index=True)
        found_query = query_index(found)
        ids = found.column("image_id").to_pylist()
        distances = found.column("_distance").to_numpy()
        order = np.lexsort((distances, found_query))
        listed: list[list[int]] = [[] for _ in range(len(block))]
        for j in order:
            listed[found_query[j]].append(position[ids[j]])
        for q, neighbors in enumerate(listed):
            target = own[start + q]
            if target in neighbors:
                ranks[start + q] = neighbors.index(target) + 1
            others = [n for n in neighbors if n != target][:depth]
            knn[start + q, : len(others)] = others
    return ranks, knn


def _jaccard(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row, |A & B| / |A | B| for the first k columns of a and b (-1 = none); each row
    holds distinct indices, so the intersection is a count of equal pairs."""
    a, b = a[:, :k], b[:, :k]
    common = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).sum(axis=(1, 2))
    union = (a >= 0).sum(1) + (b >= 0).sum(1) - common
    return np.where(union > 0, common / np.maximum(union, 1), 1.0)
