"""What the `variants` view over one table per embedding width costs, side by side.

Builds the paper-size synthetic store (13,312 images x 10 variants, 512-d), then times
`stats` (sql/summary.sql over shifts over variants) two ways in one run:
- through the `variants` view as clipshift builds it: the union of the `variants_<D>` tables
  with each embedding cast to a FLOAT[] list;
- the single-width way before schema 3: the one Lance table registered as `variants` itself,
  its FLOAT[512] arrays cast to DOUBLE[] by the shifts view.
Then adds a second run of another width (768-d, 2,048 images) and times `stats` of the
512-d run again: its rows must not cost more for the other table beside them.

    python benchmarks/widths.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipshift.query import connect, named_query  # noqa: E402
from clipshift.resources import resource_dir  # noqa: E402
from clipshift.store import Store  # noqa: E402
from clipshift.synthetic import build_synthetic_store  # noqa: E402


def single_table_connection(db: Path):
    """The connection as it was with one `variants` table (no union, no list cast)."""
    import duckdb

    store = Store.open(db)
    con = duckdb.connect(":memory:")
    for name in ("runs", "images", "errors"):
        con.register(name, store.dataset(name))
    con.register("variants", store.dataset("variants_512"))
    for path in sorted((resource_dir("sql") / "views").glob("*.sql")):
        con.execute(path.read_text())
    return con


def best(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "store"
        run_id = build_synthetic_store(db)

        def view_stats():
            return named_query(connect(db), "summary", run_id=run_id).fetchall()

        def single_stats():
            return named_query(single_table_connection(db), "summary", run_id=run_id).fetchall()

        # the same numbers, up to the summation order of DuckDB's parallel aggregates
        worst = max(
            abs(a - b)
            for row_a, row_b in zip(view_stats(), single_stats(), strict=True)
            for a, b in zip(row_a, row_b, strict=True)
            if isinstance(a, float) and isinstance(b, float)
        )
        assert worst < 1e-9, worst
        union = best(view_stats, args.repeat)
        single = best(single_stats, args.repeat)
        build_synthetic_store(db, n_images=2048, dim=768, seed=1)
        beside = best(view_stats, args.repeat)
        print(f"stats through the variants view (union, FLOAT[] cast)  {union:.2f} s")
        print(f"stats on the single 512-d table (before schema 3)      {single:.2f} s")
        print(f"stats of the 512-d run with a 768-d run beside it      {beside:.2f} s")
        print(f"ratio view / single table: {union / single:.2f}; largest difference {worst:.1e}")


if __name__ == "__main__":
    main()
