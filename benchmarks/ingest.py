"""Ingest throughput: CPU stages on every core, end to end, against the bare forward; memory.

    python benchmarks/ingest.py [--images 96] [--full-images 16] [--batch-size 8]
                                [--max-workers CORES] [--device cpu] [--skip full,precision]

Everything side by side in one run, on one machine, each measurement in a fresh process:
  - transfer: moving one image's ten 224 x 224 variants (1.5 MB) from a worker process to
    the main process, pickled through a pipe against a shared-memory slot;
  - CPU stages alone (read, decode, augment, pixel metrics, PNG; no model): images/s for
    1..cores worker processes, and the efficiency against linear scaling;
  - end to end with the tiny test CLIP (a stand-in for a fast accelerator): steady-state
    images/s for --workers 0 (the stages on a thread of the main process) and 1..cores, from
    the first batch's forward to the end (after every fixed start-up cost: imports, model
    load, workers' start), and the CPU time per image
    spent outside the model (difference of runs of N and 2N images: start-up cancels);
  - full-size ViT-B/32 with random weights (the cost of openai/clip-vit-base-patch32):
    steady-state ingest with the default --workers (printed, as is the tiny model's) against
    the bare eager forward pass at the same batch (transformers' own, as issue 22 defines the
    target) and against the bare forward ingest runs (the fast path);
  - peak RSS of the main process and of a worker, for N and 2N images, 1..cores workers;
  - distance to the limit: the full-size model's GFLOP per input (counted from its config,
    `clipshift.workers.inference_gflop`), the GFLOP/s its bare forward and ingest achieve, and
    this CPU's peak beside them (cores x clock x FLOP per cycle of its widest fp32 unit, and
    of AMX or AVX512-BF16 for bf16, from /proc/cpuinfo's flags; `clipshift.workers.cpu_peak`);
  - precision: the embedding and attention differences of bf16 and fp16 against fp32
    (full-size ViT-B/32, random weights, real photos); on a CPU with native bf16 (AMX,
    AVX512-BF16), bf16 ingest against fp32 ingest and against its own bare forward, side by
    side (elsewhere bf16 is emulated, and that line says "not measured");
  - the CPU cost of each perturbation (`--perturbations-only` prints just this): ms per
    224-px image for each of the paper's nine and each ImageNet-C corruption (the mean over
    its five severities), with the pixel metrics beside them for scale, measured side by
    side in one process on one core's worth of work.

`--device cuda` measures the full-size ingest against the bare GPU forward the same way. No GPU
was lent to the session that wrote this benchmark: only its CPU figures have been taken.
The CPU's model name and flags are printed first (benchmarks/attention.py reads them).
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

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipshift.defaults import IMAGE_SIZE, PRECISION  # noqa: E402

VARIANTS = 10  # the original and nine augmentations
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "cat")


def save_full_size_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_clip

    return make_tiny_clip(folder)


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


# -- children: each measurement in a fresh process ------------------------------------------


def transfer_child(args: argparse.Namespace) -> None:
    """ms per image in the receiving process: pickled over a pipe vs a shared-memory slot."""
    import multiprocessing as mp

    images = args.batches
    shape = (VARIANTS, IMAGE_SIZE, IMAGE_SIZE, 3)
    context = mp.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    sender = context.Process(target=_send_pickled, args=(writer, shape, images))
    sender.start()
    reader.recv()
    start = time.perf_counter()
    for _ in range(images - 1):
        reader.recv()
    pipe = (time.perf_counter() - start) / (images - 1)
    sender.join()

    from multiprocessing import shared_memory

    slots = 4
    shm = shared_memory.SharedMemory(create=True, size=slots * int(np.prod(shape)))
    ours, theirs = context.Pipe()
    sender = context.Process(target=_send_shared, args=(theirs, shm.name, shape, images))
    sender.start()
    for slot in range(slots):
        ours.send(slot)
    out = np.empty(shape, np.uint8)
    start = None
    for i in range(images):
        slot = ours.recv()
        view = np.ndarray(shape, np.uint8, shm.buf, offset=slot * out.nbytes)
        np.copyto(out, view)
        del view
        ours.send(slot)
        if i == 0:
            start = time.perf_counter()
    shared = (time.perf_counter() - start) / (images - 1)
    sender.join()
    shm.close()
    shm.unlink()
    print(json.dumps({"pipe_ms": pipe * 1e3, "shared_ms": shared * 1e3}))


def _send_pickled(conn, shape, images):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for _ in range(images):
        conn.send(("prepared", pixels))


def _send_shared(conn, name, shape, images):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for _ in range(images):
        slot = conn.recv()
        view = np.ndarray(shape, np.uint8, shm.buf, offset=slot * pixels.nbytes)
        np.copyto(view, pixels)
        del view
        conn.send(slot)
    for _ in range(4):
        conn.recv()
    shm.close()


def stages_child(args: argparse.Namespace) -> None:
    """CPU stages alone through the worker pool: steady images/s after the first result."""
    import resource

    from clipshift.stages import PrepareSettings
    from clipshift.workers import PreparePool

    paths = sorted(Path(args.photos).iterdir())
    keep = [False] * len(paths)
    settings = PrepareSettings()
    with PreparePool(args.workers, settings, (VARIANTS, IMAGE_SIZE, IMAGE_SIZE, 3)) as pool:
        results = pool.imap(paths, keep)
        # the first `workers` results pay the workers' start-up; time the rest
        for _ in range(args.workers):
            next(results)
        start = time.perf_counter()
        rest = sum(1 for _ in results)
        seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"images": rest, "seconds": seconds, "worker_rss_mb": usage.ru_maxrss / 1024}))


def forward_child(args: argparse.Namespace) -> None:
    """Time the forward pass ingest uses, on ready batches, in this (fresh) process."""
    from clipshift.encoder import Encoder

    encoder = Encoder(args.model, device=args.device, precision=args.precision)
    rng = np.random.default_rng(0)
    inputs = args.batch_size * VARIANTS
    images = rng.integers(0, 256, (inputs, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    encoder.encode(images)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        encoder.encode(images)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"inputs": inputs * args.batches, "seconds": seconds, "cpu": cpu}))


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ingest_child(args: argparse.Namespace) -> None:
    """Run one ingest in this (fresh) process and print its figures as JSON."""
    import resource

    from clipshift.ingest import ingest

    marks = {}
    start = time.perf_counter()
    summary = ingest(
        [args.photos],
        args.db,
        args.model,
        batch_size=args.batch_size,
        device=args.device,
        keep_pixels=args.keep_pixels,
        workers=args.workers,
        precision=args.precision,
        on_start=lambda total: marks.setdefault("start", time.perf_counter()),
        # called once a batch's forward is done, before it is written (it is written after
        # the next batch's forward): the images the loop has taken then are the first batch's
        on_progress=lambda done, summary: marks.setdefault(
            "first_batch", (time.perf_counter(), done, busy_cpu_seconds())
        ),
    )
    end = time.perf_counter()
    busy = busy_cpu_seconds()
    first_time, first_taken, first_busy = marks["first_batch"]
    seconds = end - start
    me = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "images": summary.stored,
                "workers": summary.workers,
                "seconds": seconds,
                "after_model_load": end - marks["start"],
                # steady state: from the first batch's forward done to the end, the images of
                # the later batches (counting the first batch's images there too, as until
                # 2026-12-01, overstated the rate by one batch in the run)
                "steady_images": summary.stored - first_taken,
                "steady_seconds": end - first_time,
                # the whole machine's cores kept busy in the steady state (all processes)
                "steady_cores_busy": (busy - first_busy) / (end - first_time),
                "timings": summary.timings,
                "cpu_main": me.ru_utime + me.ru_stime,
                "cpu_workers": workers.ru_utime + workers.ru_stime,
                "max_rss_mb": me.ru_maxrss / 1024,
                "worker_rss_mb": workers.ru_maxrss / 1024,
            }
        )
    )


def precision_child(args: argparse.Namespace) -> None:
    """bf16 and fp16 embeddings against fp32, over the photos' ten variants."""
    import torch

    from clipshift.encoder import Encoder
    from clipshift.stages import PrepareSettings, prepare_image

    torch.manual_seed(0)
    # two photos' twenty variants: bf16 and fp16 on a CPU without native support are slow
    paths = sorted(Path(args.photos).iterdir())[:2]
    images = np.concatenate([prepare_image(p, PrepareSettings(), False).pixels for p in paths])
    start = time.perf_counter()
    fp32 = Encoder(args.model, device=args.device).encode(images)
    reference = fp32.embeddings
    out = {"fp32": {"seconds": time.perf_counter() - start}}
    for precision in ("bf16", "fp16"):
        try:
            start = time.perf_counter()
            got = Encoder(args.model, device=args.device, precision=precision).encode(images)
        except Exception as exc:  # noqa: BLE001 - reported: this CPU may lack the dtype
            out[precision] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue
        e = got.embeddings
        norms = np.linalg.norm(e, axis=1) * np.linalg.norm(reference, axis=1)
        cosine = (e * reference).sum(1) / norms
        relative = np.linalg.norm(e - reference, axis=1) / np.linalg.norm(reference, axis=1)
        out[precision] = {
            "seconds": time.perf_counter() - start,
            "inputs": len(images),
            "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()),
            "max_relative_l2": float(relative.max()),
            "max_abs": float(np.abs(e - reference).max()),
            # every layer's stored map, each a distribution over the patches
            "max_attention": float(np.abs(got.attention - fp32.attention).max()),
        }
    print(json.dumps(out))


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
        originals = [decode(p.read_bytes(), IMAGE_SIZE).pixels for p in sorted(Path(tmp).iterdir())]
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


def child(mode: str, args: argparse.Namespace, env: dict | None = None, **options) -> dict:
    """Run this script as `--child MODE` in a fresh process (`env` added to its environment);
    its JSON line."""
    command = [sys.executable, __file__, "--child", mode, "--batch-size", str(args.batch_size),
               "--device", args.device]  # fmt: skip
    for name, value in options.items():
        if value is not None:  # None: the library's default
            command += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(command, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def default_for(model: Path, device: str) -> int:
    """The --workers ingest chooses by default for `model` with the default suite."""
    from clipshift.encoder import resolve_device
    from clipshift.hub import resolve_model
    from clipshift.ingest import _model_cost
    from clipshift.workers import available_cores, default_workers

    cost = _model_cost(resolve_model(str(model)), 224, VARIANTS)
    return default_workers(resolve_device(device).type, available_cores(), *cost)


def timed_ingest(args, model, photos, db, workers, precision: str = PRECISION) -> dict:
    return child("ingest", args, model=model, photos=photos, db=db, workers=workers,
                 keep_pixels=0, precision=precision)  # fmt: skip


def steady_inputs_per_second(run: dict) -> float:
    """Inputs a second of an ingest in its steady state: after its first batch's forward, as
    the bare forward is timed after a warm-up batch (from the end of the model load instead,
    the first batch's preparation and the first forward's warm-up counted against ingest)."""
    return run["steady_images"] * VARIANTS / run["steady_seconds"]


def print_distance_to_limit(model: Path, rates: dict[str, float], precision: str) -> None:
    """The model's GFLOP per input, what `rates` (inputs/s by name) achieve in GFLOP/s, and
    this CPU's peak for `precision` beside them."""
    from attention import cpu_info

    from clipshift.hub import model_config, resolve_model
    from clipshift.workers import available_cores, cpu_peak, inference_gflop

    vision = model_config(resolve_model(str(model)))["vision_config"]
    gflop = inference_gflop(vision, IMAGE_SIZE)
    tokens = (IMAGE_SIZE // vision["patch_size"]) ** 2 + 1
    _, flags, ghz = cpu_info()
    peak = cpu_peak(flags, available_cores(), ghz or float("nan"))
    if precision == "bf16":
        unit, per_cycle, limit = peak.bf16_unit, peak.bf16_flop_per_cycle, peak.bf16_gflops
    else:
        unit, per_cycle, limit = peak.fp32_unit, peak.fp32_flop_per_cycle, peak.fp32_gflops
    achieved = {name: rate * gflop for name, rate in rates.items()}
    figures = ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in achieved.items())
    print(f"  distance to the limit, {precision}: {gflop:.2f} GFLOP per input ({gflop / 2:.2f} "
          f"GMAC: the patch embedding, then {vision['num_hidden_layers']} layers' projections, "
          f"MLP and attention scores at {tokens} tokens); achieved {figures}")  # fmt: skip
    if limit is None:
        print(f"  this CPU's {precision} peak: none, no native unit (bf16 is converted to fp32)")
        return
    shares = ", ".join(f"{name} at {value / limit:.2f} of it" for name, value in achieved.items())
    print(f"  this CPU's {precision} peak: {peak.cores} cores x {peak.ghz:.2f} GHz "
          f"(/proc/cpuinfo's clock; turbo may be higher) x {per_cycle} FLOP/cycle ({unit}) "
          f"= {limit:.0f} GFLOP/s; {shares}")  # fmt: skip


# -- the run --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 96: at about 40 images/s, 2N images give a steady state of some 4 s; with 24 (1 s) the
    # ratio between worker counts moved by +-20% from run to run
    parser.add_argument("--images", type=int, default=96, help="N for the CPU-stage and "
                        "tiny-model figures (the tiny model also runs 2N)")  # fmt: skip
    parser.add_argument("--full-images", type=int, default=16,
                        help="images for the full-size ViT-B/32 ingest")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-workers", type=int, default=None, help="default: the cores")
    parser.add_argument("--skip", default="", help="comma list of: transfer, stages, tiny, "
                        "full, precision, perturbations")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("--model", "--photos", "--db"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=PRECISION, help=argparse.SUPPRESS)
    for hidden in ("--batches", "--workers", "--keep-pixels"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--perturbations-only", action="store_true", help="only the per-perturbation CPU cost"
    )
    args = parser.parse_args()
    if args.perturbations_only:
        return print_perturbation_costs()
    if args.child:
        children = {
            "transfer": transfer_child,
            "stages": stages_child,
            "forward": forward_child,
            "ingest": ingest_child,
            "precision": precision_child,
        }
        return children[args.child](args)

    from attention import cpu_description, cpu_info, flag_marks

    from clipshift.knn import native_bf16
    from clipshift.workers import available_cores

    cores = available_cores()
    counts = list(range(1, (args.max_workers or cores) + 1))
    skip = set(filter(None, args.skip.split(",")))
    began = time.perf_counter()
    print(f"{cores} cores usable, device {args.device}, batch {args.batch_size} images "
          f"x {VARIANTS} variants; each figure from a fresh process")  # fmt: skip
    print(f"CPU: {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        write_distinct_photos(photos, 2 * args.images)
        n_photos = tmp / "photos-n"
        n_photos.mkdir()
        for path in sorted(photos.iterdir())[: args.images]:
            os.link(path, n_photos / path.name)

        if "transfer" not in skip:
            t = child("transfer", args, batches=100)
            print(f"\ntransfer of one image's {VARIANTS} variants (1.5 MB), receiving side: "
                  f"pickled through a pipe {t['pipe_ms']:.2f} ms, shared-memory slot "
                  f"{t['shared_ms']:.2f} ms ({t['pipe_ms'] / t['shared_ms']:.0f}x)")  # fmt: skip

        if "stages" not in skip:
            print(f"\nCPU stages alone (read, decode, augment, metrics; no model), "
                  f"{args.images} images, steady state:")  # fmt: skip
            base = None
            for n in counts:
                r = child("stages", args, photos=n_photos, workers=n)
                rate = r["images"] / r["seconds"]
                base = base or rate
                print(f"  {n} workers: {rate:6.2f} images/s  x{rate / base:.2f} of 1 worker, "
                      f"efficiency {rate / base / n:.2f} of linear")  # fmt: skip

        tiny = save_tiny_clip(tmp / "tiny-clip")
        if "tiny" not in skip:
            n_images = args.images
            print(f"\nend to end, tiny CLIP (a stand-in for a fast accelerator), {2 * n_images} "
                  "images, steady state = from the first batch's forward to the end; CPU outside "
                  f"the model from the difference of runs of N = {n_images} and 2N images; "
                  "peak RSS of the main process and of the largest worker:")  # fmt: skip
            # the model's own CPU per image (forward + input normalisation), from a bare forward
            bare = child("forward", args, model=tiny, batches=4)
            model_cpu = bare["cpu"] / bare["inputs"] * VARIANTS
            print(f"  the default --workers for it: {default_for(tiny, args.device)}")
            # 0: the stages on a thread of the main process (what --workers 1 meant before
            # 2026-12-01), the base of the ratios
            base = None
            for n in [0, *counts]:
                one = timed_ingest(args, tiny, n_photos, tmp / f"tiny-{n}-n", n)
                two = timed_ingest(args, tiny, photos, tmp / f"tiny-{n}-2n", n)
                rate = two["steady_images"] / two["steady_seconds"]
                base = base or rate
                cpu = [r["cpu_main"] + r["cpu_workers"] for r in (one, two)]
                outside = (cpu[1] - cpu[0]) / n_images - model_cpu
                stages = ", ".join(f"{k} {(v - one['timings'][k]) * 1e3 / n_images:.0f}"
                                   for k, v in two["timings"].items())  # fmt: skip
                print(f"  --workers {n}: {rate:6.2f} images/s  x{rate / base:.2f} of 0; "
                      f"CPU {(cpu[1] - cpu[0]) * 1e3 / n_images:.0f} ms/image, of which outside "
                      f"the model {outside * 1e3:.0f} (the model's: {model_cpu * 1e3:.0f}); "
                      f"whole run {two['seconds']:.1f} s; cores busy in the steady state "
                      f"{two['steady_cores_busy']:.2f} of {cores}")  # fmt: skip
                print(f"      ms/image by stage (read to png: summed over the workers): {stages}")
                print(f"      peak RSS main {one['max_rss_mb']:.0f} MB ({n_images} images), "
                      f"{two['max_rss_mb']:.0f} MB ({2 * n_images})"
                      + (f"; worker {two['worker_rss_mb']:.0f} MB" if n else ""))  # fmt: skip

        full_photos = tmp / "photos-full"
        full_photos.mkdir()
        for path in sorted(photos.iterdir())[: args.full_images]:
            os.link(path, full_photos / path.name)
        batches = max(2, args.full_images // args.batch_size)
        if "full" not in skip:
            model = save_full_size_clip(tmp / "vit-b-32-random")
            # the issue's reference is transformers' eager forward (CLIPSHIFT_ATTENTION=eager:
            # the whole model, output_attentions); ingest's own is the fast path. In turns,
            # before and after the ingest, so that a drift in the machine's speed meets all
            from clipshift.families import ATTENTION_ENV

            eager = {ATTENTION_ENV: "eager"}
            eager_before = child("forward", args, env=eager, model=model, batches=batches)
            before = child("forward", args, model=model, batches=batches)
            run = timed_ingest(args, model, full_photos, tmp / "full", None)
            # and in turn, the CPU stages on a thread of the main process instead
            in_process = timed_ingest(args, model, full_photos, tmp / "full-0", 0)
            after = child("forward", args, model=model, batches=batches)
            eager_after = child("forward", args, env=eager, model=model, batches=batches)
            forward = [f["inputs"] / f["seconds"] for f in (before, after)]
            eager_rates = [f["inputs"] / f["seconds"] for f in (eager_before, eager_after)]
            mean, eager_mean = sum(forward) / 2, sum(eager_rates) / 2
            rate = steady_inputs_per_second(run)
            print(f"\nfull-size ViT-B/32 (random weights), {run['images']} images, "
                  f"the default --workers ({run['workers']}):")  # fmt: skip
            print(f"  ingest steady state {rate:.1f} inputs/s; against the bare eager forward "
                  f"(transformers', {eager_rates[0]:.1f} / {eager_rates[1]:.1f} inputs/s before "
                  f"/ after) ratio {rate / eager_mean:.2f} (target >= 0.95); against its own "
                  f"bare forward (the fast path, {forward[0]:.1f} / {forward[1]:.1f}) ratio "
                  f"{rate / mean:.2f}")  # fmt: skip
            rate_0 = steady_inputs_per_second(in_process)
            print(f"  beside it, --workers 0 (the stages on a thread of the main process): "
                  f"{rate_0:.1f} inputs/s, ratio {rate_0 / eager_mean:.2f} against the eager "
                  f"forward, {rate_0 / mean:.2f} against its own")  # fmt: skip
            print_distance_to_limit(model, {"bare forward": mean, "ingest": rate}, "fp32")

        if "precision" not in skip:
            model = tmp / "vit-b-32-random"
            if not model.is_dir():
                save_full_size_clip(model)
            p = child("precision", args, model=model, photos=photos)
            print("\nprecision against fp32 (full-size ViT-B/32, random weights, "
                  "the photos' variants):")  # fmt: skip
            for name, r in p.items():
                if name == "fp32":
                    continue
                if "error" in r:
                    print(f"  {name}: not available on this device ({r['error']})")
                else:
                    print(f"  {name}: {r['inputs']} embeddings, cosine to fp32 min "
                          f"{r['min_cosine']:.6f} mean {r['mean_cosine']:.6f}; relative L2 "
                          f"max {r['max_relative_l2']:.2e}; "
                          f"max |diff| {r['max_abs']:.2e}; attention maps max |diff| "
                          f"{r['max_attention']:.2e}; load + forward {r['seconds']:.0f} s "
                          f"(fp32 {p['fp32']['seconds']:.0f} s)")  # fmt: skip
            _, flags, _ = cpu_info()
            if not native_bf16():
                print("  bf16 ingest against fp32 ingest: not measured: this CPU has no native "
                      f"bf16 (flags: {flag_marks(flags)})")  # fmt: skip
            else:
                # side by side, each in a fresh process: fp32 and bf16 ingest, then the bare
                # forwards, with the default --workers
                runs = {precision: timed_ingest(args, model, full_photos,
                                                tmp / f"precision-{precision}", None, precision)
                        for precision in ("fp32", "bf16")}  # fmt: skip
                bare = {precision: child("forward", args, model=model, batches=batches,
                                         precision=precision)
                        for precision in ("fp32", "bf16")}  # fmt: skip
                rates = {k: steady_inputs_per_second(r) for k, r in runs.items()}
                forward = {k: f["inputs"] / f["seconds"] for k, f in bare.items()}
                print(f"  bf16 ingest against fp32 ingest, {runs['bf16']['images']} images, the "
                      f"default --workers ({runs['bf16']['workers']}): fp32 {rates['fp32']:.1f}, "
                      f"bf16 {rates['bf16']:.1f} inputs/s: x{rates['bf16'] / rates['fp32']:.2f} "
                      f"(target >= 3); bare forward fp32 {forward['fp32']:.1f}, bf16 "
                      f"{forward['bf16']:.1f} inputs/s (x{forward['bf16'] / forward['fp32']:.2f}); "
                      f"bf16 ingest at {rates['bf16'] / forward['bf16']:.2f} of its bare "
                      f"forward; CPU flags: {flag_marks(flags)}")  # fmt: skip
                print_distance_to_limit(
                    model, {"bare forward": forward["bf16"], "ingest": rates["bf16"]}, "bf16"
                )
    if "perturbations" not in skip:
        print()
        print_perturbation_costs()
    print(f"\n(benchmark took {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
