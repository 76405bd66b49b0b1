"""Time `clipshift report` on the paper-size synthetic store (13,312 images x 10 variants).

    python benchmarks/report.py [--db DIR] [--images 13312] [--format png]

Builds the synthetic store (clipshift/synthetic.py) in a temp folder unless --db names one
already built, then renders the whole report once and prints, figure by figure, the seconds
each took (a figure's first use of a named query is counted in that figure: `summary` in
cosine_distribution, `pairwise` in dendrogram, `shift_values` in l2_kde, ...), the time
outside the figures (connection, run, page) and the total. Target: under 30 s in total.

The synthetic store keeps no pixels, so augmentations and attention_grid are skipped there
(the page says so); on a store with pixels they cost a few PNG decodes each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 30.0


def main() -> None:
    from clipshift.report import report
    from clipshift.synthetic import PAPER_IMAGES, build_synthetic_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an existing synthetic store (else built)")
    parser.add_argument("--images", type=int, default=PAPER_IMAGES)
    parser.add_argument("--format", default="png", choices=("png", "svg", "pdf"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        db = args.db
        if db is None:
            db = Path(scratch) / "store"
            start = time.perf_counter()
            build_synthetic_store(db, n_images=args.images)
            print(
                f"built the synthetic store ({args.images:,} images) in "
                f"{time.perf_counter() - start:.1f} s (not counted)"
            )
        timings = []
        start = time.perf_counter()
        result = report(db, out=Path(scratch) / "report", fmt=args.format, on_figure=timings.append)
        total = time.perf_counter() - start

    print(f"\nclipshift report, run {result.run.run_id}, format {args.format}")
    print(f"{'figure':<22}{'seconds':>9}")
    for figure in timings:
        note = (
            ""
            if figure.path
            else "  (skipped: no pixels)"
            if "pixels" in (figure.note or "")
            else f"  (skipped: {figure.note})"
        )
        print(f"{figure.name:<22}{figure.seconds:>9.2f}{note}")
    outside = total - sum(f.seconds for f in timings)
    print(f"{'connect, run, page':<22}{outside:>9.2f}")
    print(
        f"{'total':<22}{total:>9.2f}   target < {TARGET_SECONDS:.0f} s: "
        f"{'met' if total < TARGET_SECONDS else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
