"""The fast image forward (clipshift's layer loop with SDPA, only the stored attention rows
computed) against transformers' eager forward (CLIPSHIFT_ATTENTION=eager): the same maps
within 1e-5 and the same embeddings within 1e-6 in fp32, for each family, at the model's
size and at another --image-size (interpolated positions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_siglip

from cli import cli
from clipshift import families
from clipshift.encoder import Encoder
from clipshift.families import ATTENTION_ENV, CLIPFamily

# 224 px: the tiny models' own size (7 x 7 patches); 288 px: 9 x 9 patches, so CLIP and SigLIP
# interpolate their position embeddings and SigLIP 2 resizes its own
SIZES = (224, 288)


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip-fast"))


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Siglip2Model"):
        pytest.skip("this transformers has no Siglip2Model")
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(2)
    layers = dict(intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    config = Siglip2Config(
        text_config=dict(hidden_size=20, vocab_size=6, max_position_embeddings=16, **layers),
        vision_config=dict(hidden_size=20, patch_size=32, num_patches=16, **layers),
    )
    path = tmp_path_factory.mktemp("tiny-siglip2-fast")
    Siglip2Model(config).eval().save_pretrained(path)
    return path


def both_paths(model_dir, image_size: int, monkeypatch) -> tuple[Encoder, Encoder]:
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    fast = Encoder(str(model_dir), device="cpu", image_size=image_size)
    monkeypatch.setenv(ATTENTION_ENV, "eager")
    eager = Encoder(str(model_dir), device="cpu", image_size=image_size)
    monkeypatch.delenv(ATTENTION_ENV)
    return fast, eager


def photos_at(size: int) -> np.ndarray:
    from skimage import data
    from skimage.transform import resize

    images = [data.astronaut(), data.chelsea(), data.coffee()]
    return np.stack(
        [(resize(i, (size, size), anti_aliasing=True) * 255).astype(np.uint8) for i in images]
    )


def assert_same_outputs(fast: Encoder, eager: Encoder, images: np.ndarray) -> None:
    assert fast.family.fast_attention(fast.model)
    assert not eager.family.fast_attention(eager.model)
    a, b = fast.encode(images), eager.encode(images)
    maps = (len(images), fast.num_layers, fast.patch_grid**2)
    assert a.attention.shape == b.attention.shape == maps
    np.testing.assert_allclose(a.attention, b.attention, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_size", SIZES)
def test_clip_fast_path_equals_eager(tiny_model, image_size, monkeypatch):
    fast, eager = both_paths(tiny_model, image_size, monkeypatch)
    assert fast.preprocessing_json() == eager.preprocessing_json()
    assert_same_outputs(fast, eager, photos_at(image_size))


@pytest.mark.parametrize("image_size", SIZES)
def test_siglip_fast_path_equals_eager(tiny_siglip, image_size, monkeypatch):
    fast, eager = both_paths(tiny_siglip, image_size, monkeypatch)
    assert_same_outputs(fast, eager, photos_at(image_size))


def test_siglip_received_attention_in_blocks_of_queries(tiny_siglip, monkeypatch):
    """81 tokens in blocks of 16 queries (the last one short): the column sums add up."""
    monkeypatch.setattr(families, "RECEIVED_BLOCK", 16)
    fast, eager = both_paths(tiny_siglip, 288, monkeypatch)
    assert_same_outputs(fast, eager, photos_at(288))


@pytest.mark.parametrize("image_size", SIZES)
def test_siglip2_fast_path_equals_eager(tiny_siglip2, image_size, monkeypatch):
    fast, eager = both_paths(tiny_siglip2, image_size, monkeypatch)
    assert fast.family.name == "siglip2"
    assert_same_outputs(fast, eager, photos_at(image_size))


def test_the_eager_variable_loads_eager_attention(tiny_model, monkeypatch):
    monkeypatch.setenv(ATTENTION_ENV, "EAGER ")
    encoder = Encoder(str(tiny_model), device="cpu")
    assert encoder.model.vision_model.config._attn_implementation == "eager"
    assert not encoder.family.fast_attention(encoder.model)
    monkeypatch.setenv(ATTENTION_ENV, "fast")
    encoder = Encoder(str(tiny_model), device="cpu")
    assert encoder.family.fast_attention(encoder.model)  # the image tower (towers.py)
    encoder = Encoder(str(tiny_model), device="cpu", text=True)
    assert encoder.model.vision_model.config._attn_implementation == "sdpa"
    assert encoder.family.fast_attention(encoder.model)


def test_layers_the_loop_does_not_know_go_eager(tiny_model, monkeypatch):
    """A model whose vision layers are other classes than the loop re-implements (a subclass,
    remote code) is switched to eager attention at load, and encoded by the eager path."""
    monkeypatch.delenv(ATTENTION_ENV, raising=False)

    class Unproven(CLIPFamily):
        layer_class = "SomeOtherEncoderLayer"

    family = Unproven()
    model = family.load(str(tiny_model)).eval()
    assert model.vision_model.config._attn_implementation == "eager"
    assert not family.fast_attention(model)
    reference = Encoder(str(tiny_model), device="cpu")
    pixels = reference.pixel_values(photos_at(224))
    with torch.inference_mode():
        got = family.encode_images(model, pixels, interpolate=False)
        expected = reference.family.encode_images(reference.model, pixels, interpolate=False)
    np.testing.assert_allclose(got.attention.numpy(), expected.attention.numpy(), atol=1e-5)


def test_an_unknown_attention_path_is_a_one_line_error(tiny_model, photos, tmp_path):
    db = tmp_path / "db"
    out = CliRunner().invoke(
        cli,
        ["ingest", str(photos), "--db", str(db), "--model", str(tiny_model)],
        env={ATTENTION_ENV: "flash"},
    )
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.strip().count("\n") == 0
    assert f"{ATTENTION_ENV}='flash'" in out.output and "fast, eager" in out.output
    assert not db.exists()
