"""The one place a CLIP model is created and loaded, and its one forward pass.

A single forward gives the projected image embedding and the CLS-row attention of every
layer (averaged over heads): no second pass for attention.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import ClipshiftError
from .defaults import DEVICES, IMAGE_SIZE

# CLIP's own normalisation; used when the model folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Encoded:
    embeddings: np.ndarray  # (N, D) float32, un-normalised
    attention: np.ndarray  # (N, layers, g*g) float32: CLS row over patches, mean over heads


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipshiftError("--device cuda: no CUDA device is available here; use --device cpu")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ClipshiftError("--device mps: no MPS device is available here; use --device cpu")
    if name not in DEVICES:
        raise ClipshiftError(f"unknown --device {name}: choose {', '.join(DEVICES)}")
    return torch.device(name)


class Encoder:
    """A CLIP model ready for `encode`: S x S uint8 RGB images in, embeddings and attention out."""

    def __init__(self, model_name: str, device: str = "auto", image_size: int = IMAGE_SIZE):
        from transformers import CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.model_name = model_name
        self.device = resolve_device(device)
        local = Path(model_name).expanduser()
        self.local_dir = local.resolve() if local.is_dir() else None
        source = str(self.local_dir) if self.local_dir else model_name
        try:
            model = CLIPModel.from_pretrained(source, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise ClipshiftError(_load_error(model_name, local, exc)) from None
        self.model = model.eval().to(self.device)
        vision = model.config.vision_config
        self.image_size = image_size
        self.patch_size = vision.patch_size
        if image_size % self.patch_size:
            nearest = max(1, round(image_size / self.patch_size)) * self.patch_size
            raise ClipshiftError(
                f"--image-size {image_size} is not a multiple of the model's patch size "
                f"{self.patch_size}: try {nearest}"
            )
        self.patch_grid = image_size // self.patch_size
        self.num_layers = vision.num_hidden_layers
        self.embedding_dim = model.config.projection_dim
        self._interpolate = image_size != vision.image_size
        mean, std = _normalisation(self.local_dir)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.revision = _revision(model, self.local_dir)

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> CLIP-normalised (N, 3, S, S) float32 on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> Encoded:
        outputs = self.model.vision_model(
            pixel_values=self.pixel_values(images),
            output_attentions=True,
            interpolate_pos_encoding=self._interpolate,
        )
        embeddings = self.model.visual_projection(outputs.pooler_output)
        # each layer: (N, heads, 1 + g*g, 1 + g*g) -> CLS row over the patch tokens
        attention = torch.stack([layer[:, :, 0, 1:].mean(dim=1) for layer in outputs.attentions], 1)
        return Encoded(
            embeddings.float().cpu().numpy(),
            attention.float().cpu().numpy(),
        )

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, D) float32 projected CLIP text embeddings (un-normalised), in the same
        space as `encode`'s image embeddings."""
        tokenizer = self._tokenizer()
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        outputs = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return outputs.pooler_output.float().cpu().numpy()

    def _tokenizer(self):
        # loaded on first use: image-only commands never need it
        if getattr(self, "_text_tokenizer", None) is None:
            from transformers import AutoTokenizer

            source = str(self.local_dir) if self.local_dir else self.model_name
            # transformers builds an empty-vocabulary CLIP tokenizer for a folder without
            # tokenizer files, which would silently turn every text into unknown tokens
            if self.local_dir and not any(
                (self.local_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")
            ):
                raise ClipshiftError(
                    f"cannot load the text tokenizer of {self.model_name}: the folder has no "
                    "tokenizer.json or vocab.json (save the tokenizer beside the model, e.g. "
                    "CLIPTokenizer.from_pretrained(...).save_pretrained(DIR))"
                )
            try:
                self._text_tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError) as exc:
                raise ClipshiftError(
                    f"cannot load the text tokenizer of {self.model_name}: "
                    f"{str(exc).splitlines()[0]} (text queries need the model's tokenizer files)"
                ) from None
        return self._text_tokenizer


def _normalisation(local_dir: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if local_dir and (local_dir / "preprocessor_config.json").is_file():
        config = json.loads((local_dir / "preprocessor_config.json").read_text())
        return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def _revision(model, local_dir: Path | None) -> str:
    """The hub commit of the weights, or for a local folder a hash of its weight files."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit and not local_dir:
        return commit
    weights = sorted(
        p for p in (local_dir or Path()).glob("*") if p.suffix in (".safetensors", ".bin")
    )
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16] if weights else "unknown"


def _load_error(model_name: str, local: Path, exc: Exception) -> str:
    if local.is_dir():
        return f"cannot load a CLIP model from {local}: {str(exc).splitlines()[0]}"
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        return f"--model {model_name}: no such directory"
    if (
        os.environ.get("HF_HUB_OFFLINE")
        or "offline" in str(exc).lower()
        or "connect" in str(exc).lower()
    ):
        return (
            f"cannot load {model_name}: it is not in the Hugging Face cache and the hub cannot be "
            "reached. Download it once where the hub is reachable, or pass --model DIR (a folder "
            "made with CLIPModel.save_pretrained)"
        )
    return f"cannot load model {model_name}: {str(exc).splitlines()[0]}"
