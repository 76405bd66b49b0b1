"""What `clipshift serve`'s JSON API answers, as plain library functions (clipshift.serve.app
routes each request to one of them).

Every function opens the store afresh, so each request reads the store's latest version: a
running ingest's new images show on reload. What is slow to compute (the runs' counts, a run's
summary, its gallery rows, its projection) the server keeps in memory under the versions of
the tables it was computed from (`Kept`), so a changed table is a new key, never a stale
answer. Nothing here writes. The records use the field names and the values of the commands'
`--format json` (clipshift.formatting), so the page shows the numbers `stats` and `sql` print.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import ClipshiftError
from ..defaults import METRICS, ORIGINAL
from ..filters import matches, where
from ..formatting import _plain as json_ready
from ..formatting import format_rows
from ..index import Embeddings
from ..query import Rows, as_dicts, connect, named_arrow, named_query
from ..runs import Run, read_runs, resolve_run
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
# run snapshots kept in memory, newest first (each ~90 MB at the paper's size: the gallery's
# rows, the row ids, the originals' embeddings)
SNAPSHOTS_KEPT = 4
# originals the in-memory neighbour search keeps per query beyond NEIGHBORS, ranked in float32
# before their distances are recomputed in float64 (a tie within 1e-6 is all that could differ)
NEIGHBOR_SCREEN = 32


class NotFound(ClipshiftError):
    """An unknown run, image or variant: the server answers 404 with this one line."""


# -- runs and summary ------------------------------------------------------------------------


def runs(db: str | os.PathLike | Store, memo: Memo | None = None) -> list[dict]:
    """Every run, most recent first: the runs columns (not the JSON definitions) with its
    images, variants and perturbations counted. With `memo`, kept per version of the runs and
    variants tables (the counts scan every variants row: ~100 ms at the paper's size)."""
    store = _store(db)
    if not store.has_table("runs"):
        return []
    if memo is None:
        return _runs(store)
    names = ["runs", *store.variants_tables()]
    key = ("runs", str(store.path), *((n, store.dataset(n).version) for n in names))
    return memo.get(key, lambda: _runs(store))


def _runs(store: Store) -> list[dict]:
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


def images(
    db: str | os.PathLike | Store,
    run: str | None,
    query: GalleryQuery,
    snapshots: Memo | None = None,
) -> dict:
    """One page of the run's (image, variant) rows ranked by `query.metric` (sql/gallery.sql
    over the run's `Snapshot`), each with whether its original and variant kept pixels;
    `total` counts every match. With `snapshots`, the snapshot is kept per store version."""
    if query.metric not in METRICS:
        raise ClipshiftError(f"metric {query.metric!r}: one of {', '.join(METRICS)}")
    order = query.order or ("desc" if query.metric in HIGHER_MOVES_MORE else "asc")
    if order not in ("asc", "desc"):
        raise ClipshiftError(f"order {query.order!r}: asc or desc")
    if query.offset < 0 or not 1 <= query.limit <= MAX_PAGE:
        raise ClipshiftError(f"offset >= 0 and limit 1 to {MAX_PAGE}, please")
    store = _store(db)
    chosen = _run(store, run)
    kept = snapshot(store, chosen, snapshots)
    con = memory_cursor()
    con.register("gallery_rows", kept.rows)
    found = named_query(
        con,
        "gallery",
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
    con.close()
    total = records[0]["total"] if records else 0
    for record in records:
        del record["total"]
    return {
        "run_id": chosen.run_id,
        "metric": query.metric,
        "order": order,
        "offset": query.offset,
        "limit": query.limit,
        "total": total,
        "augmentations": kept.augmentations,
        "labels": kept.labels,
        "images": records,
    }


# -- what the server keeps about a run -----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the server keeps in memory about one run at one store version (`store_version`),
    so a gallery page is a DuckDB query over memory and the image view reads its rows by row
    id: the whole of it took 2.2 s at the paper's size, a page over it ~20 ms."""

    table: str  # the run's variants table
    version: int  # its version the snapshot was taken from
    rows: pa.Table  # sql/gallery_rows.sql, with original_pixels and variant_pixels
    stored: pa.Table  # every stored row of the run: image_id, variant, _rowid
    augmentations: list[dict]  # the (augmentation, severity) pairs, for the gallery's filters
    labels: list[str]  # the originals' zero-shot top-1 labels, for the gallery's filter
    vector_index: bool  # whether the table has a vector index (the neighbour search uses it)
    originals: Embeddings | None  # the run's originals, for the neighbour search without one
    unit_originals: np.ndarray | None  # the same as unit vectors (float32)


def store_version(store: Store, run: Run) -> tuple:
    """What a `Snapshot` of `run` is computed from: `table_version`, and the versions of the
    images and zero-shot tables (paths, labels)."""
    others = ("images", "zeroshot", "zeroshot_labels")
    names = set(store.table_names())
    return (
        *table_version(store, run),
        *((n, store.dataset(n).version) for n in others if n in names),
    )


def snapshot(store: Store, run: Run, memo: Memo | None = None) -> Snapshot:
    """The run's `Snapshot` at the store's latest version: from `memo` when kept there."""
    key = store_version(store, run)
    if key[2] is None:
        raise NotFound(f"run {run.run_id} holds no images yet")
    if memo is None:
        return _snapshot(store, run, key[2], key[3])
    return memo.get(("snapshot", *key), lambda: _snapshot(store, run, key[2], key[3]))


def _snapshot(store: Store, run: Run, table: str, version: int) -> Snapshot:
    from ..index import has_vector_index, load_embeddings
    from ..knn import normalise

    dataset = _at_version(store.dataset(table), version)
    stored = dataset.to_table(
        columns=["image_id", "variant"], filter=matches(run_id=run.run_id), with_row_id=True
    )
    kept = dataset.to_table(
        columns=["image_id", "variant"],
        filter=matches(run_id=run.run_id) & pc.field("pixels").is_valid(),
    )
    con = connect(store)
    rows = named_arrow(con, "gallery_rows", run_id=run.run_id)
    con.register("gallery_rows", rows)
    con.register("kept", kept)
    rows = con.sql(
        "SELECT g.*, o.image_id IS NOT NULL AS original_pixels, "
        "v.image_id IS NOT NULL AS variant_pixels FROM gallery_rows AS g "
        "LEFT JOIN kept AS o ON o.image_id = g.image_id AND o.variant = 'original' "
        "LEFT JOIN kept AS v ON v.image_id = g.image_id AND v.variant = g.variant"
    ).to_arrow_table()
    labels = con.execute(
        "SELECT DISTINCT l.label FROM zeroshot AS z JOIN zeroshot_labels AS l "
        "ON l.label_set = z.label_set AND l.label_index = z.top_labels[1] "
        "WHERE z.run_id = $run_id AND z.variant = 'original' ORDER BY 1",
        {"run_id": run.run_id},
    ).fetchall()
    augmentations = _augmentations(con, run)
    con.close()
    vector_index = has_vector_index(store, table)
    originals = unit = None
    if not vector_index:
        originals = load_embeddings(store, table, matches(run_id=run.run_id, variant=ORIGINAL))
        unit = normalise(originals.vectors)
    return Snapshot(
        table,
        version,
        rows,
        stored,
        augmentations,
        [r[0] for r in labels],
        vector_index,
        originals,
        unit,
    )


def _at_version(dataset, version: int):
    """The dataset at the version a snapshot was taken from: a write committed since (between
    reading the key and reading the rows) could have moved the rows its ids point at."""
    return dataset if dataset.version == version else dataset.checkout_version(version)


_MEMORY: duckdb.DuckDBPyConnection | None = None
_MEMORY_LOCK = threading.Lock()


def memory_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory DuckDB database, for queries over the tables the server keeps
    (registered on it; never user SQL): 1-2 ms, where a new connection takes ~40 ms."""
    global _MEMORY
    with _MEMORY_LOCK:
        if _MEMORY is None:
            _MEMORY = duckdb.connect(":memory:")
            _MEMORY.execute("SET enable_progress_bar = false")
            _MEMORY.execute("SET enable_external_access = false")
            _MEMORY.execute("SET lock_configuration = true")
        return _MEMORY.cursor()


# -- one image -------------------------------------------------------------------------------


def image(
    db: str | os.PathLike | Store,
    run: str | None,
    image_id: str,
    snapshots: Memo | None = None,
) -> dict:
    """Everything stored about one image of a run: its original and every variant with its
    metrics (as the `shifts` view gives them), attention maps of every layer, the token drift
    where the store has it, the zero-shot top-5 where stored, and each one's nearest stored
    originals. Its rows are read by row id and its metrics from the run's `Snapshot`."""
    store = _store(db)
    chosen = _run(store, run)
    kept = snapshot(store, chosen, snapshots)
    mine = kept.stored.filter(pc.equal(kept.stored.column("image_id"), image_id))
    if not mine.num_rows:
        raise NotFound(f"no image {image_id} in run {chosen.run_id}")
    dataset = _at_version(store.dataset(kept.table), kept.version)
    drift = [n for n in dataset.schema.names if n.startswith("token_drift")]
    columns = ["variant", "severity", "attention", "attention_layers", "embedding", *drift]
    stored = dataset._take_rows(mine.column("_rowid").to_pylist(), columns=columns + ["pixels"])
    shifts = kept.rows.filter(pc.equal(kept.rows.column("image_id"), image_id)).to_pylist()
    metrics = {r["variant"]: r for r in shifts}
    path = shifts[0]["path"] if shifts else _path(store, image_id)
    top5 = _top5(store, chosen, image_id)
    rows = stored.to_pylist()
    rows.sort(key=lambda r: (r["variant"] != ORIGINAL, r["variant"]))
    vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    near = _neighbors(store, chosen, kept, vectors)
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
            "path": path,
            "patch_grid": chosen.patch_grid,
            "num_layers": chosen.num_layers,
            "token_drift_columns": drift,
            "variants": variants,
        }
    )


def _path(store: Store, image_id: str) -> str | None:
    found = store.dataset("images").to_table(columns=["path"], filter=matches(image_id=image_id))
    return found.column("path")[0].as_py() if found.num_rows else None


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
    answer. Requests asking for a key being computed wait for that computation rather than
    repeat it (the page asks for a run's gallery and image view at once after an ingest's
    commit: a snapshot is seconds of CPU at the paper's size)."""

    def __init__(self, kept: int = PROJECTIONS_KEPT):
        self._kept = kept
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, compute):
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            try:
                answer = compute()
                with self._lock:
                    self._cache[key] = answer
                    while len(self._cache) > self._kept:
                        self._cache.popitem(last=False)
            finally:
                with self._lock:
                    self._computing.pop(key, None)
        return answer


def table_version(store: Store, run: Run) -> tuple:
    """What a cached answer about `run` was computed from: the store, the run and the version
    of the run's variants table (None before its first batch). The table is named from the
    Run already read (store.variants_table_of reads the runs table again: every request asks)."""
    table = run.variants_table if store.has_table(run.variants_table) else None
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


class Kept:
    """What one server keeps in memory, each answer under the versions of the tables it was
    computed from: the runs' counts, each run's summary, snapshot and projections."""

    def __init__(self):
        self.runs = Memo()
        self.summaries = Memo()
        self.snapshots = Memo(SNAPSHOTS_KEPT)
        self.projections = Projections()


def warm(db: str | os.PathLike | Store, run: str | None, kept: Kept) -> None:
    """Compute, before the server answers its first request, what its first page and the run's
    gallery and image views need: the runs, and the run's summary and snapshot (at the paper's
    size the summary took 2.2 s and the snapshot 2.2 s, where the page has a second). A store
    with no run yet is left to the requests to say so."""
    store = _store(db)
    runs(store, kept.runs)
    if not store.has_table("runs") or not read_runs(store):
        return
    chosen = _run(store, run)
    stats(store, chosen.run_id, kept.summaries)
    if store.variants_table_of(chosen.run_id) is not None:
        if snapshot(store, chosen, kept.snapshots).vector_index:
            import lancedb  # noqa: F401 - the indexed neighbour search's, ~3 s to import


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
    from ..knn import normalise

    started = time.perf_counter()
    found = store.dataset(table).to_table(
        columns=["image_id", "variant", "embedding"], filter=matches(run_id=run.run_id)
    )
    dim = found.schema.field("embedding").type.list_size
    flat = found.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
    # float32 throughout: at the paper's 133k x 512 the float64 copies cost 3 of its 15 s
    vectors = normalise(flat.reshape(found.num_rows, dim))
    if method == "umap" and len(vectors) > 2:
        import umap

        points = umap.UMAP(n_components=2, random_state=0).fit_transform(vectors)
    elif len(vectors):
        from scipy.linalg import eigh

        vectors -= vectors.mean(axis=0)
        # the top two eigenvectors of the D x D covariance only (LAPACK's subset driver): the
        # full decomposition took seconds on a busy 2-core machine, a full SVD of the points
        # longer still; the covariance in float32 (BLAS's syrk, ~3 s at the paper's size, the
        # projection's largest part)
        covariance = (vectors.T @ vectors).astype(np.float64)
        d = len(covariance)
        _, basis = eigh(covariance, subset_by_index=[d - 2, d - 1])
        basis = basis[:, ::-1]
        # a sign per axis, fixed by the largest loading, so a re-run draws the same picture
        basis *= np.sign(basis[np.abs(basis).argmax(axis=0), [0, 1]])
        points = vectors @ basis.astype(np.float32)
    else:
        points = np.zeros((0, 2))
    # the image and variant of each point as indexes, computed in Arrow (np.unique over the
    # ids as Python strings took 0.4 s)
    ids = found.column("image_id").combine_chunks()
    names = pc.unique(ids).sort()
    stored_variants = set(pc.unique(found.column("variant")).to_pylist())
    variant_names = [ORIGINAL] + sorted(stored_variants - {ORIGINAL})
    kept = store.dataset(table).to_table(
        columns=["image_id", "variant"],
        filter=matches(run_id=run.run_id) & pc.field("pixels").is_valid(),
    )
    if kept.num_rows:
        pairs = pc.binary_join_element_wise(ids, found.column("variant"), "\x00")
        stored = pc.binary_join_element_wise(
            kept.column("image_id"), kept.column("variant"), "\x00"
        )
        pixels = pc.is_in(pairs, value_set=stored.combine_chunks()).to_numpy(zero_copy_only=False)
    else:
        pixels = np.zeros(found.num_rows, dtype=bool)
    return {
        "run_id": run.run_id,
        "method": method,
        "seconds": round(time.perf_counter() - started, 3),
        "images": names.to_pylist(),
        "variants": variant_names,
        "x": np.round(points[:, 0].astype(np.float64), 5).tolist(),
        "y": np.round(points[:, 1].astype(np.float64), 5).tolist(),
        "image": pc.index_in(ids, value_set=names).to_numpy().tolist(),
        "variant": pc.index_in(found.column("variant"), value_set=pa.array(variant_names))
        .to_numpy()
        .tolist(),
        # 1 where the point's PNG is stored (the hover shows it), else 0
        "pixels": pixels.astype(int).tolist(),
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
    """A JSON-ready copy, as `--format json` writes values (NaN becomes null): the value
    formatting.py's JSON writer takes, without the text in between (an image view's 20k floats
    took ~100 ms through the text)."""
    return json_ready(value)


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


def _top5(store: Store, run: Run, image_id: str) -> dict[str, list[dict]]:
    """Each variant's stored zero-shot top-5 (label and probability), from one label set and
    template (ImageNet first), where `clipshift zeroshot` stored any. On a memory cursor with
    only the two zero-shot tables registered: a full `connect` costs ~100 ms."""
    if not (store.has_table("zeroshot") and store.has_table("zeroshot_labels")):
        return {}
    con = memory_cursor()
    for name in ("zeroshot", "zeroshot_labels"):
        con.register(name, store.dataset(name))
    rows = con.execute(
        "WITH chosen AS (SELECT label_set, template FROM zeroshot WHERE run_id = $run_id "
        "  ORDER BY label_set <> 'imagenet', label_set, template LIMIT 1) "
        "SELECT z.variant, z.top_labels, z.top_probs, z.label_set "
        "FROM zeroshot AS z JOIN chosen USING (label_set, template) "
        "WHERE z.run_id = $run_id AND z.image_id = $image_id",
        {"run_id": run.run_id, "image_id": image_id},
    ).fetchall()
    if not rows:
        con.close()
        return {}
    wanted = sorted({int(i) for _, labels, _, _ in rows for i in labels})
    names = dict(
        con.execute(
            "SELECT label_index, label FROM zeroshot_labels "
            "WHERE label_set = $label_set AND list_contains($wanted, label_index)",
            {"label_set": rows[0][3], "wanted": wanted},
        ).fetchall()
    )
    con.close()
    return {
        variant: [
            {"label": names.get(int(i)), "label_index": int(i), "probability": float(p)}
            for i, p in zip(labels, probs, strict=True)
        ]
        for variant, labels, probs, _ in rows
    }


def _neighbors(store: Store, run: Run, kept: Snapshot, vectors: np.ndarray) -> list[list[dict]]:
    """The NEIGHBORS stored originals nearest each vector, by cosine distance computed exactly
    in float64 as clipshift.neighbors does. Where the run's table has a vector index, LanceDB
    searches it through clipshift.index (as `neighbors` does; the server never builds one);
    otherwise the search is exact, over the snapshot's originals in memory: 10 queries against
    13k originals in ~10 ms, where LanceDB's flat search took 0.6 s."""
    from ..knn import normalise

    if not len(vectors):
        return []
    queries = normalise(vectors, np.float64)
    answer: list[list[dict]] = [[] for _ in vectors]
    if kept.vector_index:
        from ..index import query_index, search

        found = search(
            store,
            kept.table,
            vectors if len(vectors) > 1 else vectors[0],
            where(run_id=run.run_id, variant=ORIGINAL),
            NEIGHBORS,
            True,
            ("image_id", "embedding"),
        )
        which = query_index(found)
        ids = np.asarray(found.column("image_id").to_pylist(), dtype=object)
        flat = found.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False)
        candidates = flat.reshape(found.num_rows, -1)
        rows = [np.flatnonzero(which == q) for q in range(len(vectors))]
    elif not len(kept.originals.vectors):
        return answer
    else:
        ids, candidates = kept.originals.image_ids, kept.originals.vectors
        # a float32 screen of every original, then the few nearest recomputed in float64
        similarity = kept.unit_originals @ queries.T.astype(np.float32)
        depth = min(NEIGHBORS + NEIGHBOR_SCREEN, len(candidates))
        rows = [np.argpartition(-similarity[:, q], depth - 1)[:depth] for q in range(len(vectors))]
    for q, found_rows in enumerate(rows):
        unit = normalise(candidates[found_rows], np.float64)
        distances = np.maximum(1.0 - unit @ queries[q], 0.0) + 0.0
        ranked = sorted(zip(distances.tolist(), ids[found_rows].tolist(), strict=True))
        answer[q] = [{"image_id": i, "distance": d} for d, i in ranked[:NEIGHBORS]]
    return answer
