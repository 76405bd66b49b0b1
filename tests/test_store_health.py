"""A damaged store: one-line errors everywhere, `clipshift check`, both repairs, and resuming;
disk space after interrupted ingests; the store location and read-only checks."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import lance
import pytest
from click.testing import CliRunner
from test_reliability import VARIANTS, assert_whole_images_no_duplicates, ingest_process

from cli import cli
from clipshift.check import check
from clipshift.ingest import ingest
from clipshift.store import Store, available_migrations


def data_files(db: Path, table: str = "variants_16") -> list[Path]:
    """The data files of the table's latest version, in fragment order (default: the tiny
    model's variants table)."""
    ds = lance.dataset(str(db / f"{table}.lance"))
    return [
        db / f"{table}.lance" / "data" / f.path
        for fragment in ds.get_fragments()
        for f in fragment.metadata.files
    ]


@pytest.fixture
def store_copy(tmp_path, ingested_store) -> Path:
    db = tmp_path / "db"
    shutil.copytree(ingested_store, db)
    return db


def damage(db: Path, how: str) -> None:
    last = data_files(db)[-1]
    if how == "deleted":
        last.unlink()
    elif how == "truncated":
        with open(last, "r+b") as handle:
            handle.truncate(last.stat().st_size // 3)
    else:  # overwritten in place, same size: only a read finds it
        size = last.stat().st_size
        with open(last, "r+b") as handle:
            handle.seek(size - 2000)
            handle.write(b"\0" * 1500)


COMMANDS = [
    ["stats"],
    ["clusters"],
    ["report", "--out", "{tmp}/report"],
    ["neighbors", "abcd"],
    ["retrieval"],
    ["index"],
    ["sql", "SELECT image_id, embedding FROM variants"],
    ["ingest", "{photos}", "--model", "{model}"],
    ["migrate"],
]


@pytest.mark.parametrize("how", ["deleted", "truncated", "overwritten"])
def test_a_damaged_store_gives_one_line_errors_and_check_finds_it(
    store_copy, tmp_path, photos, tiny_model, how
):
    damage(store_copy, how)
    for command in COMMANDS:
        if how == "overwritten" and command[0] in ("migrate", "index"):
            continue  # neither reads the data here (nothing to migrate; too few rows to index)
        args = [a.format(tmp=tmp_path, photos=photos, model=tiny_model) for a in command] + [
            "--db",
            str(store_copy),
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, (command, result.output)
        assert "damaged: table variants" in lines[0] and "clipshift check" in lines[0]
        expected = {"deleted": "missing", "truncated": "truncated", "overwritten": "cannot be read"}
        assert expected[how] in lines[0]

    result = CliRunner().invoke(cli, ["check", "--db", str(store_copy)])
    assert result.exit_code == 1
    assert "variants_16        DAMAGED" in result.output and "--repair" in result.output


def test_the_repair_a_damage_error_suggests_works_as_given(store_copy):
    """The suggested command is pasted as it stands (`--repair` alone is refused by click)."""

    def stored() -> set[str]:
        store = Store.open(store_copy)
        return store.stored_images(store.dataset("runs").to_table()["run_id"][0].as_py())

    images = stored()
    damage(store_copy, "truncated")
    for command in (["stats"], ["check"]):
        result = CliRunner().invoke(cli, [*command, "--db", str(store_copy)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        line = result.output.strip().splitlines()[-1]
        suggested = next(part for part in line.split("`")[1::2] if "--repair" in part)
        assert suggested == f"clipshift check --db {store_copy} --repair rollback", line
        assert "rollback" in line and "drop" in line.split(suggested)[1]
    repaired = CliRunner().invoke(cli, suggested.split()[1:])
    assert repaired.exit_code == 0 and "is whole" in repaired.output, repaired.output
    # only the rows of the damaged commit are lost; what an earlier commit stored remains
    assert stored() and stored() < images


@pytest.mark.parametrize("how", ["rollback", "drop"])
def test_repair_then_ingest_resumes_what_was_lost(store_copy, photos, tiny_model, how):
    total = len(list(photos.iterdir()))
    damage(store_copy, "truncated")
    result = CliRunner().invoke(cli, ["check", "--db", str(store_copy), "--repair", how])
    assert result.exit_code == 0, result.output
    assert "repaired: table variants" in result.output and "is whole" in result.output
    assert ("rolled back" if how == "rollback" else "dropped 1 unreadable") in result.output
    repairs = [
        e
        for e in Store.open(store_copy).table("errors").to_arrow().to_pylist()
        if e["stage"] == "repair"
    ]
    assert repairs and all("variants" in e["message"] for e in repairs)
    kept = assert_whole_images_no_duplicates(store_copy)
    assert kept < total

    summary = ingest([photos], store_copy, str(tiny_model), device="cpu")
    assert summary.stored == total - kept and summary.skipped == kept
    assert assert_whole_images_no_duplicates(store_copy) == total
    assert check(store_copy).ok


def test_check_finds_and_repairs_an_incomplete_image(store_copy, photos, tiny_model):
    store = Store.open(store_copy)
    victim = store.dataset("images").to_table(columns=["image_id"])["image_id"][0].as_py()
    store.table("variants_16").delete(f"image_id = '{victim}' AND variant = 'blur'")
    found = check(store_copy)
    assert not found.ok and [i for _, i in found.incomplete_images] == [victim]
    assert "1 stored images miss some of their variants" in found.problems
    repaired = check(store_copy, repair="drop")
    assert repaired.ok and any("1 incomplete images" in line for line in repaired.repaired)
    summary = ingest([photos], store_copy, str(tiny_model), device="cpu")
    assert summary.stored == 1
    assert check(store_copy).ok


def test_disk_stays_near_live_data_after_interrupted_ingests(tmp_path, photos, tiny_model):
    """Killed ingests leave files no version uses; each later ingest deletes them and the
    versions older than the retention (0 s here), so the store stays near its live data."""
    db = tmp_path / "db"
    os.environ["CLIPSHIFT_KEEP_VERSIONS_SECONDS"] = "0"
    try:
        for delay in (4.0, 5.0, 6.0):
            process = ingest_process(photos, db, tiny_model, "--batch-size", "1")
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
        finish = ingest_process(photos, db, tiny_model, "--batch-size", "1")
        assert finish.wait(timeout=180) == 0, finish.stderr.read().decode()
    finally:
        del os.environ["CLIPSHIFT_KEEP_VERSIONS_SECONDS"]
    assert assert_whole_images_no_duplicates(db) == len(list(photos.iterdir()))
    live = sum(
        f.stat().st_size for name in Store.open(db).table_names() for f in data_files(db, name)
    )
    on_disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
    assert on_disk <= 1.2 * live, (on_disk, live)
    assert check(db).reclaimable <= 0.2 * live
    assert (
        Store.open(db).table("variants_16").count_rows() == len(list(photos.iterdir())) * VARIANTS
    )


def test_ingest_resumes_a_store_whose_first_migration_was_cut_short(tmp_path, photos, tiny_model):
    """kill -9 in the middle of the first migration: some of its tables exist, and the
    migration is not recorded, so the next ingest runs it again over them."""
    import importlib.util

    import lancedb

    first = available_migrations()[0]
    spec = importlib.util.spec_from_file_location("first_migration", first.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    db = tmp_path / "db"
    db.mkdir()
    lancedb.connect(db).create_table("runs", schema=module.RUNS)  # and then the kill
    summary = ingest([photos], db, str(tiny_model), limit=1, keep_pixels=0, device="cpu")
    assert summary.stored == 1
    assert Store.open(db).schema_version() == available_migrations()[-1].version


def test_ingest_finishes_the_migrations_a_killed_ingest_left_part_way(tmp_path, photos, tiny_model):
    """kill -9 between two migrations of a new store: it is at an old schema version, with no
    run yet, and the next ingest migrates it the rest of the way (a store holding runs waits
    for `clipshift migrate`)."""
    db = tmp_path / "db"
    Store.connect(db, create=True).migrate(target=2)  # and then the kill
    summary = ingest([photos], db, str(tiny_model), limit=1, keep_pixels=0, device="cpu")
    assert summary.stored == 1
    assert Store.open(db).schema_version() == available_migrations()[-1].version


def test_a_table_cut_short_while_created_is_removed(tmp_path, photos, tiny_model):
    """kill -9 while the first ingest created a table: its folder holds no committed version.
    The next ingest removes it (nothing is lost) and creates the table again; a reading command
    calls it damage, and `check --repair` removes it too."""

    def cut_short(db: Path) -> Path:
        (db / "runs.lance" / "_versions").mkdir(parents=True)
        (db / "runs.lance" / "data").mkdir()
        return db

    db = cut_short(tmp_path / "written")
    summary = ingest([photos], db, str(tiny_model), limit=1, keep_pixels=0, device="cpu")
    assert summary.stored == 1 and check(db).ok

    db = cut_short(tmp_path / "read")
    (db / "schema_migrations.lance" / "_versions").mkdir(parents=True)
    failed = CliRunner().invoke(cli, ["stats", "--db", str(db)])
    assert failed.exit_code == 1 and "clipshift check" in failed.output
    assert len(failed.output.strip().splitlines()) == 1
    repaired = check(db, repair="drop")
    assert "never had a committed version" in repaired.repaired[0]
    assert not (db / "runs.lance").exists()


def test_db_on_a_folder_of_other_files_is_refused(tmp_path, photos, tiny_model):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--db", str(folder), "--model", str(tiny_model)]
    )
    assert result.exit_code == 1 and "holding other files (thesis.tex)" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_migrate_on_a_store_that_cannot_be_written(store_copy):
    ok = CliRunner().invoke(cli, ["migrate", "--db", str(store_copy)])
    assert ok.exit_code == 0 and "schema version" in ok.output  # nothing to write: no lock
    (store_copy / ".clipshift.lock").unlink()
    (store_copy / ".clipshift.lock").mkdir()  # the lock cannot be opened, as when read-only
    store = Store.open(store_copy)
    with pytest.raises(Exception, match="read-only here"):
        with store.lock():
            pass


def test_compact_frees_what_an_ingest_compaction_left(tmp_path):
    """A compaction rewrites the data, and the old files stay for the retention (10 minutes):
    the store is about twice its live data meanwhile. `clipshift compact --keep-versions 0s`
    brings it back to its live data at once, under the writer lock, losing nothing."""
    import subprocess
    import sys

    from clipshift.synthetic import build_synthetic_store

    db = tmp_path / "db"
    # 100 batch commits, then the compaction an ingest does past COMPACT_FRAGMENTS
    build_synthetic_store(db, n_images=200, dim=16, grid=2, layers=2, chunk=2)
    rows = Store.open(db).table("variants_16").count_rows()

    def sizes() -> tuple[int, int]:
        live = sum(
            f.stat().st_size for name in Store.open(db).table_names() for f in data_files(db, name)
        )
        return live, sum(f.stat().st_size for f in db.rglob("*") if f.is_file())

    live, on_disk = sizes()
    assert on_disk > 1.8 * live, (on_disk, live)
    runner = CliRunner()
    kept = runner.invoke(cli, ["compact", "--db", str(db)])  # the default 10 minutes keep all
    assert kept.exit_code == 0 and "0 old versions removed" in kept.output, kept.output
    for bad in ("10x", "-1m", "", "m"):
        refused = runner.invoke(cli, ["compact", "--db", str(db), "--keep-versions", bad])
        assert refused.exit_code != 0 and "Traceback" not in refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "e.g. 10m" in refused.output
    assert sizes()[1] == on_disk

    # a writer holds the lock: compact waits for it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from filelock import FileLock; "
         f"lock = FileLock({str(db / '.clipshift.lock')!r}); lock.acquire(); "
         "print('held', flush=True); time.sleep(3)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == b"held"
    started = time.monotonic()
    done = runner.invoke(cli, ["compact", "--db", str(db), "--keep-versions", "0s"])
    assert time.monotonic() - started > 1.5, "compacted under a running writer"
    holder.wait()
    assert done.exit_code == 0, done.output
    live_after, on_disk_after = sizes()
    # what stays beside the live data is each table's newest manifest and transaction file
    # (tens of kB here; 0.2 % of a 12 MB store)
    assert live_after == live and on_disk_after - live < 0.05 * (on_disk - live)
    assert f"{on_disk / 1e6:.1f} MB -> {on_disk_after / 1e6:.1f} MB on disk" in done.output
    assert int(done.output.split("reclaimed; ")[1].split()[0]) > 100
    assert check(db).ok and check(db).reclaimable == 0
    assert Store.open(db).table("variants_16").count_rows() == rows
