"""What the layer metrics cost: the image forward with and without them, the bytes
--hidden-states adds, and `clipshift layers` on the paper-size synthetic store.

    python benchmarks/layers.py [--batch-size 10] [--repeats 5] [--device cpu]
                                [--only vit-b32,siglip-b16] [--images 13312] [--width 768]
                                [--skip-forward] [--skip-store] [--tmp DIR]

1. Forward: ms per input of `Family.encode_images` (what ingest calls per batch) on a
   full-size config with random weights (benchmarks/attention.py's), with no references (the
   forward alone: no layer metrics), with references (layer_cosine and token_drift_layers,
   what ingest computes), and with references and hidden states (--hidden-states). A batch is
   whole images, an original and its nine variants each, as ingest sends them (--batch-size
   counts inputs and is rounded to whole images). The three take turns and each gives the
   best of its --repeats calls, so a load elsewhere meets all alike. The target: the layer
   metrics cost at most 5% of the forward's throughput.
2. Bytes a row of --hidden-states: (L + 1) x width x 2 (19,968 for ViT-B/32).
3. `clipshift layers` on the paper-size synthetic store (13,312 images x 10 variants, 13
   hidden layers) grown with hidden states of --width (2.7 GB at 768, written under --tmp and
   deleted after): seconds of the command (`python cli.py layers`, its start-up included) and
   of the library call, CKA included, and which estimator it used. The target: under 3 s.
   The store is built as an ingest with --hidden-states ends, with the run's CKA computed once
   and kept (clipshift.cka): its seconds are printed too (what the first `layers` on a store
   from before migration 0008 pays once). --keep DIR builds the store in DIR once and reuses
   it on later runs.

Figures must be taken on a quiet machine; the defaults are the full sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention import CONFIGS, build, cpu_description  # noqa: E402

from clipshift.encoder import resolve_device  # noqa: E402
from clipshift.synthetic import PAPER_IMAGES, build_synthetic_store  # noqa: E402

VARIANTS = 10  # an original and the paper's nine augmentations
MODES = ("forward alone", "layer metrics", "+ hidden states")


def forward_costs(name: str, batch: int, repeats: int, device: torch.device) -> dict:
    """ms per input of each mode, the best of `repeats` calls after a warm-up, in turns."""
    family, model, image_size = build(name)
    model = model.to(device)
    images = max(1, batch // VARIANTS)
    pixels = torch.randn(images * VARIANTS, 3, image_size, image_size, device=device)
    references = torch.arange(images, device=device).repeat_interleave(VARIANTS) * VARIANTS
    calls = {
        MODES[0]: lambda: family.encode_images(model, pixels, False),
        MODES[1]: lambda: family.encode_images(model, pixels, False, references),
        MODES[2]: lambda: family.encode_images(model, pixels, False, references, True),
    }
    best: dict[str, float] = {}
    for turn in range(repeats + 1):
        for mode, call in calls.items():
            with torch.inference_mode():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                output = call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            if turn:  # the first turn warms up
                best[mode] = min(best.get(mode, seconds), seconds)
    hidden = output.layers.hidden_states
    return {
        "ms": {mode: best[mode] / len(pixels) * 1e3 for mode in MODES},
        "hidden_bytes": hidden[0].numel() * hidden.element_size(),
    }


def store_cost(images: int, width: int, tmp: str | None, keep: str | None) -> dict:
    """On a synthetic store of `images` with hidden states of `width`: the seconds it took to
    build and to compute its CKA (what a first `layers` on a store before 0008 pays too), of
    `clipshift layers` as a command and as a library call, and the estimator. With `keep`,
    the store at that folder, built there first where it is missing, and kept."""
    with contextlib.ExitStack() as stack:
        folder = keep or stack.enter_context(tempfile.TemporaryDirectory(dir=tmp))
        return _store_cost(Path(folder) / "db", images, width)


def _store_cost(db: Path, images: int, width: int) -> dict:
    import subprocess

    from clipshift.layers import layers
    from clipshift.store import Store

    built = None
    if not db.exists():
        start = time.perf_counter()
        build_synthetic_store(db, n_images=images, hidden_width=width)
        built = time.perf_counter() - start
    store = Store.open(db)
    kept = store.dataset("layer_cka").to_table()
    hidden = store.dataset(store.variants_tables()[0]).to_table(columns=["hidden_states"], limit=1)[
        "hidden_states"
    ][0]
    size = images * VARIANTS * len(hidden.as_py())
    command = [sys.executable, str(ROOT / "cli.py"), "layers", "--db", str(db)]
    seconds = []
    for _ in range(3):  # the best of three: a load elsewhere on the machine adds, never takes
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    result = layers(db)
    call = time.perf_counter() - start
    estimators = {row["cka_estimator"] for row in result.records()}
    return {
        "command": min(seconds),
        "call": call,
        "estimator": ",".join(sorted(e for e in estimators if e)),
        "built": built,
        "cka": kept["seconds"][0].as_py() if kept.num_rows else None,
        "images": kept["images"][0].as_py() if kept.num_rows else 0,
        "gb": size / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="vit-b32,siglip-b16", help="comma-separated configs")
    parser.add_argument("--images", type=int, default=PAPER_IMAGES)
    parser.add_argument("--width", type=int, default=768, help="hidden width of the store")
    parser.add_argument("--skip-store", action="store_true", help="forward costs only")
    parser.add_argument("--skip-forward", action="store_true", help="the store's part only")
    parser.add_argument("--tmp", default=None, help="where to build the store (default: $TMPDIR)")
    parser.add_argument(
        "--keep", default=None, help="a folder: build the store there once, keep it, reuse it"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(cpu_description())
    for name in [] if args.skip_forward else args.only.split(","):
        if name not in CONFIGS:
            sys.exit(f"unknown config {name}: one of {', '.join(CONFIGS)}")
        costs = forward_costs(name, args.batch_size, args.repeats, device)
        ms = costs["ms"]
        base = ms[MODES[0]]
        cells = ", ".join(
            f"{mode} {value:.2f} ms ({(value / base - 1) * 100:+.1f}%)"
            for mode, value in ms.items()
        )
        print(f"{name}: {cells}; --hidden-states {costs['hidden_bytes']:,} bytes a row")
    if not args.skip_store:
        cost = store_cost(args.images, args.width, args.tmp, args.keep)
        built = (
            f"built in {cost['built']:.0f} s with it"
            if cost["built"] is not None
            else "the store kept from an earlier run"
        )
        print(
            f"clipshift layers, {args.images:,} images x {VARIANTS} variants, hidden width "
            f"{args.width} ({cost['gb']:.2f} GB of hidden states): {cost['command']:.2f} s as a "
            f"command (best of 3), {cost['call']:.2f} s as a library call (CKA "
            f"{cost['estimator'] or 'none'}, kept in the store); the CKA over "
            f"{cost['images']:,} images computed once in {cost['cka']:.0f} s ({built})"
        )


if __name__ == "__main__":
    main()
