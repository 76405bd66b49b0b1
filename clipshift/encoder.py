"""The one place a model is created and loaded, and its one forward pass.

The family (CLIP, SigLIP, SigLIP 2) is detected from the checkpoint's config and its adapter
(families.py) does the family-specific work. A single forward gives the image embedding and
every attention map (docs/metrics.md defines them per family): no second pass for attention.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import ClipshiftError, first_line
from .defaults import DEVICES, IMAGE_SIZE, PRECISION, PRECISIONS, check_precision
from .families import Family, LayerOutput, attention_path, family_of
from .hub import (
    ResolvedModel,
    folder_revision,
    load_error,
    load_pretrained,
    model_config,
    model_file,
    model_folder,
    resolve_model,
)

# --precision: the dtype of the weights and activations. Outputs are float32 whatever it is;
# docs/metrics.md gives the measured embedding difference of each against fp32.
# texts per text-encoder forward
TEXT_BATCH = 256
DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16), strict=True))


@dataclass
class Encoded:
    embeddings: np.ndarray  # (N, D) float32, un-normalised
    attention: np.ndarray  # (N, maps, g*g) float32: the family's maps (docs/metrics.md)
    # the layer metrics (docs/metrics.md), where `start` was given each row's original
    layer_cosine: np.ndarray | None = None  # (N, L + 1) float32; SigLIP (N, L + 2)
    token_drift: np.ndarray | None = None  # (N, L, g*g) float32
    hidden_states: np.ndarray | None = None  # (N, L + 1, width) float16, with hidden_states


@dataclass
class Pending:
    """A forward pass queued on the device; `Encoder.finish` waits for it."""

    embeddings: torch.Tensor
    attention: torch.Tensor
    layers: LayerOutput | None = None


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
    """A model ready for `encode`: S x S uint8 RGB images in, embeddings and attention out."""

    family: Family

    def __init__(
        self,
        model: str | ResolvedModel,
        device: str = "auto",
        image_size: int = IMAGE_SIZE,
        precision: str = PRECISION,
        hidden_states: bool = False,
        text: bool = False,
    ):
        """`text`: load the text tower now (the whole model through transformers); without it,
        an image-only tower where one loads, and the rest on the first `encode_text`."""
        check_precision(precision)
        # --hidden-states: keep every layer's pooled hidden state (float16) beside the metrics
        self.hidden_states = hidden_states
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.device = resolve_device(device)
        # offline: a model neither local nor cached fails at once, before transformers loads
        resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
        self.model_name = resolved.name
        self.source = resolved.source
        self.local_dir = resolved.local_dir
        self._whole_model = None
        config = model_config(resolved)
        try:
            model_type = config.get("model_type") if config else _model_type(self.source)
            self.family = family_of(model_type, self.model_name)
            model = None
            # an image forward needs the image tower alone, which loads without transformers'
            # modeling code where its checkpoint fits (towers.py); text needs the whole model
            if not text and config and attention_path() == "fast":
                folder = model_folder(resolved)
                model = self.family.load_image_tower(config, folder) if folder else None
            if model is None:
                model = self._whole_model = self._load_whole()
            processor_config = _processor_config(resolved)
        except (OSError, ValueError) as exc:
            raise self._load_failed(exc) from None
        self.model = model.eval().to(self.device, dtype=self.dtype)
        vision = self.family.vision_config(model)
        self.image_size = image_size
        self.patch_size = vision.patch_size
        if image_size % self.patch_size:
            nearest = max(1, round(image_size / self.patch_size)) * self.patch_size
            raise ClipshiftError(
                f"--image-size {image_size} is not a multiple of the model's patch size "
                f"{self.patch_size}: try {nearest}"
            )
        self.patch_grid = image_size // self.patch_size
        # attention maps per image: the layers, plus a pooling head's probe (SigLIP)
        self.num_layers = self.family.num_maps(model)
        self.embedding_dim = self.family.embedding_dim(model)
        self._interpolate = self.family.interpolate(model, image_size)
        self.preprocessing = self.family.preprocessing(processor_config)
        mean, std = self.preprocessing.image_mean, self.preprocessing.image_std
        # (x - mean) / std as one pass from uint8, x * scale + shift: the three passes of
        # float, subtract and divide took 1.4x as long in the main process (about 5 ms per
        # image of ten 224-px variants here); the two differ by under 3e-7
        std_255 = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        mean_255 = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._scale, self._shift = 1.0 / std_255, -mean_255 / std_255
        # CUDA: uint8 batches go up from pinned host memory, two buffers used in turn, so the
        # copy of the next batch overlaps the forward pass of this one (see `start`).
        self._pinned: list[torch.Tensor] = []
        self._turn = 0
        # CPU: the float32 batch `start` normalises into, kept for the next batch (see `start`)
        self._inputs: torch.Tensor | None = None

    @functools.cached_property
    def revision(self) -> str:
        """The weights' identity: the hub commit, or a hash of a local folder's weight files
        (read on first use: hashing ViT-B/32's 600 MB takes half a second, and only ingest,
        which names a run by it, needs it)."""
        return _revision(self.model, self.local_dir)

    @property
    def whole_model(self):
        """The whole model as transformers loads it (both towers), for text: `model` where
        that is it, else loaded on first use."""
        if self._whole_model is None:
            try:
                whole = self._load_whole()
            except (OSError, ValueError) as exc:
                raise self._load_failed(exc) from None
            self._whole_model = whole.eval().to(self.device, dtype=self.dtype)
        return self._whole_model

    def _load_failed(self, exc: Exception) -> ClipshiftError:
        return ClipshiftError(load_error(self.model_name, Path(self.model_name).expanduser(), exc))

    def _load_whole(self):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return self.family.load(self.source)

    def run_fields(self) -> dict:
        """What this model at this image size records in its run's `runs` row."""
        return {
            "model": self.source,
            "model_revision": self.revision,
            "family": self.family.name,
            "preprocessing": self.preprocessing_json(),
            "attention_maps": self.family.attention_maps,
            "embedding_dim": self.embedding_dim,
            "patch_grid": self.patch_grid,
            "num_layers": self.num_layers,
            "image_size": self.image_size,
        }

    def preprocessing_json(self) -> str:
        """What `runs.preprocessing` records for this model at this image size."""
        return self.preprocessing.to_json(self.image_size, self._interpolate)

    def pixel_values(self, images: np.ndarray, reuse: bool = False) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> the model's normalisation, (N, 3, S, S) in the model's dtype
        on the device. With `reuse` on the CPU, the float32 values are written into a buffer
        that the next call with `reuse` overwrites (`start`, whose forward is done by then)."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            x = self._pin(x).to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = x.permute(0, 3, 1, 2)
        if not (reuse and self.device.type == "cpu"):
            return torch.addcmul(self._shift, x, self._scale).to(self.dtype)
        # A batch of 80 224-px inputs in float32 is 48 MB, over glibc's largest mmap threshold
        # (32 MB): each new one was a fresh mapping whose pages faulted in as they were first
        # written, and addcmul of uint8 made two (its float copy of the input, then its output,
        # in the input's NHWC strides, which the patch convolution copied again). That was
        # 12 ms of the tiny CLIP's 15-20 ms of CPU per image here. Cast into one kept NCHW
        # buffer and normalised in place, the same values (bit for bit) take about 2 ms.
        held = self._inputs
        if held is None or held.shape[1:] != x.shape[1:] or len(held) < len(x):
            held = self._inputs = torch.empty(x.shape, dtype=torch.float32)
        out = held[: len(x)]  # a batch's first rows: contiguous (a run's last batch is smaller)
        out.copy_(x)
        torch.addcmul(self._shift, out, self._scale, out=out)
        return out.to(self.dtype)

    def _pin(self, x: torch.Tensor) -> torch.Tensor:
        # A buffer is reused two batches later, when `finish` of its batch has synchronised.
        self._turn = (self._turn + 1) % 2
        if len(self._pinned) < 2:
            self._pinned.append(torch.empty(0, dtype=torch.uint8).pin_memory())
        buffer = self._pinned[self._turn]
        if buffer.numel() < x.numel():
            buffer = self._pinned[self._turn] = torch.empty(
                x.numel(), dtype=torch.uint8
            ).pin_memory()
        pinned = buffer[: x.numel()].view(x.shape)
        pinned.copy_(x)
        return pinned

    @torch.inference_mode()
    def start(self, images: np.ndarray, references: np.ndarray | None = None) -> Pending:
        """Queue the forward pass of (N, S, S, 3) uint8 images; on CUDA this returns before
        the device is done, so the caller can prepare (and start) the next batch meanwhile.
        `references` (N,): each row's original's row index in `images` (its own for an
        original), for the layer metrics; None computes none."""
        if references is not None:
            references = torch.as_tensor(references, dtype=torch.long, device=self.device)
        output = self.family.encode_images(
            self.model,
            self.pixel_values(images, reuse=True),
            self._interpolate,
            references,
            keep_hidden=self.hidden_states,
        )
        return Pending(output.embeddings, output.attention, output.layers)

    @torch.inference_mode()
    def finish(self, pending: Pending) -> Encoded:
        """Wait for a queued forward pass; its outputs as float32 arrays (hidden states float16)."""
        encoded = Encoded(
            pending.embeddings.float().cpu().numpy(),
            pending.attention.float().cpu().numpy(),
        )
        layers = pending.layers
        if layers is not None:
            encoded.layer_cosine = layers.layer_cosine.cpu().numpy()
            encoded.token_drift = layers.token_drift.cpu().numpy()
            if layers.hidden_states is not None:
                encoded.hidden_states = layers.hidden_states.cpu().numpy()
        return encoded

    def encode(self, images: np.ndarray, references: np.ndarray | None = None) -> Encoded:
        """Embeddings and attention of (N, S, S, 3) uint8 images (and the layer metrics, given
        each row's original: `start`)."""
        return self.finish(self.start(images, references))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, D) float32 text embeddings (un-normalised), in the same space as
        `encode`'s image embeddings."""
        texts = list(texts)
        if not texts:
            return np.empty((0, self.embedding_dim), np.float32)
        tokenizer = self._tokenizer()
        model = self.whole_model
        max_length = model.config.text_config.max_position_embeddings
        # batches of texts with about as many tokens, so that a batch pads little: for the
        # 1,000 ImageNet prompts, sorted by characters they were padded to 11 tokens on average,
        # by tokens to 9 (8.7 unpadded)
        tokenized = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        counts = [len(ids) for ids in tokenized]
        order = sorted(range(len(texts)), key=counts.__getitem__)
        out = np.empty((len(texts), self.embedding_dim), np.float32)
        for start in range(0, len(order), TEXT_BATCH):
            batch = order[start : start + TEXT_BATCH]
            tokens = self.family.tokenize(tokenizer, [texts[i] for i in batch], max_length)
            tokens = {name: value.to(self.device) for name, value in tokens.items()}
            out[batch] = self.family.encode_text(model, tokens).float().cpu().numpy()
        return out

    @property
    def logit_scale(self) -> float:
        """The multiplier of a cosine in the model's image-text logits: exp of its learned
        logit_scale (100 for OpenAI's CLIP)."""
        return float(self.whole_model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float | None:
        """The bias added to the logits by sigmoid-trained models (SigLIP); None for CLIP,
        whose logits go through a softmax over the candidate texts instead."""
        bias = getattr(self.whole_model, "logit_bias", None)
        return None if bias is None else float(bias.detach())

    def _tokenizer(self):
        # loaded on first use: image-only commands never need it
        if getattr(self, "_text_tokenizer", None) is None:
            from transformers import AutoTokenizer

            source = self.source
            # transformers builds an empty-vocabulary CLIP tokenizer for a folder without
            # tokenizer files, which would silently turn every text into unknown tokens
            if self.local_dir and not any(
                (self.local_dir / name).is_file()
                for name in ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
            ):
                raise ClipshiftError(
                    f"cannot load the text tokenizer of {self.model_name}: the folder has no "
                    "tokenizer.json or vocab.json (save the tokenizer beside the model, e.g. "
                    "CLIPTokenizer.from_pretrained(...).save_pretrained(DIR))"
                )
            try:
                self._text_tokenizer = load_pretrained(AutoTokenizer, source)
            except (OSError, ValueError) as exc:
                raise ClipshiftError(
                    f"cannot load the text tokenizer of {self.model_name}: "
                    f"{first_line(exc)} (text queries need the model's tokenizer files)"
                ) from None
        return self._text_tokenizer


def text_encoder(run: dict, device: str = "auto") -> Encoder:
    """The encoder of a run's model, for text: a ClipshiftError where it has no text tower."""
    no_text = f"run {run['run_id']} ({run['model']}) has no text tower"
    try:
        encoder = Encoder(run["model"], device=device, image_size=run["image_size"], text=True)
    except ClipshiftError as exc:  # a synthetic run names no model at all
        raise ClipshiftError(f"{no_text} clipshift can load: {exc}") from None
    if not hasattr(encoder.whole_model, "get_text_features"):
        raise ClipshiftError(f"{no_text}: text prompts need a model with a text encoder")
    encoder._tokenizer()  # fail now, before any work, where the tokenizer files are missing
    return encoder


def _model_type(source: str) -> str | None:
    """config.json's model_type (a local folder, or a hub id from the cache or the hub)."""

    path = _cached_file(source, "config.json")
    if path is None:  # a folder without one: transformers returns None rather than raising
        raise OSError(f"{source} has no config.json")
    return json.loads(Path(path).read_text()).get("model_type")


def _processor_config(model: ResolvedModel) -> dict | None:
    """The checkpoint's preprocessor_config.json, or None where it ships none: from its folder
    or the local cache without transformers, which asks the hub only where the cache cannot
    tell."""
    found = model_file(model, "preprocessor_config.json")
    if found is None:
        found = _cached_file(
            model.source,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    return json.loads(Path(found).read_text()) if found else None


def _revision(model, local_dir: Path | None) -> str:
    """The hub commit of the weights, or for a local folder a hash of its weight files."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit and not local_dir:
        return commit
    return folder_revision(local_dir or Path())


def _cached_file(source: str, filename: str, **kwargs):
    """transformers' cached_file from the local cache (or folder) first, then the hub (reached
    only when `resolve_model` found it reachable)."""
    from transformers.utils import cached_file

    try:
        return cached_file(source, filename, local_files_only=True, **kwargs)
    except OSError:
        return cached_file(source, filename, **kwargs)
