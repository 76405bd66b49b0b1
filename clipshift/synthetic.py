"""A store the size of the paper's (13,312 images x 10 variants) with synthetic contents, for
the benchmarks and the tests: no model and no photos needed.

512-d embeddings, 7 x 7 attention over 12 layers, pixel metrics drawn per augmentation with
a spread that mimics a real run. Written through the same Store.write_batch as an ingest. Its
run names no loadable model (SYNTHETIC_MODEL), so a query that needs to embed something (a
text, a new image) fails with the ordinary "cannot load" error.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from .augment import augmentation_config, config_hash
from .defaults import AUGMENTATION_NAMES, IMAGE_SIZE, ORIGINAL
from .store import Store, variants_schema
from .suites import resolve

PAPER_IMAGES = 13_312
SYNTHETIC_MODEL = "synthetic"
# how far each augmentation moves an embedding, relative to the embedding's own scale
SHIFT = dict(zip(AUGMENTATION_NAMES, (0.9, 0.35, 0.3, 0.4, 0.2, 0.15, 0.4, 0.25, 0.3), strict=True))


def build_synthetic_store(
    db: str | Path,
    n_images: int = PAPER_IMAGES,
    dim: int = 512,
    grid: int = 7,
    layers: int = 12,
    seed: int = 0,
    chunk: int = 2048,
    model: str = SYNTHETIC_MODEL,
    hidden_width: int | None = None,
) -> str:
    """Create the store at `db` and return its run_id. `model` is what the run records as
    its model: "synthetic" (no model at all), or a local folder whose text tower the text
    commands (zeroshot, directions) then use. Every row gets layer metrics, a shift growing
    with depth; `hidden_width` also stores pooled hidden states of that width (as ingest
    --hidden-states; ViT-B/32's is 768)."""
    rng = np.random.default_rng(seed)
    names = list(AUGMENTATION_NAMES)
    config = augmentation_config(resolve(names))
    run_id = f"synthetic{seed:03d}"
    store = Store.open(db, create=True)
    store.ensure_run(
        {
            "run_id": run_id,
            "model": model,
            "model_revision": SYNTHETIC_MODEL,
            "family": "synthetic",
            "embedding_dim": dim,
            "patch_grid": grid,
            "num_layers": layers,
            "image_size": IMAGE_SIZE,
            "seed": seed,
            "augmentations": json.dumps(config),
            "augmentation_hash": config_hash(config),
            "clipshift_version": SYNTHETIC_MODEL,
            "created_at": datetime.now(timezone.utc),
        }
    )
    variants = [ORIGINAL, *names]
    cells = grid * grid
    for start in range(0, n_images, chunk):
        count = min(chunk, n_images - start)
        ids = [f"{i:064x}" for i in range(start, start + count)]
        base = rng.normal(0, 1, (count, dim)).astype(np.float32)
        embeddings = [base] + [
            base + rng.normal(0, SHIFT[name], (count, dim)).astype(np.float32) for name in names
        ]
        rows = count * len(variants)
        emb = np.stack(embeddings, axis=1).reshape(rows, dim)
        attention = rng.dirichlet(np.ones(cells), size=(rows, layers)).astype(np.float32)
        layer_metrics = _layer_metrics(rng, names, count, layers, cells, hidden_width)
        metric = {}
        for key, low in (
            ("patch_similarity", 0.8),
            ("edge_preservation", 0.7),
            ("detail_preservation", 0.4),
        ):
            values = np.ones((count, len(variants)))
            values[:, 1:] = rng.uniform(low, 1.0, (count, len(names)))
            metric[key] = values.reshape(-1)
        images = pa.table(
            {
                "image_id": ids,
                "path": [f"/synthetic/{i}.jpg" for i in range(start, start + count)],
                "width": pa.array([640] * count, pa.int32()),
                "height": pa.array([480] * count, pa.int32()),
                "format": ["JPEG"] * count,
                "mode": ["RGB"] * count,
            }
        )
        table = pa.table(
            {
                "run_id": [run_id] * rows,
                "image_id": [i for i in ids for _ in variants],
                "variant": variants * count,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
                "attention": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, rows * cells + 1, cells, dtype=np.int32)),
                    pa.array(attention[:, -1].reshape(-1)),
                ),
                "attention_layers": pa.ListArray.from_arrays(
                    pa.array(
                        np.arange(0, rows * layers * cells + 1, layers * cells, dtype=np.int32)
                    ),
                    pa.array(attention.reshape(-1)),
                ),
                **{k: pa.array(v) for k, v in metric.items()},
                "params": ["{}"] * rows,
                "pixels": pa.nulls(rows, pa.binary()),
                "severity": pa.nulls(rows, pa.int32()),
                **layer_metrics,
            },
            schema=variants_schema(dim),
        )
        store.write_batch(run_id, images, table)
    if hidden_width:
        # as an ingest with --hidden-states ends: the CKA kept for `clipshift layers`
        from .cka import run_cka
        from .runs import resolve_run

        run_cka(store, resolve_run(store, run_id), hidden_states=True)
    store.compact(force=True)
    return run_id


def save_tiny_tokenizer(folder: str | Path, words: tuple[str, ...] | list[str] = ()) -> Path:
    """A byte-level CLIP BPE tokenizer small enough for a tiny model, saved into `folder`.

    Its vocabulary: <|startoftext|> = 0, <|endoftext|> = 1 (the ids a tiny text config sets as
    bos and eos/pad, so CLIP pools at the real end of each text), then the 256 byte symbols,
    alone and word-final (514 ids). Every text thus tokenises, one id per byte. `words` adds
    merges that make each of those words a single token, as CLIP's own 49,408-token BPE makes
    most English words (CLIP's own splits some rare ones in two or more): a benchmark then
    encodes prompts of about realistic token counts. Words are split as CLIP splits text:
    runs of letters, single digits, runs of other symbols.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2's byte -> printable character table, as CLIP's BPE uses it
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    symbols = [table[b] for b in range(256)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    if words:
        # a BPE trained on the words alone: its merges join each of them into one token
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        trained = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
        trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        trained.train_from_iterator(
            [w.lower() for w in words],
            trainers.BpeTrainer(
                vocab_size=1 << 20,
                min_frequency=0,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                end_of_word_suffix="</w>",
                show_progress=False,
            ),
        )
        model = json.loads(trained.to_str())["model"]
        for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
            vocab.setdefault(token, len(vocab))
        merges = [tuple(pair) for pair in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(folder)
    return folder


def _layer_metrics(
    rng: np.random.Generator,
    names: list[str],
    count: int,
    layers: int,
    cells: int,
    hidden_width: int | None,
) -> dict[str, pa.Array]:
    """layer_cosine, token_drift(_layers) and hidden_states of `count` images x (original +
    names), rows image by image: each augmentation's drift grows with depth, to about its
    SHIFT^2 / 2 at the last layer; the originals hold 1 and 0."""
    rows = count * (1 + len(names))
    depth = np.arange(layers + 1) / layers
    final = np.array([0.0] + [SHIFT[name] ** 2 / 2 for name in names])
    drift = final[None, :, None] * depth[None, None, :] ** 2
    drift = drift * rng.uniform(0.8, 1.2, (count, 1 + len(names), 1))
    cosine = (1 - drift).reshape(rows, layers + 1).astype(np.float32)
    spread = rng.uniform(0.5, 1.5, (rows, 1, cells))
    tokens = (drift.reshape(rows, layers + 1)[:, 1:, None] * spread).astype(np.float32)

    def lists(values: np.ndarray) -> pa.Array:
        width = values[0].size
        offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))

    hidden = pa.nulls(rows, pa.binary())
    if hidden_width:
        base = rng.normal(0, 1, (count, 1, layers + 1, hidden_width))
        scale = np.array([0.0] + [SHIFT[name] for name in names])[None, :, None, None]
        noise = rng.normal(0, 1, (count, 1 + len(names), layers + 1, hidden_width))
        states = (base + noise * scale * depth[None, None, :, None]).astype("<f2")
        hidden = pa.array([row.tobytes() for row in states.reshape(rows, -1)], pa.binary())
    return {
        "layer_cosine": lists(cosine),
        "token_drift": lists(tokens[:, -1]),
        "token_drift_layers": lists(tokens),
        "hidden_states": hidden,
    }
