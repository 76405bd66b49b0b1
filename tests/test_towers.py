"""The image towers clipshift loads without transformers' modeling code (towers.py): the same
outputs as the transformers model they stand in for, the same run, and transformers' load
for every checkpoint they do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_siglip
from safetensors.torch import load_file, save_file
from test_attention_fast_path import SIZES, photos_at

from clipshift import towers
from clipshift.encoder import Encoder
from clipshift.towers import ImageTower, load_image_tower


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip-tower"))


def assert_same_encoding(tower: Encoder, whole: Encoder, images: np.ndarray) -> None:
    assert isinstance(tower.model, ImageTower)
    assert not isinstance(whole.model, ImageTower)
    assert tower.run_fields() == whole.run_fields()
    references = np.zeros(len(images), np.int64)  # every row compared with the first
    a, b = tower.encode(images, references), whole.encode(images, references)
    for field in ("embeddings", "attention", "layer_cosine", "token_drift"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_size", SIZES)
def test_clip_tower_equals_the_transformers_model(tiny_model, image_size):
    tower = Encoder(str(tiny_model), device="cpu", image_size=image_size)
    whole = Encoder(str(tiny_model), device="cpu", image_size=image_size, text=True)
    assert_same_encoding(tower, whole, photos_at(image_size))


@pytest.mark.parametrize("image_size", SIZES)
def test_siglip_tower_equals_the_transformers_model(tiny_siglip, image_size):
    tower = Encoder(str(tiny_siglip), device="cpu", image_size=image_size)
    whole = Encoder(str(tiny_siglip), device="cpu", image_size=image_size, text=True)
    assert_same_encoding(tower, whole, photos_at(image_size))


def test_a_sharded_checkpoint_loads_as_a_tower(tmp_path, tiny_model):
    from transformers import CLIPModel

    CLIPModel.from_pretrained(tiny_model).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    tower = Encoder(str(tmp_path), device="cpu")
    whole = Encoder(str(tmp_path), device="cpu", text=True)
    assert_same_encoding(tower, whole, photos_at(224))


def test_the_defaults_are_transformers_config_defaults():
    """A config.json saved with only its differences from the defaults leaves them out."""
    from transformers import CLIPConfig, CLIPVisionConfig, SiglipVisionConfig

    for family, config in (("clip", CLIPVisionConfig()), ("siglip", SiglipVisionConfig())):
        defaults = {**towers.COMMON_DEFAULTS, **towers.VISION_DEFAULTS[family]}
        assert {name: getattr(config, name) for name in defaults} == defaults
    assert CLIPConfig().projection_dim == towers.CLIP_PROJECTION_DIM


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_checkpoints_the_towers_do_not_fit_load_through_transformers(tmp_path, tiny_model):
    # a key missing
    missing = copy_model(tiny_model, tmp_path / "missing")
    weights = load_file(missing / "model.safetensors")
    del weights["vision_model.post_layernorm.bias"]
    save_file(weights, missing / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((missing / "config.json").read_text())
    assert load_image_tower("clip", config, missing) is None
    # an activation the towers do not compute (one transformers knows)
    relu = copy_model(tiny_model, tmp_path / "relu")
    config["vision_config"]["hidden_act"] = "relu"
    (relu / "config.json").write_text(json.dumps(config))
    assert load_image_tower("clip", config, relu) is None
    assert not isinstance(Encoder(str(relu), device="cpu").model, ImageTower)
    # weights in PyTorch's pickle format only
    from transformers import CLIPModel

    pickled = tmp_path / "pickled"
    CLIPModel.from_pretrained(tiny_model).save_pretrained(pickled, safe_serialization=False)
    if not (pickled / "model.safetensors").exists():
        encoder = Encoder(str(pickled), device="cpu")
        assert not isinstance(encoder.model, ImageTower)
        assert encoder.encode(photos_at(224)[:1]).embeddings.shape == (1, 16)


def test_vision_config_dict_is_read_as_transformers_reads_it(tmp_path, tiny_model):
    """CLIPConfig lays `vision_config_dict`, completed by the defaults, over `vision_config`:
    here its activation, gelu, is the model's, not vision_config's quick_gelu."""
    legacy = copy_model(tiny_model, tmp_path / "legacy")
    config = json.loads((legacy / "config.json").read_text())
    config["vision_config_dict"] = {**config["vision_config"], "hidden_act": "gelu"}
    config["vision_config"]["hidden_act"] = "quick_gelu"
    (legacy / "config.json").write_text(json.dumps(config))
    tower = Encoder(str(legacy), device="cpu")
    whole = Encoder(str(legacy), device="cpu", text=True)
    assert whole.model.config.vision_config.hidden_act == "gelu"
    assert_same_encoding(tower, whole, photos_at(224))
    plain = Encoder(str(tiny_model), device="cpu").encode(photos_at(224)[:1]).embeddings
    assert np.abs(tower.encode(photos_at(224)[:1]).embeddings - plain).max() > 1e-4


def test_a_cached_hub_model_loads_as_a_tower_named_by_its_commit(tmp_path, tiny_model, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-clip"
    copy_model(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    encoder = Encoder("someone/tiny-clip", device="cpu")
    assert isinstance(encoder.model, ImageTower)
    assert encoder.revision == commit


def test_text_after_images_loads_the_whole_model(tiny_text_model):
    encoder = Encoder(str(tiny_text_model), device="cpu")
    assert isinstance(encoder.model, ImageTower)
    texts = ["a photo of noise", "a photo of blur"]
    expected = Encoder(str(tiny_text_model), device="cpu", text=True).encode_text(texts)
    np.testing.assert_allclose(encoder.encode_text(texts), expected, rtol=0, atol=1e-6)
