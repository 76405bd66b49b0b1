"""The fixed cost of a command: what `import cli` and `clipshift stats` import (issue 22).

Importing torch (2-3 s here), albumentations, transformers, matplotlib or LanceDB (3 s) would
multiply the cost of a read-only command whose work takes a fraction of a second; an ingest
needs neither transformers nor LanceDB, and its main process no albumentations where worker
processes apply the perturbations;
benchmarks/fixed_cost.py has the figures. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_photos

from clipshift.hub import folder_revision, resolve_model
from clipshift.ingest import ingest

ROOT = Path(__file__).resolve().parent.parent
# what a command that only reads the store must not import
HEAVY = ("torch", "albumentations", "cv2", "matplotlib", "transformers", "lancedb", "pandas",
         "scipy", "PIL")  # fmt: skip

CHECK = """
import json, sys
from click.testing import CliRunner
import cli
imported = {"import cli": sorted(m for m in HEAVY if m in sys.modules)}
if len(sys.argv) > 1:
    result = CliRunner().invoke(cli.cli, sys.argv[1:])
    assert result.exit_code == 0, result.output
    imported["command"] = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps(imported))
"""


def imports_of(*args: str) -> dict[str, list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{CHECK}", *args],
                         check=True, capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("fixed-cost")
    db = folder / "db"
    photos = write_photos(folder / "photos")[0].parent
    ingest([photos], db, str(tiny_model), augmentations="noise", image_size=64, device="cpu",
           workers=0, keep_pixels=0)  # fmt: skip
    return db


def test_import_cli_imports_nothing_heavy():
    assert imports_of() == {"import cli": []}


@pytest.mark.parametrize(
    "command",
    [["stats"], ["stats", "--format", "json"], ["sql", "SELECT count(*) FROM shifts"], ["check"]],
)
def test_read_only_commands_import_nothing_heavy(store, command):
    imported = imports_of(*command, "--db", str(store))
    assert imported == {"import cli": [], "command": []}


@pytest.mark.parametrize("into", ["a store that exists", "a new store"])
def test_an_ingest_imports_neither_transformers_nor_lancedb(store, tiny_model, tmp_path, into):
    """The model's image tower loads without transformers' modeling code (towers.py), and an
    ingest writes through pylance, a new store's migrations included: LanceDB (the vector
    index, compaction's optimize) and transformers stay unimported. The worker processes
    apply the perturbations, and the paper's suite names the run without albumentations:
    the main process does not import it (nor OpenCV, SciPy)."""
    import shutil

    db = tmp_path / "db"
    if into == "a store that exists":
        shutil.copytree(store, db)
    photos = write_photos(tmp_path / "photos")[0].parent
    options = ["--augmentations", "blur", "--image-size", "64", "--limit", "2", "-q"]
    imported = imports_of("ingest", str(photos), "--db", str(db), "--model", str(tiny_model),
                          *options)  # fmt: skip
    assert "torch" in imported["command"]  # the model did load: a new run
    assert not {"transformers", "lancedb", "albumentations", "cv2", "scipy"} & set(
        imported["command"]
    )


def test_unchanged_weights_are_hashed_once(tmp_path):
    """ingest reads a folder's identity before the model loads and again after: the second
    read of an unchanged folder (the same files, sizes, times) reuses the first hash, and a
    weight file replaced meanwhile is hashed again."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = folder_revision(tmp_path)
    before = weights.stat()
    with open(weights, "r+b") as handle:  # the same file, size and time: not read again
        handle.write(b"b")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert folder_revision(tmp_path) == first
    weights.write_bytes(b"c" * 1001)
    assert folder_revision(tmp_path) not in (first, "unknown")


def test_hash_ahead_gives_the_revision(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    model = resolve_model(str(tmp_path))
    assert model.hash_ahead().result(timeout=30) == model.revision == folder_revision(tmp_path)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_weights_are_memory_mapped(tiny_model):
    """transformers 5 maps a .safetensors file and its tensors stay views of the mapping: the
    model load reads no weights (ViT-B/32's 600 MB: 10 MB resident after the load here)."""
    from clipshift.encoder import Encoder

    encoder = Encoder(str(tiny_model), device="cpu")
    weights = next(Path(tiny_model).glob("*.safetensors")).resolve()
    assert str(weights) in Path("/proc/self/maps").read_text()
    assert encoder.embedding_dim
