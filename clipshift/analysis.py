"""The analysis commands on the views and named queries (clipshift.query): stats, compare,
sql and clusters.

Every metric is computed in SQL (sql/views/*.sql, sql/*.sql); Python picks the run
(clipshift.runs.resolve_run, the one run selection every command uses), binds the parameters
and shapes the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from . import ClipshiftError
from .defaults import DEFAULT_LINKAGE, LINKAGE_METHODS
from .query import Rows, as_dicts, connect, fetch, named_query, require_augmented_rows
from .runs import Run, resolve_run
from .store import Store

# -- stats -----------------------------------------------------------------------------------


def stats(
    db: str | os.PathLike | Store,
    run: str | Sequence[str] | None = None,
    model: str | None = None,
    reference: str | None = None,
    *,
    all_runs: bool = False,
) -> Rows:
    """The per-(augmentation, severity) summary of one run (sql/summary.sql), sorted by rank.

    Columns: augmentation, severity (NULL without levels), n, and the mean, std, median, p5
    and p95 of every metric, then overall and rank. `Rows.run` is the run shown (with its
    selection_note). Where the run has severity levels, `Rows.sections` adds "severity" (the
    severity curves, sql/severity_curves.sql) and "corruption_mean" (sql/corruption_mean.sql,
    relative to the run `reference` where one is named: a run_id or a unique prefix).

    With several runs (`run` a list of two or more) or `all_runs`, the summary of each in
    long format (sql/summary_runs.sql): run_id, model, family and model_rank (the run's place
    on that augmentation and severity by mean cosine) before the same columns; `Rows.run` is
    None.
    """
    store = db if isinstance(db, Store) else Store.open(db)
    con = connect(store)
    runs = [run] if isinstance(run, str) or run is None else list(run)
    if all_runs or len(runs) > 1:
        if all_runs:
            chosen = [r["run_id"] for r in as_dicts(con.execute("SELECT run_id FROM runs"))]
            if not chosen:
                resolve_run(store)  # the empty-store error
        else:
            chosen = list(dict.fromkeys(resolve_run(store, r, model).run_id for r in runs))
        return fetch(named_query(con, "summary_runs", run_ids=chosen))
    chosen = resolve_run(store, runs[0] if runs else None, model)
    reference_id = resolve_run(store, reference).run_id if reference is not None else None
    result = fetch(named_query(con, "summary", run_id=chosen.run_id), chosen)
    if not result.rows:
        require_augmented_rows(con, chosen)
    if any(row[result.columns.index("severity")] is not None for row in result.rows):
        result.sections["severity"] = fetch(
            named_query(con, "severity_curves", run_id=chosen.run_id), chosen
        )
        result.sections["corruption_mean"] = fetch(
            named_query(con, "corruption_mean", run_id=chosen.run_id, reference=reference_id),
            chosen,
        )
    elif reference is not None:
        raise ClipshiftError(
            f"--reference: run {chosen.run_id} has no perturbations with severity levels "
            "to compare (ingest with --augmentations corruptions)"
        )
    return result


# -- compare ---------------------------------------------------------------------------------

# what `clipshift compare` prints per (metric, augmentation); differences are A - B
COMPARE_COLUMNS = (
    "metric",
    "augmentation",
    "severity",
    "n",
    "mean_a",
    "mean_b",
    "mean_difference",
    "median_difference",
    "wilcoxon_p",
    "more_robust",
)
# the significance level behind `more_robust`
ALPHA = 0.05


@dataclass
class Comparison:
    """Run A against run B: paired differences per metric and augmentation, and the Kendall
    tau between the two runs' rankings of the augmentations per metric (and on overall)."""

    run_a: Run
    run_b: Run
    rows: list[dict]  # COMPARE_COLUMNS
    kendall_tau: dict[str, tuple[float, float]]  # metric -> (tau, p)
    note: str | None = None

    @property
    def columns(self) -> list[str]:
        return list(COMPARE_COLUMNS)


def compare(db: str | os.PathLike | Store, run_a: str, run_b: str) -> Comparison:
    """Is run A's model more robust than run B's, augmentation by augmentation?

    For cosine and attention_similarity, over the images both runs hold (sql/compare.sql):
    the mean paired difference A - B (positive: A moves less) and the two-sided Wilcoxon
    signed-rank p-value (scipy, zero differences dropped: zero_method "wilcox"); more_robust
    names the run whose mean is higher where p < 0.05. Kendall tau compares the two runs'
    rankings of the augmentations by each metric's mean, and by the overall score.
    """
    from scipy.stats import kendalltau, wilcoxon

    store = db if isinstance(db, Store) else Store.open(db)
    con = connect(store)
    a, b = resolve_run(store, run_a), resolve_run(store, run_b)
    if a.run_id == b.run_id:
        raise ClipshiftError(f"RUN_A and RUN_B are both run {a.run_id}: give two runs")
    for chosen in (a, b):
        require_augmented_rows(con, chosen)
    found = as_dicts(named_query(con, "compare", run_a=a.run_id, run_b=b.run_id))
    if not found:
        raise ClipshiftError(
            f"runs {a.run_id} and {b.run_id} share no (image, augmentation): ingest the "
            "same images with the same augmentations into both"
        )
    rows, taus = [], {}
    for row in found:
        differences = np.asarray(row.pop("differences"), dtype=np.float64)
        if np.all(differences == 0):
            p = 1.0  # identical: no evidence of any difference (scipy cannot rank zeros)
        else:
            p = float(wilcoxon(differences, zero_method="wilcox").pvalue)
        row["wilcoxon_p"] = p
        row["more_robust"] = (
            ("A" if row["mean_difference"] > 0 else "B") if p < ALPHA else "neither"
        )
        rows.append(row)
    for metric in dict.fromkeys(r["metric"] for r in rows):
        means = [(r["mean_a"], r["mean_b"]) for r in rows if r["metric"] == metric]
        taus[metric] = _kendall(kendalltau, means)
    overall = con.execute(
        "SELECT a.overall, b.overall FROM summary AS a JOIN summary AS b "
        "ON a.augmentation = b.augmentation AND a.severity IS NOT DISTINCT FROM b.severity "
        "WHERE a.run_id = $a AND b.run_id = $b",
        {"a": a.run_id, "b": b.run_id},
    ).fetchall()
    taus["overall"] = _kendall(kendalltau, overall)
    note = None
    if (a.seed, a.augmentation_hash) != (b.seed, b.augmentation_hash):
        note = (
            "the runs differ in seed or augmentation settings: their augmented images differ, "
            "so the pairs compare models on different pixels"
        )
    return Comparison(a, b, rows, taus, note)


def _kendall(kendalltau, pairs: list[tuple[float, float]]) -> tuple[float, float]:
    if len(pairs) < 2:
        return float("nan"), float("nan")
    x, y = zip(*pairs, strict=True)
    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


# -- ad hoc SQL ------------------------------------------------------------------------------


def sql(
    db: str | os.PathLike | Store | duckdb.DuckDBPyConnection,
    query: str,
    max_rows: int | None = None,
) -> Rows:
    """Run the user's `query` over the views; read-only towards the store (see `connect`).
    `db` may be a connection from `connect` (`clipshift serve` interrupts it past a time limit).

    With `max_rows`, only that many rows are fetched into Python and `total_rows` counts
    them all (the rest stay in Arrow), so a query over every embedding is cheap to preview.
    A bad query raises ClipshiftError with DuckDB's message on one line.
    """
    if max_rows is not None and max_rows < 0:
        raise ClipshiftError(f"--max-rows {max_rows}: give 0 or more")
    con = db if isinstance(db, duckdb.DuckDBPyConnection) else connect(db)
    relation = _run_user_query(con, query)
    if relation is None:  # a statement without rows (CREATE VIEW, SET, ...)
        return Rows([], [])
    columns = list(relation.columns)
    if max_rows is None:
        return Rows(columns, _guarded(relation.fetchall))
    kept: list[tuple] = []
    total = 0
    reader = _guarded(relation.to_arrow_reader)
    for batch in reader:
        if len(kept) < max_rows:
            head = batch.slice(0, max_rows - len(kept)).to_pylist()
            kept += [tuple(row.values()) for row in head]
        total += batch.num_rows
    return Rows(columns, kept, total_rows=total)


def sql_arrow(db: str | os.PathLike | Store, query: str) -> pa.Table:
    """The user's `query` as an Arrow table (for Parquet output); errors as in `sql`."""
    con = connect(db)
    relation = _run_user_query(con, query)
    if relation is None:
        raise ClipshiftError("the query returns no rows to write: give a SELECT")
    return _guarded(relation.to_arrow_table)


def _run_user_query(con: duckdb.DuckDBPyConnection, query: str) -> duckdb.DuckDBPyRelation | None:
    """The relation of the query's last statement (None where it returns no rows)."""
    if not query.strip():
        raise ClipshiftError('empty query: give SQL, e.g. clipshift sql "SELECT * FROM runs"')
    statements = _guarded(con.extract_statements, query)
    if len(statements) > 1:
        # DuckDB would run them all and show only the last result
        raise ClipshiftError(
            f"{len(statements)} SQL statements given: give one per call (a SELECT, or WITH ... "
            "SELECT); run the others separately"
        )
    for statement in statements:
        _refuse_changes(statement)
    return _guarded(con.sql, query)


# The statement types `sql` runs: each only reads. SHOW, DESCRIBE, SUMMARIZE, VALUES and FROM
# are SELECTs to DuckDB; PRAGMA (version, table_info, ...) reads or, where it would set an
# option, is a SET or meets the locked configuration; CALL runs a table function; MULTI is
# DuckDB's form of a PIVOT. Everything else would change the scratch connection (CREATE, DROP,
# ALTER, SET), try to write (INSERT, UPDATE, DELETE, COPY, EXPORT, ATTACH) or reach outside
# (INSTALL, LOAD): each is refused by its type before it runs, not left to whatever DuckDB
# says, since a CREATE TABLE or DROP VIEW would otherwise report success and persist nothing.
READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL", "MULTI"})


def _refuse_changes(statement) -> None:
    """A one-line ClipshiftError for a statement that is not a read (`READ_STATEMENTS`)."""
    try:
        kind = statement.type.name
    except ValueError:  # a type newer than the Python enum (e.g. UPDATE EXTENSIONS)
        kind = "UNKNOWN"
    if kind in READ_STATEMENTS:
        return
    words = statement.query.split()
    keyword = words[0].upper() if words else kind
    if keyword == "WITH" or not keyword.isalpha():
        keyword = kind.replace("_", " ")
    raise ClipshiftError(
        f"{keyword} is refused: `clipshift sql` only reads (a change would not reach the "
        "store); give a SELECT, WITH, DESCRIBE, SHOW, EXPLAIN or SUMMARIZE"
    )


def _guarded(call, *args):
    """Call DuckDB; its error (a user's bad SQL) becomes a one-line ClipshiftError. A failure
    to read a table is not the query's fault: it stays as it is, for the CLI to diagnose the
    store (`Store.diagnose`)."""
    try:
        return call(*args)
    except duckdb.Error as exc:
        if "reading the stream registered as" in str(exc):
            raise
        raise ClipshiftError(one_line_error(exc)) from None


def one_line_error(exc: Exception) -> str:
    """DuckDB's message without the query excerpt and caret that follow it, on one line."""
    message = str(exc).split("\n\nLINE ")[0].split("\nLINE ")[0]
    return " ".join(message.split())


# -- clusters --------------------------------------------------------------------------------

# fcluster's default cut: this fraction of the largest merge height (metrics.md)
DEFAULT_THRESHOLD_FRACTION = 0.7


@dataclass
class Clusters:
    """Hierarchical clustering of a run's augmentations on their mean pairwise distance."""

    run: Run
    method: str
    augmentations: list[str]
    distances: np.ndarray  # the square pairwise matrix, rows/columns in `augmentations` order
    linkage: np.ndarray  # scipy's linkage matrix: (a, b, height, size) per merge
    threshold: float
    labels: list[int]  # fcluster's label of each augmentation

    @property
    def members(self) -> dict[int, list[str]]:
        """Each cluster's augmentations, clusters numbered as fcluster numbers them."""
        groups: dict[int, list[str]] = {}
        for name, label in zip(self.augmentations, self.labels, strict=True):
            groups.setdefault(label, []).append(name)
        return dict(sorted(groups.items()))

    def merges(self) -> list[tuple[float, list[str], list[str]]]:
        """Each merge, lowest first: its height and the two groups it joins."""
        groups = [[name] for name in self.augmentations]
        found = []
        for a, b, height, _ in self.linkage:
            left, right = groups[int(a)], groups[int(b)]
            found.append((float(height), left, right))
            groups.append(left + right)
        return found


def clusters(
    db: str | os.PathLike | Store,
    run: str | None = None,
    model: str | None = None,
    method: str = DEFAULT_LINKAGE,
    threshold: float | None = None,
) -> Clusters:
    """scipy `linkage` on the run's 9 x 9 mean pairwise cosine distance (sql/pairwise.sql),
    `fcluster` with criterion "distance" at `threshold` (default 0.7 x the largest merge)."""
    if method not in LINKAGE_METHODS:
        raise ClipshiftError(f"unknown method {method!r}: one of {', '.join(LINKAGE_METHODS)}")
    if threshold is not None and not threshold > 0:
        raise ClipshiftError(f"--threshold must be a positive distance, not {threshold}")
    store = db if isinstance(db, Store) else Store.open(db)
    con = connect(store)
    chosen = resolve_run(store, run, model)
    require_augmented_rows(con, chosen)
    pairs = named_query(con, "pairwise", run_id=chosen.run_id).fetchall()
    return cluster_pairs(chosen, pairs, method, threshold)


def cluster_pairs(
    run: Run,
    pairs: Iterable[tuple[str, str, float]],
    method: str = DEFAULT_LINKAGE,
    threshold: float | None = None,
) -> Clusters:
    """Clusters from rows of sql/pairwise.sql: (augmentation_a, augmentation_b, distance)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    pairs = list(pairs)
    names = sorted({a for a, _, _ in pairs})
    if len(names) < 2:
        raise ClipshiftError(
            f"run {run.run_id} has {len(names)} augmentation: clustering needs two or more"
        )
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for a, b, distance in pairs:
        matrix[index[a], index[b]] = distance
    # the view's matrix is symmetric with a zero diagonal; checks=False tolerates the last-bit
    # noise of a mean of float distances
    tree = linkage(squareform(matrix, checks=False), method=method)
    cut = DEFAULT_THRESHOLD_FRACTION * float(tree[:, 2].max()) if threshold is None else threshold
    labels = fcluster(tree, t=cut, criterion="distance")
    return Clusters(run, method, names, matrix, tree, cut, [int(x) for x in labels])
