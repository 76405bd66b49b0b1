"""Shared fixtures: a tiny random CLIP saved to disk, real photos, and a real store."""

from __future__ import annotations

import os
import socket
import urllib.request

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "logo")


def make_tiny_clip(
    path: Path, image_size: int = 224, patch_size: int = 32, tokenizer: bool = False
) -> Path:
    """A random CLIP with small hidden sizes, saved with save_pretrained; with `tokenizer`, a
    tiny byte-level tokenizer beside it whose bos/eos/pad ids are the text config's."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=1000,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(path)
    if tokenizer:
        from clipshift.defaults import AUGMENTATION_NAMES
        from clipshift.suites import prompt_for
        from clipshift.synthetic import save_tiny_tokenizer

        # the words of the paper's prompts as single tokens, so that every prompt the tests
        # embed fits the tiny model's 32 positions (other words go byte by byte)
        words = {w for name in AUGMENTATION_NAMES for w in prompt_for("paper", name).split()}
        save_tiny_tokenizer(path, sorted(words))
    return path


# pad, eos and unknown: ids 0, 1 and 2 of every tiny word-level vocabulary
SPECIAL_WORDS = ("<pad>", "</s>", "<unk>")


def save_word_tokenizer(path: Path, words: list[str]) -> None:
    """A word-level tokenizer (tokenizers library) saved as tokenizer.json beside a model."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)


def make_tiny_siglip(path: Path, image_size: int = 224, patch_size: int = 32) -> Path:
    """A random SigLIP (24-d embeddings: not the tiny CLIP's 16) with its processor config and
    a tiny word-level tokenizer (tokenizers library, tokenizer.json) whose pad and eos tokens
    are inside its vocabulary, as the text config's ids say."""
    import json

    import torch
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    words = [
        *SPECIAL_WORDS,
        *"a an the photo of blurry cat dog rocket coffee astronaut camera logo".split(),
    ]
    vocab = {word: i for i, word in enumerate(words)}
    layers = dict(intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipConfig(
        text_config=dict(
            hidden_size=24,
            vocab_size=len(vocab),
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            **layers,
        ),
        vision_config=dict(hidden_size=24, image_size=image_size, patch_size=patch_size, **layers),
    )
    SiglipModel(config).eval().save_pretrained(path)
    save_word_tokenizer(path, words)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "SiglipImageProcessor",
                "do_resize": True,
                "size": {"height": image_size, "width": image_size},
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "rescale_factor": 1 / 255,
            }
        )
    )
    return path


def direct_text_embeddings(model_dir, texts) -> np.ndarray:
    """Text embeddings straight from transformers (no clipshift code): the projected pooled
    output at each text's end-of-text token."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir))
    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    tokens = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.text_model(**tokens).last_hidden_state
        ends = (tokens["input_ids"] == tokenizer.eos_token_id).int().argmax(dim=1)
        pooled = hidden[torch.arange(len(texts)), ends]
        return model.text_projection(pooled).numpy()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny CLIP without tokenizer files: image-only (text queries must fail clearly)."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """The tiny CLIP with its tokenizer: the same weights as `tiny_model`, text works."""
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip-text"), tokenizer=True)


def write_photos(folder: Path, names=PHOTOS) -> list[Path]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        pixels = getattr(data, name)()
        path = folder / f"{name}.png"
        Image.fromarray(np.asarray(pixels)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def ingested_store(tmp_path_factory, tiny_model, photos) -> Path:
    """A store with the six photos ingested by the tiny model (all nine augmentations).

    Session-scoped and shared: tests must not write to it (copy it first if they need to).
    """
    from clipshift.ingest import ingest

    db = tmp_path_factory.mktemp("store") / "db"
    ingest([photos], db, str(tiny_model), batch_size=4, keep_pixels=-1, device="cpu")
    return db


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on a free port of 127.0.0.1 with the bucket clipshift-test, the AWS_*
    variables pointing at it; stopped afterwards."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in this process, across servers: a test starts with none (a store
    # an earlier test left, with its writer lease, would refuse this one's writer)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="clipshift-test")
    try:
        yield client
    finally:
        server.stop()
