"""The local engine against the Ray engine, side by side in one run, and a scaling estimate.

    python benchmarks/ray_ingest.py [--images 32] [--batch-size 4]
                                    [--gpu-inputs-per-s 3000] [--cores-per-gpu 8]

Both engines ingest the same photos with the tiny test CLIP (a stand-in for a fast
accelerator, so what is measured is everything but the model) into fresh local stores:
  - local: `ingest(..., engine="local")`;
  - Ray, cold: a local Ray cluster started by the engine (as `clipshift ingest --engine ray`
    does without RAY_ADDRESS), then the ingest: worker processes and the model actor start;
  - Ray, warm: a second ingest on the same cluster (task workers already running).
Then where Ray's time goes (the engine's own timings), and an estimate for 1, 4 and 16 GPU
nodes from the measured per-image CPU and write costs and an assumed GPU rate (printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a single-machine Ray: every process on the loopback address
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clipshift.defaults import IMAGE_STAGES  # noqa: E402
from clipshift.engines.ray import COMMIT_GROUP  # noqa: E402
from clipshift.ingest import ingest  # noqa: E402

VARIANTS = 10  # the original and nine augmentations
PAPER_IMAGES = 13_312
LAION = 400_000_000
# rows of one image with ViT-B/32 and no pixels kept: per variant a 512-d embedding, the
# last-layer and the 12 per-layer 7x7 attention maps as float32, and ~100 bytes of metrics
VIT_B32_BYTES_PER_IMAGE = VARIANTS * (4 * (512 + 49 + 12 * 49) + 100)


def run(args: argparse.Namespace) -> None:
    import ray
    from conftest import make_tiny_clip
    from ingest import write_distinct_photos

    from clipshift.engines import ray as ray_engine

    tmp = Path(tempfile.mkdtemp(prefix="clipshift-ray-bench-"))
    model = str(make_tiny_clip(tmp / "model"))
    write_distinct_photos(tmp / "photos", args.images)
    options = dict(batch_size=args.batch_size, keep_pixels=0, device="cpu")

    local = ingest([tmp / "photos"], tmp / "local", model, **options)

    os.environ.pop("RAY_ADDRESS", None)
    clock = time.perf_counter()
    ray_engine.connect(ray)  # what the engine does without RAY_ADDRESS: a local cluster
    cluster_start = time.perf_counter() - clock
    try:
        cold = ingest([tmp / "photos"], tmp / "ray-cold", model, engine="ray", **options)
        warm = ingest([tmp / "photos"], tmp / "ray-warm", model, engine="ray", **options)
    finally:
        ray.shutdown()

    n = local.stored
    print(f"{n} images x {VARIANTS} variants, batch {args.batch_size}, tiny CLIP, this machine")
    print(f"{'engine':<12}{'seconds':>9}{'images/s':>10}{'vs local':>10}")
    rows = [
        ("local", local.seconds),
        ("ray cold", cold.seconds + cluster_start),
        ("ray warm", warm.seconds),
    ]
    for name, seconds in rows:
        print(f"{name:<12}{seconds:9.1f}{n / seconds:10.2f}{local.seconds / seconds:10.2f}")

    print("\nwhere the Ray engine's time goes (seconds; stages summed over images)")
    keys = ["cluster start", "actor_start", "driver_wait", "commit", *IMAGE_STAGES]
    keys += ["encode", "write"]
    print(f"{'':<16}{'local':>8}{'ray cold':>10}{'ray warm':>10}")
    for key in keys:
        values = [
            local.timings.get(key, 0.0),
            cluster_start if key == "cluster start" else cold.timings.get(key, 0.0),
            warm.timings.get(key, 0.0),
        ]
        print(f"{key:<16}" + "".join(f"{v:>10.2f}" for v in values))
    print(
        "cluster start: GCS, raylet, workers of a fresh local cluster; actor_start: the model "
        "actor's process, its imports and model load; driver_wait: the driver blocked on the "
        "first results (worker start-up) and on the cluster"
    )

    # -- scaling estimate -------------------------------------------------------------------
    cpu_per_image = sum(local.timings.get(k, 0.0) for k in IMAGE_STAGES) / n
    write_per_image = warm.timings.get("write", 0.0) / n
    commit_per_group = warm.timings.get("commit", 0.0) / max(
        1, -(-n // (args.batch_size * COMMIT_GROUP))
    )
    bytes_per_image = VIT_B32_BYTES_PER_IMAGE
    model_per_image = VARIANTS / args.gpu_inputs_per_s
    fixed = cluster_start + cold.timings.get("actor_start", 0.0)
    per_node = min(args.cores_per_gpu / cpu_per_image, 1 / (model_per_image + write_per_image))
    driver = args.batch_size * COMMIT_GROUP / commit_per_group if commit_per_group else float("inf")
    print("\nscaling estimate (assumptions below; measured figures from this run)")
    print(
        f"  measured: CPU stages {cpu_per_image * 1e3:.1f} ms/image, fragment write "
        f"{write_per_image * 1e3:.1f} ms/image, commit {commit_per_group * 1e3:.0f} ms per "
        f"{COMMIT_GROUP} batches, start-up "
        f"{fixed:.0f} s"
    )
    print(
        f"  assumed: {args.gpu_inputs_per_s} model inputs/s per GPU (ViT-B/32 with every "
        f"layer's attention; measure with benchmarks/ingest.py on the GPU), "
        f"{args.cores_per_gpu} CPU cores per GPU node, all busy with the CPU stages; the same "
        "per-image CPU cost as here; object storage not the bottleneck "
        f"({bytes_per_image / 1e3:.0f} kB of ViT-B/32 rows per image, no pixels); one driver "
        "committing. CPU and write costs measured here, under this machine's load, scale "
        "the estimate directly: rerun on a quiet machine"
    )
    print(f"  per node: min(CPU {args.cores_per_gpu / cpu_per_image:.0f}, GPU+write "
          f"{1 / (model_per_image + write_per_image):.0f}) = {per_node:.0f} images/s; "
          f"driver commit bound {driver:.0f} images/s")  # fmt: skip
    print(
        f"{'GPU nodes':>10}{'images/s':>10}{'13,312 images':>16}{'LAION-400M':>14}{'S3 MB/s':>10}"
    )
    for nodes in (1, 4, 16):
        rate = min(nodes * per_node, driver)
        paper = fixed + PAPER_IMAGES / rate
        laion = (fixed + LAION / rate) / 86400
        print(
            f"{nodes:>10}{rate:>10.0f}{paper:>14.0f} s{laion:>12.1f} d"
            f"{rate * bytes_per_image / 1e6:>10.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--gpu-inputs-per-s", type=float, default=3000.0)
    parser.add_argument("--cores-per-gpu", type=int, default=8)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
