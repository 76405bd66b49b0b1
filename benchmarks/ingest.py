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
    with the number of images.
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


def bare_forward(model_dir: Path, batch_inputs: int, batches: int, device: str) -> float:
    """Model inputs per second of the forward pass ingest uses, on ready tensors."""
    from clipshift.encoder import Encoder

    encoder = Encoder(str(model_dir), device=device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_inputs, 224, 224, 3), dtype=np.uint8)
    encoder.encode(images)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        encoder.encode(images)
    return batch_inputs * batches / (time.perf_counter() - start)


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
                "variants": summary.stored * (1 + len(summary.augmentations)),
                "seconds_total": summary.seconds,
                "seconds_after_model_load": steady,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_ingest(model: Path, photos: Path, db: Path, batch_size: int, device: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        str(model),
        "--photos",
        str(photos),
        "--db",
        str(db),
        "--batch-size",
        str(batch_size),
        "--device",
        device,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ingest_child(args)
        return

    import torch

    variants = 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_full_size_clip(tmp / "vit-b-32-random")
        write_distinct_photos(tmp / "photos", args.images * 2)
        small = tmp / "photos-n"
        small.mkdir()
        for path in sorted((tmp / "photos").iterdir())[: args.images]:
            os.link(path, small / path.name)

        batch_inputs = args.batch_size * variants
        forward = bare_forward(
            model, batch_inputs, max(2, args.images // args.batch_size), args.device
        )
        first = run_ingest(model, small, tmp / "db-n", args.batch_size, args.device)
        second = run_ingest(model, tmp / "photos", tmp / "db-2n", args.batch_size, args.device)

    rate = second["variants"] / second["seconds_after_model_load"]
    rate_total = second["variants"] / second["seconds_total"]
    print(
        f"ViT-B/32 (random weights), device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print(f"batch: {args.batch_size} images x {variants} variants = {batch_inputs} model inputs")
    print(f"bare forward (embeddings + all-layer attention):   {forward:7.1f} inputs/s")
    print(
        f"ingest end to end, {second['images']} images, after model load: {rate:7.1f} inputs/s"
        f"  ({rate / variants:.2f} source images/s)"
    )
    print(f"ingest end to end, including model load:           {rate_total:7.1f} inputs/s")
    print(f"ratio ingest / bare forward: {rate / forward:.2f}  (target >= 0.85)")
    print(
        f"peak RSS: {first['images']} images {first['max_rss_mb']:.0f} MB, "
        f"{second['images']} images {second['max_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
