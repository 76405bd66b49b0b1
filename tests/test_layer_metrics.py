"""The layer metrics (layer_cosine, token_drift_layers, hidden_states) against a computation
from transformers' own output_hidden_states on the same pixels (numpy, float64), on the fast
path and the eager fallback, for CLIP and SigLIP; and what ingest stores of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_siglip
from test_attention_fast_path import photos_at

from clipshift.encoder import Encoder
from clipshift.families import ATTENTION_ENV
from clipshift.store import Store


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip-layers"))


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Two images, each original followed by two variants (flipped, darkened)."""
    rows, references = [], []
    for image in photos_at(224)[:2]:
        first = len(rows)
        rows += [image, image[:, ::-1], (image * 0.6).astype(np.uint8)]
        references += [first] * 3
    return np.stack(rows), np.array(references)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def expected(encoder: Encoder, images: np.ndarray, references: np.ndarray, family: str):
    """layer_cosine, token_drift_layers and pooled hidden states from transformers' forward."""
    vision = encoder.whole_model.vision_model  # transformers' own
    pixels = encoder.pixel_values(images)
    with torch.no_grad():
        out = vision(pixel_values=pixels, output_hidden_states=True)
    hidden = [h.numpy() for h in out.hidden_states]
    first = 1 if family == "clip" else 0
    pooled = [h[:, 0] if family == "clip" else h.mean(1) for h in hidden]
    cosines = [cosine(p, p[references]) for p in pooled]
    if family != "clip":
        head = out.pooler_output.numpy()
        cosines.append(cosine(head, head[references]))
    drift = [1 - cosine(h[:, first:], h[references][:, first:]) for h in hidden[1:]]
    return np.stack(cosines, 1), np.stack(drift, 1), np.stack(pooled, 1)


@pytest.mark.parametrize("path", ["fast", "eager"])
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_layer_metrics_equal_transformers_hidden_states(
    family, path, tiny_model, tiny_siglip, monkeypatch
):
    monkeypatch.setenv(ATTENTION_ENV, path)
    model = tiny_model if family == "clip" else tiny_siglip
    encoder = Encoder(str(model), device="cpu", hidden_states=True)
    images, references = batch()
    got = encoder.encode(images, references)
    cosines, drift, pooled = expected(encoder, images, references, family)
    layers = encoder.model.config.vision_config.num_hidden_layers
    assert got.layer_cosine.shape == (len(images), layers + (1 if family == "clip" else 2))
    assert got.token_drift.shape == (len(images), layers, encoder.patch_grid**2)
    np.testing.assert_allclose(got.layer_cosine, cosines, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.token_drift, drift, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.hidden_states, pooled, rtol=1e-3, atol=1e-3)
    assert got.hidden_states.dtype == np.float16
    # an original's rows hold the trivial values exactly
    originals = references == np.arange(len(references))
    assert (got.layer_cosine[originals] == 1).all() and (got.token_drift[originals] == 0).all()


def test_no_references_computes_no_layer_metrics(tiny_model):
    encoded = Encoder(str(tiny_model), device="cpu").encode(photos_at(224)[:1])
    assert encoded.layer_cosine is None and encoded.hidden_states is None


def test_ingest_stores_layer_metrics(ingested_store):
    store = Store.open(ingested_store)
    (name,) = store.variants_tables()
    rows = store.dataset(name).to_table().to_pylist()
    run = store.dataset("runs").to_table().to_pylist()[0]
    cells, layers = run["patch_grid"] ** 2, run["num_layers"]
    for row in rows:
        assert len(row["layer_cosine"]) == layers + 1
        assert len(row["token_drift_layers"]) == layers * cells
        assert row["token_drift"] == row["token_drift_layers"][-cells:]
        assert row["hidden_states"] is None  # off by default
        if row["variant"] == "original":
            assert set(row["layer_cosine"]) == {1.0} and set(row["token_drift"]) == {0.0}
