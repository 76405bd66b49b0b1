"""Scale-out: the Ray engine on a 2-node local cluster, and stores on an S3-compatible server.

Real components only: a Ray cluster of two nodes on 127.0.0.1 (ray.cluster_utils.Cluster) and
moto's S3 server on 127.0.0.1, both started here and stopped in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from clipshift.analysis import stats
from clipshift.defaults import AUGMENTATION_NAMES
from clipshift.ingest import ingest
from clipshift.neighbors import neighbors
from clipshift.procs import alive
from clipshift.report import report
from clipshift.store import Store

# Ray resolves 127.0.0.1 in an address to the machine's own address unless it is told this is
# a single-machine setup: keep every node and driver of the test cluster on the loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = 1 + len(AUGMENTATION_NAMES)
IMAGES = 12  # distinct images in the corpus fixture
OBJECT_STORE = 80 * 1024**2  # Ray's minimum is 75 MiB


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photos) -> Path:
    """The real photos, each also flipped (distinct bytes), a duplicate file, an undecodable
    file and an empty one: 12 images, 1 duplicate, 2 failures."""
    folder = tmp_path_factory.mktemp("corpus")
    for path in sorted(photos.iterdir()):
        image = Image.open(path).convert("RGB")
        image.save(folder / path.name)
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{path.stem}_flip.png")
    (folder / "zz_duplicate.png").write_bytes((folder / "astronaut.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on 127.0.0.1 of one CPU each; the workers import clipshift from this
    checkout. The model actor takes a whole CPU, so it holds one node and the prepare tasks
    run on the other: every ingest spans both. (Two CPUs each started twice the worker
    processes, each importing torch, on a machine of two cores.)"""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    node = dict(
        num_cpus=1,
        object_store_memory=OBJECT_STORE,
        node_ip_address="127.0.0.1",
        include_dashboard=False,
    )
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        address = f"127.0.0.1:{cluster.address.rsplit(':', 1)[1]}"
        os.environ["RAY_ADDRESS"] = address
        # one driver connection for the in-process ingests: their workers are reused
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield address
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- helpers ------------------------------------------------------------------------------


def read(db, name: str, **options):
    return lance.dataset(f"{db}/{name}.lance", **options).to_table()


def variants_table(db) -> str:
    """The store's one `variants_<D>` table (the tiny model's width)."""
    (name,) = Store.open(db).variants_tables()
    return name


def read_variants(db, **options):
    return read(db, variants_table(db), **options)


def assert_same_store(local, other) -> None:
    """Same images, variant rows and errors; embeddings and attention within 1e-5; pixel
    metrics, parameters and pixels identical."""
    table = variants_table(local)
    assert variants_table(other) == table
    for name, keys in (("images", ["image_id"]), (table, ["image_id", "variant"])):
        a = read(local, name).sort_by([(k, "ascending") for k in keys])
        b = read(other, name).sort_by([(k, "ascending") for k in keys])
        assert a.num_rows == b.num_rows
        for column in a.column_names:
            if column in ("embedding", "attention", "attention_layers"):
                x = np.asarray(a[column].to_pylist(), dtype=np.float64)
                y = np.asarray(b[column].to_pylist(), dtype=np.float64)
                np.testing.assert_allclose(x, y, atol=1e-5, rtol=0, err_msg=column)
            else:
                assert a[column].to_pylist() == b[column].to_pylist(), (name, column)
    errors = [
        sorted(
            tuple(r.values())
            for r in read(db, "errors").select(["path", "stage", "message"]).to_pylist()
        )
        for db in (local, other)
    ]
    assert errors[0] == errors[1]
    assert read(local, "runs")["run_id"].to_pylist() == read(other, "runs")["run_id"].to_pylist()


def assert_whole_and_unique(db) -> int:
    table = read_variants(db).select(["image_id", "variant"])
    rows = list(zip(table["image_id"].to_pylist(), table["variant"].to_pylist(), strict=True))
    assert len(rows) == len(set(rows)), "duplicate (image, variant) rows"
    per_image: dict[str, int] = {}
    for image_id, _ in rows:
        per_image[image_id] = per_image.get(image_id, 0) + 1
    assert set(per_image.values()) <= {VARIANTS}, "a partly stored image"
    images = read(db, "images")["image_id"].to_pylist()
    assert len(images) == len(set(images))
    return len(per_image)


# -- Ray ----------------------------------------------------------------------------------


def test_ray_engine_equals_local_engine(ray_cluster, tmp_path, tiny_model, corpus):
    options = dict(batch_size=3, keep_pixels=8, device="cpu")
    local = ingest([corpus], tmp_path / "local", str(tiny_model), **options)
    distributed = ingest([corpus], tmp_path / "ray", str(tiny_model), engine="ray", **options)
    assert (distributed.stored, distributed.duplicates, distributed.failed) == (IMAGES, 1, 2)
    assert (local.stored, local.duplicates, local.failed) == (IMAGES, 1, 2)
    assert distributed.duplicate_files == local.duplicate_files  # named alike
    assert_same_store(tmp_path / "local", tmp_path / "ray")


def test_ray_bf16_run_is_the_local_bf16_run(ray_cluster, tmp_path, tiny_model, photos):
    """The actors run the model in the run's precision: the same run_id as the local engine's,
    and embeddings far closer to its bf16 ones than fp32's are."""
    options = dict(augmentations="noise", limit=2, device="cpu", image_size=64, keep_pixels=0)
    fp32 = ingest([photos], tmp_path / "fp32", str(tiny_model), **options)
    local = ingest([photos], tmp_path / "local", str(tiny_model), precision="bf16", **options)
    distributed = ingest(
        [photos], tmp_path / "ray", str(tiny_model), engine="ray", precision="bf16", **options
    )
    assert distributed.run_id == local.run_id != fp32.run_id
    assert distributed.stored == local.stored == 2

    def embeddings(db):
        rows = read_variants(db).sort_by([("image_id", "ascending"), ("variant", "ascending")])
        return np.asarray(rows["embedding"].to_pylist(), dtype=np.float64)

    reference = embeddings(tmp_path / "local")
    precision_gap = np.abs(embeddings(tmp_path / "fp32") - reference).max()
    assert np.abs(embeddings(tmp_path / "ray") - reference).max() < precision_gap / 10


def test_ray_engine_takes_hidden_states(ray_cluster, tmp_path, tiny_model, photos):
    """--hidden-states with --engine ray: the actors store the hidden states the local engine
    stores, and the driver keeps the run's CKA at the end, as the local engine does."""
    options = ["--model", str(tiny_model), "--device", "cpu", "--augmentations", "noise",
               "--limit", "4", "--image-size", "64", "--keep-pixels", "0",
               "--hidden-states"]  # fmt: skip
    for engine in ("local", "ray"):
        result = CliRunner().invoke(
            cli, ["ingest", str(photos), "--db", str(tmp_path / engine), "--engine", engine]
            + options,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "cka        computed over 4 images" in result.output, result.output

    def hidden(db):
        rows = read_variants(db).sort_by([("image_id", "ascending"), ("variant", "ascending")])
        states = rows["hidden_states"].to_pylist()
        assert None not in states
        return np.frombuffer(b"".join(states), "<f2").astype(np.float64)

    np.testing.assert_allclose(hidden(tmp_path / "ray"), hidden(tmp_path / "local"), atol=1e-2)
    cka = [
        read(tmp_path / engine, "layer_cka").sort_by([("layer", "ascending")])
        for engine in ("local", "ray")
    ]
    assert cka[0].num_rows == cka[1].num_rows > 0
    for a, b in zip(cka[0]["cka"].to_pylist(), cka[1]["cka"].to_pylist(), strict=True):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-3)


def test_ray_driver_killed_then_rerun(ray_cluster, tmp_path, tiny_model, corpus):
    from clipshift.engines.ray import COMMIT_GROUP

    db = tmp_path / "db"
    command = [sys.executable, str(ROOT / "cli.py"), "ingest", str(corpus), "--db", str(db)]
    command += ["--model", str(tiny_model), "--device", "cpu", "--engine", "ray", "--quiet"]
    command += ["--batch-size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_cluster}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    stored = 0
    while time.monotonic() < deadline and driver.poll() is None:
        tables = list(db.glob("variants_*.lance"))
        if tables:
            stored = read(db, tables[0].stem).num_rows // VARIANTS
            if stored:
                break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 0 < stored < IMAGES, f"the driver was killed at {stored} of {IMAGES} stored images"
    kept = assert_whole_and_unique(db)
    # commits are whole groups of batches: the kill lost at most the group in flight
    assert kept % COMMIT_GROUP == 0
    # the batch size is no part of the run's identity: the rerun takes bigger batches
    summary = ingest(
        [corpus], db, str(tiny_model), engine="ray", batch_size=4, keep_pixels=8, device="cpu"
    )
    assert summary.stored == IMAGES - kept
    assert assert_whole_and_unique(db) == IMAGES


def test_ray_engine_without_ray_is_one_line(monkeypatch, tmp_path, tiny_model, photos):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(
        cli,
        ["ingest", str(photos), "--db", str(tmp_path / "db"), "--model", str(tiny_model)]
        + ["--engine", "ray", "--device", "cpu"],
    )
    assert result.exit_code == 1
    assert 'pip install "clipshift[ray]"' in result.output
    assert "Traceback" not in result.output


# A driver that starts a local cluster as clipshift does, and reports what it started.
LOCAL_DRIVER = """
import json, time
from clipshift.engines.ray import _import_ray, connect
from clipshift.procs import command_line, descendants
ray = _import_ray()
connect(ray)
processes = {pid: command_line(pid) for pid in descendants(os.getpid())}
print(json.dumps({"address": ray.nodes()[0]["NodeManagerAddress"], "processes": processes}))
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_local_cluster_is_on_the_loopback_and_dies_with_its_driver():
    """The cluster clipshift starts (no RAY_ADDRESS): no web dashboard, its node on 127.0.0.1,
    and nothing of it left a few seconds after its driver is killed with kill -9 (Ray's node
    agents alone outlived it by a minute)."""
    pytest.importorskip("ray")
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # clipshift sets its own
        env.pop(name, None)
    script = "import os\n" + LOCAL_DRIVER
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        started = json.loads(driver.stdout.readline())
    finally:
        driver.kill()
        driver.wait()
    assert started["address"] == "127.0.0.1"
    commands = list(started["processes"].values())
    assert any(c.startswith("ray::DashboardAgent") for c in commands)  # Ray starts it always
    # the head's dashboard process serves no web UI, and no process listens beyond the loopback
    assert all("--disable-frontend" in c for c in commands if "dashboard/dashboard.py" in c)
    assert not any("--node-ip-address" in c and "127.0.0.1" not in c for c in commands)
    pids = [int(p) for p in started["processes"]]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [p for p in pids if alive(p)]:
        time.sleep(0.1)
    assert {p: started["processes"][str(p)] for p in pids if alive(p)} == {}


# -- object storage -----------------------------------------------------------------------


def test_s3_store_gives_the_same_numbers(s3_server, tmp_path, tiny_model, photos):
    for path in sorted(photos.iterdir()):
        s3_server.upload_file(str(path), "clipshift-test", f"images/{path.name}")
    remote = "s3://clipshift-test/stores/one"
    runner = CliRunner()
    args = ["--model", str(tiny_model), "--device", "cpu", "--batch-size", "4", "--quiet"]
    result = runner.invoke(cli, ["ingest", "s3://clipshift-test/images/", "--db", remote, *args])
    assert result.exit_code == 0, result.output
    local = tmp_path / "local"
    assert runner.invoke(cli, ["ingest", str(photos), "--db", str(local), *args]).exit_code == 0

    # the same numbers: stats (every column), neighbors, the report's stats table
    assert stats(remote).rows == stats(local).rows
    for command in (["stats", "--format", "csv"], ["clusters"], ["sql", "SELECT count(*) n, "
                    "sum(cosine) s FROM shifts"], ["retrieval", "--format", "csv"]):  # fmt: skip
        outputs = [runner.invoke(cli, [*command, "--db", db]) for db in (remote, str(local))]
        assert outputs[0].exit_code == 0, outputs[0].output
        assert outputs[0].output == outputs[1].output
    stored = read(local, "images").sort_by("path")
    query = stored["image_id"][0].as_py()
    near = [neighbors(db, query, k=3, exact=True) for db in (remote, local)]
    assert [(n.image_id, n.variant, n.distance) for n in near[0].rows] == [
        (n.image_id, n.variant, n.distance) for n in near[1].rows
    ]
    pages = [
        report(db, out=tmp_path / f"report{i}", figures="rank").index.read_text()
        for i, db in enumerate((remote, local))
    ]
    assert pages[0].split('id="stats"')[1] == pages[1].split('id="stats"')[1]
    # the image paths are the objects' URIs
    assert (
        read(remote, "images", storage_options=_options())["path"]
        .to_pylist()[0]
        .startswith("s3://clipshift-test/images/")
    )

    # rerun: resumes (nothing twice); migrate and index accept the URI too
    again = runner.invoke(cli, ["ingest", "s3://clipshift-test/images/", "--db", remote, *args])
    assert again.exit_code == 0
    table = variants_table(remote)
    assert read(remote, table, storage_options=_options()).num_rows == 6 * VARIANTS
    migrate = runner.invoke(cli, ["migrate", "--db", remote])
    assert migrate.exit_code == 0 and "schema version" in migrate.output


def test_s3_second_writer_is_refused(s3_server, tmp_path, tiny_model, photos):
    from clipshift import ClipshiftError

    remote = "s3://clipshift-test/stores/two"
    ingest([photos], remote, str(tiny_model), batch_size=8, device="cpu", limit=1)
    first, second = Store.open(remote), Store.open(remote)
    with first.lock():
        pass  # holds the lease until close
    with pytest.raises(ClipshiftError, match="one writer at a time"):
        with second.lock():
            pass
    first.close()
    with second.lock():
        pass
    second.close()


def test_s3_migration_0003_moves_variants_to_its_width_table(s3_server):
    """Object storage has no rename: 0003 copies `variants` to `variants_<D>` and deletes the
    old objects, and a copy left incomplete by an interrupted migration is redone."""
    from datetime import datetime, timezone

    import pyarrow as pa

    from clipshift.analysis import sql
    from clipshift.store import latest_schema_version, variants_schema

    remote = "s3://clipshift-test/stores/old"
    store = Store.connect(remote, create=True)
    store.migrate(target=2)
    old_schema = variants_schema(8)
    old_schema = old_schema.remove(old_schema.get_field_index("severity"))
    store.db.create_table("variants", schema=old_schema)
    runs = store.table("runs")
    run = {
        "run_id": "old",
        "model": "m",
        "embedding_dim": 8,
        "created_at": datetime.now(timezone.utc),
    }
    runs.add(pa.Table.from_pylist([run], schema=runs.schema))
    rows = [
        {"run_id": "old", "image_id": f"i{n}", "variant": "original", "embedding": [0.5] * 8}
        for n in range(3)
    ]
    for row in rows:  # three commits: three versions, three data files
        store.table("variants").add(pa.Table.from_pylist([row], schema=old_schema))
    store.close()
    # an interrupted earlier attempt: one data file already copied, no manifest
    objects = s3_server.list_objects_v2(
        Bucket="clipshift-test", Prefix="stores/old/variants.lance/data/"
    )
    first = objects["Contents"][0]["Key"]
    s3_server.copy_object(
        Bucket="clipshift-test",
        Key=first.replace("variants.lance", "variants_8.lance"),
        CopySource={"Bucket": "clipshift-test", "Key": first},
    )

    out = CliRunner().invoke(cli, ["migrate", "--db", remote])
    assert out.exit_code == 0, out.output
    assert "applied 0003 model_families" in out.output
    upgraded = Store.open(remote)
    assert upgraded.schema_version() == latest_schema_version()
    assert upgraded.variants_tables() == ["variants_8"] and not upgraded.has_table("variants")
    left = s3_server.list_objects_v2(Bucket="clipshift-test", Prefix="stores/old/variants.lance/")
    assert left["KeyCount"] == 0, "the old table's objects are deleted"
    moved = upgraded.dataset("variants_8")
    assert sorted(moved.to_table().column("image_id").to_pylist()) == ["i0", "i1", "i2"]
    assert moved.to_table().column("severity").to_pylist() == [None] * 3  # 0004 found it
    assert sql(remote, "SELECT count(*), max(len(embedding)) FROM variants").rows == [(3, 8)]


def test_bad_object_uris_are_one_line(s3_server, tmp_path, tiny_model):
    runner = CliRunner()
    missing = runner.invoke(
        cli,
        ["ingest", "s3://clipshift-test/nothing-here/", "--db", str(tmp_path / "db")]
        + ["--model", str(tiny_model), "--device", "cpu"],
    )
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
    no_store = runner.invoke(cli, ["stats", "--db", "s3://clipshift-test/no-store"])
    assert no_store.exit_code == 1 and "no clipshift store" in no_store.output
    scheme = runner.invoke(cli, ["stats", "--db", "ftp://host/store"])
    assert scheme.exit_code == 1 and "not supported" in scheme.output


def _options() -> dict:
    from clipshift.location import storage_options_from_env

    return storage_options_from_env("s3")


def test_location_takes_the_aws_variables(monkeypatch, tmp_path):
    from clipshift.location import Location

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    remote = Location.parse("s3://bucket/prefix/")
    assert remote.uri == "s3://bucket/prefix" and not remote.is_local
    assert remote.storage_options == {
        "aws_access_key_id": "key",
        "aws_secret_access_key": "secret",
        "aws_region": "eu-west-1",
        "aws_endpoint": "http://127.0.0.1:9000",
        "allow_http": "true",
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")
    assert "allow_http" not in Location.parse("s3://bucket/p").storage_options
    local = Location.parse(tmp_path / "store")
    assert local.is_local and local.uri == str(tmp_path / "store")
    assert local.storage_options == {}


def test_s3_lease_being_written_is_refused_with_a_true_message(s3_server, tiny_model, photos):
    """A lease read back with no holder in it (its row is not written yet, or another process
    is taking it) refuses the writer without naming pid 0 on no host, seen 56 years ago."""
    import pyarrow as pa

    remote = "s3://clipshift-test/stores/lease"
    ingest([photos], remote, str(tiny_model), batch_size=8, device="cpu", limit=1)
    empty = pa.table(
        {
            "holder": pa.array([], pa.string()),
            "host": pa.array([], pa.string()),
            "pid": pa.array([], pa.int64()),
            "heartbeat": pa.array([], pa.float64()),
        }
    )
    lance.write_dataset(
        empty, f"{remote}/_writer_lease.lance", mode="overwrite", storage_options=_options()
    )
    args = ["--model", str(tiny_model), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--db", remote, *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "another clipshift process is taking the writer lease" in lines[0]
    assert "pid 0" not in lines[0] and " on ," not in lines[0] and "s ago" not in lines[0]
    assert read(remote, "images", storage_options=_options()).num_rows == 1  # nothing lost
    # the row the fault trial read back: the free one, which a process was taking
    from clipshift.location import Location
    from clipshift.store import WriterLease

    free = {"holder": "", "host": "", "pid": 0, "heartbeat": 0.0}
    message = WriterLease(Location.parse(remote)).refusal(free, time.time())
    assert "is taking the writer lease" in message and "pid 0" not in message
    held = {"holder": "x", "host": "node-3", "pid": 4242, "heartbeat": time.time() - 12}
    message = WriterLease(Location.parse(remote)).refusal(held, time.time())
    assert "(pid 4242 on node-3, last seen 12 s ago)" in message


def test_s3_check_and_repair_where_the_store_is(s3_server, tiny_model, photos):
    remote = "s3://clipshift-test/stores/check"
    options = dict(batch_size=2, keep_pixels=0, device="cpu")
    ingest([photos], remote, str(tiny_model), **options)
    runner = CliRunner()
    whole = runner.invoke(cli, ["check", "--db", remote])
    assert whole.exit_code == 0, whole.output
    assert f"store {remote} is whole" in whole.output

    # damage: the last data file of the variants table is truncated in place
    table = variants_table(remote)
    dataset = lance.dataset(f"{remote}/{table}.lance", storage_options=_options())
    last = dataset.get_fragments()[-1].metadata.files[0].path
    key = f"stores/check/{table}.lance/data/{last}"
    body = s3_server.get_object(Bucket="clipshift-test", Key=key)["Body"].read()
    s3_server.put_object(Bucket="clipshift-test", Key=key, Body=body[: len(body) // 3])
    damaged = runner.invoke(cli, ["check", "--db", remote])
    assert damaged.exit_code == 1
    assert f"{table:<18} DAMAGED" in damaged.output and "truncated" in damaged.output

    repaired = runner.invoke(cli, ["check", "--db", remote, "--repair", "drop"])
    assert repaired.exit_code == 0, repaired.output
    assert "dropped 1 unreadable" in repaired.output and "is whole" in repaired.output
    kept = assert_whole_and_unique_at(remote)
    assert kept < len(list(photos.iterdir()))
    summary = ingest([photos], remote, str(tiny_model), **options)  # the lease was given back
    assert summary.stored == len(list(photos.iterdir())) - kept
    assert runner.invoke(cli, ["check", "--db", remote]).exit_code == 0


def test_s3_compact(s3_server, tiny_model, photos):
    remote = "s3://clipshift-test/stores/compact"
    for limit in (2, 4, 6):  # three ingests: old versions beside the latest
        ingest([photos], remote, str(tiny_model), batch_size=1, device="cpu", limit=limit)
    result = CliRunner().invoke(cli, ["compact", "--db", remote, "--keep-versions", "0s"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"compacted {remote}: ") and "reclaimed" in result.output
    removed = int(result.output.split("reclaimed; ")[1].split()[0])
    assert removed > 0
    assert (
        lance.dataset(
            f"{remote}/{variants_table(remote)}.lance", storage_options=_options()
        ).versions()[0]["version"]
        > 1
    ), "the old versions are deleted"
    assert assert_whole_and_unique_at(remote) == 6
    ingest([photos], remote, str(tiny_model), batch_size=1, device="cpu", limit=6)  # lease free


def assert_whole_and_unique_at(remote: str) -> int:
    """assert_whole_and_unique for a store on the test's S3 server."""
    table = read(remote, variants_table(remote), storage_options=_options())
    rows = list(zip(table["image_id"].to_pylist(), table["variant"].to_pylist(), strict=True))
    assert len(rows) == len(set(rows)), "duplicate (image, variant) rows"
    per_image: dict[str, int] = {}
    for image_id, _ in rows:
        per_image[image_id] = per_image.get(image_id, 0) + 1
    assert set(per_image.values()) <= {VARIANTS}, "a partly stored image"
    return len(per_image)
