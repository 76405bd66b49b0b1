"""`clipshift stats` against the paper's way of computing the same numbers, side by side.

Builds (or reuses, with --db) the paper-size synthetic store, 13,312 images x 10 variants,
then times in one run:
- `stats`: the library call (DuckDB connection, run selection, sql/summary.sql over the
  shifts view), first call in this process and the best of the next ones;
- the `clipshift stats` command as a subprocess (Python start and imports included);
- the paper's way: the run held in memory as its code held it (one dict per image, each
  embedding and attention map a Python list), then a Python loop over images with numpy per
  (original, augmented) pair, then numpy per augmentation; loading that structure is not
  timed, so the loop gets its input for free;
and checks that both give the same numbers. Also times the other named queries.

    python benchmarks/analysis.py [--db DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipshift.analysis import clusters, stats  # noqa: E402
from clipshift.defaults import METRICS, SCORES  # noqa: E402
from clipshift.filters import matches  # noqa: E402
from clipshift.query import connect, named_query  # noqa: E402
from clipshift.runs import resolve_run  # noqa: E402
from clipshift.store import Store  # noqa: E402
from clipshift.synthetic import build_synthetic_store  # noqa: E402

# -- the paper's way -------------------------------------------------------------------------


def cosine_similarity(u, v) -> float:
    u, v = np.array(u, dtype=np.float64), np.array(v, dtype=np.float64)
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def l2_distance(u, v) -> float:
    u, v = np.array(u, dtype=np.float64), np.array(v, dtype=np.float64)
    return float(np.linalg.norm(u - v))


def attention_similarity(a, b) -> float:
    def normalised(m):
        m = np.array(m, dtype=np.float64)
        span = m.max() - m.min()
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    return float(1 / (1 + np.mean((normalised(a) - normalised(b)) ** 2)))


def paper_samples(db: Path, run_id: str) -> list[dict]:
    """The run as the paper's code held it in memory: one dict per image, every embedding and
    attention map a Python list (its main.py stored `embeddings[i].tolist()`)."""
    store = Store.open(db)
    table = store.dataset(store.variants_table_of(run_id)).to_table(
        columns=["image_id", "variant", "embedding", "attention", *METRICS[3:]],
        filter=matches(run_id=run_id),
    )
    dim = table.schema.field("embedding").type.list_size
    embeddings = table.column("embedding").combine_chunks().values.to_numpy().reshape(-1, dim)
    attention = table.column("attention").combine_chunks()
    maps, offsets = attention.values.to_numpy(), attention.offsets.to_numpy()
    pixel = {m: table.column(m).to_numpy() for m in METRICS[3:]}
    samples: dict[str, dict] = {}
    for row, (image_id, variant) in enumerate(
        zip(table.column("image_id").to_pylist(), table.column("variant").to_pylist(), strict=True)
    ):
        samples.setdefault(image_id, {"image_path": image_id, "embeddings": {}})["embeddings"][
            variant
        ] = {
            "embedding": embeddings[row].tolist(),
            "attention": maps[offsets[row] : offsets[row + 1]].tolist(),
            **{m: float(pixel[m][row]) for m in pixel},
        }
    return list(samples.values())


def paper_loop(samples: list[dict]) -> dict[str, dict[str, float]]:
    """A Python loop over images and augmentations with numpy per pair, as the paper's
    generate_graphs.py did, then numpy aggregates per augmentation."""
    values: dict[str, dict[str, list]] = {}
    for sample in samples:
        variants = sample["embeddings"]
        original = variants["original"]
        for augmentation, augmented in variants.items():
            if augmentation == "original":
                continue
            per = values.setdefault(augmentation, {m: [] for m in METRICS})
            per["cosine"].append(cosine_similarity(original["embedding"], augmented["embedding"]))
            per["l2"].append(l2_distance(original["embedding"], augmented["embedding"]))
            per["attention_similarity"].append(
                attention_similarity(original["attention"], augmented["attention"])
            )
            for metric in METRICS[3:]:
                per[metric].append(augmented[metric])

    summary = {}
    for augmentation, per in values.items():
        row: dict[str, float] = {"n": len(per["cosine"])}
        for metric, numbers in per.items():
            x = np.asarray(numbers, dtype=np.float64)
            x = x[~np.isnan(x)]
            row[f"{metric}_mean"] = x.mean()
            row[f"{metric}_std"] = x.std()
            row[f"{metric}_median"] = np.median(x)
            row[f"{metric}_p5"] = np.percentile(x, 5)
            row[f"{metric}_p95"] = np.percentile(x, 95)
        row["overall"] = np.mean([row[f"{s}_mean"] for s in SCORES])
        summary[augmentation] = row
    return summary


# -- timing ----------------------------------------------------------------------------------


def timed(call, repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def describe(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:7.3f} s"
    return f"{min(times):7.3f} s best, {statistics.median(times):.3f} s median of {len(times)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="reuse (or build here) the synthetic store")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        db = args.db or Path(scratch) / "store"
        if not (db / "runs.lance").exists():
            start = time.perf_counter()
            build_synthetic_store(db)
            print(f"built the synthetic store at {db} in {time.perf_counter() - start:.1f} s")
        run(db, args.repeat)


def run(db: Path, repeat: int) -> None:
    con = connect(db)
    run_id = resolve_run(db).run_id
    images, rows = con.execute(
        "SELECT count(DISTINCT image_id), count(*) FROM variants WHERE run_id = $r", {"r": run_id}
    ).fetchone()
    print(f"store: {images:,} images, {rows:,} variant rows (run {run_id})")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (1 min)\n")

    first, _ = timed(lambda: stats(db), 1)
    warm, result = timed(lambda: stats(db), repeat)
    command = [sys.executable, str(ROOT / "cli.py"), "stats", "--db", str(db), "--format", "json"]
    cli_times, _ = timed(
        lambda: subprocess.run(command, check=True, capture_output=True, cwd=ROOT),
        max(2, repeat // 2),
    )
    samples = paper_samples(db, run_id)  # not timed: the loop gets its input for free
    loop_times, expected = timed(lambda: paper_loop(samples), max(1, repeat // 2))
    # end to end, the paper's code first read its own store: a torch.save'd list of dicts
    saved = Path(tempfile.mkdtemp()) / "clip_embeddings.pt"
    torch.save(samples, saved)
    load_times, _ = timed(lambda: paper_loop(torch.load(saved, weights_only=False)), 1)
    saved.unlink()

    worst = 0.0
    for record in result.records():
        want = expected[record["augmentation"]]
        for field, value in want.items():
            worst = max(worst, abs(record[field] - value))
    loop = min(loop_times)

    print("per-augmentation summary (n, mean, std, median, p5, p95 of 6 metrics, overall, rank)")
    print(f"  stats, first call in this process  {describe(first)}")
    print(f"  stats, library call                {describe(warm)}")
    print(f"  clipshift stats (subprocess)       {describe(cli_times)}")
    print(f"  paper's way: Python loop + numpy   {describe(loop_times)}  (input in memory)")
    print(f"  paper's way with torch.load        {describe(load_times)}  (its .pt file read too)")
    print(
        f"  speed-up of stats over the loop    {loop / min(warm):.1f}x best, "
        f"{loop / first[0]:.1f}x first call; end to end, both reading their store: "
        f"{min(load_times) / min(warm):.1f}x"
    )
    print(f"  largest difference in any field    {worst:.2e}\n")

    print("other named queries (best of the runs)")
    for name in ("scores", "pairwise", "layers"):
        times, _ = timed(lambda n=name: named_query(con, n, run_id=run_id).fetchall(), 2)
        print(f"  {name:<10} {describe(times)}")
    times, _ = timed(lambda: clusters(db), 2)
    print(f"  clusters   {describe(times)}")
    print(
        f"\nload average at the end {os.getloadavg()[0]:.1f}: other work on the machine slows both"
    )


if __name__ == "__main__":
    main()
