"""What `clipshift serve`'s JSON API answers, as plain library functions (clipshift.serve.app
routes each request to one of them).

Every function opens the store afresh, so each request reads the store's latest version: a
running ingest's new images show on reload. Nothing here writes. The records use the field
names and the values of the commands' `--format json` (clipshift.formatting), so the page
shows the numbers `stats` and `sql` print.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from .. import ClipshiftError
from ..defaults import METRICS, ORIGINAL
from ..filters import matches, where
from ..formatting import format_rows
from ..query import Rows, as_dicts, connect, named_query
from ..runs import Run, resolve_run
from ..store import Store

# the gallery's page size when none is asked for, and the most one page may hold
PAGE_SIZE = 48
MAX_PAGE = 500
# the SQL console: rows sent to the page (the rest are counted) and seconds before a query is
# interrupted, so one heavy query cannot hold the server
SQL_MAX_ROWS = 1000
SQL_TIME_LIMIT = 30.0
# neighbours shown per variant in the image view
NEIGHBORS = 5
# the metrics where a higher value means the image moved more (the gallery's default order is
# most-moved first: highest l2, lowest of every similarity)
HIGHER_MOVES_MORE = ("l2",)
# projections kept in memory, newest first (each is ~3 MB of JSON at the paper's 133k points)
PROJECTIONS_KEPT = 8


class NotFound(ClipshiftError):
    """An unknown run, image or variant: the server answers 404 with this one line."""


# -- runs and summary ------------------------------------------------------------------------


def runs(db: str | os.PathLike | Store) -> list[dict]:
    """Every run, most recent first: the runs columns (not the JSON definitions) with its
    images, variants and perturbations counted."""
    store = _store(db)
    if not store.has_table("runs"):
        return []
    con = connect(store)
    found = con.execute(
        "SELECT r.* EXCLUDE (augmentations), c.images, c.variants "
        "FROM runs AS r LEFT JOIN ("
        "  SELECT run_id, count(*) FILTER (WHERE variant = 'original') AS images, "
        "         count(*) AS variants FROM variants GROUP BY run_id"
        ") AS c USING (run_id) ORDER BY r.created_at DESC NULLS LAST, r.run_id"
    )
    records = _json_records(found.description, found.fetchall())
    definitions = dict(con.execute("SELECT run_id, augmentations FROM runs").fetchall())
    for record in records:
        record["images"] = record["images"] or 0
        record["variants"] = record["variants"] or 0
        record["perturbations"] = _perturbations(definitions.get(record["run_id"]))
        record["suite"] = _suite(record["perturbations"])
        record["precision"] = _precision(record)
    return records


def stats(db: str | os.PathLike | Store, run: str | None = None, memo: Memo | None = None) -> dict:
    """The run and `clipshift stats --format json`'s tables: summary, and where the run has
    severity levels, severity (the curves) and corruption_mean. With `memo`, kept per store
    version: the summary is the first page's slowest part (1.2 s at the paper's size)."""
    from ..analysis import stats as run_stats

    store = _store(db)
    chosen = _run(store, run)

    def compute() -> dict:
        result = run_stats(store, run=chosen.run_id)
        answer = {"run": _run_record(chosen), "summary": _rows_json(result)}
        for name, section in result.sections.items():
            answer[name] = _rows_json(section)
        return answer

    if memo is None:
        return compute()
    return memo.get(("stats", *table_version(store, chosen)), compute)


def report_figures(report: str | os.PathLike | None) -> list[str]:
    """The figure files (PNG, SVG) of a `clipshift report` folder, by name; none without one."""
    from pathlib import Path

    from ..defaults import FIGURE_FORMATS

    folder = Path(report) if report is not None else None
    if folder is None or not folder.is_dir():
        return []
    shown = {f".{fmt}" for fmt in FIGURE_FORMATS if fmt != "pdf"}  # a browser draws no PDF
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in shown)


def report_figure(report: str | os.PathLike | None, name: str):
    """The path of one figure of the report folder: only a name `report_figures` lists, so no
    request reaches any other file."""
    from pathlib import Path

    if name not in report_figures(report):
        raise NotFound(f"no report figure {name}")
    return Path(report) / name


# -- gallery -----------------------------------------------------------------------------------


@dataclass
class GalleryQuery:
    """The gallery's choices (each None: not filtered)."""

    augmentation: str | None = None
    severity: int | None = None
    metric: str = "cosine"
    order: str | None = None  # asc | desc; None: most-moved first
    offset: int = 0
    limit: int = PAGE_SIZE
    low: float | None = None
    high: float | None = None
    name: str | None = None
    flipped: bool | None = None
    label: str | None = None


def images(db: str | os.PathLike | Store, run: str | None, query: GalleryQuery) -> dict:
    """One page of the run's (image, variant) rows ranked by `query.metric` (sql/gallery.sql),
    each with whether its original and variant kept pixels; `total` counts every match."""
    if query.metric not in METRICS:
        raise ClipshiftError(f"metric {query.metric!r}: one of {', '.join(METRICS)}")
    order = query.order or ("desc" if query.metric in HIGHER_MOVES_MORE else "asc")
    if order not in ("asc", "desc"):
        raise ClipshiftError(f"order {query.order!r}: asc or desc")
    if query.offset < 0 or not 1 <= query.limit <= MAX_PAGE:
        raise ClipshiftError(f"offset >= 0 and limit 1 to {MAX_PAGE}, please")
    store = _store(db)
    chosen = _run(store, run)
    con = connect(store)
    augmentations = _augmentations(con, chosen)
    found = named_query(
        con,
        "gallery",
        run_id=chosen.run_id,
        variant=_only_variant(augmentations, query),
        augmentation=query.augmentation,
        severity=query.severity,
        file_name=query.name or None,
        metric=query.metric,
        descending=order == "desc",
        low=query.low,
        high=query.high,
        flipped=query.flipped,
        label=query.label or None,
        limit=query.limit,
        offset=query.offset,
    )
    records = _json_records(found.description, found.fetchall())
    total = records[0]["total"] if records else 0
    kept = _with_pixels(store, chosen, {r["image_id"] for r in records})
    for record in records:
        del record["total"]
        record["original_pixels"] = (record["image_id"], ORIGINAL) in kept
        record["variant_pixels"] = (record["image_id"], record["variant"]) in kept
    return {
        "run_id": chosen.run_id,
        "metric": query.metric,
        "order": order,
        "offset": query.offset,
        "limit": query.limit,
        "total": total,
        "augmentations": augmentations,
        "labels": [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT l.label FROM zeroshot AS z JOIN zeroshot_labels AS l "
                "ON l.label_set = z.label_set AND l.label_index = z.top_labels[1] "
                "WHERE z.run_id = $run_id AND z.variant = 'original' ORDER BY 1",
                {"run_id": chosen.run_id},
            ).fetchall()
        ],
        "images": records,
    }


# -- one image -------------------------------------------------------------------------------


def image(db: str | os.PathLike | Store, run: str | None, image_id: str) -> dict:
    """Everything stored about one image of a run: its original and every variant with its
    metrics (as the `shifts` view gives them), attention maps of every layer, the token drift
    where the store has it, the zero-shot top-5 where stored, and each one's nearest stored
    originals."""
    store = _store(db)
    chosen = _run(store, run)
    table = store.variants_table_of(chosen.run_id)
    if table is None:
        raise NotFound(f"run {chosen.run_id} holds no images yet")
    dataset = store.dataset(table)
    drift = [n for n in dataset.schema.names if n.startswith("token_drift")]
    columns = ["variant", "severity", "attention", "attention_layers", "embedding", *drift]
    stored = dataset.to_table(
        columns=columns + ["pixels"], filter=matches(run_id=chosen.run_id, image_id=image_id)
    )
    if not stored.num_rows:
        raise NotFound(f"no image {image_id} in run {chosen.run_id}")
    con = connect(store)
    metrics = {
        r["variant"]: r
        for r in as_dicts(
            con.execute(
                "SELECT * EXCLUDE (run_id, model, image_id) FROM shifts "
                "WHERE run_id = $run_id AND image_id = $image_id",
                {"run_id": chosen.run_id, "image_id": image_id},
            )
        )
    }
    path = con.execute(
        "SELECT path FROM images WHERE image_id = $image_id", {"image_id": image_id}
    ).fetchall()
    top5 = _top5(con, chosen, image_id)
    rows = stored.to_pylist()
    rows.sort(key=lambda r: (r["variant"] != ORIGINAL, r["variant"]))
    vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    near = _neighbors(store, chosen, table, vectors)
    variants = []
    for row, neighbors in zip(rows, near, strict=True):
        name = row["variant"]
        record = {
            "variant": name,
            "augmentation": metrics.get(name, {}).get("augmentation", name),
            "severity": row["severity"],
            "pixels": row["pixels"] is not None,
            **{m: metrics.get(name, {}).get(m) for m in METRICS},
            "attention": row["attention"],
            "attention_layers": row["attention_layers"],
            "zeroshot_top5": top5.get(name),
            "neighbors": neighbors,
        }
        for column in drift:
            record[column] = row[column]
        if name == ORIGINAL:
            # what an original scores against itself, as docs/metrics.md defines it
            record.update(cosine=1.0, l2=0.0, attention_similarity=1.0)
        variants.append(record)
    return _plain(
        {
            "run_id": chosen.run_id,
            "image_id": image_id,
            "path": path[0][0] if path else None,
            "patch_grid": chosen.patch_grid,
            "num_layers": chosen.num_layers,
            "token_drift_columns": drift,
            "variants": variants,
        }
    )


def pixels(db: str | os.PathLike | Store, run: str, image_id: str, variant: str) -> bytes:
    """The stored PNG of one (run, image, variant): looked up by those keys only, never a path."""
    store = _store(db)
    chosen = _run(store, run)
    table = store.variants_table_of(chosen.run_id)
    if table is None:
        raise NotFound(f"run {chosen.run_id} holds no images yet")
    found = store.dataset(table).to_table(
        columns=["pixels"],
        filter=matches(run_id=chosen.run_id, image_id=image_id, variant=variant),
    )
    if not found.num_rows:
        raise NotFound(f"no variant {variant} of image {image_id} in run {chosen.run_id}")
    data = found.column("pixels")[0].as_py()
    if data is None:
        raise NotFound(
            f"image {image_id} kept no pixels in run {chosen.run_id} (ingest --keep-pixels)"
        )
    return data


# -- the map -------------------------------------------------------------------------------


class Memo:
    """Answers kept in memory by key, the newest `kept`: the keys name the store version they
    were computed from (`table_version`), so a changed table is a new key, never a stale
    answer."""

    def __init__(self, kept: int = PROJECTIONS_KEPT):
        self._kept = kept
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, compute):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        answer = compute()
        with self._lock:
            self._cache[key] = answer
            while len(self._cache) > self._kept:
                self._cache.popitem(last=False)
        return answer


def table_version(store: Store, run: Run) -> tuple:
    """What a cached answer about `run` was computed from: the store, the run and the version
    of the run's variants table (None before its first batch)."""
    table = store.variants_table_of(run.run_id)
    version = store.dataset(table).version if table is not None else None
    return (str(store.path), run.run_id, table, version)


class Projections:
    """2-D projections of runs' embeddings, kept per (run, store version, method): the same
    request again is answered from memory until the run's table changes."""

    def __init__(self, kept: int = PROJECTIONS_KEPT):
        self._memo = Memo(kept)

    def get(self, db: str | os.PathLike | Store, run: str | None, method: str = "pca") -> bytes:
        """The projection as JSON bytes (see `project`)."""
        if method not in projection_methods():
            raise ClipshiftError(f"method {method!r}: one of {', '.join(projection_methods())}")
        store = _store(db)
        chosen = _run(store, run)
        key = table_version(store, chosen)
        table = key[2]
        if table is None:
            raise NotFound(f"run {chosen.run_id} holds no images yet")

        def compute() -> bytes:
            answer = project(store, chosen, table, method)
            return json.dumps(answer, separators=(",", ":")).encode()

        return self._memo.get((*key, method), compute)


def projection_methods() -> list[str]:
    """pca always; umap where umap-learn is installed."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ["pca"]
    return ["pca", "umap"]


def project(store: Store, run: Run, table: str, method: str = "pca") -> dict:
    """Every original and variant embedding of the run in 2-D (unit vectors; PCA through the
    top two eigenvectors of the D x D covariance, or UMAP). Points are columns: x, y, the
    index of the image in `images` and of the variant in `variants`; each variant joins its
    image's original (variant index 0), and `pixels` (1 where its PNG is stored)."""
    from ..index import load_embeddings
    from ..knn import normalise

    started = time.perf_counter()
    found = load_embeddings(store, table, matches(run_id=run.run_id))
    vectors = normalise(found.vectors, np.float64)
    if method == "umap" and len(vectors) > 2:
        import umap

        points = umap.UMAP(n_components=2, random_state=0).fit_transform(vectors)
    elif len(vectors):
        from scipy.linalg import eigh

        centred = (vectors - vectors.mean(axis=0)).astype(np.float32)
        # the top two eigenvectors of the D x D covariance only (LAPACK's subset driver): the
        # full decomposition took seconds on a busy 2-core machine, a full SVD of the points
        # longer still; float32 halves the covariance's time
        covariance = (centred.T @ centred).astype(np.float64)
        d = len(covariance)
        _, basis = eigh(covariance, subset_by_index=[d - 2, d - 1])
        basis = basis[:, ::-1]
        # a sign per axis, fixed by the largest loading, so a re-run draws the same picture
        basis *= np.sign(basis[np.abs(basis).argmax(axis=0), [0, 1]])
        points = centred @ basis.astype(np.float32)
    else:
        points = np.zeros((0, 2))
    names, image_index = np.unique(found.image_ids.astype(str), return_inverse=True)
    variant_names = [ORIGINAL] + sorted(set(found.variants.tolist()) - {ORIGINAL})
    lookup = {name: i for i, name in enumerate(variant_names)}
    kept = store.dataset(table).to_table(
        columns=["image_id", "variant"],
        filter=matches(run_id=run.run_id) & pc.field("pixels").is_valid(),
    )
    kept = set(
        zip(kept.column("image_id").to_pylist(), kept.column("variant").to_pylist(), strict=True)
    )
    return {
        "run_id": run.run_id,
        "method": method,
        "seconds": round(time.perf_counter() - started, 3),
        "images": names.tolist(),
        "variants": variant_names,
        "x": np.round(points[:, 0], 5).tolist(),
        "y": np.round(points[:, 1], 5).tolist(),
        "image": image_index.tolist(),
        "variant": [lookup[v] for v in found.variants.tolist()],
        # 1 where the point's PNG is stored (the hover shows it), else 0
        "pixels": [int(pair in kept) for pair in zip(found.image_ids, found.variants, strict=True)],
    }


# -- SQL -------------------------------------------------------------------------------------


def sql(
    db: str | os.PathLike | Store,
    query: str,
    max_rows: int = SQL_MAX_ROWS,
    time_limit: float = SQL_TIME_LIMIT,
) -> Rows:
    """`clipshift sql` with a row cap and a time limit: its read-only guards
    (clipshift.analysis.sql) refuse every statement that is not a read."""
    from ..analysis import sql as run_sql

    con = connect(_store(db))
    timer = threading.Timer(time_limit, con.interrupt)
    timer.start()
    try:
        return run_sql(con, query, max_rows=max_rows)
    except ClipshiftError:
        if not timer.is_alive():
            raise ClipshiftError(
                f"the query ran past {time_limit:g} s and was stopped: narrow it (WHERE, LIMIT)"
            ) from None
        raise
    finally:
        timer.cancel()


def sql_json(result: Rows) -> dict:
    total = len(result.rows) if result.total_rows is None else result.total_rows
    return {
        "columns": result.columns,
        "rows": json.loads(format_rows(result.columns, result.rows, "json")),
        "total_rows": total,
        "truncated": total > len(result.rows),
    }


def sql_csv(result: Rows) -> str:
    return format_rows(result.columns, result.rows, "csv") + "\n"


# -- helpers -------------------------------------------------------------------------------


def _store(db: str | os.PathLike | Store) -> Store:
    return db if isinstance(db, Store) else Store.open(db)


def _run(store: Store, run: str | None) -> Run:
    """The run asked for; an unknown one is a NotFound (404)."""
    try:
        return resolve_run(store, run or None)
    except ClipshiftError as exc:
        raise NotFound(str(exc)) from None


def _run_record(run: Run) -> dict:
    record = _plain(run.as_dict())
    record.pop("augmentations", None)
    return record


def _rows_json(rows: Rows) -> list[dict]:
    """Rows as `--format json` writes them (the same names, the same numbers)."""
    return json.loads(format_rows(rows.columns, rows.rows, "json"))


def _json_records(description, rows: list[tuple]) -> list[dict]:
    return json.loads(format_rows([d[0] for d in description], rows, "json"))


def _plain(value):
    """A JSON-ready copy, as `--format json` writes values (NaN becomes null)."""
    return json.loads(format_rows(["v"], [(value,)], "json"))[0]["v"]


def _perturbations(definitions: str | None) -> list[str]:
    if not definitions:
        return []
    labels = []
    for item in json.loads(definitions):
        name = item.get("name") or item.get("label") or "?"
        levels = item.get("severities") or ([item["severity"]] if item.get("severity") else [])
        labels += [f"{name}@{s}" for s in levels] if levels else [name]
    return labels


def _suite(perturbations: list[str]) -> str:
    from ..defaults import AUGMENTATION_NAMES, CORRUPTION_NAMES

    names = {p.split("@")[0] for p in perturbations}
    if names and names == set(AUGMENTATION_NAMES):
        return "paper"
    if names and names == set(CORRUPTION_NAMES):
        return "corruptions"
    return "custom" if names else "none"


def _precision(record: dict) -> str:
    """The compute precision: a `precision` column where the store has one, else what the
    preprocessing JSON records, else fp32 (the default, and every run before precisions)."""
    if record.get("precision"):
        return str(record["precision"])
    try:
        preprocessing = json.loads(record.get("preprocessing") or "{}")
    except ValueError:
        preprocessing = {}
    return str(preprocessing.get("precision") or preprocessing.get("dtype") or "fp32")


def _augmentations(con, run: Run) -> list[dict]:
    """The run's (augmentation, severity) pairs, for the gallery's filters."""
    return as_dicts(
        con.execute(
            "SELECT DISTINCT perturbation_name(variant, severity) AS augmentation, severity "
            "FROM variants WHERE run_id = $run_id AND variant <> 'original' "
            "ORDER BY augmentation, severity NULLS FIRST",
            {"run_id": run.run_id},
        )
    )


def _only_variant(augmentations: list[dict], query: GalleryQuery) -> str | None:
    """The stored variant label where the query's augmentation and severity name exactly one
    (NAME, or NAME@SEVERITY for a levelled perturbation), else None."""
    if query.augmentation is None:
        return None
    chosen = [
        a
        for a in augmentations
        if a["augmentation"] == query.augmentation
        and (query.severity is None or a["severity"] == query.severity)
    ]
    if len(chosen) != 1:
        return None
    name, severity = chosen[0]["augmentation"], chosen[0]["severity"]
    return name if severity is None else f"{name}@{severity}"


def _with_pixels(store: Store, run: Run, image_ids: set[str]) -> set[tuple[str, str]]:
    table = store.variants_table_of(run.run_id)
    if table is None or not image_ids:
        return set()
    found = store.dataset(table).to_table(
        columns=["image_id", "variant"],
        filter=matches(run_id=run.run_id, image_id=sorted(image_ids))
        & pc.field("pixels").is_valid(),
    )
    return set(
        zip(found.column("image_id").to_pylist(), found.column("variant").to_pylist(), strict=True)
    )


def _top5(con, run: Run, image_id: str) -> dict[str, list[dict]]:
    """Each variant's stored zero-shot top-5 (label and probability), from one label set and
    template (ImageNet first), where `clipshift zeroshot` stored any."""
    rows = con.execute(
        "WITH chosen AS (SELECT label_set, template FROM zeroshot WHERE run_id = $run_id "
        "  ORDER BY label_set <> 'imagenet', label_set, template LIMIT 1) "
        "SELECT z.variant, z.top_labels, z.top_probs, z.label_set "
        "FROM zeroshot AS z JOIN chosen USING (label_set, template) "
        "WHERE z.run_id = $run_id AND z.image_id = $image_id",
        {"run_id": run.run_id, "image_id": image_id},
    ).fetchall()
    if not rows:
        return {}
    wanted = sorted({int(i) for _, labels, _, _ in rows for i in labels})
    names = dict(
        con.execute(
            "SELECT label_index, label FROM zeroshot_labels "
            "WHERE label_set = $label_set AND list_contains($wanted, label_index)",
            {"label_set": rows[0][3], "wanted": wanted},
        ).fetchall()
    )
    return {
        variant: [
            {"label": names.get(int(i)), "label_index": int(i), "probability": float(p)}
            for i, p in zip(labels, probs, strict=True)
        ]
        for variant, labels, probs, _ in rows
    }


def _neighbors(store: Store, run: Run, table: str, vectors: np.ndarray) -> list[list[dict]]:
    """The NEIGHBORS stored originals nearest each vector (cosine distance, exact: computed on
    the rows found, as clipshift.neighbors does), by LanceDB search through clipshift.index;
    the vector index is used where one exists and never built here (the server only reads)."""
    from ..index import has_vector_index, query_index, search
    from ..knn import normalise

    if not len(vectors):
        return []
    use_index = has_vector_index(store, table)
    candidates = where(run_id=run.run_id, variant=ORIGINAL)
    found = search(
        store,
        table,
        vectors if len(vectors) > 1 else vectors[0],
        candidates,
        NEIGHBORS,
        use_index,
        ("image_id", "embedding"),
    )
    which = query_index(found)
    ids = found.column("image_id").to_pylist()
    flat = found.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
    unit = normalise(flat.reshape(found.num_rows, -1).astype(np.float32), np.float64)
    queries = normalise(vectors, np.float64)
    answer: list[list[dict]] = [[] for _ in vectors]
    for row, q in enumerate(which):
        distance = max(float(1.0 - unit[row] @ queries[q]), 0.0) + 0.0
        answer[q].append({"image_id": ids[row], "distance": distance})
    for found_rows in answer:
        found_rows.sort(key=lambda r: (r["distance"], r["image_id"]))
    return answer
