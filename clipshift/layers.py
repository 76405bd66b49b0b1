"""Dissection inside the network: `clipshift layers`.

Per augmentation (and severity) and layer of a run: the mean cosine between the variants' and
the originals' pooled tokens with its 95% interval, the drift (1 - that mean) and the onset
layer (sql/layer_onset.sql), and, where the run was ingested with --hidden-states, the linear
CKA between the originals' and the variants' pooled hidden states at that layer, over the
run's images (Kornblith et al. 2019; Nguyen, Raghu and Kornblith 2021). docs/metrics.md
defines them.

CKA is computed here, not in SQL: it needs every image's (width)-vector of a layer at once.
Two estimators:
- "full": the standard centred linear CKA, ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F),
  in float64, where one layer's originals and variants fit in CKA_MEMORY_BYTES;
- "minibatch": else, the unbiased minibatch estimator of Nguyen et al. (2021): the unbiased
  HSIC of each minibatch of CKA_MINIBATCH images' Gram matrices, summed over the minibatches,
  then normalised as CKA. It is not the same number as the full one (which is biased in
  1/n) but agrees with it to about 1e-2 on data that fits (tests/test_layers.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import ClipshiftError
from .query import Rows, as_dicts, connect, fetch, named_query
from .runs import Run, read_runs, resolve_run
from .store import Store

# one layer's originals and variants, centred in float64, up to this many bytes: the full
# estimator; above it, the minibatch one
CKA_MEMORY_BYTES = 512 * 2**20
# images per minibatch of the minibatch estimator (Nguyen et al. use 256; larger batches
# give a smaller variance for the same passes)
CKA_MINIBATCH = 1024
CKA_ESTIMATORS = ("full", "minibatch")
# the families whose attention maps end with a pooling head's (runs.num_layers = L + 1)
POOLING_HEAD_FAMILIES = ("siglip", "siglip2")

LAYERS_COLUMNS = (
    "run_id",
    "model",
    "augmentation",
    "severity",
    "layer",
    "is_head",
    "depth",
    "n",
    "cosine_mean",
    "cosine_ci95",
    "drift",
    "onset_layer",
    "cka",
    "cka_estimator",
)


# -- CKA ---------------------------------------------------------------------------------------


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The standard (biased) linear CKA of two (n, width) representations of the same n
    examples: features centred, ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F), in float64."""
    return CkaReference(x).cka(y)


class CkaReference:
    """One side of `linear_cka` (the originals at a layer), prepared once for every
    augmentation compared with it: centred, and its Gram matrix (n x n, where n is under the
    width: <K, L>_F = ||Yc' Xc||_F^2 costs n^2 width) or its covariance (width x width, else)
    with its norm. Sharing it across the augmentations halves the work of `run_cka`."""

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, np.float64)
        self.centred = x - x.mean(axis=0)
        n, width = x.shape
        self.gram_form = n < width
        self.product = (
            self.centred @ self.centred.T if self.gram_form else self.centred.T @ self.centred
        )
        self.norm = np.linalg.norm(self.product)

    def cka(self, y: np.ndarray) -> float:
        y = np.asarray(y, np.float64)
        y = y - y.mean(axis=0)
        if self.gram_form:
            gram = y @ y.T
            cross, norm = float(np.vdot(self.product, gram)), np.linalg.norm(gram)
        else:
            cross, norm = np.linalg.norm(y.T @ self.centred) ** 2, np.linalg.norm(y.T @ y)
        if self.norm == 0 or norm == 0:
            return float("nan")
        return float(cross / (self.norm * norm))


def unbiased_hsic(k: np.ndarray, m: np.ndarray) -> float:
    """The unbiased HSIC estimator (Song et al. 2012) of two n x n Gram matrices, n >= 4."""
    n = len(k)
    k = k.copy()
    m = m.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(m, 0.0)
    ones_k, ones_m = k.sum(axis=0), m.sum(axis=0)
    value = (
        (k * m).sum()
        + ones_k.sum() * ones_m.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * ones_k @ ones_m
    )
    return float(value / (n * (n - 3)))


def minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int = CKA_MINIBATCH) -> float:
    """Nguyen, Raghu and Kornblith (2021)'s minibatch CKA of (n, width) representations: the
    unbiased HSIC summed over minibatches of `batch` consecutive examples (a last one of under
    4 examples is dropped), sum_i HSIC(K_i, L_i) / sqrt(sum_i HSIC(K_i, K_i) sum_i HSIC(L_i,
    L_i)). Only one minibatch's Gram matrices are held at once."""
    cross = self_x = self_y = 0.0
    for start in range(0, len(x), batch):
        xs = np.asarray(x[start : start + batch], np.float64)
        ys = np.asarray(y[start : start + batch], np.float64)
        if len(xs) < 4:
            break
        k, m = xs @ xs.T, ys @ ys.T
        cross += unbiased_hsic(k, m)
        self_x += unbiased_hsic(k, k)
        self_y += unbiased_hsic(m, m)
    if self_x <= 0 or self_y <= 0:
        return float("nan")
    return float(cross / np.sqrt(self_x * self_y))


def cka_estimator(images: int, width: int) -> str:
    """Which estimator `layers` uses for `images` pairs of `width`-vectors at one layer."""
    return "full" if 2 * images * width * 8 <= CKA_MEMORY_BYTES else "minibatch"


# -- the command -------------------------------------------------------------------------------


def layers(
    db: str | os.PathLike | Store,
    run: str | Sequence[str] | None = None,
    model: str | None = None,
    *,
    all_runs: bool = False,
) -> Rows:
    """The layer table (LAYERS_COLUMNS) of one run, or of several side by side (`run` a list,
    or `all_runs`). Runs without layer metrics (stored before migration 0006) are named in one
    line: a ClipshiftError where no chosen run has them, else `Rows.sections["note"]`'s
    first column. `cka` is NULL for a run ingested without --hidden-states."""
    store = db if isinstance(db, Store) else Store.open(db)
    runs = _chosen_runs(store, run, model, all_runs)
    con = connect(store)
    measured = {
        r["run_id"]: r
        for r in as_dicts(
            con.execute(
                "SELECT run_id, count(layer_cosine) AS layered, count(hidden_states) AS hidden "
                "FROM variants WHERE run_id IN (SELECT unnest($ids)) GROUP BY run_id",
                {"ids": [r.run_id for r in runs]},
            )
        )
    }
    lacking = [r for r in runs if not measured.get(r.run_id, {}).get("layered")]
    note = None
    if lacking:
        names = ", ".join(f"{r.run_id} ({r.model})" for r in lacking)
        line = (
            f"no layer metrics in run{'s' if len(lacking) > 1 else ''} {names}: "
            "stored before clipshift measured them (migration 0006); ingest again into a new "
            "store to measure them"
        )
        if len(lacking) == len(runs):
            raise ClipshiftError(line)
        note = line
    rows = []
    for chosen in runs:
        if chosen in lacking:
            continue
        curve = fetch(named_query(con, "layer_onset", run_id=chosen.run_id)).records()
        cka = {}
        if measured[chosen.run_id]["hidden"]:
            cka = run_cka(store, chosen)
        for row in curve:
            key = (row["augmentation"], row["severity"], row["layer"])
            value, estimator = cka.get(key, (None, None))
            rows.append(
                (
                    chosen.run_id,
                    chosen.model,
                    row["augmentation"],
                    row["severity"],
                    row["layer"],
                    row["is_head"],
                    row["depth"],
                    row["n"],
                    row["cosine_mean"],
                    row["cosine_ci95"],
                    row["drift"],
                    row["onset_layer"],
                    value,
                    estimator,
                )
            )
    result = Rows(list(LAYERS_COLUMNS), rows, runs[0] if len(runs) == 1 else None)
    if note:
        result.sections["note"] = Rows(["note"], [(note,)])
    return result


def _chosen_runs(store: Store, run, model: str | None, all_runs: bool) -> list[Run]:
    if all_runs:
        chosen = read_runs(store)
        if not chosen:
            resolve_run(store)  # the empty-store error
        return chosen
    names = [run] if isinstance(run, str) or run is None else list(run)
    picked = [resolve_run(store, name, model) for name in names]
    return list({r.run_id: r for r in picked}.values())


def run_cka(store: Store, run: Run) -> dict[tuple, tuple[float, str]]:
    """(augmentation, severity, layer) -> (linear CKA, estimator) between the originals' and
    the variants' pooled hidden states of `run`, over the images that hold both."""
    table = (
        store.dataset(run.variants_table)
        .to_table(
            columns=["image_id", "variant", "severity", "hidden_states"],
            filter=f"run_id = '{run.run_id}' AND hidden_states IS NOT NULL",
        )
        .to_pydict()
    )
    if not table["image_id"]:
        return {}
    states = table["hidden_states"]
    values = np.frombuffer(b"".join(states), dtype="<f2").reshape(len(states), -1)
    originals = {
        image: row
        for row, (image, variant) in enumerate(
            zip(table["image_id"], table["variant"], strict=True)
        )
        if variant == "original"
    }
    groups: dict[tuple[str, int | None], list[tuple[int, int]]] = {}
    for row, (image, variant, severity) in enumerate(
        zip(table["image_id"], table["variant"], table["severity"], strict=True)
    ):
        if variant != "original" and image in originals:
            name = variant.rsplit("@", 1)[0] if severity is not None else variant
            groups.setdefault((name, severity), []).append((originals[image], row))
    layers_stored = _hidden_layers(run, values.shape[1])
    width = values.shape[1] // layers_stored
    values = values.reshape(len(values), layers_stored, width)
    indices = {}
    for key, pairs in groups.items():
        pairs.sort()
        indices[key] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    out = {}
    for layer in range(layers_stored):
        # the originals' side, shared by every augmentation that holds the same images
        references: dict[bytes, CkaReference] = {}
        for (name, severity), (first, second) in indices.items():
            x, y = values[first, layer], values[second, layer]
            estimator = cka_estimator(len(first), width)
            if estimator == "full":
                shared = first.tobytes()
                if shared not in references:
                    references[shared] = CkaReference(x)
                value = references[shared].cka(y)
            else:
                value = minibatch_cka(x, y)
            # undefined (NULL) where a side does not vary over the images: CLIP's layer 0,
            # the CLS token before any attention, is the same vector for every image
            out[(name, severity, layer)] = (None if np.isnan(value) else value, estimator)
    return out


def _hidden_layers(run: Run, values: int) -> int:
    """L + 1, the layers of a stored hidden_states row. runs.num_layers counts attention maps:
    L for CLIP, L + 1 for SigLIP (its pooling head's map)."""
    stored = run.num_layers if run.family in POOLING_HEAD_FAMILIES else run.num_layers + 1
    if values % stored:
        raise ClipshiftError(
            f"run {run.run_id}: its hidden_states rows of {values} values are not "
            f"{stored} layers of one width"
        )
    return stored


def hidden_state_bytes(db: str | os.PathLike | Store, run_id: str) -> int | None:
    """The bytes --hidden-states adds to each of the run's rows (None where it holds none)."""
    store = db if isinstance(db, Store) else Store.open(db)
    chosen = resolve_run(store, run_id)
    table = store.dataset(chosen.variants_table).to_table(
        columns=["hidden_states"],
        filter=f"run_id = '{run_id}' AND hidden_states IS NOT NULL",
        limit=1,
    )
    if not table.num_rows:
        return None
    return len(table["hidden_states"][0].as_py())
