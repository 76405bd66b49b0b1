"""Ingest throughput against the bare model forward, side by side in one run.

    python benchmarks/ingest.py [--images 32] [--batch-size 8] [--device cpu]

Builds the full-size ViT-B/32 CLIP architecture with random weights (the cost is that of
openai/clip-vit-base-patch32), saves it to a temp folder and loads it through `--model DIR`.
Prints, on the same machine, model, batch size and device:
  - bare forward: the model's one forward pass (embeddings + attention of every layer, as
    ingest runs it) on batches of ready tensors, in images/s;
  - end-to-end ingest over the ten variants (read, decode, augment, pixel metrics, forward,
    write to LanceDB), in images/s of model input, and the ratio of the two;
  - peak memory (max RSS) of ingests of N and 2N images in fresh processes: it must not grow
    with the number of images;
  - the CPU cost of each perturbation (`--perturbations-only` prints just this): ms per
    224-px image for each of the paper's nine and each ImageNet-C corruption (the mean over
    its five severities), with the pixel metrics and one bare forward input beside them for
    scale, measured side by side in one process on one core's worth of work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = 10  # the original and nine augmentations
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "cat")


def save_full_size_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(folder)
    return folder


def write_distinct_photos(folder: Path, count: int) -> None:
    """`count` different JPEG files made from scikit-image's photos (each one's bytes differ)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = sources[i % len(sources)]
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        h, w = pixels.shape[:2]
        top, left = rng.integers(0, h // 8), rng.integers(0, w // 8)
        crop = np.ascontiguousarray(pixels[top : top + h * 7 // 8, left : left + w * 7 // 8, :3])
        Image.fromarray(crop).save(folder / f"photo_{i:05d}.jpg", quality=92)


def forward_child(args: argparse.Namespace) -> None:
    """Time the forward pass ingest uses, on ready batches, in this (fresh) process."""
    from clipshift.encoder import Encoder

    encoder = Encoder(args.model, device=args.device)
    rng = np.random.default_rng(0)
    inputs = args.batch_size * VARIANTS
    images = rng.integers(0, 256, (inputs, 224, 224, 3), dtype=np.uint8)
    encoder.encode(images)  # warm-up
    start = time.perf_counter()
    for _ in range(args.batches):
        encoder.encode(images)
    seconds = time.perf_counter() - start
    print(json.dumps({"inputs": inputs * args.batches, "seconds": seconds}))


def ingest_child(args: argparse.Namespace) -> None:
    """Run one ingest in this (fresh) process and print its figures as JSON."""
    import resource

    from clipshift.ingest import ingest

    marks = {}
    summary = ingest(
        [args.photos],
        args.db,
        args.model,
        batch_size=args.batch_size,
        device=args.device,
        keep_pixels=0,
        on_start=lambda total: marks.setdefault("start", time.perf_counter()),
    )
    steady = time.perf_counter() - marks["start"]
    print(
        json.dumps(
            {
                "images": summary.stored,
                "inputs": summary.stored * (1 + len(summary.augmentations)),
                "seconds": steady,
                "seconds_with_model_load": summary.seconds,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def perturbation_costs(photos: int = 6, repeats: int = 2) -> list[tuple[str, float]]:
    """(name, ms per 224-px image) of every built-in perturbation, slowest first; a
    corruption's figure is the mean over its five severities. One warm-up call each first
    (frost builds its textures once per process: that cost is reported apart)."""
    from clipshift.augment import Augmenter
    from clipshift.pixels import PixelReference
    from clipshift.sources import decode
    from clipshift.suites import resolve
    from clipshift.suites.corruptions import frost_texture

    with tempfile.TemporaryDirectory() as tmp:
        write_distinct_photos(Path(tmp), photos)
        originals = [decode(p.read_bytes(), 224).pixels for p in sorted(Path(tmp).iterdir())]
    start = time.perf_counter()
    for index in range(6):
        frost_texture(index, 336, 336)
    textures = (time.perf_counter() - start) * 1000
    costs: dict[str, list[float]] = {}
    for perturbation in resolve("paper,corruptions"):
        augmenter = Augmenter([perturbation], seed=0)
        augmenter(originals[0], "warm-up")
        start = time.perf_counter()
        for _ in range(repeats):
            for i, original in enumerate(originals):
                augmenter(original, f"image{i}")
        elapsed = (time.perf_counter() - start) * 1000 / (repeats * len(originals))
        costs.setdefault(perturbation.name, []).append(elapsed)
    # glass_blur runs albumentations' vectorised "fast" swaps; the "exact" sequential loop,
    # side by side, is why (docs/metrics.md)
    for mode in ("fast", "exact"):
        exact = resolve("glass_blur@5")[0].definition
        augmenter = Augmenter([{**exact, "transform": {**exact["transform"], "mode": mode}}], 0)
        start = time.perf_counter()
        for i, original in enumerate(originals[:2]):
            augmenter(original, f"image{i}")
        costs[f"(glass_blur@5, mode {mode})"] = [(time.perf_counter() - start) * 500]
    reference = PixelReference(originals[0])
    start = time.perf_counter()
    for _ in range(20):
        reference.compare(originals[1])
    metrics = (time.perf_counter() - start) * 1000 / 20
    rows = sorted(((n, sum(v) / len(v)) for n, v in costs.items()), key=lambda r: -r[1])
    return rows + [("(pixel metrics, per variant)", metrics), ("(frost textures, once)", textures)]


def print_perturbation_costs() -> None:
    from clipshift.defaults import CORRUPTION_NAMES
    from clipshift.suites.paper import PAPER

    rows = perturbation_costs()
    print("CPU cost per 224-px image, ms (a corruption: mean over its 5 severities):")
    for name, ms in rows:
        print(f"  {name:<30} {ms:8.2f}")
    corruptions = sum(ms for name, ms in rows if name in CORRUPTION_NAMES)
    paper = sum(ms for name, ms in rows if name in PAPER)
    print(
        f"  all 75 corruption variants: {5 * corruptions:.0f} ms per image; "
        f"the paper's nine: {paper:.0f} ms"
    )


def child(mode: str, args: argparse.Namespace, **options) -> dict:
    """Run this script as `--child MODE` in a fresh process; its JSON line."""
    command = [sys.executable, __file__, "--child", mode, "--batch-size", str(args.batch_size),
               "--device", args.device]  # fmt: skip
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="N (the second ingest has 2N)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["forward", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--perturbations-only", action="store_true", help="only the per-perturbation CPU cost"
    )
    args = parser.parse_args()
    if args.perturbations_only:
        return print_perturbation_costs()
    if args.child == "forward":
        return forward_child(args)
    if args.child == "ingest":
        return ingest_child(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_full_size_clip(tmp / "vit-b-32-random")
        write_distinct_photos(tmp / "photos", args.images * 2)
        small = tmp / "photos-n"
        small.mkdir()
        for path in sorted((tmp / "photos").iterdir())[: args.images]:
            os.link(path, small / path.name)

        # every measurement in a fresh process of its own, forward passes before and after
        # the ingests, so a passing load on the machine shows as a spread, not a bias
        batches = max(2, args.images // args.batch_size)
        forwards = [child("forward", args, model=model, batches=batches)]
        small_run = child("ingest", args, model=model, photos=small, db=tmp / "db-n")
        large_run = child("ingest", args, model=model, photos=tmp / "photos", db=tmp / "db-2n")
        forwards.append(child("forward", args, model=model, batches=batches))

    forward_rates = [f["inputs"] / f["seconds"] for f in forwards]
    forward = sum(forward_rates) / len(forward_rates)
    rate = large_run["inputs"] / large_run["seconds"]
    with_load = large_run["inputs"] / large_run["seconds_with_model_load"]
    inputs = args.batch_size * VARIANTS
    print(f"ViT-B/32 (random weights), device {args.device}, {os.cpu_count()} cores")
    print(f"batch: {args.batch_size} images x {VARIANTS} variants = {inputs} model inputs")
    print(
        "bare forward (embedding + all-layer attention): "
        + ", ".join(f"{r:.1f}" for r in forward_rates)
        + f" inputs/s (before, after the ingests; mean {forward:.1f})"
    )
    print(
        f"ingest end to end, {large_run['images']} images: {rate:.1f} inputs/s "
        f"({rate / VARIANTS:.2f} images/s), {with_load:.1f} with the model load"
    )
    print(f"ratio ingest / bare forward: {rate / forward:.2f}  (target >= 0.85)")
    print(
        f"peak RSS: {small_run['images']} images {small_run['max_rss_mb']:.0f} MB, "
        f"{large_run['images']} images {large_run['max_rss_mb']:.0f} MB"
    )
    print_perturbation_costs()


if __name__ == "__main__":
    main()
