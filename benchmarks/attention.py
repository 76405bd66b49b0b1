"""The image forward (embeddings and attention maps) per input: eager against the fast path.

    python benchmarks/attention.py [--batch-size 8] [--repeats 5] [--device cpu]
                                   [--precision fp32] [--only vit-b32,siglip-b16]

Side by side in one run, on one machine, full-size configs with random weights:
  - vit-b32:   CLIP ViT-B/32 at 224 px,  50 tokens (openai/clip-vit-base-patch32's shape)
  - vit-b16:   CLIP ViT-B/16 at 224 px, 197 tokens
  - siglip-b16: SigLIP-B/16 at 224 px, 196 tokens (google/siglip-base-patch16-224's shape)
  - vit-l14-336: CLIP ViT-L/14 at 336 px, 577 tokens
For each: ms per input of `Family.encode_images` (what ingest calls per batch) through
transformers' eager attention with output_attentions (CLIPSHIFT_ATTENTION=eager) and through
clipshift's layer loop with SDPA (the default), the same model and inputs; and the largest
difference of the two in maps and embeddings. The two paths take turns, and each gives the
best of its --repeats calls: a load elsewhere on the machine meets both alike. The eager path
also holds every layer's (heads x T x T) matrices at once: N x heads x T^2 x 4 bytes a layer
in fp32 (680 MB a layer for ViT-L/14 at 336 px and 32 inputs).

The CPU's model name and its flags for bf16 and AMX are printed first: the fast path's SDPA
kernel, and bf16's speed, depend on them. Figures must be taken on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipshift.encoder import DTYPES, resolve_device  # noqa: E402
from clipshift.families import FAMILIES  # noqa: E402

# the flags printed beside the figures: fp32's widest multiply-add units, and native bf16
CPU_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# a text tower as small as possible: only the vision tower is timed
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)

CONFIGS = {
    "vit-b32": ("clip", 224, dict(patch_size=32)),
    "vit-b16": ("clip", 224, dict(patch_size=16)),
    "siglip-b16": ("siglip", 224, dict(patch_size=16)),
    "vit-l14-336": (
        "clip",
        336,
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=14,
            image_size=336,
        ),
    ),
}


def cpu_info() -> tuple[str, set[str], float | None]:
    """The CPU's model name, flags and clock in GHz (None: unknown), from the first processor
    of /proc/cpuinfo (Linux; elsewhere a name only)."""
    name, flags, ghz = platform.processor() or "unknown CPU", set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "cpu MHz":
                ghz = float(value) / 1000
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except (OSError, ValueError):
        pass
    return name, flags, ghz


def flag_marks(flags: set[str]) -> str:
    """Which of CPU_FLAGS `flags` has: "fma yes, avx2 yes, avx512f no, ..."."""
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)


def cpu_description() -> str:
    """The CPU's model name and which of CPU_FLAGS it has, from /proc/cpuinfo (Linux)."""
    name, flags, _ = cpu_info()
    threads = torch.get_num_threads()
    return f"{name}; {os.cpu_count()} cores, torch threads {threads}; {flag_marks(flags)}"


def build(name: str):
    family_name, image_size, vision = CONFIGS[name]
    torch.manual_seed(0)
    if family_name == "clip":
        from transformers import CLIPConfig, CLIPModel

        model = CLIPModel(CLIPConfig(text_config=TINY_TEXT, vision_config=vision))
    else:
        from transformers import SiglipConfig, SiglipModel

        model = SiglipModel(SiglipConfig(text_config=TINY_TEXT, vision_config=vision))
    return FAMILIES[family_name], model.eval(), image_size


def timed(family, model, pixels, device: torch.device) -> tuple:
    """Seconds of one `encode_images` call, and its output."""
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = family.encode_images(model, pixels, False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start, output


def compare(family, model, pixels, repeats: int, device: torch.device) -> dict:
    """ms per input of each path, the best of `repeats` calls after a warm-up, the two paths
    taking turns (so that a load on the machine meets both alike), and their outputs."""
    best, outputs = {}, {}
    for turn in range(repeats + 1):
        for path, implementation in (("eager", "eager"), ("fast", "sdpa")):
            model.set_attn_implementation(implementation)
            assert family.fast_attention(model) == (path == "fast")
            seconds, outputs[path] = timed(family, model, pixels, device)
            if turn:  # the first turn warms up
                best[path] = min(best.get(path, seconds), seconds)
    return {path: best[path] / len(pixels) * 1e3 for path in best} | {"outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configs")
    args = parser.parse_args()
    device, dtype = resolve_device(args.device), DTYPES[args.precision]

    print(f"CPU: {cpu_description()}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(
        f"torch {torch.__version__}, {args.precision}, batch {args.batch_size}, "
        f"best of {args.repeats} turns after a warm-up; ms per input (embeddings + maps)"
    )
    print(
        f"{'config':<12} {'tokens':>6} {'eager':>9} {'fast':>9} {'speed-up':>8} "
        f"{'max |d map|':>12} {'max |d emb|':>12}"
    )
    for name in args.only.split(","):
        family, model, image_size = build(name)
        model = model.to(device, dtype=dtype)
        patch = family.vision_config(model).patch_size
        tokens = (image_size // patch) ** 2 + (family.name == "clip")
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator)
        pixels = pixels.to(device, dtype=dtype)
        found = compare(family, model, pixels, args.repeats, device)
        eager_ms, fast_ms = found["eager"], found["fast"]
        eager, fast = found["outputs"]["eager"], found["outputs"]["fast"]
        d_map = (fast.attention.float() - eager.attention.float()).abs().max().item()
        d_emb = (fast.embeddings.float() - eager.embeddings.float()).abs().max().item()
        print(
            f"{name:<12} {tokens:>6} {eager_ms:>9.2f} {fast_ms:>9.2f} "
            f"{eager_ms / fast_ms:>7.2f}x {d_map:>12.2e} {d_emb:>12.2e}",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()
