"""The analysis SQL against an independent numpy/scipy computation on the stored arrays, and
the stats / sql / clusters commands end to end (a real store, a real DuckDB connection)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from cli import cli
from clipshift import ClipshiftError
from clipshift.analysis import clusters, sql, sql_arrow, stats
from clipshift.formatting import STATS_TABLE_COLUMNS, format_rows
from clipshift.query import connect, named_query, query_names
from clipshift.runs import resolve_run
from clipshift.store import Store
from clipshift.synthetic import build_synthetic_store

TOLERANCE = 1e-5
METRICS = (
    "cosine",
    "l2",
    "attention_similarity",
    "patch_similarity",
    "edge_preservation",
    "detail_preservation",
)
SCORES = (
    "cosine",
    "attention_similarity",
    "patch_similarity",
    "edge_preservation",
    "detail_preservation",
)
STATS_JSON_KEYS = {
    "augmentation",
    "n",
    "cosine_mean",
    "cosine_std",
    "l2_mean",
    "l2_std",
    "attention_similarity_mean",
    "patch_similarity_mean",
    "edge_preservation_mean",
    "detail_preservation_mean",
    "overall",
    "rank",
}


# -- the independent computation -------------------------------------------------------------


def stored_rows(db) -> dict[tuple[str, str, str], dict]:
    """Every variants row, read with pylance (not DuckDB), keyed by (run, image, variant)."""
    store = Store.open(db)
    table = pa.concat_tables(
        store.dataset(name).to_table().cast(_list_embedding(store.dataset(name).schema))
        for name in store.variants_tables()
    )
    rows = {}
    for row in table.to_pylist():
        rows[(row["run_id"], row["image_id"], row["variant"])] = row
    return rows


def _list_embedding(schema: pa.Schema) -> pa.Schema:
    index = schema.get_field_index("embedding")
    return schema.set(index, pa.field("embedding", pa.list_(pa.float32())))


def normalised(values) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def attention_similarity(a, b) -> float:
    return 1.0 / (1.0 + np.mean((normalised(a) - normalised(b)) ** 2))


def expected_shifts(db) -> dict[tuple[str, str, str], dict]:
    rows = stored_rows(db)
    expected = {}
    for (run_id, image_id, variant), row in rows.items():
        if variant == "original":
            continue
        original = rows[(run_id, image_id, "original")]
        u = np.asarray(original["embedding"], dtype=np.float64)
        v = np.asarray(row["embedding"], dtype=np.float64)
        expected[(run_id, image_id, variant)] = {
            "cosine": float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))),
            "l2": float(np.linalg.norm(u - v)),
            "attention_similarity": attention_similarity(original["attention"], row["attention"]),
            "patch_similarity": row["patch_similarity"],
            "edge_preservation": row["edge_preservation"],
            "detail_preservation": row["detail_preservation"],
        }
    return expected


def expected_summary(shifts: dict) -> dict[str, dict]:
    by_augmentation: dict[str, dict[str, list]] = {}
    for (_, _, augmentation), values in shifts.items():
        for metric in METRICS:
            by_augmentation.setdefault(augmentation, {m: [] for m in METRICS})[metric].append(
                values[metric]
            )
    summary = {}
    for augmentation, columns in by_augmentation.items():
        row = {"n": len(columns["cosine"])}
        for metric, values in columns.items():
            x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            x = x[~np.isnan(x)]  # NULL detail_preservation: no textured patch
            row[f"{metric}_mean"] = x.mean()
            row[f"{metric}_std"] = x.std()
            row[f"{metric}_median"] = np.median(x)
            row[f"{metric}_p5"] = np.percentile(x, 5)
            row[f"{metric}_p95"] = np.percentile(x, 95)
        row["overall"] = np.mean([row[f"{s}_mean"] for s in SCORES])
        summary[augmentation] = row
    order = sorted(summary, key=lambda a: -summary[a]["overall"])
    for position, augmentation in enumerate(order, start=1):
        summary[augmentation]["rank"] = position
    return summary


def assert_close(actual, expected, what: str) -> None:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert actual is None or math.isnan(actual), what
        return
    assert actual == pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE), what


# -- the views against numpy -----------------------------------------------------------------


def test_shifts_matches_numpy_in_every_column(ingested_store):
    expected = expected_shifts(ingested_store)
    con = connect(ingested_store)
    result = con.execute("SELECT * FROM shifts")
    columns = [d[0] for d in result.description]
    assert columns == [
        "run_id",
        "model",
        "image_id",
        "augmentation",
        "severity",
        "variant",
        "cosine",
        "l2",
        "attention_similarity",
        "patch_similarity",
        "edge_preservation",
        "detail_preservation",
    ]
    rows = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
    assert len(rows) == len(expected) == 6 * 9
    model = con.execute("SELECT model FROM runs").fetchone()[0]
    for row in rows:
        key = (row["run_id"], row["image_id"], row["augmentation"])
        assert row["model"] == model
        for metric in METRICS:
            assert_close(row[metric], expected[key][metric], f"{key} {metric}")


def test_stats_matches_numpy_in_every_field(ingested_store):
    expected = expected_summary(expected_shifts(ingested_store))
    result = stats(ingested_store)
    assert result.run.selection_note is None  # one run: nothing to say
    records = result.records()
    assert [r["rank"] for r in records] == sorted(r["rank"] for r in records)
    assert {r["augmentation"] for r in records} == set(expected)
    for record in records:
        want = expected[record["augmentation"]]
        assert set(record) == {"augmentation", "severity", *want}
        assert record["severity"] is None  # the paper's augmentations have no levels
        for field, value in want.items():
            assert_close(record[field], value, f"{record['augmentation']} {field}")


def test_layer_shifts_match_numpy(ingested_store):
    rows = stored_rows(ingested_store)
    con = connect(ingested_store)
    grid, layers = con.execute("SELECT patch_grid, num_layers FROM runs").fetchone()
    cells = grid * grid
    got = con.execute(
        "SELECT run_id, image_id, augmentation, layer, attention_similarity FROM layer_shifts"
    ).fetchall()
    assert len(got) == 6 * 9 * layers
    for run_id, image_id, augmentation, layer, similarity in got:
        o = rows[(run_id, image_id, "original")]["attention_layers"]
        a = rows[(run_id, image_id, augmentation)]["attention_layers"]
        part = slice(layer * cells, (layer + 1) * cells)
        assert_close(similarity, attention_similarity(o[part], a[part]), (augmentation, layer))
    # the last layer's map is the one shifts uses
    last = dict(
        ((i, a), s)
        for i, a, s in con.execute(
            "SELECT image_id, augmentation, attention_similarity FROM layer_shifts "
            f"WHERE layer = {layers - 1}"
        ).fetchall()
    )
    for image_id, augmentation, similarity in con.execute(
        "SELECT image_id, augmentation, attention_similarity FROM shifts"
    ).fetchall():
        assert_close(last[(image_id, augmentation)], similarity, "last layer")
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    per_layer = named_query(con, "layers", run_id=run_id).fetchall()
    assert len(per_layer) == 9 * layers


def expected_pairwise(db) -> tuple[list[str], np.ndarray]:
    rows = stored_rows(db)
    images = sorted({i for (_, i, v) in rows if v == "original"})
    names = sorted({v for (_, _, v) in rows if v != "original"})
    run_id = next(iter(rows))[0]
    total = np.zeros((len(names), len(names)))
    for image_id in images:
        e = np.array([rows[(run_id, image_id, n)]["embedding"] for n in names], dtype=np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        total += 1 - e @ e.T
    matrix = total / len(images)
    np.fill_diagonal(matrix, 0)
    return names, matrix


def test_pairwise_and_clusters_match_scipy(ingested_store):
    names, matrix = expected_pairwise(ingested_store)
    for method in ("ward", "average"):
        found = clusters(ingested_store, method=method)
        assert found.augmentations == names
        np.testing.assert_allclose(found.distances, matrix, atol=TOLERANCE)
        tree = linkage(squareform(matrix, checks=False), method=method)
        np.testing.assert_allclose(found.linkage, tree, atol=TOLERANCE)
        assert found.threshold == pytest.approx(0.7 * tree[:, 2].max(), abs=TOLERANCE)
        assert found.labels == list(fcluster(tree, t=found.threshold, criterion="distance"))
        assert sum(len(m) for m in found.members.values()) == 9
        assert [h for h, _, _ in found.merges()] == list(found.linkage[:, 2])
    assert len(clusters(ingested_store, threshold=1e-12).members) == 9  # every one alone
    assert len(clusters(ingested_store, threshold=1e6).members) == 1


def test_every_named_query_says_what_it_answers_and_runs(ingested_store):
    con = connect(ingested_store)
    run_id = con.execute("SELECT run_id FROM runs").fetchall()[0][0]
    from clipshift.query import named_arrow
    from clipshift.resources import resource_dir

    # the gallery pages the run's rows that `clipshift serve` keeps in memory
    con.register("gallery_rows", named_arrow(con, "gallery_rows", run_id=run_id))
    for name in query_names():
        text = (resource_dir("sql") / f"{name}.sql").read_text()
        assert text.startswith("-- ")
        if name in ("zeroshot", "zeroshot_models", "directions"):
            continue  # need stored predictions and text directions: tests/test_zeroshot.py
        params = {
            "run_id": run_id,
            "samples": 3,
            "reference": None,
            "label_set": "cifar100",
            "template": "{}",
        }
        params.update(run_a=run_id, run_b=run_id, run_ids=[run_id])
        # the gallery of `clipshift serve`: every filter off, the most moved first
        params.update(
            metric="cosine",
            descending=True,
            limit=10,
            offset=0,
            **dict.fromkeys(
                (
                    "augmentation",
                    "severity",
                    "file_name",
                    "low",
                    "high",
                    "flipped",
                    "label",
                )
            ),
        )
        rows = named_query(
            con, name, **{k: v for k, v in params.items() if re.search(rf"\${k}\b", text)}
        ).fetchall()
        # the paper's augmentations have no severity levels (tests/test_suites.py has some);
        # these images carry no labels (tests/test_accuracy.py has some)
        assert rows or name in ("severity_curves", "corruption_mean", *LABELLED_QUERIES)


# the named queries over labelled images (images.label, migration 0007)
LABELLED_QUERIES = (
    "accuracy",
    "accuracy_sets",
    "corruption_error",
    "run_labels",
    "shift_accuracy",
    "shift_accuracy_summary",
)


# -- run selection ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A small synthetic store with two runs (seeds 0 and 1; the second is the latest)."""
    db = tmp_path_factory.mktemp("two-runs") / "db"
    build_synthetic_store(db, n_images=8, dim=16, layers=2, seed=0)
    build_synthetic_store(db, n_images=8, dim=16, layers=2, seed=1)
    return db


def test_resolve_run_picks_the_latest_and_says_so(two_runs):
    latest = resolve_run(two_runs)
    assert latest.run_id == "synthetic001"
    assert "synthetic001" in latest.selection_note
    assert "--run" in latest.selection_note and "synthetic000" in latest.selection_note
    assert resolve_run(two_runs, run="synthetic000").selection_note is None
    assert resolve_run(two_runs, run="synthetic000").run_id == "synthetic000"
    assert resolve_run(two_runs, model="synthetic").run_id == "synthetic001"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run": "nope"}, "no run 'nope'"),
        ({"run": "synthetic"}, "matches 2 runs"),
        ({"model": "openai/clip"}, "no run of model 'openai/clip'"),
        ({"run": "synthetic000", "model": "other"}, "not 'other'"),
    ],
)
def test_resolve_run_rejects_unknown_runs_and_models(two_runs, kwargs, message):
    with pytest.raises(ClipshiftError, match=message):
        resolve_run(two_runs, **kwargs)


def test_empty_store_and_run_without_augmented_rows(tmp_path):
    empty = tmp_path / "empty"
    Store.open(empty, create=True)
    with pytest.raises(ClipshiftError, match="holds no runs yet"):
        stats(empty)
    result = CliRunner().invoke(cli, ["stats", "--db", str(empty)])
    assert result.exit_code != 0 and "holds no runs yet" in result.output
    assert "Traceback" not in result.output

    originals = tmp_path / "originals"
    build_synthetic_store(originals, n_images=4, dim=8, layers=1)
    Store.open(originals).table("variants_8").delete("variant <> 'original'")
    for command in (stats, clusters):
        with pytest.raises(ClipshiftError, match="no augmented rows"):
            command(originals)

    nothing = tmp_path / "nothing"
    build_synthetic_store(nothing, n_images=4, dim=8, layers=1)
    Store.open(nothing).table("variants_8").delete("true")
    with pytest.raises(ClipshiftError, match="holds no images yet"):
        stats(nothing)


# -- the commands ----------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_stats_command_formats(ingested_store):
    as_json = invoke("stats", "--db", ingested_store, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    records = json.loads(as_json.stdout)
    assert len(records) == 9
    assert all(STATS_JSON_KEYS <= set(r) for r in records)
    assert [r["rank"] for r in records] == sorted(r["rank"] for r in records)
    expected = {r["augmentation"]: r for r in stats(ingested_store).records()}
    for record in records:
        assert record["overall"] == pytest.approx(expected[record["augmentation"]]["overall"])

    table = invoke("stats", "--db", ingested_store)
    assert table.exit_code == 0
    header = table.stdout.splitlines()[0].split()
    assert header == [c for c in STATS_TABLE_COLUMNS if c != "severity"]
    assert len(table.stdout.splitlines()) == 2 + 9
    assert max(map(len, table.stdout.splitlines())) <= 100  # was about 250 with every score

    as_csv = invoke("stats", "--db", ingested_store, "--format", "csv")
    assert as_csv.stdout.splitlines()[0].startswith("augmentation,severity,n,cosine_mean")
    assert as_csv.stdout.splitlines()[0].split(",") == stats(ingested_store).columns
    assert len(as_csv.stdout.splitlines()) == 10


def test_stats_columns(ingested_store):
    every = invoke("stats", "--db", ingested_store, "--all-columns")
    assert every.exit_code == 0, every.output
    header = every.stdout.splitlines()[0].split()
    assert header == [c for c in stats(ingested_store).columns if c != "severity"]
    chosen = invoke("stats", "--db", ingested_store, "--columns", "rank, augmentation,l2_p95")
    assert chosen.stdout.splitlines()[0].split() == ["rank", "augmentation", "l2_p95"]
    as_json = invoke(
        "stats", "--db", ingested_store, "--columns", "augmentation,n", "--format", "json"
    )
    assert set(json.loads(as_json.stdout)[0]) == {"augmentation", "n"}

    unknown = invoke("stats", "--db", ingested_store, "--columns", "n,cosine_maen")
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output
    lines = unknown.output.strip().splitlines()
    assert len(lines) == 1 and "'cosine_maen'" in lines[0] and "cosine_mean, cosine_std" in lines[0]


def test_stats_and_clusters_say_which_run_of_several(two_runs):
    for command in ("stats", "clusters"):
        result = invoke(command, "--db", two_runs)
        assert result.exit_code == 0, result.output
        assert "showing run synthetic001" in result.stderr
        picked = invoke(command, "--db", two_runs, "--run", "synthetic000")
        assert picked.exit_code == 0 and picked.stderr == ""
    ambiguous = invoke("stats", "--db", two_runs, "--run", "synthetic00")
    assert ambiguous.exit_code != 0 and "matches 2 runs" in ambiguous.output  # never a guess
    by_run = invoke("stats", "--db", two_runs, "--run", "synthetic000", "--format", "json")
    by_model = invoke("stats", "--db", two_runs, "--model", "synthetic", "--format", "json")
    latest = invoke("stats", "--db", two_runs, "--run", "synthetic001", "--format", "json")
    assert json.loads(by_model.stdout) == json.loads(latest.stdout)
    assert json.loads(by_run.stdout) != json.loads(latest.stdout)
    unknown = invoke("stats", "--db", two_runs, "--run", "zzz")
    assert unknown.exit_code != 0 and "no run 'zzz'" in unknown.output


def test_every_command_that_picks_a_run_says_so_first(two_runs):
    """The same one line on stderr, before the command's own work: zeroshot and directions
    fail here on the picked run's model (no text tower), and the note says which run it was."""
    note = resolve_run(two_runs).selection_note
    commands = [["stats"], ["clusters"], ["retrieval"], ["neighbors", "--text", "a cat"]]
    commands += [["zeroshot", "--labels", "cifar100"], ["directions"], ["index"]]
    for command in commands:
        result = invoke(*command, "--db", two_runs)
        assert "Traceback" not in result.output, result.output
        assert result.stderr.splitlines()[0] == note, command
        assert result.stderr.count("showing run") == 1
        if command[0] in ("zeroshot", "directions"):
            assert result.exit_code == 1 and "synthetic001" in result.stderr.splitlines()[1]
            assert len(result.stderr.strip().splitlines()) == 2  # the note, the error


def test_clusters_command_prints_members_and_heights(ingested_store):
    result = invoke("clusters", "--db", ingested_store, "--method", "average")
    assert result.exit_code == 0, result.output
    found = clusters(ingested_store, method="average")
    for label, names in found.members.items():
        assert f"cluster {label}: {', '.join(names)}" in result.stdout
    assert result.stdout.count(": ") >= 8  # the eight merges
    assert f"{found.linkage[-1, 2]:.6g}" in result.stdout
    bad = invoke("clusters", "--db", ingested_store, "--threshold", "-1")
    assert bad.exit_code != 0 and "positive" in bad.output


def test_sql_command_formats_and_truncation(ingested_store, tmp_path):
    many = invoke("sql", "--db", ingested_store, "SELECT * FROM shifts", "--max-rows", "5")
    assert many.exit_code == 0, many.output
    lines = many.stdout.splitlines()
    assert len(lines) == 2 + 5 + 1
    assert "49 more rows not shown (54 in all)" in lines[-1]

    as_json = invoke("sql", "--db", ingested_store, "SELECT augmentation, cosine FROM shifts")
    assert as_json.exit_code == 0
    records = json.loads(
        invoke("sql", "--db", ingested_store, "--format", "json", "SELECT * FROM runs").stdout
    )
    assert records[0]["model"] and records[0]["created_at"]

    query = tmp_path / "q.sql"
    query.write_text("SELECT augmentation, avg(cosine) AS cosine FROM shifts GROUP BY ALL")
    as_csv = invoke("sql", "--db", ingested_store, "--file", query, "--format", "csv")
    assert as_csv.exit_code == 0 and len(as_csv.stdout.splitlines()) == 10

    import pyarrow.parquet as pq

    out = tmp_path / "shifts.parquet"
    parquet = invoke(
        "sql", "--db", ingested_store, "SELECT * FROM shifts", "--format", "parquet", "-o", out
    )
    assert parquet.exit_code == 0, parquet.output
    assert pq.read_table(out).num_rows == 54
    needs_output = invoke("sql", "--db", ingested_store, "SELECT 1", "--format", "parquet")
    assert needs_output.exit_code != 0 and "--output" in needs_output.output

    written = tmp_path / "all.csv"
    full = invoke("sql", "--db", ingested_store, "SELECT * FROM shifts", "-f", query, "-o", written)
    assert full.exit_code != 0 and "either a QUERY or --file" in full.output


def test_sql_bad_query_is_one_line_and_fails(ingested_store):
    for query in ("SELEC 1", "SELECT * FROM nope", "SELECT error('boom')", ""):
        result = invoke("sql", "--db", ingested_store, query)
        assert result.exit_code != 0
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
    with pytest.raises(ClipshiftError, match="syntax error"):
        sql(ingested_store, "SELEC 1")


def test_sql_cannot_change_the_store(ingested_store, tmp_path):
    def snapshot():
        return sorted(
            (p.relative_to(ingested_store).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in ingested_store.rglob("*")
            if p.is_file()
        )

    def counts():
        return [sql(ingested_store, f"SELECT count(*) FROM {t}").rows[0][0] for t in tables]

    tables = ("runs", "images", "variants", "errors")
    before, rows_before = snapshot(), counts()
    target = tmp_path / "out"
    hostile = [
        "DELETE FROM variants",
        "UPDATE runs SET model = 'x'",
        "INSERT INTO images SELECT * FROM images",
        "DROP VIEW variants; DROP VIEW runs",
        "CREATE TABLE variants AS SELECT 1 AS x",
        f"COPY (SELECT 1) TO '{target}.csv'",
        f"COPY (SELECT 1) TO '{ingested_store}/variants.lance/x.parquet'",
        f"ATTACH '{target}.duckdb' AS other",
        f"SELECT * FROM read_csv('{ingested_store}/.clipshift.lock')",
        "SET enable_external_access = true",
        "INSTALL lance",
        "LOAD httpfs",
    ]
    for query in hostile:
        result = invoke("sql", "--db", ingested_store, query)
        assert result.exit_code == 1, (query, result.output)
        assert len(result.output.strip().splitlines()) == 1, (query, result.output)
        assert "Traceback" not in result.output, query
    assert snapshot() == before
    assert counts() == rows_before
    assert not list(tmp_path.glob("out*"))


def test_sql_refuses_ddl_and_settings_before_running_them(ingested_store):
    """A CREATE or DROP used to report Count / Success though nothing persists: every statement
    that is not a read is refused by its type, and every read form still runs."""
    refused = {
        "CREATE TABLE t AS SELECT 1": "CREATE",
        "create view v as select 1": "CREATE",
        "CREATE MACRO m(x) AS x": "CREATE",
        "DROP VIEW shifts": "DROP",
        "ALTER VIEW shifts RENAME TO s": "ALTER",
        "DELETE FROM runs": "DELETE",
        "WITH r AS (SELECT 1) INSERT INTO runs SELECT * FROM runs": "INSERT",
        "COPY runs TO 'runs.csv'": "COPY",
        "EXPORT DATABASE 'out'": "EXPORT",
        "ATTACH 'other.duckdb'": "ATTACH",
        "INSTALL httpfs": "INSTALL",
        "LOAD httpfs": "LOAD",
        "SET threads = 1": "SET",
        "USE memory": "USE",
        "BEGIN": "BEGIN",
        "/* a comment first */ DROP VIEW runs": "DROP",
        "UPDATE EXTENSIONS": "UPDATE",  # a statement type newer than duckdb's Python enum
    }
    for query, keyword in refused.items():
        result = invoke("sql", "--db", ingested_store, query)
        assert result.exit_code == 1, (query, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, (query, result.output)
        assert f"{keyword} is refused" in lines[0] and "only reads" in lines[0], lines[0]
        with pytest.raises(ClipshiftError, match="is refused"):
            sql_arrow(ingested_store, query)
    reads = [
        "SELECT count(*) FROM runs",
        "WITH r AS (SELECT * FROM runs) SELECT count(*) FROM r",
        "FROM runs",
        "DESCRIBE runs",
        "SHOW TABLES",
        "SUMMARIZE runs",
        "EXPLAIN SELECT * FROM shifts",
        "PRAGMA version",
        "CALL pragma_version()",
        "PIVOT (SELECT augmentation, variant, l2 FROM shifts) ON variant USING avg(l2)",
    ]
    for query in reads:
        result = invoke("sql", "--db", ingested_store, query)
        assert result.exit_code == 0 and "Error" not in result.output, (query, result.output)
    assert sql(ingested_store, "SELECT count(*) FROM shifts").rows == [(54,)]


def test_format_rows():
    columns = ["name", "n", "x"]
    rows = [("a", 1, 0.5), ("b", 2, float("nan")), ("c", 3, None)]
    table = format_rows(columns, rows, "table", max_rows=2)
    assert table.splitlines()[-1].startswith("... 1 more row not shown (3 in all)")
    assert format_rows(columns, [], "table").endswith("(no rows)")
    assert json.loads(format_rows(columns, rows, "json")) == [
        {"name": "a", "n": 1, "x": 0.5},
        {"name": "b", "n": 2, "x": None},
        {"name": "c", "n": 3, "x": None},
    ]
    as_csv = format_rows(columns, rows, "csv").splitlines()
    assert as_csv == ["name,n,x", "a,1,0.5", "b,2,nan", "c,3,"]
    long = format_rows(["v"], [([0.1] * 100,)], "table")
    assert max(len(line) for line in long.splitlines()) <= 48
    with pytest.raises(ValueError):
        format_rows(columns, rows, "xml")
