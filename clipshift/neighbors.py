"""Nearest-neighbour shift queries: does an augmentation move an image out of its neighbourhood?

`neighbors` answers one query (a stored image, an image file, or a text) with LanceDB vector
search over the run's embeddings. `retrieval` queries with every augmented embedding of a run
against all its originals and scores recall@k, MRR and k-NN overlap per augmentation.
`build_index` builds the LanceDB vector index on `variants.embedding`.

Distances are cosine distances, 1 - cos, on the stored (un-normalised) embeddings. The rank of
an image's own original is 1 + the number of candidates strictly closer to the query (ties
count in the query's favour). Exact retrieval screens with a bfloat16 matrix product over the
normalised embeddings and settles the candidates in float32 (`knn.exact_neighbours`), which on the
paper-size store is 100x faster than 120k index queries; docs/neighbors.md has the
measurements behind each threshold here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from . import ClipshiftError
from .defaults import AMONG, DEFAULT_KS, ORIGINAL
from .filters import matches, where
from .knn import exact_neighbours, normalise
from .store import Store

# At the paper's 133k rows a `neighbors` query is about as fast flat as through the index,
# which takes minutes to build (README, Benchmarks: benchmarks/retrieval.py); a flat scan grows
# to ~1 s around a million rows, so below that an index is not built unasked. One built with
# `clipshift index` is used at any size.
INDEX_MIN_ROWS = 1_000_000
# Bulk retrieval through the index costs ~100x the exact search per query at 13k originals
# (README, Benchmarks); the exact cost grows linearly with the originals, so the index only
# pays for the bulk evaluation of a run with about this many originals.
RETRIEVAL_INDEX_MIN_ORIGINALS = 1_000_000
# HNSW search breadth: recall@10 against exact 0.91 at 50, 0.96 at 200 on the synthetic store.
HNSW_EF = 150
ANN_RECALL_SAMPLE = 200
ANN_BLOCK = 512


# -- loading ------------------------------------------------------------------------------


def _open(db: str | os.PathLike | Store, run: str | None) -> tuple[Store, dict]:
    from .analysis import connect, resolve_run

    store = db if isinstance(db, Store) else Store.open(db)
    if not store.variants_tables():
        raise ClipshiftError(
            f"the store at {store.path} holds no embeddings yet: run `clipshift ingest` first"
        )
    con = connect(store)
    try:
        chosen = resolve_run(con, run=run)
    finally:
        con.close()
    # the run's rows live in the table of its embedding width (store.variants_table_name)
    chosen["variants_table"] = store.variants_table_of(chosen["run_id"])
    if chosen["variants_table"] is None:
        raise ClipshiftError(f"run {chosen['run_id']} holds no embeddings yet")
    return store, chosen


def _run_filter(run_id: str, among: str = "originals") -> dict[str, str]:
    """The conditions selecting a run's candidates: for `filters.matches` or `filters.where`."""
    if among == "originals":
        return {"run_id": run_id, "variant": ORIGINAL}
    return {"run_id": run_id}


def _augmented(run_id: str) -> pc.Expression:
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
    dim = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks()
    vectors = flat.values.to_numpy(zero_copy_only=False).reshape(table.num_rows, dim)
    return Embeddings(
        np.asarray(table.column("image_id").to_pylist(), dtype=object),
        np.asarray(table.column("variant").to_pylist(), dtype=object),
        np.ascontiguousarray(vectors, dtype=np.float32),
    )


def _paths(store: Store, image_ids: Sequence[str]) -> dict[str, str]:
    if not image_ids:
        return {}
    table = store.dataset("images").to_table(
        columns=["image_id", "path"], filter=matches(image_id=sorted(set(image_ids)))
    )
    ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
    return dict(zip(ids, paths, strict=True))


# -- the index ----------------------------------------------------------------------------


def _has_vector_index(store: Store, variants_table: str) -> bool:
    return any(
        "embedding" in index.columns and index.index_type.upper().startswith(("IVF", "HNSW"))
        for index in store.table(variants_table).list_indices()
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

    store, chosen = _open(db, run)
    table = store.table(chosen["variants_table"])
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
        recall, sample = ann_recall(store, chosen["variants_table"], chosen["run_id"])
    return IndexInfo(rows, "IVF_HNSW_SQ (cosine)", seconds, recall, sample)


def _ensure_index(store: Store, run: dict, notes: list[str]) -> bool:
    """Use the index on the run's table if there is one; build it, once, when the table is big
    enough to pay (saying so in `notes`)."""
    if _has_vector_index(store, run["variants_table"]):
        return True
    if store.table(run["variants_table"]).count_rows() < INDEX_MIN_ROWS:
        return False
    info = build_index(store, run=run["run_id"], measure=False)
    notes.append(
        f"built the vector index once ({info.rows:,} rows, {info.seconds:.0f} s); "
        "`clipshift index` rebuilds it"
    )
    return True


def _search(
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


def _query_index(found) -> np.ndarray:
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
) -> tuple[float, int]:
    """Share of the exact top-k originals that the index returns, over augmented queries."""
    augmented = load_embeddings(store, variants_table, _augmented(run_id))
    if not len(augmented.vectors):
        return float("nan"), 0
    picked = np.random.default_rng(seed).choice(
        len(augmented.vectors), min(sample, len(augmented.vectors)), replace=False
    )
    queries = augmented.vectors[picked]
    originals = load_embeddings(store, variants_table, matches(**_run_filter(run_id)))
    similarities = normalise(queries) @ originals.normalised().T
    k = min(k, len(originals.vectors))
    exact = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    found = _search(store, variants_table, queries, where(**_run_filter(run_id)), k, use_index=True)
    index = _query_index(found)
    ids = np.asarray(found.column("image_id").to_pylist(), dtype=object)
    hits = [
        len(set(ids[index == q]) & set(originals.image_ids[exact[q]])) for q in range(len(queries))
    ]
    return float(np.sum(hits) / (k * len(queries))), len(queries)


# -- neighbors ----------------------------------------------------------------------------


@dataclass
class Neighbor:
    rank: int
    image_id: str
    path: str | None
    variant: str
    distance: float
    own: bool  # the query image's own original


@dataclass
class NeighborsResult:
    run_id: str
    query: str  # what was asked, in words
    own_image_id: str | None
    own_rank: int | None  # rank of the own original among all candidates (exact)
    own_distance: float | None
    rows: list[Neighbor]
    used_index: bool
    notes: list[str] = field(default_factory=list)  # for the user: which run, what was built


def neighbors(
    db: str | os.PathLike,
    query: str | None = None,
    *,
    text: str | None = None,
    variant: str = ORIGINAL,
    k: int = 10,
    among: str = "originals",
    run: str | None = None,
    exact: bool = False,
    device: str = "cpu",
) -> NeighborsResult:
    """The k stored embeddings nearest to QUERY: a stored image_id (or unique prefix), the path
    of a stored image, a new image file (embedded, and augmented with `variant`), or `text`."""
    if k < 1:
        raise ClipshiftError(f"-k {k}: ask for 1 or more neighbours")
    if among not in AMONG:
        raise ClipshiftError(f"--among {among}: choose originals or all")
    if (query is None) == (text is None):
        raise ClipshiftError("give either QUERY (an image_id, image path or file) or --text")
    store, chosen = _open(db, run)
    run_id = chosen["run_id"]
    names = [ORIGINAL] + [a["name"] for a in json.loads(chosen["augmentations"])]
    if variant not in names:
        raise ClipshiftError(f"--variant {variant}: run {run_id} has {', '.join(names)}")
    candidates = _run_filter(run_id, among)
    if not store.table(chosen["variants_table"]).count_rows(where(**candidates)):
        # another run of the same width made the table: this one stored no image in it
        raise ClipshiftError(
            f"run {run_id} holds no images yet: its ingest stored nothing "
            '(see `clipshift sql "SELECT * FROM errors"`)'
        )
    if text is not None:
        if variant != ORIGINAL:
            raise ClipshiftError("--variant applies to image queries, not to --text")
        vector = _encoder(chosen, device).encode_text([text])[0]
        own_id, described = None, f'text "{text}"'
    else:
        vector, own_id, described = _image_query(store, chosen, query, variant, device)

    notes = [chosen["selection_note"]] if chosen["selection_note"] else []
    use_index = not exact and _ensure_index(store, chosen, notes)
    table = chosen["variants_table"]
    columns = ("image_id", "variant", "embedding")
    found = _search(store, table, vector, where(**candidates), k, use_index, columns)
    ids = found.column("image_id").to_pylist()
    variants = found.column("variant").to_pylist()
    # exact cosine distances of the rows found, whichever search found them
    vectors = found.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
    distances = _distance(
        1.0 - normalise(vectors.reshape(found.num_rows, -1)) @ normalise(vector[None, :])[0]
    )
    paths = _paths(store, ids + ([own_id] if own_id else []))
    rows = [
        Neighbor(
            rank, image_id, paths.get(image_id), v, float(d), own_id == image_id and v == ORIGINAL
        )
        for rank, (image_id, v, d) in enumerate(zip(ids, variants, distances, strict=True), 1)
    ]
    own_rank = own_distance = None
    if own_id is not None:
        own_rank, own_distance = _own_rank(store, table, vector, own_id, matches(**candidates))
    return NeighborsResult(
        run_id, described, own_id, own_rank, own_distance, rows, use_index, notes
    )


def _own_rank(
    store: Store, variants_table: str, vector: np.ndarray, own_id: str, rows: pc.Expression
) -> tuple[int, float]:
    """The exact rank and distance of the own original among the candidates: 1 + the number of
    candidates strictly closer to the query."""
    candidates = load_embeddings(store, variants_table, rows)
    unit = normalise(candidates.vectors, np.float64)
    distances = 1.0 - unit @ normalise(vector[None, :], np.float64)[0]
    own = np.flatnonzero((candidates.image_ids == own_id) & (candidates.variants == ORIGINAL))
    own_distance = float(distances[own[0]])
    return int(np.sum(distances < own_distance)) + 1, float(_distance(own_distance))


def _distance(distances):
    """Cosine distances as shown: an image's distance to itself comes out of 1 - cos as a
    float error either side of 0 (-1e-7 printed as -0.0000): negatives become 0, and the
    + 0.0 turns a -0.0 into 0.0."""
    return np.maximum(distances, 0.0) + 0.0


def _encoder(chosen: dict, device: str):
    from .encoder import Encoder

    return Encoder(chosen["model"], device=device, image_size=chosen["image_size"])


def _image_query(
    store: Store, chosen: dict, query: str, variant: str, device: str
) -> tuple[np.ndarray, str | None, str]:
    """The query vector, the image_id of its own original (when stored) and a description."""
    run_id = chosen["run_id"]
    image_id = _stored_image_id(store, run_id, query)
    path = Path(query).expanduser()
    if image_id is None and path.is_file():
        from .sources import read_source

        try:
            source = read_source(path)
        except OSError as exc:
            raise ClipshiftError(f"cannot read {query}: {exc.strerror or exc}") from None
        if source.image_id in store.stored_images(run_id, [source.image_id]):
            image_id = source.image_id
        else:
            return _embed_new(chosen, source, variant, device), None, f"new image {path}"
    if image_id is None:
        raise ClipshiftError(
            f"{query} is neither an image_id in run {run_id}, a stored path, nor an image file"
        )
    stored = load_embeddings(
        store, chosen["variants_table"], matches(run_id=run_id, image_id=image_id, variant=variant)
    )
    if not len(stored.vectors):
        raise ClipshiftError(f"image {image_id[:12]} has no {variant} variant in run {run_id}")
    return stored.vectors[0], image_id, f"{image_id[:12]} ({variant})"


def _stored_image_id(store: Store, run_id: str, query: str) -> str | None:
    """An image_id (or unique prefix) or a stored path naming an image of the run."""
    lowered = query.lower()
    if 4 <= len(lowered) <= 64 and all(c in "0123456789abcdef" for c in lowered):
        prefixed = sorted(i for i in store.stored_images(run_id) if i.startswith(lowered))
        if len(prefixed) > 1:
            raise ClipshiftError(
                f"image_id prefix {query} matches {len(prefixed)} images: give more characters"
            )
        if prefixed:
            return prefixed[0]
    absolute = str(Path(query).expanduser().absolute())
    table = store.dataset("images").to_table(
        columns=["image_id"], filter=matches(path=[absolute, query])
    )
    candidates = set(table.column("image_id").to_pylist())
    stored = store.stored_images(run_id, sorted(candidates)) if candidates else set()
    return sorted(stored)[0] if stored else None


def _embed_new(chosen: dict, source, variant: str, device: str) -> np.ndarray:
    """Embed a file that is not in the store the way an ingest of this run would have."""
    from .augment import Augmenter
    from .sources import DecodeError, decode
    from .suites import perturbations_of_run

    try:
        pixels = decode(source.data, chosen["image_size"]).pixels
    except DecodeError as exc:
        raise ClipshiftError(f"cannot decode {source.path}: {exc}") from None
    if variant != ORIGINAL:
        # the run's own stored definition: a user suite file need not exist any more
        definition = [p.definition for p in perturbations_of_run(chosen) if p.label == variant]
        pixels = Augmenter(definition, chosen["seed"])(pixels, source.image_id)[0].pixels
    return _encoder(chosen, device).encode(pixels[None]).embeddings[0]


# -- retrieval ----------------------------------------------------------------------------


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
) -> RetrievalResult:
    """Per augmentation: recall@k and MRR of the own original, and k-NN overlap, querying with
    every augmented embedding of the run against all its originals.

    `exact=None` chooses: the index when the run has enough originals for it to pay."""
    import time

    started = time.perf_counter()
    ks = parse_ks(ks)
    store, chosen = _open(db, run)
    run_id = chosen["run_id"]
    table = chosen["variants_table"]
    originals = load_embeddings(store, table, matches(**_run_filter(run_id)))
    if not len(originals.vectors):
        raise ClipshiftError(f"run {run_id} has no stored images yet")
    if exact is None:
        exact = len(originals.vectors) < RETRIEVAL_INDEX_MIN_ORIGINALS
    notes = [chosen["selection_note"]] if chosen["selection_note"] else []
    ks, capped = _cap_ks(ks, len(originals.vectors))
    if capped:
        notes.append(capped)
    use_index = not exact and _ensure_index(store, chosen, notes)
    augmented = load_embeddings(store, table, _augmented(run_id))
    position = {image_id: i for i, image_id in enumerate(originals.image_ids)}
    own = np.fromiter(
        (position[i] for i in augmented.image_ids), np.int64, len(augmented.image_ids)
    )
    depth = min(max(ks), len(originals.vectors) - 1)
    if use_index:
        ranks, aug_knn = _ann_neighbours(
            store, table, run_id, originals, augmented.vectors, own, depth
        )
        _, orig_knn = _ann_neighbours(
            store,
            table,
            run_id,
            originals,
            originals.vectors,
            np.arange(len(originals.vectors)),
            depth,
        )
    else:
        unit = originals.normalised()
        ranks, aug_knn = exact_neighbours(unit, normalise(augmented.vectors), own, depth)
        _, orig_knn = exact_neighbours(unit, unit, np.arange(len(unit)), depth)

    rows = []
    for name in dict.fromkeys(augmented.variants):
        mask = augmented.variants == name
        row = {"augmentation": name, "n": int(mask.sum())}
        rank = ranks[mask]
        for k in ks:
            row[f"recall_at_{k}"] = float(np.mean((rank >= 1) & (rank <= k)))
        reciprocal = np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0)
        row["mrr"] = float(np.mean(reciprocal))
        for k in ks:
            row[f"overlap_at_{k}"] = _mean_jaccard(aug_knn[mask], orig_knn[own[mask]], k)
        rows.append(row)
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
        result.ann_recall_at_10, result.ann_sample = ann_recall(store, table, run_id)
    result.seconds = time.perf_counter() - started
    return result


def _ann_neighbours(
    store: Store,
    variants_table: str,
    run_id: str,
    originals: Embeddings,
    queries: np.ndarray,
    own: np.ndarray,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """As `knn.exact_neighbours`, through the index. The own original's rank is its position in
    the depth + 1 nearest the index returns; beyond that it counts as 0 (reciprocal rank 0,
    not within any k). Missing neighbours (the index found fewer) are -1."""
    position = {image_id: i for i, image_id in enumerate(originals.image_ids)}
    ranks = np.zeros(len(queries), np.int64)
    knn = np.full((len(queries), depth), -1, np.int64)
    prefilter = where(**_run_filter(run_id))
    for start in range(0, len(queries), ANN_BLOCK):
        block = queries[start : start + ANN_BLOCK]
        found = _search(store, variants_table, block, prefilter, depth + 1, use_index=True)
        query_index = _query_index(found)
        ids = found.column("image_id").to_pylist()
        distances = found.column("_distance").to_numpy()
        order = np.lexsort((distances, query_index))
        listed: list[list[int]] = [[] for _ in range(len(block))]
        for j in order:
            listed[query_index[j]].append(position[ids[j]])
        for q, neighbours in enumerate(listed):
            target = own[start + q]
            if target in neighbours:
                ranks[start + q] = neighbours.index(target) + 1
            others = [n for n in neighbours if n != target][:depth]
            knn[start + q, : len(others)] = others
    return ranks, knn


def _mean_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean over rows of |A & B| / |A | B| for the first k columns of a and b (-1 = none);
    each row holds distinct indices, so the intersection is a count of equal pairs."""
    if not len(a) or a.shape[1] == 0:
        return float("nan")
    a, b = a[:, :k], b[:, :k]
    common = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).sum(axis=(1, 2))
    union = (a >= 0).sum(1) + (b >= 0).sum(1) - common
    return float(np.mean(np.where(union > 0, common / np.maximum(union, 1), 1.0)))
