"""Ingest's worker processes: results independent of their number, worker deaths, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import write_photos
from worker_faults import die_on_poison, hang_on_poison

from clipshift.ingest import ingest
from clipshift.procs import alive, command_line, descendants
from clipshift.stages import Failure, Prepared, PrepareSettings, prepare_image
from clipshift.store import Store
from clipshift.workers import (
    CPU_GFLOPS_PER_CORE,
    PREPARE_SECONDS_PER_INPUT,
    PreparePool,
    available_cores,
    cpu_peak,
    default_workers,
    inference_gflop,
)

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = PrepareSettings(image_size=64, augmentations=("noise", "elastic", "coarse_dropout"))
SHAPE = (4, 64, 64, 3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The real photos, a copy of one under another name, an unreadable and a broken file."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = write_photos(folder)
    (folder / "z_copy_of_astronaut.png").write_bytes(paths[0].read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return folder


def many_photos(folder: Path, count: int) -> list[Path]:
    """`count` distinct files: the real photos, each with some trailing bytes PIL ignores."""
    originals = write_photos(folder.with_name(folder.name + "-originals"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.png"
        path.write_bytes(originals[i % len(originals)].read_bytes() + i.to_bytes(4, "little"))
        paths.append(path)
    return paths


def rows(db: Path, table: str, order: str) -> list[tuple]:
    dataset = Store.open(db).dataset(table)  # noqa: F841 - scanned by DuckDB below
    return duckdb.sql(f"SELECT * FROM dataset ORDER BY {order}").fetchall()


def test_the_stages_in_this_process_and_in_two_workers_give_identical_results(
    tmp_path, tiny_model, corpus
):
    summaries = {}
    for workers in (0, 2):
        summaries[workers] = ingest(
            [corpus],
            tmp_path / f"db{workers}",
            str(tiny_model),
            batch_size=3,
            keep_pixels=-1,
            device="cpu",
            workers=workers,
        )
    one, two = summaries[0], summaries[2]
    assert two.workers == 2 and one.workers == 0
    assert (one.run_id, one.stored, one.duplicates) == (two.run_id, two.stored, two.duplicates)
    assert (one.stored, one.duplicates, one.failed) == (6, 1, 2)
    assert [(f.path, f.stage, f.message) for f in one.failures] == [
        (f.path, f.stage, f.message) for f in two.failures
    ]

    columns = (
        "run_id, image_id, variant, patch_similarity, edge_preservation, detail_preservation, "
        "params, pixels"
    )
    exact = {}
    vectors = {}
    for workers in (0, 2):
        db = tmp_path / f"db{workers}"
        dataset = Store.open(db).dataset("variants_16")  # noqa: F841 - the tiny CLIP is 16-d
        exact[workers] = duckdb.sql(
            f"SELECT {columns} FROM dataset ORDER BY image_id, variant"
        ).fetchall()
        table = duckdb.sql(
            "SELECT embedding, attention_layers FROM dataset ORDER BY image_id, variant"
        ).fetchnumpy()
        vectors[workers] = [np.stack(table[c]) for c in ("embedding", "attention_layers")]
    assert exact[0] == exact[2]
    assert all(row[-1] for row in exact[0])  # every variant's PNG was kept and compared
    for a, b in zip(vectors[0], vectors[2], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert rows(tmp_path / "db0", "images", "image_id") == rows(
        tmp_path / "db2", "images", "image_id"
    )
    errors = [
        [r[:4] for r in rows(tmp_path / f"db{w}", "errors", "path")]  # all but the time
        for w in (0, 2)
    ]
    assert len(errors[0]) == 2 and errors[0] == errors[1]


def test_a_killed_worker_is_replaced_and_its_images_retried(tmp_path):
    paths = many_photos(tmp_path / "photos", 8)
    expected = [prepare_image(p, SETTINGS, True) for p in paths]
    with PreparePool(1, SETTINGS, SHAPE) as pool:
        results = pool.imap(paths, [True] * len(paths))
        first = next(results)  # the worker now holds the next images
        os.kill(pool.pids()[0], signal.SIGKILL)
        got = [first, *results]
        assert pool.worker_deaths == 1 and pool.retried >= 1
    assert [type(r) for r in got] == [Prepared] * len(paths)
    for a, b in zip(expected, got, strict=True):
        assert a.path == b.path and a.image_id == b.image_id
        assert np.array_equal(a.pixels, b.pixels)
        assert (a.params, a.metrics, a.pngs) == (b.params, b.metrics, b.pngs)


def test_a_pool_grows_to_its_capacity(tmp_path):
    """The default count waits for torch to find the device: the pool starts with the CPU's
    and grows, up to the capacity its shared memory was sized for."""
    paths = many_photos(tmp_path / "photos", 6)
    expected = [prepare_image(p, SETTINGS, False) for p in paths]
    with PreparePool(1, SETTINGS, SHAPE, capacity=2) as pool:
        assert pool.size == 1
        pool.grow(3)
        assert pool.size == 2 and len(pool.pids()) == 2
        got = list(pool.imap(paths, [False] * len(paths)))
    assert [r.image_id for r in got] == [r.image_id for r in expected]
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a.pixels, b.pixels) and a.metrics == b.metrics


def test_a_model_that_fails_to_load_leaves_no_store_and_no_worker(tmp_path, tiny_model):
    """The first images go to the workers before the model loads: a model that then fails
    stops them, and leaves no store behind."""
    from clipshift import ClipshiftError

    paths = many_photos(tmp_path / "photos", 4)
    with pytest.raises(ClipshiftError, match="patch size"):
        ingest([paths[0].parent], tmp_path / "db", str(tiny_model), image_size=100,
               augmentations="noise", device="cpu", workers=2)  # fmt: skip
    assert not (tmp_path / "db").exists()
    assert [p for p in descendants(os.getpid()) if alive(p) and is_worker(p)] == []


def test_an_image_that_kills_its_worker_twice_is_recorded_and_the_rest_go_on(tmp_path):
    paths = many_photos(tmp_path / "photos", 5)
    poison = paths[2].rename(paths[2].with_name("poison.png"))
    paths[2] = poison
    with PreparePool(2, SETTINGS, SHAPE, prepare=die_on_poison) as pool:
        got = list(pool.imap(paths, [False] * len(paths)))
        assert pool.worker_deaths == 2
    assert [type(r) for r in got] == [Prepared, Prepared, Failure, Prepared, Prepared]
    assert got[2].stage == "worker" and got[2].path == str(poison)
    assert "died 2 times" in got[2].message and "SIGKILL" in got[2].message


def test_an_image_that_hangs_its_worker_is_recorded_and_the_rest_go_on(tmp_path):
    paths = many_photos(tmp_path / "photos", 5)
    poison = paths[1].rename(paths[1].with_name("poison.png"))
    paths[1] = poison
    with PreparePool(2, SETTINGS, SHAPE, prepare=hang_on_poison, hang_seconds=2) as pool:
        got = list(pool.imap(paths, [False] * len(paths)))
        assert pool.worker_deaths == 2
    assert [type(r) for r in got] == [Prepared, Failure, Prepared, Prepared, Prepared]
    assert got[1].stage == "worker" and "stopped answering for 2 s" in got[1].message


def test_ingest_goes_on_when_a_worker_is_killed_mid_run(tmp_path, tiny_model):
    many_photos(tmp_path / "photos", 12)
    killed = []

    def kill_a_worker(done, summary):
        if not killed:
            pid = [p for p in descendants(os.getpid()) if is_worker(p)][0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = ingest(
        [tmp_path / "photos"],
        tmp_path / "db",
        str(tiny_model),
        batch_size=2,
        image_size=64,
        augmentations="noise,blur",
        keep_pixels=0,
        device="cpu",
        workers=2,
        on_progress=kill_a_worker,
    )
    assert killed
    assert (summary.stored, summary.failed) == (12, 0)
    assert not rows(tmp_path / "db", "errors", "path")


def is_worker(pid: int) -> bool:
    return "clipshift.workers" in command_line(pid)


# photos for an ingest that a test stops mid-run: enough that it is still running when the
# test, polling on a loaded machine, sees its workers (with 40, the tiny model's ingest of
# 2026-12-01 was 4 s from its store appearing to its end, and once ended first)
STOPPED_PHOTOS = 200


def start_ingest(tmp_path: Path, tiny_model: Path, photos: int) -> subprocess.Popen:
    """`clipshift ingest --workers 2` in a process of its own, its output piped."""
    many_photos(tmp_path / "photos", photos)
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "ingest",
        str(tmp_path / "photos"),
        "--db",
        str(tmp_path / "db"),
        "--model",
        str(tiny_model),
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_from_a_shell
    )


def as_from_a_shell() -> None:
    """Ctrl-C as a terminal delivers it: the child starts with SIGINT at its default
    disposition and unblocked, not as this test process may hold it after the suite's earlier
    tests (an ignored or blocked SIGINT is inherited across exec, and Python then raises no
    KeyboardInterrupt: twice in CI the child ran to its end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for_workers(main: subprocess.Popen, ready: Callable[[], bool]) -> list[int]:
    """The processes under `main` once it runs its two workers and `ready()` holds."""
    deadline = time.monotonic() + 240  # generous: the suite may run on a loaded machine
    while time.monotonic() < deadline:
        children = descendants(main.pid)
        if sum(is_worker(p) for p in children) == 2 and ready():
            return children
        time.sleep(0.02)
    main.kill()
    pytest.fail("the ingest never started its two workers")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_leaves_no_processes(tmp_path, tiny_model):
    main = start_ingest(tmp_path, tiny_model, STOPPED_PHOTOS)
    children = wait_for_workers(main, (tmp_path / "db").exists)
    main.send_signal(signal.SIGINT)
    _, stderr = main.communicate(timeout=60)
    assert main.returncode == 130, stderr
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    time.sleep(0.2)
    assert [p for p in children if alive(p)] == []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("moment", ["start-up", "mid-run"])
def test_workers_exit_quietly_when_the_main_process_is_killed(tmp_path, tiny_model, moment):
    """kill -9 of the main process, while its workers still import or while they work: they
    exit by themselves, and print nothing (no traceback, no "leaked shared_memory")."""
    main = start_ingest(tmp_path, tiny_model, STOPPED_PHOTOS)
    if moment == "start-up":
        children = wait_for_workers(main, lambda: True)
    else:
        children = wait_for_workers(main, (tmp_path / "db").exists)
    workers = [p for p in children if is_worker(p)]
    main.kill()
    # the workers share the main process's stderr: it ends when the last of them has exited
    _, stderr = main.communicate(timeout=60)
    assert main.returncode == -signal.SIGKILL
    assert stderr == b"", stderr.decode(errors="replace")
    deadline = time.monotonic() + 10
    while [p for p in workers if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in children if alive(p)] == []


# -- the default --workers -------------------------------------------------------------------

# ViT-B/32's vision tower, as openai/clip-vit-base-patch32's config.json gives it
VIT_B_32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "patch_size": 32, "image_size": 224}  # fmt: skip


def test_default_workers_leave_the_cores_to_a_model_on_the_cpu():
    prepare = 10 * PREPARE_SECONDS_PER_INPUT
    full = 10 * inference_gflop(VIT_B_32, 224) / CPU_GFLOPS_PER_CORE
    # the full-size model is 98% of the work: its threads keep every core, the stages one
    # worker process
    assert full / (full + prepare) > 0.97
    for cores in (1, 2, 4, 8, 16, 32):
        assert default_workers("cpu", cores, full, prepare) == 1
    assert default_workers("cpu", 64, full, prepare) == 2  # the stages' 2% of 64 cores
    # a model that costs nothing: the stages are all the work
    assert default_workers("cpu", 2, 0.0, prepare) == 2
    # the tiny CLIP, measured: its forward a third of the work, two thirds of 2 cores -> 2
    assert default_workers("cpu", 2, 0.012, 0.023) == 2
    assert default_workers("cpu", 8, 0.012, 0.023) == 6
    # half the work on 2 cores: one core's worth, one worker
    assert default_workers("cpu", 2, 0.025, 0.025) == 1
    # an unknown cost on the CPU is taken as the model's
    assert default_workers("cpu", 8, float("inf"), prepare) == 1


def test_default_workers_give_the_cores_to_the_stages_when_the_model_runs_elsewhere():
    full = 10 * inference_gflop(VIT_B_32, 224) / CPU_GFLOPS_PER_CORE
    for device in ("cuda", "mps"):
        assert default_workers(device, 8, full, 0.025) == 8
    assert default_workers("cpu", 8, None, 0.025) == 8
    assert default_workers("cuda", 0, None, 0.025) == 1


def test_inference_gflop_is_vit_b_32s_known_cost():
    # ViT-B/32 at 224 px: 4.4 GMAC, 8.8 GFLOP per image
    assert inference_gflop(VIT_B_32, 224) == pytest.approx(8.8, rel=0.02)
    # the token count grows with the square of the size
    assert inference_gflop(VIT_B_32, 448) > 3.9 * inference_gflop(VIT_B_32, 224)


def test_cpu_peak_from_the_flags():
    # this project's AMD EPYC (Zen 3): AVX2 with FMA, no bf16 unit; 2 cores at 2.445 GHz
    epyc = cpu_peak({"sse2", "avx", "avx2", "fma"}, 2, 2.445)
    assert (epyc.fp32_unit, epyc.fp32_flop_per_cycle) == ("AVX2/FMA", 32)
    assert epyc.fp32_gflops == pytest.approx(156.5, abs=0.1)
    assert epyc.bf16_unit is None and epyc.bf16_gflops is None
    # a Sapphire Rapids Xeon: AVX-512 for fp32, AMX for bf16
    xeon = cpu_peak(
        {"sse2", "fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, 2, 2.0
    )
    assert (xeon.fp32_unit, xeon.fp32_gflops) == ("AVX-512", 256.0)
    assert (xeon.bf16_unit, xeon.bf16_gflops) == ("AMX", 4096.0)
    # Cooper Lake: bf16 through AVX512-BF16's dot products, no AMX
    cooper = cpu_peak({"fma", "avx512f", "avx512_bf16"}, 1, 1.0)
    assert (cooper.bf16_unit, cooper.bf16_gflops) == ("AVX512-BF16", 128.0)
    # what the full-size ViT-B/32 reached per core here (CPU_GFLOPS_PER_CORE) is under the
    # peak of a core at the nominal clock
    assert CPU_GFLOPS_PER_CORE < epyc.fp32_gflops / 2


def test_ingest_chooses_its_default_workers_from_the_models_config(tmp_path, tiny_model):
    import json

    from clipshift.hub import resolve_model
    from clipshift.ingest import _model_cost

    def workers(model: str) -> int:
        return default_workers("cpu", cores, *_model_cost(resolve_model(model), 224, 10))

    cores = available_cores()
    # the tiny CLIP costs nothing beside the stages: one worker per core
    assert workers(str(tiny_model)) == cores
    full = tmp_path / "vit-b-32-config-only"
    full.mkdir()
    (full / "config.json").write_text(json.dumps({"vision_config": VIT_B_32}))
    assert workers(str(full)) == 1
    # no vision_config to estimate from: the cores stay the model's
    (full / "config.json").write_text("{}")
    assert workers(str(full)) == 1


def test_ingest_by_default_runs_the_tiny_model_with_a_worker_per_core(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    many_photos(photos, 3)
    summary = ingest([photos], tmp_path / "db", str(tiny_model), augmentations="noise",
                     image_size=64, device="cpu", keep_pixels=0)  # fmt: skip
    assert summary.stored == 3
    assert summary.workers == min(available_cores(), 3)
