"""Bad files never stop a run; bad options get a one-line error and lose nothing stored."""

from __future__ import annotations

import io
import struct
import zlib

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from cli import cli
from clipshift.ingest import ingest
from clipshift.sources import decode
from clipshift.store import Store


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims width x height (a decompression bomb's signature)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    (folder / "zero.jpg").write_bytes(b"")
    good_jpeg = io.BytesIO()
    Image.fromarray(photo).save(good_jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(good_jpeg.getvalue()[: len(good_jpeg.getvalue()) // 2])
    (folder / "not-an-image.png").write_text("hello, I am a text file")
    (folder / "bomb.png").write_bytes(png_claiming_size(30_000, 30_000))
    Image.fromarray(photo[:1, :1]).save(folder / "one-pixel.png")
    Image.fromarray(rng.integers(0, 256, (3000, 4500, 3), dtype=np.uint8)).save(
        folder / "HUGE.JPG", quality=70
    )
    Image.fromarray((rng.integers(0, 65536, (40, 50))).astype(np.uint16)).save(
        folder / "gray16.png"
    )
    Image.fromarray(photo).convert("CMYK").save(folder / "cmyk.jpg")
    palette = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :45, 3] = 0  # left half fully transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(folder / "exif-rotated.jpg", exif=exif, quality=95)
    Image.fromarray(photo).save(folder / "good.webp")
    Image.fromarray(photo).save(folder / "good.bmp")
    Image.fromarray(photo).save(folder / "good.tif")
    return folder


FAILING = {"zero.jpg", "truncated.jpg", "not-an-image.png", "bomb.png"}


def test_every_bad_kind_is_stored_or_recorded(tmp_path, tiny_model, bad_folder):
    db = tmp_path / "db"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(bad_folder), "--db", str(db), "--model", str(tiny_model), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    total = len(list(bad_folder.iterdir()))
    assert f"stored     {total - len(FAILING)} images" in result.output
    assert f"failed     {len(FAILING)}" in result.output

    errors = lance.dataset(str(db / "errors.lance")).to_table().to_pylist()
    assert {e["path"].rsplit("/", 1)[1] for e in errors} == FAILING
    reasons = {e["path"].rsplit("/", 1)[1]: e["message"] for e in errors}
    assert "empty file" in reasons["zero.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["not-an-image.png"]
    assert "too large" in reasons["bomb.png"]
    assert all(e["stage"] == "decode" for e in errors)

    images = {
        r["path"].rsplit("/", 1)[1]: r
        for r in lance.dataset(str(db / "images.lance")).to_table().to_pylist()
    }
    assert images["exif-rotated.jpg"]["width"] == 60 and images["exif-rotated.jpg"]["height"] == 90
    assert images["HUGE.JPG"]["width"] == 4500 and images["HUGE.JPG"]["height"] == 3000
    assert images["gray16.png"]["mode"].startswith("I")
    assert images["cmyk.jpg"]["mode"] == "CMYK"
    assert images["palette.png"]["mode"] == "P"

    again = CliRunner().invoke(
        cli,
        ["ingest", str(bad_folder), "--db", str(db), "--model", str(tiny_model), "--device", "cpu"],
    )
    assert f"skipped    {total - len(FAILING)}" in again.output
    # a failure that repeats updates its row instead of adding one
    assert len(lance.dataset(str(db / "errors.lance")).to_table()) == len(FAILING)


def test_decode_conversions(bad_folder):
    rgba = decode((bad_folder / "rgba.png").read_bytes(), 90)
    assert (rgba.pixels[:, :40] == 255).all()  # transparent -> white
    rotated = decode((bad_folder / "exif-rotated.jpg").read_bytes(), 32)
    with Image.open(bad_folder / "exif-rotated.jpg") as image:
        expected = ImageOps.exif_transpose(image).convert("RGB").resize((32, 32), Image.BICUBIC)
    assert np.array_equal(rotated.pixels, np.asarray(expected))
    gray16 = decode((bad_folder / "gray16.png").read_bytes(), 16)
    assert gray16.pixels.dtype == np.uint8 and gray16.pixels.max() > 128
    assert decode((bad_folder / "one-pixel.png").read_bytes(), 224).pixels.shape == (224, 224, 3)


def test_a_fixed_file_is_stored_and_its_error_cleared(tmp_path, tiny_model):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "later.png").write_bytes(b"not yet")
    db = tmp_path / "db"
    assert ingest([folder], db, str(tiny_model), device="cpu").failed == 1
    Image.new("RGB", (30, 30), "red").save(folder / "later.png")
    summary = ingest([folder], db, str(tiny_model), device="cpu")
    assert summary.stored == 1 and summary.failed == 0
    assert Store.open(db).table("errors").count_rows() == 0


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def stored(tmp_path, tiny_model, photos):
    db = tmp_path / "db"
    ingest([photos], db, str(tiny_model), limit=1, device="cpu")
    return db


def rows(db):
    return Store.open(db).table("variants_16").count_rows()


def test_missing_path(stored, tiny_model, tmp_path):
    result = run(
        ["ingest", str(tmp_path / "nowhere"), "--db", str(stored), "--model", str(tiny_model)]
    )
    assert_one_line_error(result, "no such file or folder", "nowhere")
    assert rows(stored) == 10


def test_db_is_a_file(tmp_path, photos, tiny_model):
    (tmp_path / "file").write_text("x")
    result = run(
        ["ingest", str(photos), "--db", str(tmp_path / "file"), "--model", str(tiny_model)]
    )
    assert_one_line_error(result, "is a file")
    result = run(
        ["ingest", str(photos), "--db", str(tmp_path / "file" / "db"), "--model", str(tiny_model)]
    )
    assert_one_line_error(result, "cannot create a store")


def test_unknown_augmentation(stored, photos, tiny_model):
    result = run(
        [
            "ingest",
            str(photos),
            "--db",
            str(stored),
            "--model",
            str(tiny_model),
            "--augmentations",
            "noise,sepia",
        ]
    )
    assert_one_line_error(result, "unknown augmentation sepia", "color_jitter")
    assert rows(stored) == 10


def test_negative_workers(stored, photos, tiny_model):
    result = run(["ingest", str(photos), "--db", str(stored), "--model", str(tiny_model),
                  "--workers", "-1"])  # fmt: skip
    assert_one_line_error(result, "--workers -1", "0 runs the CPU stages in this process")
    assert rows(stored) == 10


def test_model_not_available_offline(stored, photos, tmp_path):
    result = run(
        ["ingest", str(photos), "--db", str(stored), "--model", "openai/clip-vit-base-patch32"],
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_one_line_error(result, "Hugging Face", "--model DIR")
    result = run(
        ["ingest", str(photos), "--db", str(tmp_path / "new"), "--model", "./no/such/model"]
    )
    assert_one_line_error(result, "no such directory")
    assert rows(stored) == 10
    assert not (tmp_path / "new").exists()


def test_image_size_not_a_multiple_of_the_patch(stored, photos, tiny_model):
    result = run(
        [
            "ingest",
            str(photos),
            "--db",
            str(stored),
            "--model",
            str(tiny_model),
            "--image-size",
            "100",
        ]
    )
    assert_one_line_error(result, "patch size 32", "try 96")


def test_reading_commands_on_a_missing_store(tmp_path):
    result = run(["migrate", "--db", str(tmp_path / "none")])
    assert_one_line_error(result, "no clipshift store")


def test_reading_a_folder_of_other_files_gives_a_hint_ingest_takes(tmp_path, photos, tiny_model):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    result = run(["stats", "--db", str(folder)])
    assert_one_line_error(result, "no clipshift store", "thesis.tex", "new or empty folder")
    # ingest refuses this folder in the same words, and takes the new folder the hint names
    refused = run(["ingest", str(photos), "--db", str(folder), "--model", str(tiny_model)])
    assert_one_line_error(refused, "holding other files (thesis.tex)", "new or empty folder")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "keep me"
    empty = run(["stats", "--db", str(tmp_path / "new")])
    assert_one_line_error(empty, f"ingest IMAGES --db {tmp_path / 'new'}")


def test_model_not_cached_and_hub_unreachable_fails_without_retries(tmp_path, photos):
    """Not offline by setting, but the hub does not answer (a closed local port stands in for
    it): one line at once, without transformers' retry messages."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(root))
    result = subprocess.run(
        [sys.executable, str(root / "cli.py"), "ingest", str(photos), "--db", str(tmp_path / "db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the hub cannot be reached" in lines[0], result.stderr
    assert not (tmp_path / "db").exists()


def test_exit_codes_when_nothing_can_be_stored(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("")
    db = tmp_path / "db"
    result = run(["ingest", str(empty / "sub"), "--db", str(db), "--model", str(tiny_model)])
    assert_one_line_error(result, "no supported images found under", ".tiff")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_text("not an image")
    result = run(["ingest", str(bad), "--db", str(db), "--model", str(tiny_model)])
    assert result.exit_code == 1
    assert "decode:" in result.output and "broken.png" in result.output
    assert "nothing stored: 1 of 1 files failed" in result.output
    Image.new("RGB", (20, 20), "blue").save(bad / "good.png")
    result = run(["ingest", str(bad), "--db", str(db), "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output  # one stored, one failed
    result = run(["ingest", str(bad / "good.png"), "--db", str(db), "--model", str(tiny_model)])
    assert result.exit_code == 0 and "skipped    1 already" in result.output


def test_sql_refuses_several_statements_and_negative_max_rows(stored):
    result = run(["sql", "SELECT 1; SELECT 2", "--db", str(stored)])
    assert_one_line_error(result, "2 SQL statements given")
    assert run(["sql", "SELECT 1;", "--db", str(stored)]).exit_code == 0
    result = run(["sql", "SELECT 1", "--max-rows", "-1", "--db", str(stored)])
    assert result.exit_code == 2 and "--max-rows" in result.output


def test_nightly_rerun_over_a_folder_with_unreadable_files_succeeds(tmp_path, tiny_model):
    """Exit 1 only when none of the given images is in the store after the run: the same
    command every night over good and unreadable files keeps exiting 0 (without loading the
    model: nothing is new); a folder of only unreadable files exits 1 every time."""
    folder = tmp_path / "nightly"
    folder.mkdir()
    Image.new("RGB", (20, 20), "blue").save(folder / "blue.png")
    Image.new("RGB", (20, 20), "red").save(folder / "red.png")
    (folder / "broken.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    db = tmp_path / "db"
    args = ["ingest", str(folder), "--db", str(db), "--model", str(tiny_model), "--device", "cpu"]
    first = run(args)
    assert first.exit_code == 0, first.output
    assert "stored     2 images" in first.output and "failed     2" in first.output
    for _ in range(2):
        again = run(args)
        assert again.exit_code == 0, again.output
        assert "skipped    2 already in the store" in again.output
        assert "failed     2" in again.output
        assert "model      not loaded: nothing new to encode" in again.output
    errors = lance.dataset(str(db / "errors.lance")).to_table().column("path").to_pylist()
    assert sorted(set(errors)) == [str(folder / "broken.png"), str(folder / "empty.jpg")]

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "broken.png").write_text("not an image")
    for _ in range(2):  # the first run and the rerun alike
        result = run(["ingest", str(unreadable), "--db", str(db), "--model", str(tiny_model), "-q"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert errors == ["Error: nothing stored: 1 of 1 files failed (listed above)"]
    assert len(lance.dataset(str(db / "variants_16.lance")).to_table()) == 2 * 10
