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
) -> str:
    """Create the store at `db` and return its run_id."""
    rng = np.random.default_rng(seed)
    names = list(AUGMENTATION_NAMES)
    config = augmentation_config(resolve(names))
    run_id = f"synthetic{seed:03d}"
    store = Store.open(db, create=True)
    store.ensure_run(
        {
            "run_id": run_id,
            "model": SYNTHETIC_MODEL,
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
            },
            schema=variants_schema(dim),
        )
        store.write_batch(run_id, images, table)
    store.compact(force=True)
    return run_id
