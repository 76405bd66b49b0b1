"""Nearest-neighbor shift queries: `neighbors` answers one query (a stored image, an image
file, or a text) with LanceDB vector search over the run's embeddings (clipshift.index).

Distances are cosine distances, 1 - cos, on the stored (un-normalised) embeddings. The rank of
the query image's own original is 1 + the number of candidates strictly closer to the query
(ties count in the query's favour), computed exactly whichever search found the neighbors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from . import ClipshiftError
from .defaults import AMONG, ORIGINAL
from .filters import matches, where
from .index import ensure_index, load_embeddings, open_run, run_filter, search
from .knn import normalise
from .runs import Run
from .store import Store


@dataclass
class Neighbor:
    rank: int
    image_id: str
    path: str | None
    variant: str
    distance: float
    own: bool  # the query image's own original


@dataclass
class NeighborsResult:
    run_id: str
    query: str  # what was asked, in words
    own_image_id: str | None
    own_rank: int | None  # rank of the own original among all candidates (exact)
    own_distance: float | None
    rows: list[Neighbor]
    used_index: bool
    notes: list[str] = field(default_factory=list)  # for the user: which run, what was built


def neighbors(
    db: str | os.PathLike,
    query: str | None = None,
    *,
    text: str | None = None,
    variant: str = ORIGINAL,
    k: int = 10,
    among: str = "originals",
    run: str | None = None,
    exact: bool = False,
    device: str = "cpu",
) -> NeighborsResult:
    """The k stored embeddings nearest to QUERY: a stored image_id (or unique prefix), the path
    of a stored image, a new image file (embedded, and augmented with `variant`), or `text`."""
    if k < 1:
        raise ClipshiftError(f"-k {k}: ask for 1 or more neighbours")
    if among not in AMONG:
        raise ClipshiftError(f"--among {among}: choose originals or all")
    if (query is None) == (text is None):
        raise ClipshiftError("give either QUERY (an image_id, image path or file) or --text")
    store, chosen = open_run(db, run)
    run_id = chosen.run_id
    names = [ORIGINAL] + [a["name"] for a in json.loads(chosen.augmentations)]
    if variant not in names:
        raise ClipshiftError(f"--variant {variant}: run {run_id} has {', '.join(names)}")
    candidates = run_filter(run_id, among)
    if not store.table(chosen.variants_table).count_rows(where(**candidates)):
        # another run of the same width made the table: this one stored no image in it
        raise ClipshiftError(
            f"run {run_id} holds no images yet: its ingest stored nothing "
            '(see `clipshift sql "SELECT * FROM errors"`)'
        )
    if text is not None:
        if variant != ORIGINAL:
            raise ClipshiftError("--variant applies to image queries, not to --text")
        vector = _encoder(chosen, device, text=True).encode_text([text])[0]
        own_id, described = None, f'text "{text}"'
    else:
        vector, own_id, described = _image_query(store, chosen, query, variant, device)

    notes = [chosen.selection_note] if chosen.selection_note else []
    use_index = not exact and ensure_index(store, chosen, notes)
    table = chosen.variants_table
    columns = ("image_id", "variant", "embedding")
    found = search(store, table, vector, where(**candidates), k, use_index, columns)
    ids = found.column("image_id").to_pylist()
    variants = found.column("variant").to_pylist()
    # exact cosine distances of the rows found, whichever search found them
    vectors = found.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
    distances = _distance(
        1.0 - normalise(vectors.reshape(found.num_rows, -1)) @ normalise(vector[None, :])[0]
    )
    paths = _paths(store, ids + ([own_id] if own_id else []))
    rows = [
        Neighbor(
            rank, image_id, paths.get(image_id), v, float(d), own_id == image_id and v == ORIGINAL
        )
        for rank, (image_id, v, d) in enumerate(zip(ids, variants, distances, strict=True), 1)
    ]
    own_rank = own_distance = None
    if own_id is not None:
        own_rank, own_distance = _own_rank(store, table, vector, own_id, matches(**candidates))
    return NeighborsResult(
        run_id, described, own_id, own_rank, own_distance, rows, use_index, notes
    )


def _own_rank(
    store: Store, variants_table: str, vector: np.ndarray, own_id: str, rows: pc.Expression
) -> tuple[int, float]:
    """The exact rank and distance of the own original among the candidates: 1 + the number of
    candidates strictly closer to the query."""
    candidates = load_embeddings(store, variants_table, rows)
    unit = normalise(candidates.vectors, np.float64)
    distances = 1.0 - unit @ normalise(vector[None, :], np.float64)[0]
    own = np.flatnonzero((candidates.image_ids == own_id) & (candidates.variants == ORIGINAL))
    own_distance = float(distances[own[0]])
    return int(np.sum(distances < own_distance)) + 1, float(_distance(own_distance))


def _distance(distances):
    """Cosine distances as shown: an image's distance to itself comes out of 1 - cos as a
    float error either side of 0 (-1e-7 printed as -0.0000): negatives become 0, and the
    + 0.0 turns a -0.0 into 0.0."""
    return np.maximum(distances, 0.0) + 0.0


def _encoder(chosen: Run, device: str, text: bool = False):
    from .encoder import Encoder

    return Encoder(chosen.model, device=device, image_size=chosen.image_size, text=text)


def _image_query(
    store: Store, chosen: Run, query: str, variant: str, device: str
) -> tuple[np.ndarray, str | None, str]:
    """The query vector, the image_id of its own original (when stored) and a description."""
    run_id = chosen.run_id
    image_id = _stored_image_id(store, run_id, query)
    path = Path(query).expanduser()
    if image_id is None and path.is_file():
        from .sources import read_source

        try:
            source = read_source(path)
        except OSError as exc:
            raise ClipshiftError(f"cannot read {query}: {exc.strerror or exc}") from None
        if source.image_id in store.stored_images(run_id, [source.image_id]):
            image_id = source.image_id
        else:
            return _embed_new(chosen, source, variant, device), None, f"new image {path}"
    if image_id is None:
        raise ClipshiftError(
            f"{query} is neither an image_id in run {run_id}, a stored path, nor an image file"
        )
    stored = load_embeddings(
        store, chosen.variants_table, matches(run_id=run_id, image_id=image_id, variant=variant)
    )
    if not len(stored.vectors):
        raise ClipshiftError(f"image {image_id[:12]} has no {variant} variant in run {run_id}")
    return stored.vectors[0], image_id, f"{image_id[:12]} ({variant})"


def _stored_image_id(store: Store, run_id: str, query: str) -> str | None:
    """An image_id (or unique prefix) or a stored path naming an image of the run."""
    lowered = query.lower()
    if 4 <= len(lowered) <= 64 and all(c in "0123456789abcdef" for c in lowered):
        prefixed = sorted(i for i in store.stored_images(run_id) if i.startswith(lowered))
        if len(prefixed) > 1:
            raise ClipshiftError(
                f"image_id prefix {query} matches {len(prefixed)} images: give more characters"
            )
        if prefixed:
            return prefixed[0]
    absolute = str(Path(query).expanduser().absolute())
    table = store.dataset("images").to_table(
        columns=["image_id"], filter=matches(path=[absolute, query])
    )
    candidates = set(table.column("image_id").to_pylist())
    stored = store.stored_images(run_id, sorted(candidates)) if candidates else set()
    return sorted(stored)[0] if stored else None


def _embed_new(chosen: Run, source, variant: str, device: str) -> np.ndarray:
    """Embed a file that is not in the store the way an ingest of this run would have."""
    from .augment import Augmenter
    from .sources import DecodeError, decode
    from .suites import perturbations_of_run

    try:
        pixels = decode(source.data, chosen.image_size).pixels
    except DecodeError as exc:
        raise ClipshiftError(f"cannot decode {source.path}: {exc}") from None
    if variant != ORIGINAL:
        # the run's own stored definition: a user suite file need not exist any more
        definition = [p.definition for p in perturbations_of_run(chosen) if p.label == variant]
        pixels = Augmenter(definition, chosen.seed)(pixels, source.image_id)[0].pixels
    return _encoder(chosen, device).encode(pixels[None]).embeddings[0]


def _paths(store: Store, image_ids: Sequence[str]) -> dict[str, str]:
    if not image_ids:
        return {}
    table = store.dataset("images").to_table(
        columns=["image_id", "path"], filter=matches(image_id=sorted(set(image_ids)))
    )
    ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
    return dict(zip(ids, paths, strict=True))
