"""Perturbation suites: the paper's run identity, the ImageNet-C corruptions, user suite files,
severities in the store and in the analysis."""

from __future__ import annotations

import json
import pickle

import albumentations as A
import lance
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import PHOTOS, write_photos
from PIL import Image

from cli import cli
from clipshift.analysis import stats
from clipshift.augment import Augmenter, augmentation_config, config_hash
from clipshift.ingest import ingest
from clipshift.pixels import PixelReference
from clipshift.sources import decode
from clipshift.store import Store, latest_schema_version
from clipshift.suites import BASE_PROMPT, prompt_for, resolve
from clipshift.suites.corruptions import NON_MONOTONE, TABLES, frost_texture

# What runs recorded before suites existed (clipshift.augment's AUGMENTATIONS), verbatim.
PAPER_CALLS = {
    "noise": "GaussNoise(std_range=(0.44, 0.88))",
    "blur": "GaussianBlur(blur_limit=(3, 7))",
    "color_jitter": "ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)",
    "shift_scale_rotate": "ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=15)",
    "horizontal_flip": "HorizontalFlip()",
    "elastic": "ElasticTransform(alpha=30, sigma=60)",
    "perspective": "Perspective(scale=(0.05, 0.1))",
    "random_brightness_contrast": "RandomBrightnessContrast(brightness_limit=0.2, "
    "contrast_limit=0.2)",
    "coarse_dropout": "CoarseDropout(num_holes_range=(6, 8), hole_height_range=(16, 16), "
    'hole_width_range=(16, 16), fill="random")',
}


def photo_pixels(size: int, names=PHOTOS) -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in names:
        buffer = __import__("io").BytesIO()
        Image.fromarray(np.asarray(getattr(data, name)())).save(buffer, format="PNG")
        out.append(decode(buffer.getvalue(), size).pixels)
    return out


# -- the paper suite keeps today's runs ---------------------------------------------------------


def test_paper_suite_is_the_default_and_stores_exactly_the_old_definition():
    config = augmentation_config(resolve(None))
    assert config == [
        {"name": name, "transform": call, "albumentations": A.__version__}
        for name, call in PAPER_CALLS.items()
    ]
    assert augmentation_config(resolve("all")) == config == augmentation_config(resolve("paper"))
    if A.__version__ == "2.0.8":  # the hash every store ingested so far recorded
        assert config_hash(config) == "e7b7ff91b78ffb18"
    assert all(p.severity is None and p.label == p.name for p in resolve(None))


def test_corruptions_suite_shape_and_labels():
    perturbations = resolve("corruptions")
    assert len(perturbations) == 75
    assert [p.name for p in perturbations[::5]] == list(TABLES)
    assert [p.label for p in perturbations[:5]] == [f"gaussian_noise@{k}" for k in range(1, 6)]
    assert [p.label for p in resolve("fog@3,noise")] == ["fog@3", "noise"]
    assert len(resolve("paper,corruptions")) == 84


def test_prompts():
    assert BASE_PROMPT == "a photo"
    assert prompt_for("paper", "blur") == "a blurry photo"
    assert prompt_for("paper", "horizontal_flip") == "a mirrored photo"
    assert prompt_for("corruptions", "fog@2") == "a foggy photo"
    assert prompt_for(resolve("corruptions"), "pixelate") == "a pixelated photo"
    run = {"augmentations": json.dumps(augmentation_config(resolve("noise,jpeg_compression")))}
    assert prompt_for(run, "noise") == "a noisy photo"
    assert prompt_for(run, "jpeg_compression@5") == "a photo with jpeg artifacts"
    assert all(p.prompt.startswith(("a ", "an ")) for p in resolve("paper,corruptions"))


# -- the corruptions' pixels, no model ----------------------------------------------------------


def test_corruptions_fall_with_severity_on_real_photos():
    """Mean patch similarity over the six photos at 224 px falls at every step from severity 1
    to 5, for every corruption not documented as non-monotone in pixel space."""
    augmenter = Augmenter("corruptions", seed=0)
    similarity: dict[str, dict[int, list[float]]] = {}
    for index, original in enumerate(photo_pixels(224)):
        reference = PixelReference(original)
        for variant in augmenter(original, f"photo{index}"):
            name = variant.name.split("@")[0]
            score = reference.compare(variant.pixels)["patch_similarity"]
            similarity.setdefault(name, {}).setdefault(variant.severity, []).append(score)
    for name, levels in similarity.items():
        means = [np.mean(levels[k]) for k in range(1, 6)]
        assert means[0] < 1.0, name
        if name not in NON_MONOTONE:
            assert all(a > b for a, b in zip(means, means[1:], strict=False)), (name, means)


def test_pixels_are_byte_identical_across_reruns_processes_and_pickles():
    original = photo_pixels(64, ["astronaut"])[0]
    first = Augmenter("paper,corruptions", seed=3)(original, "img")
    frost_texture.cache_clear()  # textures are regenerated, identically
    again = pickle.loads(pickle.dumps(Augmenter("paper,corruptions", seed=3)))(original, "img")
    assert [a.name for a in first] == [a.name for a in again]
    for a, b in zip(first, again, strict=True):
        assert a.pixels.tobytes() == b.pixels.tobytes(), a.name
        assert a.params == b.params and a.severity == b.severity
    other = Augmenter("fog@1", seed=4)(original, "img")[0]
    assert other.pixels.tobytes() != next(a for a in first if a.name == "fog@1").pixels.tobytes()


# -- user suite files ---------------------------------------------------------------------------


def test_suites_command_lists_and_shows():
    result = CliRunner().invoke(cli, ["suites"])
    assert result.exit_code == 0, result.output
    assert "paper" in result.output and "corruptions" in result.output and "75" in result.output
    shown = CliRunner().invoke(cli, ["suites", "--show", "paper", "--format", "json"])
    document = json.loads(shown.output)
    assert [p["name"] for p in document["perturbations"]] == list(PAPER_CALLS)
    assert document["perturbations"][1]["prompt"] == "a blurry photo"


def test_shown_suite_file_gives_the_built_in_pixels(tmp_path):
    shown = CliRunner().invoke(cli, ["suites", "--show", "corruptions"])
    assert shown.exit_code == 0, shown.output
    path = tmp_path / "mine.yaml"
    path.write_text(shown.output)
    from_file = resolve(str(path))
    built_in = resolve("corruptions")
    assert [p.label for p in from_file] == [p.label for p in built_in]
    assert [p.prompt for p in from_file] == [p.prompt for p in built_in]
    original = photo_pixels(64, ["coffee"])[0]
    for a, b in zip(
        Augmenter(str(path), 0)(original, "x"),
        Augmenter("corruptions", 0)(original, "x"),
        strict=True,
    ):
        assert a.pixels.tobytes() == b.pixels.tobytes(), a.name


BAD_SUITES = {
    "unknown transform": (
        "perturbations:\n  - name: sepia\n    transform: {__class_fullname__: Sepia, p: 1.0}\n",
        ["entry 1 (sepia)", "unknown transform 'Sepia'"],
    ),
    "bad parameter name": (
        "perturbations:\n  - name: n\n    transform: {__class_fullname__: GaussNoise, sd: 2}\n",
        ["entry 1 (n)", "bad parameter sd for GaussNoise"],
    ),
    "bad parameter value": (
        "perturbations:\n  - name: ok\n    transform: {__class_fullname__: HorizontalFlip}\n"
        "  - name: j\n    transform: {__class_fullname__: ImageCompression}\n"
        "    severities: [{quality_range: [90, 95]}, {quality_range: [500, 600]}]\n",
        ["entry 2 (j)", "severity 2", "bad parameter for ImageCompression"],
    ),
    "severities not a list": (
        "perturbations:\n  - name: f\n    transform: {__class_fullname__: clipshift.Fog}\n"
        "    severities: {strength: 1}\n",
        ["entry 1 (f)", "severities must be a non-empty list"],
    ),
    "a severity not a mapping": (
        "perturbations:\n  - name: f\n    transform: {__class_fullname__: clipshift.Fog}\n"
        "    severities: [1.5, 2.0]\n",
        ["entry 1 (f)", "severity 1 is 1.5", "mapping of parameter overrides"],
    ),
    "a severity override of the wrong shape": (
        "perturbations:\n  - name: g\n    transform: {__class_fullname__: GaussNoise}\n"
        "    severities: [{std_range: 0.1}]\n",
        ["entry 1 (g)", "severity 1", "bad parameter for GaussNoise"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_bad_suite_file_is_a_one_line_error_naming_entry_and_problem(tmp_path, case, tiny_model):
    text, fragments = BAD_SUITES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    photos = write_photos(tmp_path / "photos", ["astronaut"])[0].parent
    db = tmp_path / "db"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(photos), "--db", str(db), "--model", str(tiny_model)]
        + ["--augmentations", str(path)],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: suite file"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not db.exists()  # nothing written before the error


BAD_LABELS = {
    "fog@9": "fog@9: severity must be one of 1-5",
    "paper,fog@0": "fog@0: severity must be one of 1-5",
    "pixelate@x": "pixelate@x: severity must be one of 1-5",
    "noise@2": "noise@2: noise has no severities",
}


@pytest.mark.parametrize("spec", list(BAD_LABELS))
def test_a_severity_out_of_range_is_a_one_line_error_naming_the_valid_ones(
    tmp_path, spec, tiny_model
):
    photos = write_photos(tmp_path / "photos", ["astronaut"])[0].parent
    db = tmp_path / "db"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(photos), "--db", str(db), "--model", str(tiny_model)]
        + ["--augmentations", spec],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {BAD_LABELS[spec]}"), result.output
    assert not db.exists()  # nothing written before the error


# -- severities in the store and the analysis ---------------------------------------------------


@pytest.fixture(scope="module")
def corruption_store(tmp_path_factory, tiny_model):
    """Two photos at 64 px with the paper suite and two corruptions (all severities)."""
    folder = write_photos(tmp_path_factory.mktemp("two"), ["astronaut", "chelsea"])[0].parent
    db = tmp_path_factory.mktemp("severity") / "db"
    spec = "paper,fog,jpeg_compression"
    summary = ingest(
        [folder],
        db,
        str(tiny_model),
        image_size=64,
        augmentations=spec,
        keep_pixels=-1,
        device="cpu",
    )
    reference = ingest(
        [folder], db, str(tiny_model), image_size=64, augmentations=spec, seed=1, device="cpu"
    )
    return db, folder, summary, reference


def test_severity_is_stored_and_summarised(corruption_store):
    db, _, summary, reference = corruption_store
    assert summary.stored == 2 and len(summary.augmentations) == 19
    variants = lance.dataset(str(db / "variants_16.lance")).to_table(
        columns=["run_id", "variant", "severity"], filter=f"run_id = '{summary.run_id}'"
    )
    pairs = set(zip(variants["variant"].to_pylist(), variants["severity"].to_pylist(), strict=True))
    assert ("noise", None) in pairs and ("original", None) in pairs
    assert {(f"fog@{k}", k) for k in range(1, 6)} <= pairs

    result = stats(db, run=summary.run_id, reference=reference.run_id)
    records = result.records()
    assert len(records) == 19
    assert {(r["augmentation"], r["severity"]) for r in records} >= {("fog", 3), ("noise", None)}
    curves = result.sections["severity"].records()
    assert [(r["augmentation"], r["severity"]) for r in curves] == [
        (name, k) for name in ("fog", "jpeg_compression") for k in range(1, 6)
    ]
    assert all(r["n"] == 2 and r["cosine_ci95"] is not None for r in curves)
    means = {r["augmentation"]: r for r in result.sections["corruption_mean"].records()}
    assert set(means) == {"fog", "jpeg_compression", "mean"}
    fog = [1 - r["cosine_mean"] for r in curves if r["augmentation"] == "fog"]
    assert means["fog"]["shift"] == pytest.approx(np.mean(fog))
    assert means["mean"]["shift"] == pytest.approx(np.mean([1 - r["cosine_mean"] for r in curves]))
    assert means["mean"]["severities"] == 10
    assert means["fog"]["relative"] == pytest.approx(
        means["fog"]["shift"] / means["fog"]["reference_shift"]
    )


def test_stats_command_shows_severity_sections(corruption_store):
    db, _, summary, reference = corruption_store
    args = ["stats", "--db", str(db), "--run", summary.run_id]
    table = CliRunner().invoke(cli, [*args, "--reference", reference.run_id])
    assert table.exit_code == 0, table.output
    assert "severity curves" in table.output and "corruption mean" in table.output
    as_json = CliRunner().invoke(cli, [*args, "--format", "json", "--part", "corruption_mean"])
    assert json.loads(as_json.output)[-1]["augmentation"] == "mean"


def test_report_draws_the_severity_figures(corruption_store, tmp_path):
    db, _, summary, _ = corruption_store
    result = CliRunner().invoke(
        cli,
        [
            "report",
            "--db",
            str(db),
            "--run",
            summary.run_id,
            "--out",
            str(tmp_path / "r"),
            "--figures",
            "severity,severity_heatmap,rank,cosine_heatmap",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("severity", "severity_heatmap", "rank", "cosine_heatmap"):
        assert (tmp_path / "r" / f"{name}.png").is_file()
    assert "Corruption mean" in (tmp_path / "r" / "index.html").read_text()


def test_report_compares_the_corruption_mean_with_a_reference_run(corruption_store, tmp_path):
    db, _, summary, reference = corruption_store
    out = tmp_path / "r"
    args = ["report", "--db", str(db), "--run", summary.run_id, "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--figures", "rank", "--reference", reference.run_id])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<th>relative</th>" in page and reference.run_id in page
    means = stats(db, run=summary.run_id, reference=reference.run_id).sections["corruption_mean"]
    mean_row = means.records()[-1]
    assert f"<td>{mean_row['relative']:.4f}</td>" in page

    unknown = CliRunner().invoke(cli, [*args, "--figures", "rank", "--reference", "nosuchrun"])
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output


def test_a_file_suite_ingests_to_the_built_in_pixels(corruption_store, tmp_path, tiny_model):
    db, folder, summary, _ = corruption_store
    shown = CliRunner().invoke(cli, ["suites", "--show", "corruptions", "--format", "json"])
    document = json.loads(shown.output)
    document["perturbations"] = [
        p for p in document["perturbations"] if p["name"] in ("fog", "jpeg_compression")
    ]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(document))
    mine = tmp_path / "db"
    ingest(
        [folder],
        mine,
        str(tiny_model),
        image_size=64,
        augmentations=f"paper,{path}",
        keep_pixels=-1,
        device="cpu",
    )

    def pixels(store, run_id=None):
        where = f"run_id = '{run_id}'" if run_id else None
        table = lance.dataset(str(store / "variants_16.lance")).to_table(
            columns=["image_id", "variant", "pixels"], filter=where
        )
        return {
            (i, v): p
            for i, v, p in zip(*(table[c].to_pylist() for c in table.column_names), strict=True)
        }

    theirs, ours = pixels(db, summary.run_id), pixels(mine)
    assert theirs.keys() == ours.keys() and len(ours) == 2 * 20
    assert all(theirs[k] == ours[k] for k in ours)


def test_migration_adds_severity_to_an_older_store(tmp_path):
    db = tmp_path / "db"
    store = Store.connect(db, create=True)
    store.migrate(target=2)
    old = pa.schema(_old_variant_fields())
    store.db.create_table("variants", schema=old)
    result = CliRunner().invoke(cli, ["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "applied 0004 severity" in result.output
    upgraded = Store.open(db)
    assert upgraded.schema_version() == latest_schema_version()
    # 0003 moved the table to variants_<width> first; 0004 found it there
    assert upgraded.dataset("variants_4").schema.field("severity").type == pa.int32()


def _old_variant_fields() -> list[pa.Field]:
    from clipshift.store import variants_schema

    return [f for f in variants_schema(4) if f.name != "severity"]
