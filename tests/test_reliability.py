"""Resume after SIGKILL, two ingests at once, and schema migrations, on real stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import lance
import pyarrow as pa
from click.testing import CliRunner

from cli import cli
from clipshift.store import MIGRATIONS_TABLE, Store, latest_schema_version
from clipshift.suites.paper import PAPER as AUGMENTATIONS

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = 1 + len(AUGMENTATIONS)


def ingest_process(photos, db, model, *extra) -> subprocess.Popen:
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "ingest",
        str(photos),
        "--db",
        str(db),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def variant_rows(db) -> list[tuple[str, str]]:
    path = Path(db) / "variants_16.lance"
    if not path.exists():
        return []
    table = lance.dataset(str(path)).to_table(columns=["image_id", "variant"])
    return list(zip(table["image_id"].to_pylist(), table["variant"].to_pylist(), strict=True))


def assert_whole_images_no_duplicates(db) -> int:
    rows = variant_rows(db)
    assert len(rows) == len(set(rows)), "duplicate (image, variant) rows"
    per_image: dict[str, int] = {}
    for image_id, _ in rows:
        per_image[image_id] = per_image.get(image_id, 0) + 1
    assert all(count == VARIANTS for count in per_image.values()), "a partly stored image"
    images = lance.dataset(str(Path(db) / "images.lance")).to_table(columns=["image_id"])
    assert len(images) == len(set(images["image_id"].to_pylist()))
    return len(per_image)


def test_sigkill_at_any_moment_then_resume(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    total = len(list(photos.iterdir()))
    # kill at growing delays: before the store exists, between and during batch commits
    for delay in (0.5, 3.5, 4.5, 5.5):
        process = ingest_process(photos, db, tiny_model, "--batch-size", "1")
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if db.exists() and (db / "variants_16.lance").exists():
            assert_whole_images_no_duplicates(db)
    finish = ingest_process(photos, db, tiny_model, "--batch-size", "1")
    assert finish.wait(timeout=120) == 0, finish.stderr.read().decode()
    assert assert_whole_images_no_duplicates(db) == total
    again = CliRunner().invoke(
        cli, ["ingest", str(photos), "--db", str(db), "--model", str(tiny_model)]
    )
    assert f"skipped    {total} already in the store" in again.output
    assert len(variant_rows(db)) == total * VARIANTS


def test_two_ingests_at_once_store_each_image_once(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    first = ingest_process(photos, db, tiny_model, "--batch-size", "1")
    second = ingest_process(photos, db, tiny_model, "--batch-size", "2")
    for process in (first, second):
        assert process.wait(timeout=180) == 0, process.stderr.read().decode()
    assert assert_whole_images_no_duplicates(db) == len(list(photos.iterdir()))
    runs = lance.dataset(str(db / "runs.lance")).to_table()
    assert len(runs) == 1


def test_upgrade_a_store_created_at_the_first_schema_version(tmp_path):
    db = tmp_path / "db"
    store = Store.connect(db, create=True)
    store.migrate(target=1)
    assert store.schema_version() == 1
    images = store.table("images")
    assert "mode" not in images.schema.names
    images.add(
        pa.table(
            {
                "image_id": ["abc"],
                "path": ["/old.jpg"],
                "width": pa.array([4], pa.int32()),
                "height": pa.array([3], pa.int32()),
                "format": ["JPEG"],
            }
        )
    )

    refused = CliRunner().invoke(cli, ["ingest", str(db), "--db", str(db)])
    assert refused.exit_code != 0 and "clipshift migrate" in refused.output

    result = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "applied 0002 image_mode" in result.output
    assert f"schema version {latest_schema_version()}" in result.output
    upgraded = Store.open(db)
    assert upgraded.table("images").to_arrow().to_pylist() == [
        {
            "image_id": "abc",
            "path": "/old.jpg",
            "width": 4,
            "height": 3,
            "format": "JPEG",
            "mode": None,
            # migration 0007: no label, and the path it was read from as its source
            "label": None,
            "label_index": None,
            "source": "/old.jpg",
        }
    ]
    again = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert again.exit_code == 0 and "applied" not in again.output


def test_a_store_from_a_newer_clipshift_is_refused(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    store = Store.open(db, create=True)
    store.table(MIGRATIONS_TABLE).add(
        pa.table(
            {
                "version": pa.array([99], pa.int32()),
                "name": ["future"],
                "applied_at": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC")),
            }
        )
    )
    for args in (["ingest", str(photos), "--model", str(tiny_model)], ["migrate"]):
        result = CliRunner().invoke(cli, [*args, "--db", str(db)])
        assert result.exit_code == 1
        assert "schema version 99" in result.output and "upgrade clipshift" in result.output
        assert "Traceback" not in result.output
