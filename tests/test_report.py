"""`clipshift report` on real stores: every figure file, the page, missing pixels, reruns."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_hex
from PIL import Image

from cli import cli
from clipshift import ClipshiftError
from clipshift.query import connect
from clipshift.report import FIGURES, report
from clipshift.report import figures as drawn
from clipshift.report.data import ReportData
from clipshift.report.style import colour
from clipshift.runs import resolve_run
from clipshift.synthetic import build_synthetic_store

PIXEL_FIGURES = {"augmentations", "attention_grid"}
# drawn only for runs with severity levels (the paper suite has none)
SEVERITY_FIGURES = ("severity", "severity_heatmap")
# need stored zero-shot predictions and a model with a text tower and tokenizer, which the
# tiny model here lacks: drawn in tests/test_zeroshot.py
TEXT_FIGURES = {"flip_rate", "alignment"}
# the CKA heatmap needs hidden states, which the tiny store was ingested without
HIDDEN_FIGURES = {"layer_cka"}
# shift_accuracy needs labelled images besides: drawn in tests/test_accuracy.py
TEXT_FIGURES.add("shift_accuracy")


@pytest.fixture(scope="module")
def rendered(ingested_store, tmp_path_factory):
    """The whole report of the tiny-model store (six photos, pixels kept), rendered once."""
    out = tmp_path_factory.mktemp("report") / "out"
    progress = []
    result = report(ingested_store, out=out, on_figure=progress.append)
    return result, progress


@pytest.fixture(scope="module")
def pixelless_store(tmp_path_factory):
    """A small synthetic store: no pixels kept, but attention for every layer, layer metrics
    and hidden states."""
    db = tmp_path_factory.mktemp("synthetic") / "db"
    build_synthetic_store(db, n_images=60, dim=16, layers=3, chunk=30, hidden_width=8)
    return db


@pytest.fixture
def data(ingested_store):
    con = connect(ingested_store)
    yield ReportData(con, resolve_run(ingested_store))
    con.close()


def test_every_figure_is_a_sensible_image(rendered):
    result, progress = rendered
    assert [f.name for f in result.figures] == list(FIGURES)
    assert [f.name for f in progress] == list(FIGURES)  # one progress call per figure
    for figure in result.figures:
        if figure.name in SEVERITY_FIGURES:  # tests/test_suites.py draws them
            assert figure.path is None and "no perturbations with severity levels" in figure.note
            continue
        if figure.name in TEXT_FIGURES:
            assert figure.path is None and figure.note
            continue
        if figure.name in HIDDEN_FIGURES:
            assert figure.path is None and "--hidden-states" in figure.note
            continue
        assert figure.path == result.out / f"{figure.name}.png", figure.note
        with Image.open(figure.path) as image:
            image.verify()
        with Image.open(figure.path) as image:
            width, height = image.size
            assert image.format == "PNG"
            assert 500 <= width <= 4000 and 250 <= height <= 4000, (figure.name, image.size)
            # not a blank canvas: a figure has ink
            assert np.asarray(image.convert("L")).std() > 10, figure.name


def test_page_references_only_files_that_exist(rendered):
    result, _ = rendered
    page = result.index.read_text()
    references = set(re.findall(r'(?:src|href|data)="([^"#]+)"', page))
    skipped = {*SEVERITY_FIGURES, *TEXT_FIGURES, *HIDDEN_FIGURES}
    assert references == {f"{name}.png" for name in FIGURES if name not in skipped}
    for reference in references:
        assert (result.out / reference).is_file()
    run = result.run
    assert run.run_id in page and str(run.model) in page
    assert "6 (6 with pixels kept)" in page and "<td>seed</td><td>0</td>" in page
    for name, spec in FIGURES.items():
        assert f'id="{name}"' in page
        assert spec.caption.split(" (")[0].replace("'", "&#x27;") in page
    stats = page[page.index('id="stats"') :]
    assert stats.count("<tr>") == 1 + 9  # header + one row per augmentation


def test_store_without_pixels_renders_the_rest(pixelless_store, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", "--db", str(pixelless_store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in FIGURES:
        exists = (out / f"{name}.png").is_file()
        assert exists == (name not in (*PIXEL_FIGURES, *SEVERITY_FIGURES, *TEXT_FIGURES)), name
    page = (out / "index.html").read_text()
    assert page.count("--keep-pixels") == len(PIXEL_FIGURES)
    assert "augmentations.png" not in page and "attention_grid.png" not in page
    assert "layer_drift.png" in page  # the synthetic store has attention for every layer
    # a progress line per figure, saying which were skipped and why
    assert result.output.count("skipped: this run kept no pixels") == len(PIXEL_FIGURES)
    assert "skipped: run synthetic000 (synthetic) has no text tower" in result.output
    shown = len(FIGURES) - len({*PIXEL_FIGURES, *SEVERITY_FIGURES, *TEXT_FIGURES})
    assert f"{shown} of {len(FIGURES)} figures" in result.output


def test_rerun_replaces_the_earlier_report(ingested_store, tmp_path):
    out = tmp_path / "out"
    report(ingested_store, out=out, figures=["rank", "l2_bar"])
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(
        cli,
        ["report", "--db", str(ingested_store), "--out", str(out)]
        + ["--figures", "rank,dendrogram", "--format", "svg"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "dendrogram.svg", "index.html", "notes.txt", "rank.svg"
    ]  # fmt: skip
    assert (out / "rank.svg").read_text().lstrip().startswith("<?xml")
    page = (out / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', page)) == {"rank.svg", "dendrogram.svg"}


def test_pdf_format(ingested_store, tmp_path):
    result = report(ingested_store, out=tmp_path, figures="metrics_heatmap", fmt="pdf")
    assert (tmp_path / "metrics_heatmap.pdf").read_bytes().startswith(b"%PDF")
    assert 'data="metrics_heatmap.pdf"' in result.index.read_text()


def test_samples_and_the_seeded_cosine_sample(data, ingested_store):
    data.samples = 2
    images = data.pixel_sample()
    assert len(images) == 2
    assert all(len(image["variants"]) == 10 for image in images)
    assert images[0]["variants"]["original"]["pixels"].shape == (224, 224, 3)
    first = data.query("cosine_sample", samples=50)
    assert len(first["pick"]) == 6 * 9  # all six images: the run has fewer than 50
    con = connect(ingested_store)
    second = ReportData(con, data.run).query("cosine_sample", samples=3)
    con.close()
    # the same seed picks the same images, in the same order
    assert list(second["image_id"]) == list(first["image_id"][: 3 * 9])


def test_figures_draw_the_query_numbers(data):
    scores = data.query("scores")
    fig = drawn.rank(data)
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_width() for b in bars], scores["overall"])
    # one colour per augmentation, the same in every figure
    assert [to_hex(b.get_facecolor()) for b in bars] == [colour(n) for n in scores["augmentation"]]
    summary = data.summary()
    fig = drawn.l2_bar(data)
    heights = {round(b.get_height(), 6): to_hex(b.get_facecolor()) for b in fig.axes[0].patches}
    for name, mean in zip(summary["augmentation"], summary["l2_mean"], strict=True):
        assert heights[round(mean, 6)] == colour(name)
    fig = drawn.metrics_heatmap(data)
    matrix = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(matrix[0], scores["cosine"])
    np.testing.assert_allclose(matrix[-1], scores["overall"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--figures", "rank,pie"], "unknown figure pie: choose from augmentations,"),
        (["--samples", "0"], "--samples 0: use at least 1"),
        (["--run", "nope"], "no run 'nope' in the store"),
        (["--model", "other"], "no run of model 'other' in the store"),
        (["--method", "nearest"], "linkage method nearest"),
    ],
)
def test_user_mistakes_are_one_line_errors(ingested_store, tmp_path, args, message):
    result = CliRunner().invoke(
        cli, ["report", "--db", str(ingested_store), "--out", str(tmp_path / "o"), *args]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_store_and_out_that_is_a_file(ingested_store, tmp_path):
    with pytest.raises(ClipshiftError, match="no clipshift store"):
        report(tmp_path / "absent", out=tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClipshiftError, match="is a file"):
        report(ingested_store, out=tmp_path / "file", figures="rank")


def test_two_runs_need_a_choice(ingested_store, tmp_path, tiny_model, photos):
    from clipshift.ingest import ingest

    db = tmp_path / "db"
    shutil.copytree(ingested_store, db)
    ingest([photos], db, str(tiny_model), seed=1, limit=2, augmentations="noise,blur")
    latest = report(db, out=tmp_path / "out", figures="rank")
    assert latest.run.seed == 1  # the most recent run, and the page says how to pick another
    assert "pick another with --run" in latest.run.selection_note
    con = connect(db)
    runs = con.execute("SELECT run_id, seed FROM runs").fetchall()
    seeded = next(run_id for run_id, seed in runs if seed == 1)
    result = report(db, run=seeded, out=tmp_path / "out", figures="rank,radar")
    assert result.run.seed == 1 and all(f.path for f in result.figures)


# -- runs that cannot be compared, many variants, failures ------------------------------------


@pytest.fixture(scope="module")
def mixed_store(ingested_store, tiny_model, photos, tmp_path_factory):
    """The paper run of the tiny CLIP (six photos), a paper run of a tiny SigLIP and a
    corruptions run (75 variants) of the tiny CLIP, two photos each."""
    from conftest import make_tiny_siglip

    from clipshift.ingest import ingest

    db = tmp_path_factory.mktemp("mixed") / "db"
    shutil.copytree(ingested_store, db)
    siglip = make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))
    siglip_run = ingest([photos], db, str(siglip), limit=2, keep_pixels=-1, device="cpu")
    corruptions = ingest(
        [photos],
        db,
        str(tiny_model),
        limit=2,
        image_size=64,
        augmentations="corruptions",
        keep_pixels=-1,
        device="cpu",
    )
    return db, siglip_run.run_id, corruptions.run_id


def test_model_comparison_leaves_out_runs_of_other_augmentations(mixed_store, tmp_path):
    db, siglip_run, corruptions_run = mixed_store
    out = tmp_path / "out"
    args = ["report", "--db", str(db), "--run", siglip_run, "--out", str(out), "--samples", "1"]
    result = CliRunner().invoke(cli, [*args, "--figures", "attention_grid,model_bars"])
    assert result.exit_code == 0, result.output
    # the paper runs are compared, the corruptions run is named with the reason
    assert (out / "model_bars.png").is_file()
    lines = [line for line in result.output.splitlines() if "leaves out" in line]
    assert len(lines) == 1 and corruptions_run in lines[0], result.output
    assert "75 augmented variants are not run" in lines[0] and "(0 in common)" in lines[0]
    page = (out / "index.html").read_text()
    left = page[page.index('id="left-out"') :]
    assert corruptions_run in left and "0 in common" in left
    with Image.open(out / "model_bars.png") as image:
        assert image.width <= 4000, image.size
    con = connect(db)
    try:
        compared = ReportData(con, resolve_run(db, siglip_run)).comparable_runs()[0]
        assert set(compared["run_id"]) == {siglip_run, *_clip_paper_run(con)}
    finally:
        con.close()


def test_siglip_attention_is_labelled_as_its_family_defines_it(mixed_store):
    db, siglip_run, _ = mixed_store
    con = connect(db)
    try:
        siglip = ReportData(con, resolve_run(db, siglip_run), samples=1)
        labels = [ax.get_xlabel() for ax in drawn.attention_grid(siglip).axes]
        clip = ReportData(con, resolve_run(db, _clip_paper_run(con)[0]), samples=1)
        clip_labels = [ax.get_xlabel() for ax in drawn.attention_grid(clip).axes]
    finally:
        con.close()
    assert any(text.startswith("pooling-head probe attention") for text in labels), labels
    assert not any("CLS" in text for text in labels)
    assert any(text.startswith("last-layer CLS attention") for text in clip_labels), clip_labels


def _clip_paper_run(con) -> list[str]:
    return [
        run_id
        for run_id, family, size in con.execute(
            "SELECT run_id, family, image_size FROM runs"
        ).fetchall()
        if family == "clip" and size == 224
    ]


def test_every_figure_stays_bounded_with_75_variants(mixed_store, tmp_path):
    db, _, corruptions_run = mixed_store
    out = tmp_path / "out"
    result = report(db, run=corruptions_run, out=out, samples=2)
    assert len(result.left_out) == 2  # neither paper run stored the corruptions
    drawn_figures = {f.name: f for f in result.figures if f.path}
    # every figure that draws per variant, and that this store has the data for
    assert set(drawn_figures) >= {
        *PIXEL_FIGURES, "l2_kde", "cosine_distribution", "dendrogram", "radar",
        "metrics_heatmap", "rank", "l2_bar", "clustermap", "metric_averages",
        "cosine_heatmap", "layer_drift", "severity", "severity_heatmap",
        "representation_drift", "token_drift_grid",
    }  # fmt: skip
    notes = {f.name: f.note for f in result.figures if not f.path}
    assert "no other run stored the augmentations" in notes["model_bars"]
    for figure in drawn_figures.values():
        with Image.open(figure.path) as image:
            assert image.width <= 4000 and image.height <= 4000, (figure.name, image.size)
            assert np.asarray(image.convert("L")).std() > 10, figure.name


def test_capped_figures_say_how_many_they_show(mixed_store):
    db, _, corruptions_run = mixed_store
    con = connect(db)
    try:
        data = ReportData(con, resolve_run(db, corruptions_run), samples=1)
        fig = drawn.augmentations(data)
    finally:
        con.close()
    texts = [t.get_text() for t in fig.texts]
    assert "showing 12 of 76 variants, evenly spread over the suite" in texts
    assert len(fig.axes) == 12


def test_an_interrupted_report_leaves_the_previous_one_whole(ingested_store, tmp_path):
    out = tmp_path / "out"
    report(ingested_store, out=out, figures="rank,l2_bar")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt(figure):  # Ctrl-C after the first new figure is drawn
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report(ingested_store, out=out, figures="dendrogram,rank", fmt="svg", on_figure=interrupt)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone


def test_a_killed_report_leaves_the_previous_one_whole(ingested_store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    report(ingested_store, out=out, figures="rank,l2_bar")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = subprocess.Popen(
        [sys.executable, str(root / "cli.py"), "report", "--db", str(ingested_store)]
        + ["--out", str(out), "--figures", "rank,dendrogram,radar,clustermap,cosine_heatmap"],
        env={**os.environ, "PYTHONPATH": str(root)},
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stderr.readline()  # the first figure is drawn: kill it midway
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.startswith("rank"), first + process.stderr.read()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the next report removes what the killed one left beside `out`, and replaces the old one
    assert len(list(tmp_path.glob(".out.*.partial"))) == 1
    report(ingested_store, out=out, figures="dendrogram")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["dendrogram.png", "index.html"]
