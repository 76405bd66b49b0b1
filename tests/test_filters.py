"""Filters: values with quotes select exactly their rows, in reads and in LanceDB deletes."""

from __future__ import annotations

import lance
import lancedb
import pyarrow as pa
import pytest

from clipshift.filters import matches, sql_literal, where

PATHS = ["/a/plain.jpg", "/b/it's.jpg", "/c/' OR '1'='1.jpg", "/d/x.jpg"]


@pytest.fixture
def table(tmp_path):
    db = lancedb.connect(str(tmp_path))
    return db.create_table(
        "errors", pa.table({"run_id": ["r1", "r1", "r1", "r2"], "path": PATHS, "n": [1, 2, 3, 4]})
    )


def test_matches_reads_exact_rows(table):
    ds = lance.dataset(table.uri)
    assert ds.to_table(filter=matches(path=PATHS[1])).column("n").to_pylist() == [2]
    picked = ds.to_table(filter=matches(run_id="r1", path=PATHS[1:3] + ["/none"]))
    assert sorted(picked.column("n").to_pylist()) == [2, 3]
    assert ds.count_rows(filter=matches(path=[])) == 0
    assert ds.count_rows(filter=matches(n=[1, 4])) == 2


def test_where_quotes_values_for_delete(table):
    assert sql_literal("it's") == "'it''s'"
    assert where(run_id="r1", n=3) == "run_id = 'r1' AND n = 3"
    table.delete(where(run_id="r1", path=[PATHS[2]]))
    assert sorted(table.to_arrow().column("n").to_pylist()) == [1, 2, 4]
    table.delete(where(path=[]))
    assert table.count_rows() == 3
    with pytest.raises(ValueError):
        where(**{"path; DROP": "x"})
