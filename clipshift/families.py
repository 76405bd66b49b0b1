"""Model families: one adapter per family, behind one interface.

The family is detected from the checkpoint's config.json (`model_type`). An adapter knows
how to load its model class, the normalisation its processor config asks for, how to get
the image embedding and every attention map out of ONE forward pass, and how to embed text.
`Encoder` (encoder.py) is the only user: a new family plugs in here and nowhere else.

Attention maps (docs/metrics.md has the definitions and the reasons):
- clip: per layer, the CLS token's row over the g x g patches, mean over heads.
- siglip, siglip2 (no CLS token): per layer, the attention each patch receives, mean over
  heads and over all query tokens; then one more map, the attention-pooling head's probe
  over the patches (mean over heads), the map that actually forms the embedding.

The image forward runs the vision tower's layers in clipshift's own loop (`vision_layers`)
and computes only the maps it stores from each layer's queries and keys, instead of
transformers' eager attention returning every (heads x T x T) matrix: CLIP's layers take
SDPA's output and one row of scores; SigLIP's, whose map needs every score, compute them once,
a block of queries at a time.
CLIPSHIFT_ATTENTION=eager selects transformers' eager forward instead (the fallback, also
taken for any model whose vision layers are not the classes the loop re-implements).

Layer metrics (docs/metrics.md): given each row's original (`references`, the row index of
its image's original in the same batch), a `LayerProbe` compares every row's hidden states
with its original's at the output of each layer, inside the forward: the pooled token's
cosine (`layer_cosine`) and each patch token's 1 - cosine (`token_drift`). Nothing is kept
between layers but those few floats a row, so no second pass and no stored tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import ClipshiftError

# CLIP's own normalisation: used when a CLIP checkpoint ships no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP's (and SigLIP 2's) processors map [0, 1] to [-1, 1]
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# CLIPSHIFT_ATTENTION: "fast" (the default: clipshift's layer loop with SDPA) or "eager"
# (transformers' forward with eager attention and output_attentions, the fallback)
ATTENTION_ENV = "CLIPSHIFT_ATTENTION"
ATTENTION_PATHS = ("fast", "eager")
# queries per block when summing what each key receives (SigLIP): bounds the scores held at
# once to N x heads x RECEIVED_BLOCK x T, whatever the number of tokens T
RECEIVED_BLOCK = 256


def attention_path() -> str:
    """The image forward asked for by CLIPSHIFT_ATTENTION: "fast" (default) or "eager"."""
    path = os.environ.get(ATTENTION_ENV, "").strip().lower() or ATTENTION_PATHS[0]
    if path not in ATTENTION_PATHS:
        raise ClipshiftError(
            f"{ATTENTION_ENV}={path!r} is not an attention path: "
            f"choose {', '.join(ATTENTION_PATHS)}"
        )
    return path


@dataclass(frozen=True)
class Preprocessing:
    """What happens to the S x S uint8 image before the model sees it, as recorded in
    `runs.preprocessing`. clipshift itself resizes every image to S x S (no aspect kept, the
    paper's way) before augmenting it, so a processor's resize and centre crop of that square
    image are the identity at S = the model's size; only its normalisation is applied here.
    The processor's own resize and crop settings are recorded beside it for the record."""

    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    source: str  # "preprocessor_config.json" or "family default"
    processor_resize: dict | None = None
    processor_crop: dict | None = None

    def to_json(self, image_size: int, interpolate: bool) -> str:
        return json.dumps(
            {
                "resize": f"{image_size}x{image_size}, aspect not kept, before augmenting",
                "rescale": "1/255",
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
                "normalisation_from": self.source,
                "processor_resize": self.processor_resize,
                "processor_crop": self.processor_crop,
                "interpolate_pos_encoding": interpolate,
            },
            sort_keys=True,
        )


@dataclass
class LayerOutput:
    """The layer metrics of one batch (docs/metrics.md), from `LayerProbe.result`."""

    layer_cosine: torch.Tensor  # (N, L + 1), SigLIP (N, L + 2): float32
    token_drift: torch.Tensor  # (N, L, g*g) float32: 1 - cosine per patch, layers 1..L
    hidden_states: torch.Tensor | None  # (N, L + 1, width) float16, with --hidden-states


@dataclass
class ImageOutput:
    embeddings: torch.Tensor  # (N, D)
    attention: torch.Tensor  # (N, maps, g*g)
    layers: LayerOutput | None = None


class LayerProbe:
    """Compares each row's hidden states with its image original's, layer by layer, as the
    forward produces them: `observe(hidden)` once for the embedding layer's output and once per
    layer, then `head(pooled)` for a pooling head's output (SigLIP). `pool` gives a row's pooled
    token from its (T, width) hidden states (CLIP: the CLS token; SigLIP: the mean of the patch
    tokens) and `first_patch` the index of the first patch token. Cosines are computed in
    float32 whatever the model's precision; an original's rows get exactly 1 and 0."""

    def __init__(
        self,
        references: torch.Tensor,
        pool: Callable[[torch.Tensor], torch.Tensor],
        first_patch: int,
        keep_hidden: bool = False,
    ):
        self.references = references
        self.pool = pool
        self.first_patch = first_patch
        self.keep_hidden = keep_hidden
        self.cosines: list[torch.Tensor] = []
        self.drift: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []

    def observe(self, hidden: torch.Tensor) -> None:
        hidden = hidden.float()
        pooled = self.pool(hidden)
        self.cosines.append(_cosine(pooled, pooled[self.references]))
        if self.keep_hidden:
            self.hidden.append(pooled.half())
        if len(self.cosines) > 1:  # token drift from the first layer's output on
            tokens = hidden[:, self.first_patch :]
            self.drift.append(1.0 - _cosine(tokens, tokens[self.references]))

    def head(self, pooled: torch.Tensor) -> None:
        pooled = pooled.float()
        self.cosines.append(_cosine(pooled, pooled[self.references]))

    def result(self) -> LayerOutput:
        own = self.references == torch.arange(len(self.references), device=self.references.device)
        cosines = torch.stack(self.cosines, 1).masked_fill(own[:, None], 1.0)
        drift = torch.stack(self.drift, 1).masked_fill(own[:, None, None], 0.0)
        hidden = torch.stack(self.hidden, 1) if self.keep_hidden else None
        return LayerOutput(cosines, drift, hidden)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis (torch's, with its 1e-8 floor on each norm)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def cls_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def mean_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.mean(dim=1)


class Family:
    """The adapter interface. Subclasses set the class attributes and may override methods."""

    name: str
    model_class: str  # the transformers class loaded
    default_mean: tuple[float, ...]
    default_std: tuple[float, ...]
    attention_maps: str  # recorded in runs.attention_maps; defined in docs/metrics.md
    # what the run's `attention` (the last stored map) is, in a few words: figure labels
    attention_label: str
    # the transformers classes of the vision tower and its layers that `vision_layers`
    # re-implements (checked against transformers 5.24's modeling files)
    vision_class: str
    layer_class: str

    def load(self, source: str):
        import transformers

        model_class = getattr(transformers, self.model_class, None)
        if model_class is None:
            raise ClipshiftError(
                f"this transformers ({transformers.__version__}) has no {self.model_class}: "
                "upgrade transformers to load this model"
            )
        from .hub import load_pretrained

        # the fast path calls SDPA itself and leaves the model's own attention (the text
        # tower's) at transformers' default, SDPA; the eager path needs eager attention for
        # output_attentions
        eager = attention_path() == "eager"
        model = load_pretrained(
            model_class, source, attn_implementation="eager" if eager else "sdpa"
        )
        if not eager and not self._loop_fits(model):
            model.set_attn_implementation("eager")
        return model

    def load_image_tower(self, config: dict, folder: Path):
        """The checkpoint's image tower alone, built and loaded without transformers (towers.py),
        or None where it does not load that way (then `load` loads the whole model)."""
        from .towers import load_image_tower

        return load_image_tower(self.name, config, folder)

    def _loop_fits(self, model) -> bool:
        """Whether the vision tower is made of the classes `vision_layers` re-implements (a
        subclass or remote code may compute its layers otherwise: that model goes eager)."""
        vision = getattr(model, "vision_model", None)
        layers = getattr(getattr(vision, "encoder", None), "layers", None)
        return (
            type(vision).__name__ == self.vision_class
            and layers is not None
            and all(type(layer).__name__ == self.layer_class for layer in layers)
        )

    def fast_attention(self, model) -> bool:
        """Whether `encode_images` takes the fast path for this model (as loaded by `load` or
        `load_image_tower`, which has no other path)."""
        from .towers import ImageTower

        if isinstance(model, ImageTower):
            return True
        eager = model.vision_model.config._attn_implementation == "eager"
        return not eager and not model.training and self._loop_fits(model)

    def preprocessing(self, processor_config: dict | None) -> Preprocessing:
        if not processor_config:
            return Preprocessing(self.default_mean, self.default_std, "family default")
        return Preprocessing(
            tuple(processor_config.get("image_mean", self.default_mean)),
            tuple(processor_config.get("image_std", self.default_std)),
            "preprocessor_config.json",
            _setting(processor_config, "do_resize", "size"),
            _setting(processor_config, "do_center_crop", "crop_size"),
        )

    def vision_config(self, model):
        return model.config.vision_config

    def embedding_dim(self, model) -> int:
        raise NotImplementedError

    def interpolate(self, model, image_size: int) -> bool:
        """Whether the position embeddings must be interpolated to the S x S input."""
        return image_size != self.vision_config(model).image_size

    def num_maps(self, model) -> int:
        """Attention maps per image: one per layer, plus any pooling head's."""
        return self.vision_config(model).num_hidden_layers

    def layer_probe(self, references: torch.Tensor, keep_hidden: bool) -> LayerProbe:
        """The family's pooled token and patch tokens (docs/metrics.md, layer metrics)."""
        return LayerProbe(references, mean_token, 0, keep_hidden)

    def encode_images(
        self,
        model,
        pixel_values: torch.Tensor,
        interpolate: bool,
        references: torch.Tensor | None = None,
        keep_hidden: bool = False,
    ) -> ImageOutput:
        """The embeddings and the family's attention maps of one batch, in one forward; with
        `references` (each row's original's row index in the batch), its layer metrics too."""
        probe = None if references is None else self.layer_probe(references, keep_hidden)
        if self.fast_attention(model):
            output = self._encode_fast(model, pixel_values, interpolate, probe)
        else:
            output = self._encode_eager(model, pixel_values, interpolate, probe)
        if probe is not None:
            output.layers = probe.result()
        return output

    def _encode_fast(self, model, pixel_values, interpolate, probe) -> ImageOutput:
        raise NotImplementedError

    def _encode_eager(self, model, pixel_values, interpolate, probe) -> ImageOutput:
        raise NotImplementedError

    def tokenize(self, tokenizer, texts: list[str], max_length: int) -> dict:
        tokens = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def encode_text(self, model, tokens: dict) -> torch.Tensor:
        return model.get_text_features(**tokens).pooler_output


class CLIPFamily(Family):
    """CLIPModel checkpoints: OpenAI CLIP, LAION's OpenCLIP conversions, MetaCLIP, ..."""

    name = "clip"
    model_class = "CLIPModel"
    default_mean, default_std = CLIP_MEAN, CLIP_STD
    attention_maps = "cls_row: per layer, the CLS row over the patches, mean over heads"
    attention_label = "last-layer CLS attention"
    vision_class, layer_class = "CLIPVisionModel", "CLIPEncoderLayer"

    def embedding_dim(self, model) -> int:
        return model.config.projection_dim

    def encode_text(self, model, tokens: dict) -> torch.Tensor:
        # CLIP's text tower is causal: the tokens every prompt starts with ("<bos> a photo of
        # a" of the default template) have the same hidden states in every prompt, so they
        # are computed once. For the 1,000 ImageNet prompts that is 5 of 8.7 tokens
        # (benchmarks/zeroshot.py); the result matches get_text_features to float rounding.
        ids = tokens["input_ids"]
        eos = eos_positions(model, ids)
        shared = shared_prefix(ids, tokens["attention_mask"], eos)
        if shared < 2:
            return model.get_text_features(**tokens).pooler_output
        return encode_text_after_prefix(model, ids, eos, shared)

    def layer_probe(self, references, keep_hidden):
        return LayerProbe(references, cls_token, 1, keep_hidden)

    def _encode_fast(self, model, pixel_values, interpolate, probe):
        vision = model.vision_model
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        hidden, maps = vision_layers(
            vision.encoder.layers, vision.pre_layrnorm(hidden), attend_cls_row, probe
        )
        embeddings = model.visual_projection(vision.post_layernorm(hidden[:, 0, :]))
        return ImageOutput(embeddings, torch.stack(maps, 1))

    def _encode_eager(self, model, pixel_values, interpolate, probe):
        outputs = model.vision_model(
            pixel_values=pixel_values,
            output_attentions=True,
            output_hidden_states=probe is not None,
            interpolate_pos_encoding=interpolate,
        )
        embeddings = model.visual_projection(outputs.pooler_output)
        if probe is not None:
            for hidden in outputs.hidden_states:
                probe.observe(hidden)
        # each layer: (N, heads, 1 + g*g, 1 + g*g) -> CLS row over the patch tokens
        maps = torch.stack([layer[:, :, 0, 1:].mean(dim=1) for layer in outputs.attentions], 1)
        return ImageOutput(embeddings, maps)


def eos_positions(model, ids: torch.Tensor) -> torch.Tensor:
    """The position CLIPTextModel pools in each row, by its own rule: the highest token id for
    configs from before the eos fix (eos_token_id 2), else the first eos token."""
    eos = model.text_model.eos_token_id
    if eos == 2:
        return ids.to(torch.int).argmax(dim=-1)
    return (ids.to(torch.int) == eos).int().argmax(dim=-1)


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor, eos: torch.Tensor) -> int:
    """How many leading tokens every row has in common, short of any row's pooled token."""
    same = ((ids == ids[:1]) & (mask == 1)).all(dim=0)
    differs = torch.nonzero(~same)
    common = int(differs[0, 0]) if len(differs) else ids.shape[1]
    return min(common, int(eos.min()))


def encode_text_after_prefix(
    model, ids: torch.Tensor, eos: torch.Tensor, shared: int
) -> torch.Tensor:
    """CLIPModel.get_text_features(ids) where the first `shared` tokens of every row are the
    same: they go through the layers once, and the rest of each row attends to their keys
    and values. Each layer is CLIPEncoderLayer's computation, with eager attention; each row
    is pooled at its `eos` position (`eos_positions`)."""
    text = model.text_model
    embeddings = text.embeddings
    positions = embeddings.position_ids[:, : ids.shape[1]]
    hidden = embeddings(input_ids=ids[:, shared:], position_ids=positions[:, shared:])
    prefix = embeddings(input_ids=ids[:1, :shared], position_ids=positions[:, :shared])
    rows, length = hidden.shape[:2]
    # a suffix query sees every prefix key, and the suffix keys up to itself (the padding of a
    # row lies after its pooled token, which therefore never sees it)
    like = {"dtype": hidden.dtype, "device": hidden.device}
    causal = torch.full((length, length), float("-inf"), **like).triu(1)
    suffix_mask = torch.cat([torch.zeros(length, shared, **like), causal], dim=1)
    prefix_mask = torch.full((shared, shared), float("-inf"), **like).triu(1)
    for layer in text.encoder.layers:
        attention = layer.self_attn
        normed = layer.layer_norm1(prefix)
        prefix_k = _heads(attention.k_proj(normed), attention)
        prefix_v = _heads(attention.v_proj(normed), attention)
        prefix_query = _heads(attention.q_proj(normed), attention)
        next_prefix = _attend(layer, prefix_query, prefix_k, prefix_v, prefix_mask, prefix)
        normed = layer.layer_norm1(hidden)
        keys = torch.cat(
            [prefix_k.expand(rows, -1, -1, -1), _heads(attention.k_proj(normed), attention)], 2
        )
        values = torch.cat(
            [prefix_v.expand(rows, -1, -1, -1), _heads(attention.v_proj(normed), attention)], 2
        )
        query = _heads(attention.q_proj(normed), attention)
        hidden = _attend(layer, query, keys, values, suffix_mask, hidden)
        prefix = next_prefix
    pooled = text.final_layer_norm(hidden[torch.arange(rows), eos - shared])
    return model.text_projection(pooled)


def _heads(x: torch.Tensor, attention) -> torch.Tensor:
    """(B, T, D) -> (B, heads, T, head_dim)"""
    return x.view(*x.shape[:2], attention.num_heads, attention.head_dim).transpose(1, 2)


def _attend(layer, query, keys, values, mask, residual: torch.Tensor) -> torch.Tensor:
    """The rest of a CLIPEncoderLayer once its queries, keys and values are known."""
    attention = layer.self_attn
    scores = torch.matmul(query, keys.transpose(-1, -2)) * attention.scale + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, values).transpose(1, 2).reshape(residual.shape)
    x = residual + attention.out_proj(out)
    return x + layer.mlp(layer.layer_norm2(x))


def vision_layers(
    layers,
    hidden: torch.Tensor,
    attend: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    probe: LayerProbe | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The vision tower's encoder layers (CLIPEncoderLayer's computation, which SigLIP's and
    SigLIP 2's layers share: pre-norm attention, then a pre-norm MLP, each added back; no
    dropout in eval) over `hidden`, with no attention mask (every token of clipshift's S x S
    images is real). `attend(query, keys, values, scale)` gives each layer's attention output
    and the map stored for that layer, from the same queries and keys: the (heads x T x T)
    weights are never kept. `probe` (layer metrics) sees the input and each layer's output.
    Returns the last hidden states and the maps, one a layer."""
    maps = []
    if probe is not None:
        probe.observe(hidden)
    for layer in layers:
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        query = _heads(attention.q_proj(normed), attention)
        keys = _heads(attention.k_proj(normed), attention)
        values = _heads(attention.v_proj(normed), attention)
        out, attention_map = attend(query, keys, values, attention.scale)
        maps.append(attention_map)
        hidden = hidden + attention.out_proj(out.transpose(1, 2).reshape(hidden.shape))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        if probe is not None:
            probe.observe(hidden)
    return hidden, maps


def attend_cls_row(query, keys, values, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's output, and (N, g*g): the CLS token's attention weights over the patch tokens,
    mean over heads (one row of scores a head, the softmax in float32 as transformers' eager
    attention does)."""
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=scale)
    scores = torch.matmul(query[:, :, :1], keys.transpose(-1, -2)) * scale
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return out, weights[:, :, 0, 1:].mean(dim=1)


def attend_received(query, keys, values, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output, and (N, T): the attention each token receives, mean over heads
    and queries, i.e. the column means of the full softmax matrices. Every score is needed,
    so they are computed once, RECEIVED_BLOCK queries at a time: each block's weights give
    its output rows and its share of the column sums, and are dropped. (SDPA for the output
    plus a second pass for the sums cost about as much as this on a 2-core CPU, at 196 and
    577 tokens: the scores twice instead of once.)"""
    heads, length = query.shape[1], query.shape[2]
    outputs, total = [], None
    for start in range(0, length, RECEIVED_BLOCK):
        scores = torch.matmul(query[:, :, start : start + RECEIVED_BLOCK], keys.transpose(-1, -2))
        weights = torch.softmax(scores * scale, dim=-1, dtype=torch.float32)
        outputs.append(torch.matmul(weights.to(query.dtype), values))
        block = weights.sum(dim=2)
        total = block if total is None else total + block
    return torch.cat(outputs, dim=2), (total.sum(dim=1) / (heads * length)).to(query.dtype)


class SiglipFamily(Family):
    """SiglipModel: no CLS token; the embedding is the attention-pooling head's output."""

    name = "siglip"
    model_class = "SiglipModel"
    default_mean, default_std = SIGLIP_MEAN, SIGLIP_STD
    attention_maps = (
        "received+probe: per layer, the attention each patch receives, mean over heads and "
        "query tokens; last map: the pooling head's probe over the patches, mean over heads"
    )
    attention_label = "pooling-head probe attention"
    vision_class, layer_class = "SiglipVisionModel", "SiglipEncoderLayer"

    def embedding_dim(self, model) -> int:
        return self.vision_config(model).hidden_size

    def num_maps(self, model) -> int:
        return self.vision_config(model).num_hidden_layers + 1

    def load(self, source: str):
        model = super().load(source)
        if not getattr(model.vision_model, "use_head", False):
            raise ClipshiftError(
                f"{source}: this {self.model_class} has no attention-pooling head "
                "(vision_use_head false), so it has no image embedding to store"
            )
        return model

    def _vision_inputs(self, model, pixel_values, interpolate) -> dict:
        return {"pixel_values": pixel_values, "interpolate_pos_encoding": interpolate}

    def _encode_fast(self, model, pixel_values, interpolate, probe):
        vision = model.vision_model
        inputs = self._vision_inputs(model, pixel_values, interpolate)
        hidden, maps = vision_layers(
            vision.encoder.layers, self._embed(vision, inputs), attend_received, probe
        )
        hidden = vision.post_layernorm(hidden)
        pooled, probe_map = self._pool(vision, hidden, inputs)
        if probe is not None:
            probe.head(pooled)
        return ImageOutput(pooled, torch.stack([*maps, probe_map], 1))

    def _embed(self, vision, inputs: dict) -> torch.Tensor:
        return vision.embeddings(
            inputs["pixel_values"], interpolate_pos_encoding=inputs["interpolate_pos_encoding"]
        )

    def _pool(self, vision, hidden: torch.Tensor, inputs: dict) -> tuple:
        return self._probed(lambda: vision.head(hidden), vision)

    def _probed(self, forward: Callable, vision) -> tuple:
        """`forward()`'s output and the pooling head's probe map (N, g*g) from that forward:
        the head discards nn.MultiheadAttention's weights (averaged over heads by default), a
        hook keeps them."""
        probe: list[torch.Tensor] = []
        hook = vision.head.attention.register_forward_hook(
            lambda _module, _inputs, output: probe.append(output[1])
        )
        try:
            output = forward()
        finally:
            hook.remove()
        if not probe or probe[0] is None:
            raise RuntimeError("the pooling head returned no attention weights")
        return output, probe[0][:, 0, :]  # (N, 1, g*g) -> (N, g*g)

    def _encode_eager(self, model, pixel_values, interpolate, probe):
        vision = model.vision_model
        inputs = self._vision_inputs(model, pixel_values, interpolate)
        outputs, probe_map = self._probed(
            lambda: vision(
                **inputs, output_attentions=True, output_hidden_states=probe is not None
            ),
            vision,
        )
        # each layer: (N, heads, g*g, g*g) -> mean over heads and queries: what each key receives
        maps = [layer.mean(dim=(1, 2)) for layer in outputs.attentions]
        if probe is not None:
            for hidden in outputs.hidden_states:
                probe.observe(hidden)
            probe.head(outputs.pooler_output)
        return ImageOutput(outputs.pooler_output, torch.stack([*maps, probe_map], 1))

    def tokenize(self, tokenizer, texts, max_length):
        # SigLIP was trained on texts padded to max_length and pools the last token, without
        # an attention mask: its processor returns input_ids only
        tokens = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"]}


class Siglip2Family(SiglipFamily):
    """Siglip2Model (NaFlex): takes patch sequences with their grid shape. clipshift patchifies
    the S x S image itself, the way Siglip2ImageProcessor does, into a (S/p) x (S/p) grid."""

    name = "siglip2"
    model_class = "Siglip2Model"
    vision_class, layer_class = "Siglip2VisionModel", "Siglip2EncoderLayer"

    def tokenize(self, tokenizer, texts, max_length):
        # as Siglip2Processor: padded to max_length, with the tokenizer's attention mask
        tokens = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {k: tokens[k] for k in ("input_ids", "attention_mask") if k in tokens}

    def load_image_tower(self, config: dict, folder: Path):
        return None  # NaFlex's embeddings resize their positions per input: transformers'

    def interpolate(self, model, image_size: int) -> bool:
        return False  # NaFlex resizes its position embeddings to every input grid itself

    def _vision_inputs(self, model, pixel_values, interpolate):
        n, channels, height, width = pixel_values.shape
        p = self.vision_config(model).patch_size
        rows, cols = height // p, width // p
        # (N, C, H, W) -> (N, rows*cols, p*p*C), patch pixels in (y, x, channel) order
        patches = pixel_values.reshape(n, channels, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(n, rows * cols, p * p * channels)
        return {
            "pixel_values": patches,
            "pixel_attention_mask": torch.ones(
                n, rows * cols, dtype=torch.long, device=pixel_values.device
            ),
            "spatial_shapes": torch.tensor([[rows, cols]] * n, device=pixel_values.device),
        }

    def _embed(self, vision, inputs):
        # every patch is real (the full grid): the encoder's attention mask masks nothing
        return vision.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])

    def _pool(self, vision, hidden, inputs):
        return self._probed(lambda: vision.head(hidden, inputs["pixel_attention_mask"]), vision)


FAMILIES: dict[str, Family] = {f.name: f for f in (CLIPFamily(), SiglipFamily(), Siglip2Family())}


def family_of(model_type: str | None, model_name: str) -> Family:
    """The adapter for a config's `model_type`; a clear error for any other model."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise ClipshiftError(
        f"{model_name} is a {model_type or 'model of unknown type'!r} checkpoint: clipshift "
        f"loads the families {', '.join(FAMILIES)} (config.json model_type)"
    )


def _setting(config: dict, flag: str, key: str) -> dict | None:
    if not config.get(flag, True) or key not in config:
        return None
    value = config[key]
    return value if isinstance(value, dict) else {"size": value}
