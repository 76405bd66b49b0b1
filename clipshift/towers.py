"""Image towers that clipshift builds and loads itself, without transformers' modeling code.

An image forward needs only a checkpoint's vision tower, whose layers clipshift runs in its
own loop anyway (`families.vision_layers`). Loading it through transformers' CLIPModel
imported `transformers.modeling_utils` (torch.distributed, torch._dynamo, SymPy,
scipy.optimize: 3 s of the 4.6 s import of CLIP's modeling file on this 2-core machine) and
built the text tower as well. The modules here carry transformers' parameter names, so the
checkpoint's safetensors load into them as they are, the vision tensors only,
memory-mapped. `benchmarks/fixed_cost.py` measures what that saves (README, Benchmarks).

A checkpoint loads here only where it matches key for key and shape for shape, with a
config and an activation these modules know; anything else (a .bin file, another layout,
SigLIP 2's NaFlex embeddings, a model not cached yet) returns None and loads through
transformers, as do the text tower and the eager attention path. tests/test_towers.py holds
every output equal to transformers' model within float rounding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# transformers 5.24's ACT2FN entries that these towers compute, by config name
ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": nn.functional.gelu,
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    ),
}

# CLIPVisionConfig's and SiglipVisionConfig's defaults (transformers 5.24), for the keys a
# config.json saved with only its differences leaves out (tests/test_towers.py checks them)
VISION_DEFAULTS = {
    "clip": {"patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "siglip": {"patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
}
COMMON_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
}
CLIP_PROJECTION_DIM = 512  # CLIPConfig's default projection_dim


@dataclass(frozen=True)
class VisionConfig:
    """The vision_config fields a tower is built from (the names of transformers' config)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    vision_use_head: bool = True


@dataclass(frozen=True)
class TowerConfig:
    """What the family adapters read from `model.config`, as from a transformers model."""

    vision_config: VisionConfig
    projection_dim: int | None = None
    _commit_hash: str | None = None  # the hub commit of a cached checkpoint


class Attention(nn.Module):
    """The projections of a layer's self-attention; `vision_layers` computes the attention."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.scale = self.head_dim**-0.5
        self.k_proj, self.v_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.q_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)


class MLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.activation_fn = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden)))


class EncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


class PositionTable(nn.Module):
    """nn.Embedding's table alone: the embeddings add it whole, and nn.Embedding's random
    initialisation on the meta device imports torch._dynamo (1.2 s here)."""

    def __init__(self, positions: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(positions, width))


class PatchEmbeddings(nn.Module):
    """Patches and position embeddings, with or without a class token (CLIP / SigLIP)."""

    def __init__(self, config: VisionConfig, class_token: bool):
        super().__init__()
        width, self.patch_size = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        if class_token:
            self.class_embedding = nn.Parameter(torch.empty(width))
        else:
            self.class_embedding = None
        self.patch_embedding = nn.Conv2d(
            config.num_channels, width, self.patch_size, self.patch_size, bias=not class_token
        )
        positions = (self.image_size // self.patch_size) ** 2 + int(class_token)
        self.position_embedding = PositionTable(positions, width)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        n, _, height, width = pixel_values.shape
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            patches = torch.cat([self.class_embedding.expand(n, 1, -1), patches], dim=1)
        return patches + self._positions(patches.shape[1], height, width, interpolate_pos_encoding)

    def _positions(self, tokens: int, height: int, width: int, interpolate: bool):
        """transformers' interpolate_pos_encoding: the patch positions resized bicubically to
        the input's grid; the class token's kept."""
        table = self.position_embedding.weight.unsqueeze(0)
        if not interpolate or (tokens == table.shape[1] and height == width):
            return table
        first = int(self.class_embedding is not None)
        side, dim = int((table.shape[1] - first) ** 0.5), table.shape[-1]
        grid = table[:, first:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            grid,
            size=(height // self.patch_size, width // self.patch_size),
            mode="bicubic",
            align_corners=False,
        )
        return torch.cat([table[:, :first], grid.permute(0, 2, 3, 1).view(1, -1, dim)], dim=1)


class PoolingHead(nn.Module):
    """SigLIP's attention-pooling head: a learned probe attends over the patch tokens."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        width = config.hidden_size
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = nn.MultiheadAttention(width, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        probe = self.probe.repeat(hidden.shape[0], 1, 1)
        pooled = self.attention(probe, hidden, hidden)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class VisionModel(nn.Module):
    """CLIPVisionTransformer's and SiglipVisionTransformer's parameters, by their names."""

    def __init__(self, config: VisionConfig, family: str):
        super().__init__()
        clip = family == "clip"
        self.config = config
        self.embeddings = PatchEmbeddings(config, class_token=clip)
        if clip:  # (sic: transformers' name)
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = not clip
        if not clip:
            self.head = PoolingHead(config)


class ImageTower(nn.Module):
    """A checkpoint's image tower: `vision_model`, and for CLIP `visual_projection`."""

    def __init__(self, config: TowerConfig, family: str):
        super().__init__()
        self.config = config
        self.vision_model = VisionModel(config.vision_config, family)
        if family == "clip":
            self.visual_projection = nn.Linear(
                config.vision_config.hidden_size, config.projection_dim, bias=False
            )


def load_image_tower(family: str, config: dict, folder: Path) -> ImageTower | None:
    """The image tower of the checkpoint in `folder` (a local model folder or a hub cache
    snapshot) whose config.json is `config`, or None where it does not load here (see the
    module's docstring)."""
    tower_config = _tower_config(family, config, folder)
    files = _safetensors(folder)
    if tower_config is None or files is None:
        return None
    from safetensors import safe_open

    prefixes = ("vision_model.", "visual_projection.")
    tensors: dict[str, torch.Tensor] = {}
    try:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as weights:
                for key in weights.keys():
                    if key.startswith(prefixes) and not key.endswith("position_ids"):
                        tensors[key] = weights.get_tensor(key)
    except (OSError, ValueError, RuntimeError):
        return None
    # built without memory (the meta device), then handed the checkpoint's tensors: no
    # random initialisation of weights that are about to be replaced
    with torch.device("meta"):
        tower = ImageTower(tower_config, family)
    try:
        tower.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError:  # a key missing, one too many or a shape that differs
        return None
    return tower.eval()


def _tower_config(family: str, config: dict, folder: Path) -> TowerConfig | None:
    """The tower's config as transformers would read config.json, or None where unsure."""
    vision = config.get("vision_config")
    if family not in VISION_DEFAULTS or not isinstance(vision, dict):
        return None
    defaults = {**COMMON_DEFAULTS, **VISION_DEFAULTS[family]}
    fields = {**defaults, **vision}
    legacy = config.get("vision_config_dict") if family == "clip" else None
    if legacy is not None:
        if not isinstance(legacy, dict):
            return None
        # CLIPConfig's older key (early LAION conversions): transformers completes it with
        # the defaults and lays the result over vision_config, so a default wins there too
        fields = {**vision, **defaults, **legacy}
    if fields["hidden_act"] not in ACTIVATIONS or fields.get("vision_use_head") is False:
        return None
    names = VisionConfig.__dataclass_fields__
    vision_config = VisionConfig(**{k: v for k, v in fields.items() if k in names})
    if vision_config.hidden_size % vision_config.num_attention_heads:
        return None
    projection = config.get("projection_dim", CLIP_PROJECTION_DIM) if family == "clip" else None
    commit = folder.name if folder.parent.name == "snapshots" else None
    return TowerConfig(vision_config, projection, commit)


def _safetensors(folder: Path) -> list[Path] | None:
    """The checkpoint's safetensors files (one, or the shards its index names), or None."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        return None
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    paths = [folder / shard for shard in shards]
    return paths if all(path.is_file() for path in paths) else None
