"""The exact k-nearest-neighbour kernel of retrieval: pure torch over unit vectors, no store.

`exact_neighbors` gives, for each query, the exact rank of one designated original (its own)
and the indices of its `depth` nearest other originals. A bfloat16 matrix product screens all
originals and a float32 recomputation settles the candidates (`Bf16Screen` bounds the screen's
error, so the result is exact); on the paper-size store this is 100x faster than 120k index
queries (docs/neighbors.md has the measurements behind each constant here).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# queries per block of the exact retrieval, one block per core at a time; fewer when the
# block's similarities (bfloat16 screen, float32 for a full recomputation) would pass
# EXACT_BLOCK_BYTES: 1024 x 13k originals x 4 bytes = 55 MB
EXACT_BLOCK = 1024
EXACT_BLOCK_BYTES = 64 * 2**20
# originals the screen keeps per query beyond the `depth` nearest: with 24, 98% of the
# paper-size synthetic store's queries are settled without the full float32 recomputation
SCREEN_EXTRA = 24
# queries per gather of their candidates' embeddings (128 x 35 x 512 floats = 9 MB)
REFINE_BLOCK = 128


def normalise(vectors: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Vectors (the last axis) scaled to unit length, as `dtype`: the one normaliser of
    retrieval, neighbors, zero-shot and directions. A zero vector stays zero rather than
    becoming NaN (its cosine with anything is then 0)."""
    vectors = np.asarray(vectors, dtype=dtype)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(dtype, copy=False)


def exact_neighbors(
    originals: np.ndarray, queries: np.ndarray, own: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """For unit-length queries against unit-length originals: the exact rank of each query's
    own original, and the indices of its `depth` nearest originals other than its own, nearest
    first.

    A bfloat16 product screens all originals (4x faster than float32 on AVX512-BF16) and keeps
    each query's `depth + SCREEN_EXTRA` most similar; float32 recomputes the similarities of
    those. A query whose screen cannot prove, with `Bf16Screen`'s error bound, that its
    candidates hold every original more similar than its own and its exact top `depth` is
    recomputed in full in float32 (`full_rows`, the plain method). On a CPU without native
    bfloat16 arithmetic every query takes that plain path."""
    return ExactSearch(originals)(queries, own, depth)


class ExactSearch:
    """`exact_neighbors` over fixed originals, for queries that come in blocks: the originals'
    bfloat16 copy is made once, not once per block of a streamed retrieval."""

    def __init__(self, originals: np.ndarray):
        import torch

        self.originals = torch.from_numpy(originals)
        self.screen = Bf16Screen(self.originals) if native_bf16() else None

    def __call__(
        self, queries: np.ndarray, own: np.ndarray, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        originals_t, screen = self.originals, self.screen
        ranks = np.empty(len(queries), np.int64)
        knn = np.empty((len(queries), depth), np.int64)
        rows = max(1, min(EXACT_BLOCK, EXACT_BLOCK_BYTES // (4 * len(originals_t))))

        def one_block(start: int) -> None:
            stop = min(start + rows, len(queries))
            block = torch.from_numpy(queries[start:stop])
            own_block = torch.from_numpy(own[start:stop])
            if screen is None:
                block_ranks, block_knn = full_rows(originals_t, block, own_block, depth)
            else:
                block_ranks, block_knn = _block_neighbors(
                    originals_t, screen, block, own_block, depth
                )
            ranks[start:stop] = block_ranks.numpy()
            knn[start:stop] = block_knn.numpy()

        # Blocks go to one worker per core, each running torch single-threaded: two-thread
        # torch ops stall at every barrier while another process holds a core (up to 20x slower
        # on the gathers and top-k here), whereas a worker per core only loses its own share.
        workers = torch.get_num_threads()

        def single_threaded(start: int) -> None:
            torch.set_num_threads(1)
            one_block(start)

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(single_threaded, range(0, len(queries), rows)))
        finally:
            torch.set_num_threads(workers)
        return ranks, knn


def cpu_capability() -> dict:
    """torch's view of this CPU's instruction sets ({"avx512_bf16": False, "amx_bf16": ...});
    empty where this torch cannot tell."""
    import torch

    try:
        return dict(torch._C._cpu._get_cpu_capability())  # private: absent means unknown
    except AttributeError:
        return {}


def native_bf16(capability: Mapping[str, object] | None = None) -> bool:
    """Whether this CPU (or one with `capability`, as `cpu_capability` gives it) multiplies
    bfloat16 natively (AVX512-BF16 or AMX): emulated, bf16 is slower than the float32 it
    stands for (the retrieval screen here, the model's forward in ingest)."""
    if capability is None:
        capability = cpu_capability()
    return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))


def _block_neighbors(originals, screen, block, own, depth):
    """`exact_neighbors` for one block of queries, as tensors."""
    import torch

    kept = min(depth + SCREEN_EXTRA, len(originals) - 1)
    approx, error = screen(block)
    approx[torch.arange(len(block)), own] = -torch.inf
    top = torch.topk(approx, kept, dim=1)
    # column 0 is the own original: one computation for all, so equal vectors tie exactly
    candidates = torch.cat([own[:, None], top.indices], 1)
    exact = _gathered_similarities(originals, candidates, block)
    ranks = (exact[:, 1:] > exact[:, :1]).sum(1) + 1
    knn = top.indices.gather(1, torch.topk(exact[:, 1:], depth, dim=1).indices)

    # the screen left out only originals with approx <= the lowest kept, whose exact
    # similarity is therefore at most `ceiling` (approx + error(approx) grows with approx)
    proven = torch.ones(len(block), dtype=torch.bool)
    if kept < len(originals) - 1:
        lowest = top.values[:, -1].float()
        ceiling = lowest + error(lowest)
        proven &= ceiling <= exact[:, 0]
        if depth > 0:
            # at least `depth` kept originals are exactly >= kth - error(kth), so the exact
            # top `depth` all lie above the ceiling
            kth = top.values[:, depth - 1].float()
            proven &= ceiling < kth - error(kth)
    redo = torch.nonzero(~proven)[:, 0]
    if len(redo):
        ranks[redo], knn[redo] = full_rows(originals, block[redo], own[redo], depth)
    return ranks, knn


class Bf16Screen:
    """bfloat16 similarities of unit queries to the unit originals, with a bound on their
    error against the float32 similarities that `_gathered_similarities` computes.

    Rounding q and o to bfloat16 (8 significant bits, unit roundoff u = 2^-8) leaves residuals
    dq = q - q' and do = o - o', and q.o - q'.o' = dq.o + q'.do, which Cauchy-Schwarz bounds
    by |dq| |o| + |q'| |do|: about u from the actual residuals (the worst case is 2u). The
    products of bfloat16 numbers are exact in float32; summing D of them in float32 is off by
    at most D 2^-24 |q'| |o'|, and the float32 recomputation by as much again. The sum is
    rounded once to bfloat16 (to nearest): at most u |approx| more. So
    |approx - exact| <= c + u |approx|, with c the sum of the first terms, per query; the
    bound used is 1.25 times that. test_bf16_screen_error_bound checks it on this machine's
    kernel."""

    MARGIN = 1.25
    UNIT_ROUNDOFF = 2.0**-8

    def __init__(self, originals):
        import torch

        self.originals = originals.to(torch.bfloat16)
        residuals = (originals - self.originals.float()).norm(dim=1)
        self.norm = float(originals.norm(dim=1).max()) if len(originals) else 0.0
        self.residual = float(residuals.max()) if len(originals) else 0.0
        self.summing = 2 * originals.shape[1] * 2.0**-24

    def __call__(self, queries):
        import torch

        rounded = queries.to(torch.bfloat16)
        residual = (queries - rounded.float()).norm(dim=1)
        norm = rounded.float().norm(dim=1)
        slack = residual * self.norm + norm * self.residual + self.summing * norm * self.norm

        def error(approx):
            """Bound on |approx - exact| for approximate similarities, one or a row per query."""
            per_query = slack if approx.dim() == 1 else slack[:, None]
            return self.MARGIN * (per_query + self.UNIT_ROUNDOFF * approx.abs())

        return rounded @ self.originals.T, error


def _gathered_similarities(originals, candidates, queries):
    """float32 similarity of each query to each of its candidate originals (rows of indices)."""
    import torch

    out = torch.empty(candidates.shape, dtype=torch.float32)
    # chunks keep the gathered originals in cache (REFINE_BLOCK x candidates x D floats);
    # embedding + vecdot is 4x faster here than fancy indexing + bmm
    for start in range(0, len(candidates), REFINE_BLOCK):
        chunk = slice(start, start + REFINE_BLOCK)
        gathered = torch.nn.functional.embedding(candidates[chunk], originals)
        out[chunk] = torch.linalg.vecdot(gathered, queries[chunk, None, :])
    return out


def full_rows(originals, queries, own, depth):
    """`exact_neighbors` for a few queries by the full float32 product."""
    import torch

    similarities = queries @ originals.T
    rows = torch.arange(len(queries))
    own_similarity = similarities[rows, own]
    ranks = (similarities > own_similarity[:, None]).sum(1) + 1
    similarities[rows, own] = -torch.inf
    return ranks, torch.topk(similarities, depth, dim=1).indices
