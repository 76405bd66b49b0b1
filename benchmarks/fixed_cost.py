"""The fixed cost of a command: Python's start and the imports, against the work itself.

Prints, each figure from fresh processes (the median of --repeat runs):
- `clipshift stats` as a command (a subprocess: start, imports, the call, printing) against
  the library call `clipshift.analysis.stats` in a process that has imported it, and their
  ratio (target <= 1.3), with the imports the command pays, by package;
- `clipshift ingest --limit 0` into a new store (nothing to encode, but the run is made: the
  model loads) as a command, and its phases in one process: importing cli, ingest, the
  CPU stages (albumentations and torch), transformers; the model load; opening (creating)
  the store, LanceDB's import included.

    python benchmarks/fixed_cost.py [--db DIR] [--model DIR] [--repeat 3]

Without --db it builds a small store with the tiny test CLIP (the fixed cost does not depend
on the store's size; the call does: --db with the paper-size synthetic store of
benchmarks/analysis.py gives the ratio a user of that store sees). Without --model it uses the
tiny CLIP; --model with a full-size folder adds that model's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip

# the phases of `ingest --limit 0`, each timed in the child, in this order
INGEST_PHASES = """
import time, json, sys
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import cli; mark("import cli (click, clipshift)")
import clipshift.ingest; mark("import clipshift.ingest (store, pyarrow, lance)")
from clipshift.hub import resolve_model; model = resolve_model(sys.argv[1]); mark("resolve model")
import clipshift.stages; mark("import the CPU stages (albumentations, torch)")
import transformers; mark("import transformers")
from clipshift.encoder import Encoder; encoder = Encoder(model, device="cpu")
mark("load the model (families, weights memory-mapped)")
from clipshift.store import Store; store = Store.open(sys.argv[2], create=True)
store.db; mark("open a new store (lancedb imported)")
print(json.dumps([(n, t - marks[i][1]) for i, (n, t) in enumerate(marks[1:])]))
"""

STATS_CALL = """
import time, json, sys
t = time.perf_counter()
from clipshift.analysis import stats
imported = time.perf_counter() - t
calls = []
for _ in range(3):
    t = time.perf_counter(); stats(sys.argv[1]); calls.append(time.perf_counter() - t)
print(json.dumps({"imports": imported, "first": calls[0], "warm": min(calls[1:])}))
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=ENV, cwd=ROOT)
    return time.perf_counter() - start


def child_json(code: str, *args: str) -> object:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                         text=True, env=ENV, cwd=ROOT).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def import_costs(command: list[str]) -> list[tuple[str, float]]:
    """The third-party packages a command imports, each by the cumulative time of its first
    import (-X importtime); nested ones overlap (lance's includes most of pyarrow's)."""
    err = subprocess.run([sys.executable, "-X", "importtime", *command], check=True,
                         capture_output=True, text=True, env=ENV, cwd=ROOT).stderr  # fmt: skip
    costs: dict[str, float] = {}
    for line in err.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        name, cumulative = parts[2].strip(), parts[1].strip()
        if not cumulative.isdigit() or "." in name or name.startswith("_"):
            continue
        if name in sys.stdlib_module_names or name in ("clipshift", "cli") or name in costs:
            continue
        costs[name] = int(cumulative) / 1e6
    return sorted(costs.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="an existing store (default: a small one, built here)")
    parser.add_argument("--model", help="a model folder for ingest (default: the tiny CLIP)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from conftest import make_tiny_clip, write_photos

        photos = write_photos(tmp / "photos")[0].parent
        model = args.model or str(make_tiny_clip(tmp / "tiny-clip"))
        db = args.db
        if db is None:
            db = str(tmp / "db")
            subprocess.run([sys.executable, "cli.py", "ingest", str(photos), "--db", db,
                            "--model", model, "--augmentations", "noise", "--image-size", "64",
                            "-q"], check=True, env=ENV, cwd=ROOT)  # fmt: skip

        stats_command = ["cli.py", "stats", "--db", db]
        command = statistics.median(
            timed([sys.executable, *stats_command]) for _ in range(args.repeat)
        )
        calls = [child_json(STATS_CALL, db) for _ in range(args.repeat)]
        call = statistics.median(c["first"] for c in calls)
        imports = statistics.median(c["imports"] for c in calls)
        start = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(3))
        print(f"clipshift stats on {db}:")
        warm = min(c["warm"] for c in calls)
        print(f"  command {command:.2f} s; library call {call:.2f} s (warm {warm:.2f} s); "
              f"ratio {command / call:.2f} (target <= 1.3)")  # fmt: skip
        print(f"  of the command: Python's start {start:.2f} s, importing the analysis "
              f"{imports:.2f} s")  # fmt: skip
        costs = ", ".join(f"{name} {s:.2f}" for name, s in import_costs(stats_command)[:10])
        print(f"  imports by package, s (-X importtime, which slows them): {costs}")

        ingest = ["cli.py", "ingest", str(photos), "--model", model, "--limit", "0", "-q"]
        walls = [timed([sys.executable, *ingest, "--db", str(tmp / f"new-{i}")])
                 for i in range(args.repeat)]  # fmt: skip
        print(f"\nclipshift ingest --limit 0 into a new store, model {model}: command "
              f"{statistics.median(walls):.2f} s (median of {args.repeat})")  # fmt: skip
        runs = [child_json(INGEST_PHASES, model, str(tmp / f"phases-{i}"))
                for i in range(args.repeat)]  # fmt: skip
        for i, (name, _) in enumerate(runs[0]):
            print(f"  {name:55s} {statistics.median(r[i][1] for r in runs):6.2f} s")


if __name__ == "__main__":
    main()
