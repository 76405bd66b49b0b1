"""`clipshift layers` and its CKA: the estimators against an independent numpy implementation
and their invariances; a run's streamed CKA against them; the command on a real store, with
and without --hidden-states; the CKA kept in layer_cka at ingest, reused, computed again when
the run grows, and computed on demand in a store migrated to 0008; a store of schema 5
migrated, whose old run says it has no layer metrics; and the stored layer metrics
byte-identical across --workers 0 and 2."""

from __future__ import annotations

import json
import shutil

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import ortho_group

from cli import cli
from clipshift import cka as cka_module
from clipshift.cka import linear_cka, minibatch_cka
from clipshift.ingest import ingest
from clipshift.layers import layers
from clipshift.report.render import report
from clipshift.runs import resolve_run
from clipshift.store import Store
from clipshift.synthetic import build_synthetic_store

LAYER_COLUMNS = ["layer_cosine", "token_drift", "token_drift_layers", "hidden_states"]


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019)'s linear CKA through HSIC with the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, m = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ m) / np.sqrt(np.trace(k @ k) * np.trace(m @ m)))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    return x, x @ rng.normal(size=(12, 12)) + 0.5 * rng.normal(size=(60, 12))


@pytest.mark.parametrize("shape", [(60, 12), (10, 40)])  # feature form and Gram form
def test_linear_cka_equals_numpy(shape):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=shape), rng.normal(size=shape) + 0.3
    y[:, :3] += x[:, :3]
    assert abs(linear_cka(x, y) - numpy_cka(x, y)) < 1e-6


def test_cka_of_itself_is_one_and_invariant(pair):
    x, y = pair
    assert abs(linear_cka(x, x) - 1) < 1e-12
    rotation = ortho_group.rvs(12, random_state=3)
    assert abs(linear_cka(x @ rotation * 7.5, y) - linear_cka(x, y)) < 1e-10
    assert abs(minibatch_cka(x, x, batch=20) - 1) < 1e-10
    assert abs(minibatch_cka(x @ rotation * 0.2, y, batch=20) - minibatch_cka(x, y, batch=20)) < (
        1e-10
    )


def test_minibatch_cka_agrees_with_full():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 16))
    y = np.tanh(x @ rng.normal(size=(16, 16))) + 0.8 * rng.normal(size=(4000, 16))
    assert abs(minibatch_cka(x, y, batch=1000) - linear_cka(x, y)) < 1e-2


def test_layers_command(ingested_store):
    result = CliRunner().invoke(cli, ["layers", "--db", str(ingested_store), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = layers(ingested_store).records()
    run = Store.open(ingested_store).dataset("runs").to_table().to_pylist()[0]
    assert {r["layer"] for r in rows} == set(range(run["num_layers"] + 1))
    assert len({r["augmentation"] for r in rows}) == 9
    assert all(r["cka"] is None for r in rows)  # ingested without --hidden-states
    for r in rows:
        assert r["onset_layer"] is None or 0 <= r["onset_layer"] <= run["num_layers"]
        assert abs(r["drift"] - (1 - r["cosine_mean"])) < 1e-12


def test_hidden_states_give_cka(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(photos), "--db", str(db), "--model", str(tiny_model), "--device", "cpu",
         "--augmentations", "noise,horizontal_flip", "--workers", "0", "--hidden-states"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = Store.open(db).dataset("runs").to_table().to_pylist()[0]
    width = json.loads((tiny_model / "config.json").read_text())["vision_config"]["hidden_size"]
    expected = (run["num_layers"] + 1) * width * 2
    assert f"--hidden-states: {expected:,} bytes a row" in result.output
    # the ingest kept the run's CKA for this state of the run
    assert "cka        computed over 6 images" in result.output
    kept = lance.dataset(str(db / "layer_cka.lance"))
    rows_now = Store.open(db).dataset(Store.open(db).variants_tables()[0]).count_rows()
    assert set(kept.to_table()["run_rows"].to_pylist()) == {rows_now}
    version = kept.version
    notes = []
    rows = layers(db, notify=notes.append).records()
    # read back: nothing computed, nothing written
    assert notes == [] and lance.dataset(str(db / "layer_cka.lance")).version == version
    assert {r["cka_estimator"] for r in rows} == {"full"}
    # CLIP's layer 0 is the CLS token before any attention, the same for every image: no CKA
    assert all(r["cka"] is None for r in rows if r["layer"] == 0)
    assert all(0 <= r["cka"] <= 1 + 1e-9 for r in rows if r["layer"] > 0)


def test_run_cka_equals_the_arrays_cka(tmp_path, monkeypatch):
    """The streamed CKA of a run (chunks of whole images, batches that cut images in two)
    equals linear_cka and minibatch_cka of its hidden states read as arrays."""
    db = tmp_path / "db"
    build_synthetic_store(db, n_images=40, dim=16, layers=3, chunk=40, seed=0, hidden_width=24)
    store = Store.open(db)
    run = resolve_run(store)
    table = store.dataset(run.variants_table).to_table(
        columns=["image_id", "variant", "hidden_states"]
    )
    table = table.sort_by([("image_id", "ascending"), ("variant", "ascending")])
    states = np.frombuffer(b"".join(table["hidden_states"].to_pylist()), "<f2")
    states = states.reshape(40, 10, 4, 24).astype(np.float64)
    variants = sorted(set(table["variant"].to_pylist()))
    monkeypatch.setattr(cka_module, "READ_BATCH", 7)  # a batch ends inside an image
    for estimator, memory in (("full", cka_module.CKA_MEMORY_BYTES), ("minibatch", 0)):
        monkeypatch.setattr(cka_module, "CKA_MEMORY_BYTES", memory)
        result = cka_module.compute_run_cka(store, run, batch=16)
        assert len(result.rows) == 9 * 4 and result.images == 40
        for row in result.rows:
            assert row.estimator == estimator
            x = states[:, variants.index("original"), row.layer]
            y = states[:, variants.index(row.augmentation), row.layer]
            expected = linear_cka(x, y) if estimator == "full" else minibatch_cka(x, y, 16)
            assert abs(row.cka - expected) < 1e-6, (row, expected)


def test_kept_cka_is_computed_again_when_the_run_grows(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    options = dict(augmentations="noise", device="cpu", image_size=64, keep_pixels=0)
    first = ingest([photos], db, str(tiny_model), limit=4, hidden_states=True, **options)
    assert first.cka_images == 4 and first.cka_seconds is not None
    # the same run grows by two images, ingested without --hidden-states: the kept CKA is
    # stale, and the next `layers` computes it again (a note first) over the 4 that hold them
    second = ingest([photos], db, str(tiny_model), **options)
    assert second.run_id == first.run_id and second.stored == 2 and second.cka_seconds is None
    result = CliRunner().invoke(cli, ["layers", "--db", str(db), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "note: computing the CKA of run" in result.output
    kept = lance.dataset(str(db / "layer_cka.lance")).to_table()
    assert set(kept["run_rows"].to_pylist()) == {6 * 2} and set(kept["images"].to_pylist()) == {4}
    again = CliRunner().invoke(cli, ["layers", "--db", str(db), "--format", "csv"])
    assert again.exit_code == 0 and "computing" not in again.output
    # an ingest with --hidden-states that stores nothing new computes nothing
    third = ingest([photos], db, str(tiny_model), hidden_states=True, **options)
    assert third.stored == 0 and third.cka_seconds is None


def test_store_before_0008_computes_the_cka_on_demand(tmp_path):
    """A store of schema 7 holding hidden states: `clipshift migrate` adds layer_cka, and the
    first `layers` computes the CKA (saying so), keeps it, and the next reads it."""
    db = tmp_path / "db"
    build_synthetic_store(db, n_images=20, dim=16, layers=2, chunk=20, seed=0, hidden_width=8)
    store = Store.open(db)
    store.db.drop_table("layer_cka")
    store.db.open_table("schema_migrations").delete("version >= 8")
    refused = CliRunner().invoke(cli, ["layers", "--db", str(db)])
    assert refused.exit_code != 0 and "clipshift migrate" in refused.output
    result = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert result.exit_code == 0 and "applied 0008 layer_cka" in result.output, result.output
    first = CliRunner().invoke(cli, ["layers", "--db", str(db), "--format", "json"])
    assert first.exit_code == 0, first.output
    assert "note: computing the CKA of run synthetic000" in first.output
    assert lance.dataset(str(db / "layer_cka.lance")).count_rows() == 9 * 3
    second = CliRunner().invoke(cli, ["layers", "--db", str(db), "--format", "json"])
    assert second.exit_code == 0 and "note:" not in second.output
    assert json.loads(second.stdout) == json.loads(first.stdout)


def test_old_store_migrates_and_says_it_has_no_layer_metrics(tmp_path, ingested_store):
    db = tmp_path / "db"
    shutil.copytree(ingested_store, db)
    store = Store.open(db)
    (name,) = store.variants_tables()
    # back to schema 5: the layer columns, 0007's label columns and their log rows gone
    store.db.open_table(name).drop_columns(LAYER_COLUMNS)
    store.db.open_table("images").drop_columns(["label", "label_index", "source"])
    store.db.drop_table("layer_cka")
    store.db.open_table("schema_migrations").delete("version >= 6")
    result = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "applied 0006 layer_metrics" in result.output
    assert "applied 0008 layer_cka" in result.output
    table = lance.dataset(str(db / f"{name}.lance")).to_table(columns=LAYER_COLUMNS)
    assert all(table[c].null_count == table.num_rows for c in LAYER_COLUMNS)
    before = lance.dataset(str(db / f"{name}.lance")).count_rows()
    result = CliRunner().invoke(cli, ["layers", "--db", str(db)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no layer metrics in run" in lines[0], result.output
    assert "Traceback" not in result.output
    assert lance.dataset(str(db / f"{name}.lance")).count_rows() == before


def test_layer_metrics_identical_across_workers(tmp_path, tiny_model, photos):
    tables = []
    for workers in (0, 2):
        db = tmp_path / f"db{workers}"
        options = dict(augmentations="noise,shift_scale_rotate", device="cpu", batch_size=2)
        ingest([photos], db, str(tiny_model), workers=workers, hidden_states=True, **options)
        (name,) = Store.open(db).variants_tables()
        table = lance.dataset(str(db / f"{name}.lance")).to_table(
            columns=["image_id", "variant", *LAYER_COLUMNS]
        )
        tables.append(table.sort_by([("image_id", "ascending"), ("variant", "ascending")]))
    assert tables[0].equals(tables[1])


def test_figures_of_two_models_of_different_depths(tmp_path):
    db = tmp_path / "db"
    build_synthetic_store(db, n_images=40, dim=16, layers=4, chunk=40, seed=0, hidden_width=8)
    build_synthetic_store(db, n_images=40, dim=16, layers=2, chunk=40, seed=1)
    names = ["representation_drift", "layer_cka", "model_layer_drift"]
    result = report(db, run="synthetic000", out=tmp_path / "out", figures=names)
    assert [f.name for f in result.figures if f.path] == names
    # the run without hidden states says why it has no CKA figure
    other = report(db, run="synthetic001", out=tmp_path / "other", figures=["layer_cka"])
    assert "--hidden-states" in other.figures[0].note
    rows = layers(db, all_runs=True).records()
    assert {r["run_id"] for r in rows} == {"synthetic000", "synthetic001"}
    assert {r["depth"] for r in rows if r["run_id"] == "synthetic001"} == {0.0, 0.5, 1.0}


def test_layers_on_a_store_it_cannot_write_computes_and_keeps_nothing(tmp_path):
    db = tmp_path / "db"
    build_synthetic_store(db, n_images=20, dim=16, layers=2, chunk=20, seed=0, hidden_width=8)
    Store.open(db).dataset("layer_cka").delete("true")
    (db / ".clipshift.lock").unlink()
    (db / ".clipshift.lock").mkdir()  # the lock cannot be opened, as when read-only
    result = CliRunner().invoke(cli, ["layers", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "note: computing the CKA of run synthetic000" in result.output
    assert "note: the CKA of run synthetic000 was not kept: " in result.output
    assert "Traceback" not in result.output
    assert all(r["cka"] is not None for r in json.loads(result.stdout) if r["layer"] > 0)
    assert lance.dataset(str(db / "layer_cka.lance")).count_rows() == 0
