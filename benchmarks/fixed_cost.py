"""The fixed cost of a command: Python's start and the imports, against the work itself.

Prints, each figure from fresh processes (the median of --repeat runs):
- `clipshift stats` as a command (a subprocess: start, imports, the call, printing) against
  the library call `clipshift.analysis.stats` in a process that has imported it, and their
  ratio (target <= 1.3), with the imports the command pays, by package;
- the fixed cost of an ingest as issue 22 defines it, with the full-size ViT-B/32
  architecture (random weights saved with save_pretrained, loaded by --model PATH): the time
  of an 8-image `clipshift ingest` into a new store less its 80 inputs at the steady rate
  (target < 3 s). The steady rate is an ingest's own, from its first batch's forward to its
  end, in a run of --steady-images images. In turns: the default (on this CPU one worker
  process, started before torch is imported, preparing the first batch while the model
  loads) and --workers 0 (the stages on a thread of the main process);
- beside it, `clipshift ingest --limit 0` (nothing to encode, but the run is made: the
  model loads) as a command, into a new store, in turns with the same loading the whole
  model through transformers (CLIPSHIFT_ATTENTION=eager) and into a store that exists;
  the imports it pays by package, and its phases one after the other in one process:
  importing cli, ingest; resolving the model and hashing its weights (the run's identity);
  the stages and the paper suite (no albumentations); the model load (torch, its image tower,
  clipshift/towers.py); the CPU stages' warm-up (albumentations, torch already imported: what
  a worker does as it starts, beside the model load); opening (creating) the store. A
  command overlaps some of them (the hash and the worker's warm-up with the imports), so
  their sum exceeds its time.

    python benchmarks/fixed_cost.py [--db DIR] [--model DIR] [--repeat 3] [--steady-images 32]
                                    [--skip stats|ingest]

Without --db it builds a small store with the tiny test CLIP (the fixed cost does not depend
on the store's size; the call does: --db with the paper-size synthetic store of
benchmarks/analysis.py gives the ratio a user of that store sees). Without --model it saves
the full-size ViT-B/32 with random weights (the cost of openai/clip-vit-base-patch32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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
VARIANTS = 10  # the original and nine augmentations, per image
FIXED_IMAGES = 8  # the definition: an 8-image ingest, 80 inputs

# the phases of `ingest --limit 0`, each timed in the child, in this order
INGEST_PHASES = """
import time, json, sys
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import cli; mark("import cli (click, clipshift)")
import clipshift.ingest; mark("import clipshift.ingest (store, pyarrow, lance)")
from clipshift.hub import resolve_model; model = resolve_model(sys.argv[1]); model.revision
mark("resolve the model, hash its weights")
from clipshift.stages import PrepareSettings
from clipshift.suites import resolve; resolve(None)
mark("import the stages, resolve the paper suite (no albumentations)")
from clipshift.encoder import Encoder; encoder = Encoder(model, device="cpu")
mark("load the model (torch, its image tower memory-mapped)")
from clipshift.stages import augmenter_for; augmenter_for(PrepareSettings())
mark("warm up the CPU stages (albumentations: a worker's start-up, beside the model load)")
from clipshift.store import Store; store = Store.open(sys.argv[2], create=True)
mark("open a new store (its migrations, through pylance)")
print(json.dumps([(n, t - marks[i][1]) for i, (n, t) in enumerate(marks[1:])]))
"""

# one ingest in this process: its time from its first batch's forward to its end, and the
# images of the later batches (on_progress comes once a batch's forward is done, before the
# batch is written: the images taken by then are the first batch's)
STEADY = """
import time, json, sys, resource
from clipshift.ingest import ingest
def cpu():
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage,
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
marks = {}
def first_batch(done, summary):
    marks.setdefault("first", (time.perf_counter(), cpu(), done))
workers = None if sys.argv[4] == "default" else int(sys.argv[4])
summary = ingest([sys.argv[1]], sys.argv[2], sys.argv[3], device="cpu", workers=workers,
                 on_progress=first_batch)
end, end_cpu = time.perf_counter(), cpu()
first, first_cpu, taken = marks["first"]
print(json.dumps({"images": summary.stored - taken, "seconds": end - first,
                  "cpu": end_cpu - first_cpu, "workers": summary.workers}))
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
    return timed_cpu(command)[0]


def timed_cpu(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """A command's wall time and the CPU seconds it and its children spent: on a machine busy
    with other jobs the wall time grows with the load, the CPU time much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**ENV, **(env or {})},
                   cwd=ROOT)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


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


def by_package(command: list[str], count: int = 10) -> str:
    return ", ".join(f"{name} {s:.2f}" for name, s in import_costs(command)[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="an existing store (default: a small one, built here)")
    parser.add_argument("--model", help="a model folder for ingest (default: the full-size "
                        "ViT-B/32 architecture with random weights, saved here)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steady-images", type=int, default=32,
                        help="images of the run that measures the steady rate")  # fmt: skip
    parser.add_argument("--skip", choices=("stats", "ingest"), action="append", default=[])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from conftest import write_photos

        photos = write_photos(tmp / "photos")[0].parent
        if "stats" not in args.skip:
            stats_cost(args, tmp, photos)
        if "ingest" not in args.skip:
            ingest_cost(args, tmp, photos)
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")


def stats_cost(args: argparse.Namespace, tmp: Path, photos: Path) -> None:
    from conftest import make_tiny_clip

    db = args.db
    if db is None:
        db = str(tmp / "db")
        tiny = str(make_tiny_clip(tmp / "tiny-clip"))
        subprocess.run([sys.executable, "cli.py", "ingest", str(photos), "--db", db,
                        "--model", tiny, "--augmentations", "noise", "--image-size", "64",
                        "-q"], check=True, env=ENV, cwd=ROOT)  # fmt: skip
    stats_command = ["cli.py", "stats", "--db", db]
    # the command and the call in turn, so that a change in the machine's load meets both
    commands, calls = [], []
    for _ in range(args.repeat):
        commands.append(timed([sys.executable, *stats_command]))
        calls.append(child_json(STATS_CALL, db))
    command = statistics.median(commands)
    call = statistics.median(c["first"] for c in calls)
    imports = statistics.median(c["imports"] for c in calls)
    start = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(3))
    print(f"\nclipshift stats on {db}:")
    warm = min(c["warm"] for c in calls)
    print(f"  command {command:.2f} s ({', '.join(f'{c:.2f}' for c in commands)}); library "
          f"call {call:.2f} s (warm {warm:.2f} s); ratio {command / call:.2f} "
          "(target <= 1.3)")  # fmt: skip
    print(f"  of the command: Python's start {start:.2f} s, importing the analysis "
          f"{imports:.2f} s")  # fmt: skip
    print(f"  imports by package, s (-X importtime, which slows them): "
          f"{by_package(stats_command)}")  # fmt: skip


def ingest_cost(args: argparse.Namespace, tmp: Path, photos: Path) -> None:
    from ingest import save_full_size_clip, write_distinct_photos

    model = args.model or str(save_full_size_clip(tmp / "vit-b-32-random"))
    eight, many = tmp / "photos-8", tmp / "photos-steady"
    write_distinct_photos(eight, FIXED_IMAGES)
    write_distinct_photos(many, args.steady_images)
    ingest = ["cli.py", "ingest", "--model", model, "-q"]
    # in turns: the default (one worker process on this CPU, started before torch is imported,
    # preparing the first batch while the model loads) and --workers 0 (the stages on a thread
    # of the main process, whose imports and preparing share its GIL with torch's import)
    settings = {"default": [], "0": ["--workers", "0"]}
    runs: dict[str, list] = {name: [] for name in settings}
    for i in range(args.repeat):
        for name, option in settings.items():
            db = str(tmp / f"8-{name}-{i}")
            runs[name].append(timed_cpu([sys.executable, *ingest, *option, str(eight), "--db", db]))
    inputs = FIXED_IMAGES * VARIANTS
    # The steady rate is the model's, whichever runs the stages (the two were within the
    # machine's drift in turns); one run of each, and their mean for both, so that a drift
    # between the two runs does not land on one setting's fixed cost.
    steady = {name: child_json(STEADY, str(many), str(tmp / f"steady-{name}"), model, name)
              for name in settings}  # fmt: skip
    rates = {name: r["images"] * VARIANTS / r["seconds"] for name, r in steady.items()}
    rate = statistics.mean(rates.values())
    work = inputs / rate
    print(f"\nthe fixed cost of an ingest, model {model}: steady rate {rate:.1f} inputs/s (the "
          f"mean of {args.steady_images}-image runs with each setting: "
          f"{', '.join(f'{r:.1f}' for r in rates.values())}), so its {inputs} inputs "
          f"{work:.2f} s")  # fmt: skip
    for name in settings:
        wall, cpu = (statistics.median(r[i] for r in runs[name]) for i in (0, 1))
        work_cpu = inputs * steady[name]["cpu"] / (steady[name]["images"] * VARIANTS)
        print(f"  --workers {name} ({steady[name]['workers']}): {FIXED_IMAGES}-image ingest "
              f"into a new store {wall:.2f} s (median of {args.repeat}: "
              f"{', '.join(f'{r[0]:.2f}' for r in runs[name])}); fixed cost "
              f"{wall - work:.2f} s (target < 3 s)")  # fmt: skip
        print(f"    in CPU seconds (all threads and processes; less sensitive to other jobs): "
              f"the ingest {cpu:.2f}, its {inputs} inputs {work_cpu:.2f}, fixed "
              f"{cpu - work_cpu:.2f}")  # fmt: skip

    limit0 = [*ingest, str(photos), "--limit", "0"]
    # in turns with the whole model loaded through transformers, as before the image tower
    # (CLIPSHIFT_ATTENTION=eager loads it so; --limit 0 runs no forward, whose path it also sets)
    # and into a store that exists (another run's): no migrations to run; a fresh copy each
    # time, as the run is recorded
    base = tmp / "existing"
    first = [*ingest, str(eight), "--db", str(base), "--augmentations", "noise", "--limit", "1"]
    subprocess.run([sys.executable, *first], check=True, capture_output=True, env=ENV, cwd=ROOT)
    runs, whole, existing = [], [], []
    for i in range(args.repeat):
        runs.append(timed_cpu([sys.executable, *limit0, "--db", str(tmp / f"new-{i}")]))
        whole.append(timed_cpu([sys.executable, *limit0, "--db", str(tmp / f"whole-{i}")],
                               {"CLIPSHIFT_ATTENTION": "eager"}))  # fmt: skip
        shutil.copytree(base, tmp / f"existing-{i}")
        existing.append(timed_cpu([sys.executable, *limit0, "--db", str(tmp / f"existing-{i}")]))
    wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 1))
    whole_wall, whole_cpu = (statistics.median(r[i] for r in whole) for i in (0, 1))
    held_wall, held_cpu = (statistics.median(r[i] for r in existing) for i in (0, 1))
    print(f"  beside it, ingest --limit 0 into a new store: command {wall:.2f} s, CPU "
          f"{cpu:.2f} s (median of {args.repeat}); in turns with it, the whole model loaded "
          f"through transformers (as before the image tower): {whole_wall:.2f} s, CPU "
          f"{whole_cpu:.2f} s; into a store that exists: {held_wall:.2f} s, CPU "
          f"{held_cpu:.2f} s")  # fmt: skip
    importing = by_package([*limit0, "--db", str(tmp / "new-importtime")])
    print(f"  its imports by package, s (-X importtime): {importing}")
    runs = [child_json(INGEST_PHASES, model, str(tmp / f"phases-{i}"))
            for i in range(args.repeat)]  # fmt: skip
    print("  its phases, one after the other in one process:")
    for i, (name, _) in enumerate(runs[0]):
        print(f"    {name:55s} {statistics.median(r[i][1] for r in runs):6.2f} s")


if __name__ == "__main__":
    main()
