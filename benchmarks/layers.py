"""What the layer metrics cost: the image forward with and without them, the bytes
--hidden-states adds, and `clipshift layers` on the paper-size synthetic store.

    python benchmarks/layers.py [--batch-size 10] [--repeats 5] [--device cpu]
                                [--only vit-b32,siglip-b16] [--images 13312] [--width 768]
                                [--skip-store]

1. Forward: ms per input of `Family.encode_images` (what ingest calls per batch) on a
   full-size config with random weights (benchmarks/attention.py's), with no references (the
   forward alone: no layer metrics), with references (layer_cosine and token_drift_layers,
   what ingest computes), and with references and hidden states (--hidden-states). A batch is
   whole images, an original and its nine variants each, as ingest sends them (--batch-size
   counts inputs and is rounded to whole images). The three take turns and each gives the
   best of its --repeats calls, so a load elsewhere meets all alike. The target: the layer
   metrics cost at most 5% of the forward's throughput.
2. Bytes a row of --hidden-states: (L + 1) x width x 2 (19,968 for ViT-B/32).
3. `clipshift.layers.layers` on the paper-size synthetic store (13,312 images x 10 variants,
   12 layers) grown with hidden states of --width: seconds, CKA included, and which estimator
   it used. The target: under 3 s.

Figures must be taken on a quiet machine; the defaults are the full sizes.
"""

from __future__ import annotations

import argparse
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


def store_cost(images: int, width: int) -> tuple[float, str, float]:
    """Seconds of `layers` on a synthetic store of `images` with hidden states of `width`,
    its estimator, and the seconds the store took to build."""
    from clipshift.layers import layers

    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "db"
        start = time.perf_counter()
        build_synthetic_store(db, n_images=images, hidden_width=width)
        built = time.perf_counter() - start
        start = time.perf_counter()
        result = layers(db)
        seconds = time.perf_counter() - start
    estimators = {row["cka_estimator"] for row in result.records()}
    return seconds, ",".join(sorted(e for e in estimators if e)), built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="vit-b32,siglip-b16", help="comma-separated configs")
    parser.add_argument("--images", type=int, default=PAPER_IMAGES)
    parser.add_argument("--width", type=int, default=768, help="hidden width of the store")
    parser.add_argument("--skip-store", action="store_true", help="forward costs only")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(cpu_description())
    for name in args.only.split(","):
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
        seconds, estimator, built = store_cost(args.images, args.width)
        print(
            f"clipshift layers, {args.images:,} images x {VARIANTS} variants, hidden width "
            f"{args.width}: {seconds:.2f} s (CKA {estimator or 'none'}; store built in "
            f"{built:.0f} s)"
        )


if __name__ == "__main__":
    main()
