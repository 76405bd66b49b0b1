"""Retrieval on the paper-size synthetic store: exact vs the vector index, and ANN recall.

    python benchmarks/retrieval.py [--db DIR] [--full-ann | --exact-only]
    python benchmarks/retrieval.py --sizes 13312,40000,133120 [--index-sample N]

Builds 13,312 originals x 9 augmentations (512-d) and prints, side by side: the full
`retrieval` with --exact; its exact neighbour search (bfloat16 screen + float32 refine) against
the plain float32 product it replaced, back to back over the same 133,120 queries, and how far
they agree; then, unless --exact-only, the index build; index search per query (bulk and
single) and, with --full-ann, the full `retrieval` through the index (about 8 minutes on 2
cores); ANN recall@10 against exact; one `neighbors` query flat and through the index.

With --sizes, for each number of synthetic images (x 10 rows): the full exact `retrieval`'s
time and peak RSS, each in a fresh process (so the peak is its own), and the index's cost per
query on a sample; then the crossover, the size from which the index would answer the full
retrieval faster than exact, and the size where exact passes a minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from clipshift import index as vector_index  # noqa: E402
from clipshift import knn as kernel  # noqa: E402
from clipshift import neighbors as nb  # noqa: E402
from clipshift import retrieval as rt  # noqa: E402
from clipshift.filters import matches, where  # noqa: E402
from clipshift.store import Store  # noqa: E402
from clipshift.synthetic import build_synthetic_store  # noqa: E402


def timed(label: str, action):
    started = time.perf_counter()
    value = action()
    seconds = time.perf_counter() - started
    print(f"{label:<52} {seconds:8.2f} s", flush=True)
    return value, seconds


def plain_float32(originals, queries, own, depth):
    """The exact method `retrieval` used before the bfloat16 screen: the full float32 product,
    4,096 queries at a time, on torch's own threads."""
    import torch

    ranks, knn = [], []
    originals_t = torch.from_numpy(originals)
    for start in range(0, len(queries), 4096):
        block = slice(start, start + 4096)
        r, k = kernel.full_rows(
            originals_t, torch.from_numpy(queries[block]), torch.from_numpy(own[block]), depth
        )
        ranks.append(r.numpy())
        knn.append(k.numpy())
    return np.concatenate(ranks), np.concatenate(knn)


def compare_exact(store: Store, run_id: str) -> tuple[float, float]:
    """Time both exact methods, back to back, on retrieval's queries (augmented, then originals
    against themselves) and print how far their results agree."""
    table = store.variants_table_of(run_id)
    originals = vector_index.load_embeddings(
        store, table, matches(**vector_index.run_filter(run_id))
    )
    augmented = vector_index.load_embeddings(store, table, vector_index.augmented_rows(run_id))
    position = {image_id: i for i, image_id in enumerate(originals.image_ids)}
    unit = originals.normalised()
    queries = np.concatenate([kernel.normalise(augmented.vectors), unit])
    own = np.array([position[i] for i in augmented.image_ids] + list(range(len(unit))))
    results, seconds = {}, {}
    for label, method in (("screened", kernel.exact_neighbors), ("plain float32", plain_float32)):
        results[label], seconds[label] = timed(
            f"exact neighbours, {label} ({len(queries):,} queries)",
            lambda method=method: method(unit, queries, own, 10),
        )
    (ranks, knn), (plain_ranks, plain_knn) = results.values()
    differing = np.flatnonzero((knn != plain_knn).any(1))
    sims = np.einsum("qkd,qd->qk", unit[knn[differing]], queries[differing])
    plain_sims = np.einsum("qkd,qd->qk", unit[plain_knn[differing]], queries[differing])
    print(
        f"same own ranks: {np.array_equal(ranks, plain_ranks)}; same 10-NN lists: "
        f"{len(queries) - len(differing):,} of {len(queries):,}; the rest differ by at most "
        f"{np.abs(sims - plain_sims).max(initial=0):.1e} in similarity (float32 rounding ties)"
    )
    return seconds["screened"], seconds["plain float32"]


def one_size(db: Path, mode: str, sample: int) -> None:
    """In a fresh process: the full exact retrieval (mode "exact") or the index's cost per
    query on `sample` augmented queries (mode "index"), as one JSON line with the peak RSS."""
    store = Store.open(db)
    if mode == "exact":
        started = time.perf_counter()
        result = rt.retrieval(db, exact=True)
        seconds = time.perf_counter() - started
        queries = sum(row["n"] for row in result.rows)
    else:
        _, run = vector_index.open_run(store, None)
        run_id, table = run.run_id, run.variants_table
        vector_index.build_index(db, measure=False)
        originals = vector_index.load_embeddings(
            store, table, matches(**vector_index.run_filter(run_id))
        )
        position = {image_id: i for i, image_id in enumerate(originals.image_ids)}
        block = next(
            vector_index.stream_embeddings(
                store, table, vector_index.augmented_rows(run_id), sample
            )
        )
        own = np.array([position[i] for i in block.image_ids])
        started = time.perf_counter()
        rt._ann_neighbors(store, table, run_id, position, block.vectors, own, 10)
        seconds = time.perf_counter() - started
        queries = len(block.vectors)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"seconds": seconds, "queries": queries, "peak_mb": peak}))


def growing_sizes(sizes: list[int], sample: int, root: Path) -> None:
    """Exact time and peak RSS, and index cost per query, at each size; then the crossover."""
    script = str(Path(__file__).resolve())
    print(
        f"{'images':>8} {'rows':>10} {'exact s':>9} {'peak RSS MB':>12} "
        f"{'exact ms/q':>11} {'index ms/q':>11} {'index s (proj.)':>16}",
        flush=True,
    )
    fits = []
    for images in sizes:
        db = root / f"store-{images}"
        if not db.exists():
            build_synthetic_store(db, n_images=images, grid=2, layers=1)
        figures = {}
        for mode in ("exact", "index"):
            line = (
                subprocess.run(
                    [
                        sys.executable,
                        script,
                        "--one",
                        mode,
                        "--db",
                        str(db),
                        "--index-sample",
                        str(sample),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            figures[mode] = json.loads(line)
        exact, index = figures["exact"], figures["index"]
        queries = images * 10  # augmented queries and the originals against themselves
        exact_q = exact["seconds"] / queries
        index_q = index["seconds"] / index["queries"]
        fits.append((images, exact_q, index_q))
        print(
            f"{images:>8,} {queries:>10,} {exact['seconds']:>9.1f} {exact['peak_mb']:>12.0f} "
            f"{exact_q * 1000:>11.3f} {index_q * 1000:>11.2f} {index_q * queries:>16.0f}",
            flush=True,
        )
    # exact costs a fixed time per (query, original) pair, the index's per query grows slowly:
    # the largest size's figures (the least overhead) stand for beyond it
    images, exact_q, index_q = fits[-1]
    per_pair = exact_q / images
    print()
    print(
        f"exact: {per_pair * 1e9:.2f} ns per (query, original) pair; index: "
        f"{index_q * 1000:.2f} ms per query at {fits[-1][0]:,} images"
    )
    print(
        f"crossover: the index answers retrieval faster than exact from ~{index_q / per_pair:,.0f} "
        f"originals (clipshift switches at {rt.RETRIEVAL_INDEX_MIN_ORIGINALS:,})"
    )
    print(f"exact passes a minute at ~{np.sqrt(60 / (per_pair * 10)):,.0f} images (x 10 rows)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=None, help="reuse or create the store here")
    parser.add_argument("--full-ann", action="store_true", help="also run retrieval via index")
    parser.add_argument("--sample", type=int, default=2000, help="queries timed via index")
    parser.add_argument("--exact-only", action="store_true", help="skip the index figures")
    parser.add_argument("--sizes", default=None, help="comma list of image counts to time")
    parser.add_argument("--index-sample", type=int, default=1000, help="with --sizes")
    parser.add_argument("--one", choices=["exact", "index"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_size(Path(args.db), args.one, args.index_sample)
        return
    if args.sizes:
        root = Path(args.db or tempfile.mkdtemp(prefix="clipshift-retrieval-sizes-"))
        growing_sizes([int(n) for n in args.sizes.split(",")], args.index_sample, root)
        return
    db = Path(args.db or tempfile.mkdtemp(prefix="clipshift-retrieval-")) / "store"
    if not db.exists():
        timed("build synthetic store (13,312 x 10, 512-d)", lambda: build_synthetic_store(db))
    store = Store.open(db)

    exact, exact_s = timed("retrieval --exact (119,808 queries)", lambda: rt.retrieval(db))
    screened_s, plain_s = compare_exact(store, exact.run_id)
    if args.exact_only:
        print()
        print(f"exact retrieval:        {exact_s:.1f} s ({exact_s / 119_808 * 1000:.3f} ms/query)")
        print(f"exact neighbours:       screened {screened_s:.1f} s, plain float32 {plain_s:.1f} s")
        return
    _, build_s = timed(
        "index build (HNSW, cosine)", lambda: vector_index.build_index(db, measure=False)
    )
    table = store.variants_table_of(exact.run_id)
    (recall, sample), _ = timed(
        "ANN recall@10 against exact", lambda: vector_index.ann_recall(store, table, exact.run_id)
    )

    augmented = vector_index.load_embeddings(
        store, table, vector_index.augmented_rows(exact.run_id)
    )
    picked = np.random.default_rng(1).choice(len(augmented.vectors), args.sample, replace=False)
    prefilter = where(**vector_index.run_filter(exact.run_id))

    def bulk():
        for start in range(0, args.sample, rt.ANN_BLOCK):
            vector_index.search(
                store,
                table,
                augmented.vectors[picked[start : start + rt.ANN_BLOCK]],
                prefilter,
                11,
                use_index=True,
            )

    _, bulk_s = timed(f"index search, {args.sample} queries in blocks", bulk)
    per_query = bulk_s / args.sample
    ann_s = None
    if args.full_ann:
        ann, ann_s = timed(
            "retrieval via the index (119,808 queries)", lambda: rt.retrieval(db, exact=False)
        )
        worst = max(
            abs(a[key] - e[key])
            for a, e in zip(ann.rows, exact.rows, strict=True)
            for key in exact.columns[2:]
        )
        print(f"largest |index - exact| over the retrieval figures: {worst:.4f}")

    image_id = augmented.image_ids[0]
    flat, flat_s = timed(
        "neighbors, one query, flat (--exact)",
        lambda: nb.neighbors(db, image_id, variant="noise", exact=True),
    )
    indexed, index_s = timed(
        "neighbors, one query, index", lambda: nb.neighbors(db, image_id, variant="noise")
    )
    print()
    print(f"exact retrieval:        {exact_s:.1f} s ({exact_s / 119_808 * 1000:.3f} ms/query)")
    print(
        f"index search:           {per_query * 1000:.2f} ms/query in bulk -> "
        f"{per_query * (119_808 + 13_312):.0f} s projected for the full "
        "retrieval (augmented + original queries)" + (f"; measured {ann_s:.1f} s" if ann_s else "")
    )
    print(f"index build:            {build_s:.1f} s")
    print(f"ANN recall@10 vs exact: {recall:.3f} over {sample} augmented queries")
    print(
        f"neighbors one query:    flat {flat_s:.2f} s, index {index_s:.2f} s "
        f"(same own rank: {flat.own_rank == indexed.own_rank})"
    )


if __name__ == "__main__":
    main()
