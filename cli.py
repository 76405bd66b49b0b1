"""The clipshift command line: each command parses its options, calls one library function
of the same name, and prints the result."""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

import click

from clipshift import ClipshiftError, __version__
from clipshift import defaults as D

if TYPE_CHECKING:
    from clipshift.store import Store


def user_errors(command):
    """Print a ClipshiftError (a user mistake) on one line and exit 1: never a traceback.

    Any other failure of a command with a store is checked against the store: when a damaged
    table is behind it, that is said on one line (with `clipshift check`) instead."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ClipshiftError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            damaged = _store_damage(kwargs.get("db"), exc)
            if damaged is None:
                raise
            raise click.ClickException(str(damaged)) from None

    return wrapper


def _store_damage(db: str | None, exc: Exception) -> ClipshiftError | None:
    from pathlib import Path

    from clipshift.store import Store

    if not db or not Path(db).is_dir():
        return None
    try:
        return Store(Path(db)).diagnose(exc)
    except Exception:  # noqa: BLE001 - the diagnosis must not hide the original error
        return None


class _EngineChoice(click.Choice):
    """--engine: one of clipshift.ingest.ENGINES, read when first asked for. Importing ingest
    (the store with it: about 0.5 s here) as the command line starts would slow every command."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from clipshift.ingest import ENGINES

        return tuple(ENGINES)

    @choices.setter
    def choices(self, value) -> None:
        pass  # click.Choice sets them: they are ENGINES'


db_option = click.option(
    "--db",
    default=lambda: os.environ.get("CLIPSHIFT_DB", D.DEFAULT_DB),
    show_default="$CLIPSHIFT_DB or ./clipshift-store",
    type=click.Path(file_okay=True, dir_okay=True),
    help="The store: a LanceDB directory, or s3://bucket/prefix (gs://, az://) with "
    "credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL.",
)


run_option = click.option(
    "--run", "run_id", default=None, help="A run_id (or a unique prefix); default: the latest run."
)
model_option = click.option(
    "--model",
    default=None,
    help="The most recent run of this model (a Hugging Face id or a local model folder).",
)
format_option = click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(D.FORMATS),
    help="table for reading; csv and json carry every column at full precision.",
)


def _pick_run(db: str | Store, run_id: str | None, model: str | None = None) -> str:
    """The full id of the run a command works on. Where the store has several to choose from,
    the one note saying which (runs.resolve_run's selection_note) goes to stderr first,
    before the command's slow work: a model load that fails on the picked run's model (a
    SigLIP run ingested since) then shows which run it was."""
    from clipshift.runs import resolve_run

    chosen = resolve_run(db, run_id, model)
    if chosen.selection_note:
        click.echo(chosen.selection_note, err=True)
    return chosen.run_id


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipshift")
def cli():
    """How does a vision-language model's representation move when the image changes?

    `clipshift ingest PHOTOS` embeds each image and nine augmented copies with CLIP, SigLIP or
    SigLIP 2 into a LanceDB store; the other commands query that store.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@db_option
@click.option(
    "--model",
    default=D.DEFAULT_MODEL,
    show_default=True,
    help="A Hugging Face hub id, or a local folder saved with save_pretrained.",
)
@click.option(
    "--image-size",
    default=D.IMAGE_SIZE,
    show_default=True,
    type=int,
    help="Working size S: every image is resized to S x S.",
)
@click.option(
    "--batch-size",
    default=D.BATCH_SIZE,
    show_default=True,
    type=int,
    help="Images per forward pass; each brings its original and augmented copies.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Run seed for the augmentations."
)
@click.option(
    "--augmentations",
    default=D.DEFAULT_SUITE,
    show_default=True,
    help="Comma list of suites (paper = the nine of the paper, all = paper, corruptions = "
    "ImageNet-C x 5 severities), suite files (.yaml, .json) and single perturbations (noise, "
    "fog, fog@3, ...). See `clipshift suites`.",
)
@click.option("--limit", type=int, default=None, help="Ingest at most N images.")
@click.option(
    "--keep-pixels",
    default=D.KEEP_PIXELS,
    show_default=True,
    type=int,
    help="Store PNG pixels for the run's first N images, counting those it already holds with "
    "pixels (0 none, -1 all).",
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(D.DEVICES))
@click.option(
    "--workers",
    type=int,
    default=None,
    show_default="one per core; 1 for a costly model on the CPU",
    help="Processes that read, decode, augment and measure images while the model runs; "
    "0 does it in a thread of this process. Results do not depend on it.",
)
@click.option(
    "--precision",
    default=D.PRECISION,
    show_default=True,
    type=click.Choice(D.PRECISIONS),
    help="The model's compute precision; part of the run's identity (another precision is "
    "another run). docs/metrics.md gives each one's embedding difference from fp32.",
)
@click.option(
    "--engine",
    default="local",
    show_default=True,
    type=_EngineChoice(),
    help="ray: the same stages on the Ray cluster at $RAY_ADDRESS, or a local one "
    '(pip install "clipshift[ray]").',
)
@click.option(
    "--actors",
    type=int,
    default=None,
    help="--engine ray: model actors (default: one per GPU of the cluster, else one).",
)
@click.option(
    "--hidden-states",
    is_flag=True,
    help="Also store every layer's pooled hidden state (float16), for CKA in `clipshift "
    "layers` and your own analyses: (layers + 1) x width x 2 bytes a row, about 19.5 KB for "
    "ViT-B/32.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--labels-from",
    type=click.Choice(D.LABELS_FROM),
    default=None,
    help="Label each image of a folder by its parent folder's name (class folders).",
)
@click.option(
    "--label-key",
    type=click.Choice(D.LABEL_KEYS),
    default=None,
    help="WebDataset shards: the member holding the label (default: the first present).",
)
@click.option("--image-column", default=D.IMAGE_COLUMN, show_default=True, help="Tables: images.")
@click.option("--label-column", default=None, help="Tables: the label column (default: label).")
@click.option("--id-column", default=None, help="Tables: a column naming each row in `source`.")
@click.option(
    "--label-names",
    default=None,
    help="imagenet, cifar100 or a file of one name a line: the names of integer labels.",
)
@user_errors
def ingest(
    paths,
    db,
    model,
    image_size,
    batch_size,
    seed,
    augmentations,
    limit,
    keep_pixels,
    device,
    workers,
    precision,
    engine,
    actors,
    hidden_states,
    quiet,
    labels_from,
    label_key,
    image_column,
    label_column,
    id_column,
    label_names,
):
    """Embed images and their nine augmentations into the store.

    PATHS are folders (searched recursively for jpg, jpeg, png, webp, bmp, tif, tiff), image
    files, text files listing image paths, or s3:// (gs://, az://) prefixes; or datasets as
    they are shipped: WebDataset shards ('shards/{000000..000099}.tar'), Parquet, Arrow or
    Lance tables of image bytes, `datasets.save_to_disk` folders (labels: --label-key,
    --label-column, --labels-from folder). Running the same command again stores nothing
    twice and resumes where an interrupted run stopped.
    """
    from clipshift.datasets import DatasetOptions
    from clipshift.ingest import ingest as run_ingest

    asked = (labels_from, label_key, label_column, id_column, label_names)
    dataset = None
    if any(v is not None for v in asked) or image_column != D.IMAGE_COLUMN:
        dataset = DatasetOptions(
            labels_from, label_key, image_column, label_column, id_column, label_names
        )

    bar = _ProgressBar(enabled=not quiet and sys.stderr.isatty())
    try:
        summary = run_ingest(
            paths,
            db,
            model,
            image_size=image_size,
            batch_size=batch_size,
            seed=seed,
            augmentations=augmentations,
            limit=limit,
            keep_pixels=keep_pixels,
            device=device,
            workers=workers,
            precision=precision,
            engine=engine,
            actors=actors,
            on_start=bar.start,
            on_progress=bar.update,
            dataset=dataset,
            hidden_states=hidden_states,
        )
    except KeyboardInterrupt:
        bar.finish()
        click.echo(
            "\ninterrupted: every batch written so far is kept; run the same command "
            "again to resume",
            err=True,
        )
        sys.exit(130)
    bar.finish()
    if not quiet:
        from clipshift.formatting import format_ingest_summary

        click.echo(format_ingest_summary(summary))
        if hidden_states and summary.run_id:
            from clipshift.layers import hidden_state_bytes

            per_row = hidden_state_bytes(db, summary.run_id)
            if per_row:
                click.echo(f"--hidden-states: {per_row:,} bytes a row")
    if summary.held == 0 and summary.failed:
        # none of the given images is in the store, not even from an earlier run: a failure.
        # A rerun whose new files all fail (the nightly one over a folder with a few
        # unreadable photos) still holds the rest, and succeeds.
        if quiet:
            for failure in summary.failures[:10]:
                click.echo(f"{failure.stage}: {failure.path}: {failure.message}", err=True)
        click.echo(
            f"Error: nothing stored: {summary.failed} of {summary.discovered} files failed "
            "(listed above)",
            err=True,
        )
        sys.exit(1)


class _ProgressBar:
    """A click progress bar with images/s and ETA, only on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.done = 0

    def start(self, total: int) -> None:
        if self.enabled and total:
            self.bar = click.progressbar(
                length=total,
                label="ingest",
                file=sys.stderr,
                show_eta=True,
                show_pos=True,
                item_show_func=lambda rate: rate,
            )
            self.bar.__enter__()

    def update(self, done: int, summary) -> None:
        if self.bar:
            rate = f"{summary.images_per_second:.2f} images/s" if summary.seconds else ""
            self.bar.update(done - self.done, rate)
            self.done = done

    def finish(self) -> None:
        if self.bar:
            self.bar.__exit__(None, None, None)


@cli.command()
@click.option(
    "--show",
    "show_name",
    default=None,
    metavar="NAME",
    help="Print suite NAME (or a suite file) in the suite-file format.",
)
@click.option(
    "--format",
    "fmt",
    default="yaml",
    show_default=True,
    type=click.Choice(D.SUITE_FORMATS),
    help="Format of --show.",
)
@user_errors
def suites(show_name, fmt):
    """The built-in perturbation suites for --augmentations; --show NAME prints one as a
    suite file to copy, edit and ingest with --augmentations FILE.yaml."""
    from clipshift.formatting import format_rows
    from clipshift.suites import show
    from clipshift.suites import suites as builtin

    if show_name is not None:
        click.echo(show(show_name, fmt).rstrip("\n"))
        return
    rows = [[s.name, len(s.entries), len(s.perturbations()), s.description] for s in builtin()]
    click.echo(format_rows(["suite", "perturbations", "variants", "description"], rows, "table"))


@cli.command()
@db_option
@user_errors
def migrate(db):
    """Upgrade the store's schema to this clipshift's version."""
    from clipshift.store import migrate_store

    applied, version = migrate_store(db)
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version:04d} {migration.name}")
    click.echo(f"store {db} is at schema version {version}")


@cli.command()
@db_option
@click.option(
    "--repair",
    type=click.Choice(D.REPAIRS),
    default=None,
    help="Repair a damaged store: roll each damaged table back to its newest version that "
    "reads in full, or drop its unreadable fragments. Either way the variants of images left "
    "incomplete are deleted too, and what was lost is listed and recorded in `errors`.",
)
@user_errors
def check(db, repair):
    """Verify the store: every table's manifest and data files, every stored image complete
    with all its variants, the schema version, and the space old versions hold. Exits 1 while
    a problem remains."""
    from clipshift.check import check as run_check
    from clipshift.store import repair_hint

    result = run_check(db, repair=repair)
    for line in result.repaired:
        click.echo(f"repaired: {line}")
    for table in result.tables:
        state = "ok" if table.ok else "DAMAGED"
        size = f"{_megabytes(table.bytes_on_disk)} on disk"
        if table.reclaimable:
            size += f", {_megabytes(table.reclaimable)} reclaimable"
        rows = "" if table.rows is None else f"{table.rows} rows, "
        versions = (
            f"version {table.version} of {table.versions}" if table.version else "no manifest"
        )
        click.echo(f"{table.name:<18} {state:<8} {rows}{versions}, {size}")
        for problem in table.problems:
            click.echo(f"    {problem}")
    version = result.schema_version if result.schema_version is not None else "unknown"
    click.echo(f"schema version {version} (this clipshift: {result.latest_schema_version})")
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.ok:
        click.echo(f"store {db} is whole; {_megabytes(result.reclaimable)} reclaimable")
        return
    for problem in result.problems:
        if not problem.startswith("table "):
            click.echo(f"problem: {problem}")
    hint = "" if repair else f"; {repair_hint(db)}"
    click.echo(f"store {db} has {len(result.problems)} problem(s){hint}", err=True)
    sys.exit(1)


@cli.command()
@db_option
@click.option(
    "--keep-versions",
    "keep",
    default=None,
    metavar="DURATION",
    help="Delete the table versions older than this (10m, 1h, 0s...); default: the retention "
    "an ingest uses (10m, or $CLIPSHIFT_KEEP_VERSIONS_SECONDS). 0s frees the most, but also "
    "what a command reading the store at this moment may still need.",
)
@user_errors
def compact(db, keep):
    """Compact every table now and delete old versions and the files only they use: the space
    `check` calls reclaimable. Takes the writer lock (lease) as an ingest does."""
    from clipshift.store import compact as run_compact
    from clipshift.store import parse_duration

    done = run_compact(db, None if keep is None else parse_duration(keep))
    click.echo(
        f"compacted {done.db}: {_megabytes(done.bytes_before)} -> "
        f"{_megabytes(done.bytes_after)} on disk, {_megabytes(done.reclaimed)} reclaimed; "
        f"{done.versions_removed} old versions removed (kept: each table's newest"
        + (f" and those under {_duration(done.kept)} old)" if done.kept else ")")
    )


def _duration(span) -> str:
    seconds = span.total_seconds()
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@cli.command()
@click.argument("query", required=False)
@db_option
@click.option("--text", default=None, help="Query with a text (the run model's text encoder).")
@click.option(
    "--variant", default=D.ORIGINAL, show_default=True, help="Which variant of QUERY to query with."
)
@click.option("-k", "k", default=10, show_default=True, type=int, help="Neighbours to print.")
@click.option(
    "--among",
    default="originals",
    show_default=True,
    type=click.Choice(D.AMONG),
    help="Search the run's originals only, or all its variants.",
)
@run_option
@click.option("--exact", is_flag=True, help="Exact search, never the index.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(D.DEVICES))
@format_option
@user_errors
def neighbors(query, db, text, variant, k, among, run_id, exact, device, fmt):
    """The k stored embeddings nearest to QUERY: an image_id (or unique prefix), a stored
    image's path, a new image file (embedded with the run's model), or --text."""
    from clipshift.formatting import format_rows
    from clipshift.neighbors import neighbors as find_neighbors

    result = find_neighbors(
        db,
        query,
        text=text,
        variant=variant,
        k=k,
        among=among,
        run=_pick_run(db, run_id),
        exact=exact,
        device=device,
    )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    columns = ["rank", "image_id", "path", "variant", "distance", "own"]
    rows = [
        [
            n.rank,
            n.image_id if fmt != "table" else n.image_id[:12],
            n.path,
            n.variant,
            n.distance,
            n.own,
        ]
        for n in result.rows
    ]
    if fmt == "table":
        rows = [r[:5] + ["<- own original" if r[5] else ""] for r in rows]
        columns[-1] = ""
        click.echo(
            f"run {result.run_id}, query {result.query}, "
            f"{'index' if result.used_index else 'exact'} search"
        )
    click.echo(format_rows(columns, rows, fmt))
    if fmt == "table" and result.own_rank is not None:
        click.echo(
            f"own original {result.own_image_id[:12]}: rank {result.own_rank}, "
            f"distance {result.own_distance:.4f}"
        )


@cli.command()
@db_option
@click.option(
    "-k", "ks", default=",".join(map(str, D.DEFAULT_KS)), show_default=True, help="Comma list of k."
)
@click.option("--exact", is_flag=True, default=None, help="Exact search, never the index.")
@run_option
@format_option
@user_errors
def retrieval(db, ks, exact, run_id, fmt):
    """Per augmentation: recall@k and MRR of the own original, and k-NN overlap, querying with
    every augmented embedding against all originals of the run."""
    from clipshift.formatting import format_rows
    from clipshift.retrieval import retrieval as evaluate

    bar = None
    shown = 0

    def progress(done: int, total: int) -> None:
        # a bar on a terminal only: 1.33M queries at the paper's 133k images take minutes
        nonlocal bar, shown
        if not sys.stderr.isatty():
            return
        if bar is None:
            bar = click.progressbar(
                length=total, label="retrieval queries", file=sys.stderr, show_pos=True
            )
            bar.__enter__()
        bar.update(done - shown)
        shown = done

    try:
        result = evaluate(db, ks, exact=exact, run=_pick_run(db, run_id), on_progress=progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    rows = [[row[c] for c in result.columns] for row in result.rows]
    click.echo(format_rows(result.columns, rows, fmt))
    if result.ann_recall_at_10 is not None:
        click.echo(
            f"index search: ANN recall@10 against exact {result.ann_recall_at_10:.3f} "
            f"({result.ann_sample} sampled queries); --exact for exact figures",
            err=True,
        )


@cli.command()
@db_option
@click.option("--run", default=None, help="Run whose queries measure the index's recall.")
@user_errors
def index(db, run):
    """(Re)build the vector index on the stored embeddings and report its recall@10."""
    from clipshift.index import build_index

    info = build_index(db, run=_pick_run(db, run))
    click.echo(f"built {info.index_type} over {info.rows} rows in {info.seconds:.1f} s")
    if info.ann_recall_at_10 is not None:
        click.echo(
            f"ANN recall@10 against exact: {info.ann_recall_at_10:.3f} "
            f"({info.sample} sampled augmented queries)"
        )


@cli.command()
@db_option
@run_option
@model_option
@click.option(
    "--out",
    default=D.REPORT_OUT,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the figures and index.html; an earlier report there is replaced.",
)
@click.option("--figures", default=None, help="Comma list of figures (default: all).")
@click.option(
    "--samples",
    default=D.REPORT_SAMPLES,
    show_default=True,
    type=int,
    help=f"Images in attention_grid (cosine_heatmap always takes up to {D.HEATMAP_IMAGES}).",
)
@click.option(
    "--format",
    "fmt",
    default="png",
    show_default=True,
    type=click.Choice(D.FIGURE_FORMATS),
    help="File format of the figures.",
)
@click.option(
    "--method",
    default=D.DEFAULT_LINKAGE,
    show_default=True,
    help=f"scipy linkage method of the dendrogram and clustermap: {', '.join(D.LINKAGE_METHODS)}.",
)
@click.option(
    "--reference",
    default=None,
    help="A run (id or unique prefix) the corruption mean is compared with, as ImageNet-C's mCE.",
)
@user_errors
def report(db, run_id, model, out, figures, samples, fmt, method, reference):
    """Render every figure of the paper for one run into --out, with index.html showing them,
    their captions and the stats table."""
    from clipshift.report import report as run_report

    def progress(figure):
        if figure.path is None:
            click.echo(f"{figure.name:<20} skipped: {figure.note}", err=True)
        else:
            click.echo(f"{figure.name:<20} {figure.seconds:6.1f} s  {figure.path}", err=True)

    _pick_run(db, run_id, model)  # the page carries the same note: the run is resolved again
    result = run_report(
        db,
        run=run_id,
        model=model,
        out=out,
        figures=figures,
        samples=samples,
        fmt=fmt,
        on_figure=progress,
        method=method,
        reference=reference,
    )
    for run in result.left_out:
        click.echo(
            f"model comparison leaves out run {run.run_id} ({run.model}): {run.reason}", err=True
        )
    drawn = sum(f.path is not None for f in result.figures)
    click.echo(
        f"{drawn} of {len(result.figures)} figures for run {result.run.run_id}: {result.index}"
    )


# -- analysis: stats, sql, clusters (clipshift/analysis.py) -----------------------------------


@cli.command()
@db_option
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    help="A run_id (or a unique prefix); default: the latest run. Give it again for several "
    "runs side by side.",
)
@click.option("--all-runs", is_flag=True, help="Every run of the store, side by side.")
@model_option
@click.option(
    "--reference",
    default=None,
    help="A run (id or prefix) the corruption mean is compared with, as ImageNet-C's mCE.",
)
@click.option(
    "--part",
    default="summary",
    show_default=True,
    type=click.Choice(D.STATS_PARTS),
    help="What csv and json carry (the table shows every part the run has).",
)
@click.option(
    "--columns",
    default=None,
    help="Comma list of the columns to show (in the table, csv and json), e.g. "
    "augmentation,n,cosine_mean,rank.",
)
@click.option("--all-columns", is_flag=True, help="Every column in the table, not the compact set.")
@format_option
@user_errors
def stats(db, run_ids, all_runs, model, reference, part, columns, all_columns, fmt):
    """Per-(augmentation, severity) summary of a run, sorted by rank (1 = least shift). The table
    shows n, mean and std of cosine, mean l2, the overall score and rank (--all-columns: the
    mean and std of every metric; --columns: those named); csv and json carry every column
    (the median, p5 and p95 of every metric too). A run with severity levels adds its severity
    curves (mean and 95% interval per severity) and its corruption mean (mean 1 - cosine).
    With several --run or --all-runs: one row per (augmentation, severity, run), with the
    run's model and model_rank (1 = the model whose embedding moves least there, by mean
    cosine)."""
    from clipshift.analysis import stats as run_stats
    from clipshift.formatting import format_stats
    from clipshift.store import Store

    wanted = None
    if columns is not None:
        wanted = [name.strip() for name in columns.split(",") if name.strip()]
        if not wanted or all_columns:
            raise ClipshiftError(
                "--columns: give a comma list of column names (and not --all-columns too)"
            )
    # one store for the run's choice and the call: opening it checks every table's manifests
    store = Store.open(db)
    if not all_runs and len(run_ids) < 2:
        run_ids = [_pick_run(store, run_ids[0] if run_ids else None, model)]
    result = run_stats(
        store, run=list(run_ids) or None, model=model, reference=reference, all_runs=all_runs
    )
    click.echo(
        format_stats(
            result, fmt, part=part, wanted=wanted, all_columns=all_columns, reference=reference
        )
    )


@cli.command()
@click.argument("run_a")
@click.argument("run_b")
@db_option
@format_option
@user_errors
def compare(run_a, run_b, db, fmt):
    """Is RUN_A's model more robust than RUN_B's? Per augmentation, for cosine and
    attention_similarity over the images both runs hold: the mean paired difference A - B
    (positive: A moves less), the Wilcoxon signed-rank p-value, and which run is more robust
    at p < 0.05; then the Kendall tau between the two runs' rankings of the augmentations."""
    from clipshift.analysis import compare as run_compare
    from clipshift.formatting import format_comparison

    result = run_compare(db, run_a, run_b)
    if result.note:
        click.echo(f"note: {result.note}", err=True)
    click.echo(format_comparison(result, fmt))


@cli.command()
@click.argument("query", required=False)
@click.option("--file", "-f", "query_file", type=click.File("r"), help="Read the SQL from F.")
@db_option
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(D.SQL_FORMATS),
    help="parquet needs --output.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file.")
@click.option(
    "--max-rows",
    default=D.DEFAULT_MAX_ROWS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Rows a table shows (the rest are counted); csv, json and parquet carry all.",
)
@user_errors
def sql(query, query_file, db, fmt, output, max_rows):
    """Run QUERY (or --file F) over the views runs, images, variants, errors, zeroshot,
    zeroshot_labels, shifts, summary, pairwise, layer_shifts and zeroshot_summary (and
    variants_<D>, one per embedding width, with FLOAT[D] embeddings). Read-only: a statement
    that is not a read (CREATE, DROP, INSERT, COPY, SET, ...) is refused."""
    from clipshift import ClipshiftError
    from clipshift.analysis import sql as run_sql
    from clipshift.analysis import sql_arrow
    from clipshift.formatting import format_rows

    if (query is None) == (query_file is None):
        raise ClipshiftError("give either a QUERY or --file F (one of them)")
    text = query if query is not None else query_file.read()
    if fmt == "parquet":
        if not output:
            raise ClipshiftError("--format parquet writes a file: give --output F.parquet")
        import pyarrow.parquet as pq

        table = sql_arrow(db, text)
        try:
            pq.write_table(table, output)
        except OSError as exc:
            raise ClipshiftError(f"cannot write {output}: {exc}") from None
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
        return
    result = run_sql(db, text, max_rows=max_rows if fmt == "table" and not output else None)
    if not result.columns:
        click.echo("ok (the statement returns no rows)", err=True)
        return
    limit = max_rows if fmt == "table" and not output else None
    text_out = format_rows(
        result.columns, result.rows, fmt, max_rows=limit, total_rows=result.total_rows
    )
    if output:
        try:
            with open(output, "w") as handle:
                handle.write(text_out + "\n")
        except OSError as exc:
            raise ClipshiftError(f"cannot write {output}: {exc.strerror}") from None
        click.echo(f"wrote {len(result.rows)} rows to {output}", err=True)
    else:
        click.echo(text_out)


@cli.command()
@db_option
@run_option
@model_option
@click.option(
    "--method",
    default=D.DEFAULT_LINKAGE,
    show_default=True,
    type=click.Choice(D.LINKAGE_METHODS),
    help="scipy linkage method (the paper used ward).",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="fcluster distance cut; default 0.7 x the largest merge height.",
)
@user_errors
def clusters(db, run_id, model, method, threshold):
    """Cluster the augmentations on their mean pairwise cosine distance (the paper's
    dendrogram): each cluster's members, then every merge and its height."""
    from clipshift.analysis import clusters as find_clusters

    run_id = _pick_run(db, run_id, model)
    found = find_clusters(db, run=run_id, model=model, method=method, threshold=threshold)
    how = "given" if threshold is not None else "0.7 x the largest merge height"
    click.echo(
        f"run {found.run.run_id} ({found.run.model}): {method} linkage, "
        f"cut at {found.threshold:.6g} ({how}): {len(found.members)} clusters"
    )
    for label, names in found.members.items():
        click.echo(f"  cluster {label}: {', '.join(names)}")
    click.echo("merges (height: joined groups):")
    for height, left, right in found.merges():
        click.echo(f"  {height:.6g}: {' + '.join(left)}  |  {' + '.join(right)}")


# -- what the model sees: zeroshot, directions (clipshift/zeroshot.py, directions.py) --------


device_option = click.option(
    "--device", default="auto", show_default=True, type=click.Choice(D.DEVICES)
)


@cli.command()
@db_option
@click.option(
    "--labels",
    default=D.DEFAULT_LABELS,
    show_default=True,
    help="imagenet (the 1,000 ImageNet-1k classes), cifar100, or a file of one label per line.",
)
@click.option(
    "--template",
    default=D.DEFAULT_TEMPLATE,
    show_default=True,
    help="The prompt of each label; {} is replaced by the label.",
)
@run_option
@click.option(
    "--reference",
    default=None,
    help="A run to measure the corruption error (CE, mCE) of labelled images against.",
)
@device_option
@format_option
@user_errors
def zeroshot(db, labels, template, run_id, device, fmt, reference):
    """Does an augmentation change what the model sees? Classifies every original and variant
    of a run against the label prompts and prints, per augmentation (and severity): flip_rate
    (share of images whose top-1 label changes), top1_prob_drop (mean drop of the original's
    top-1 probability) and top5_retention (share whose original top-1 stays in the top 5).
    Predictions are stored: the same labels and template again read them back."""
    from clipshift.formatting import drop_empty_severity, format_rows
    from clipshift.zeroshot import zeroshot as run_zeroshot

    run_id = _pick_run(db, run_id)
    result = run_zeroshot(
        db, labels=labels, template=template, run=run_id, device=device, reference=reference
    )
    columns, rows = drop_empty_severity(result.rows.columns, result.rows.rows)
    if fmt == "table":
        run = result.rows.run
        how = (
            f"classified {result.classified_images} images ({result.probability} probabilities)"
            if result.classified_images
            else "stored predictions"
        )
        click.echo(
            f"run {run.run_id} ({run.model}), {len(result.label_set.labels)} labels "
            f"({result.label_set.source}), template {result.template!r}: {how}"
        )
    click.echo(format_rows(columns, rows, fmt, max_rows=None))
    if fmt == "table":
        _echo_accuracy_sections(result.rows.sections, reference)


def _echo_accuracy_sections(sections: dict, reference: str | None) -> None:
    """The labelled images' accuracy and corruption error (zeroshot's sections), if any."""
    from clipshift.formatting import format_rows

    if "accuracy" in sections:
        section = sections["accuracy"]
        click.echo("\naccuracy of the labelled images (top-1, top-5, error = 1 - top-1):")
        click.echo(format_rows(section.columns, section.rows, "table", max_rows=None))
    if "corruption_error" in sections:
        section = sections["corruption_error"]
        against = f"against run {reference}" if reference else "give --reference RUN for CE"
        click.echo(f"\ncorruption error (ImageNet-C's CE, relative CE and mCE; {against}):")
        click.echo(format_rows(section.columns, section.rows, "table", max_rows=None))


@cli.command()
@db_option
@click.option(
    "--labels",
    default=D.DEFAULT_LABELS,
    show_default=True,
    help="imagenet, cifar100, or a file of one label per line: it must hold the images' labels.",
)
@click.option("--template", default=D.DEFAULT_TEMPLATE, show_default=True)
@run_option
@click.option("--reference", default=None, help="A run to measure CE and mCE against.")
@click.option(
    "--figure",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw mean cosine against accuracy drop (a scatter with its fit and 95% CI).",
)
@device_option
@format_option
@user_errors
def accuracy(db, labels, template, run_id, reference, figure, device, fmt):
    """Does an image whose embedding moves further lose its true class? For a run of labelled
    images: top-1/top-5 accuracy and error per augmentation and severity (CE and mCE against
    --reference), then per augmentation the point-biserial correlation between an image's
    cosine to its original and whether it lost its label, and across augmentations the
    correlation between mean cosine and accuracy drop, each with a bootstrap 95% CI."""
    from clipshift.accuracy import accuracy as run_accuracy
    from clipshift.formatting import format_rows

    run_id = _pick_run(db, run_id)
    result = run_accuracy(
        db, labels=labels, template=template, run=run_id, reference=reference, device=device
    )
    columns = ["augmentation", "n", "point_biserial", "ci_low", "ci_high"]
    rows = [(name, c.n, c.r, c.low, c.high) for name, c in result.per_augmentation.items()]
    across = result.across
    if fmt != "table":
        rows.append(("across augmentations", across.n, across.r, across.low, across.high))
        click.echo(format_rows(columns, rows, fmt, max_rows=None))
    else:
        run = result.run
        click.echo(f"run {run.run_id} ({run.model}), labels {result.zeroshot.label_set.source}")
        _echo_accuracy_sections(result.zeroshot.rows.sections, reference)
        click.echo("\ncosine against losing the true class, per augmentation (bootstrap 95% CI):")
        click.echo(format_rows(columns, rows, fmt, max_rows=None))
        click.echo(
            f"\nmean cosine against top-1 drop across {across.n} augmentations and severities: "
            + ("r undefined" if across.r is None else f"r = {across.r:.4f}")
            + ("" if across.low is None else f" (95% CI {across.low:.4f} to {across.high:.4f})")
        )
    if figure is not None:
        from clipshift.report.figures import shift_accuracy_plot

        shift_accuracy_plot(result).savefig(figure, dpi=150)
        if fmt == "table":
            click.echo(f"figure: {figure}")


@cli.command()
@db_option
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file of prompts, one a line; `NAME: text` describes augmentation NAME. "
    "Default: each augmentation's own description.",
)
@run_option
@click.option(
    "--matrix", is_flag=True, help="Every (augmentation, prompt) pair, not one line each."
)
@device_option
@format_option
@user_errors
def directions(db, prompts, run_id, matrix, device, fmt):
    """Does a shift point where the words for the perturbation point? Per augmentation: the
    mean cosine between shifts (variant - original, unit embeddings) and the text direction
    embed(prompt) - embed("a photo"), and the identification accuracy: how often the
    augmentation's own description is the closest of the run's descriptions."""
    from clipshift.directions import directions as run_directions
    from clipshift.formatting import drop_empty_severity, format_rows

    run_id = _pick_run(db, run_id)
    result = run_directions(db, prompts=prompts, run=run_id, device=device)
    shown = result.matrix if matrix else result.summary
    columns, rows = drop_empty_severity(shown.columns, shown.rows)
    click.echo(format_rows(columns, rows, fmt, max_rows=None))


# -- serve (clipshift/serve/) ---------------------------------------------------------------


@cli.command()
@db_option
@run_option
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="The port (0: any free).")
@click.option(
    "--token",
    default=None,
    help="The token a request must carry; generated where --host is not a loopback address.",
)
@click.option(
    "--report",
    default=D.REPORT_OUT,
    show_default=True,
    type=click.Path(file_okay=False),
    help="A `clipshift report` folder whose figures the runs view shows, where it exists.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@user_errors
def serve(db, run_id, host, port, token, report, open_browser):
    """Explore the store in the browser: runs and summary, a gallery of the images ranked by
    their shift, each image with its variants and attention maps, a map of the embeddings and
    an SQL console. Read-only; binds 127.0.0.1 unless --host says otherwise (then a token
    is required). Stop it with Ctrl-C."""
    from clipshift.serve import serve as run_serve

    def ready(served):
        click.echo(f"clipshift serve: {served.url}  (Ctrl-C stops it)", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(served.url)

    run_serve(db, run=run_id, host=host, port=port, token=token, ready=ready, report=report)


@cli.command()
@db_option
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    help="A run_id (or a unique prefix); default: the latest run. Give it again for several.",
)
@click.option("--all-runs", is_flag=True, help="Every run of the store, side by side.")
@format_option
@user_errors
def layers(db, run_ids, all_runs, fmt):
    """Where inside the model does each augmentation's shift appear? Per augmentation (and
    severity) and layer: the mean cosine of the pooled token with the original's and its 95%
    interval, the drift (1 - mean cosine), the onset layer (the first whose drift reaches half
    the last layer's) and, for a run ingested with --hidden-states, the linear CKA of the
    originals' and variants' pooled hidden states over the run's images, with the estimator
    used (full or minibatch). docs/metrics.md defines them."""
    from clipshift.formatting import drop_empty_severity, format_rows
    from clipshift.layers import layers as run_layers

    if not all_runs and len(run_ids) < 2:
        run_ids = [_pick_run(db, run_ids[0] if run_ids else None)]
    result = run_layers(
        db,
        run=list(run_ids),
        all_runs=all_runs,
        notify=lambda line: click.echo(f"note: {line}", err=True),
    )
    note = result.sections.get("note")
    if note is not None:
        click.echo(f"note: {note.rows[0][0]}", err=True)
    columns, rows = drop_empty_severity(result.columns, result.rows)
    if result.run is not None and fmt == "table":
        keep = [i for i, c in enumerate(columns) if c not in ("run_id", "model")]
        columns, rows = [columns[i] for i in keep], [tuple(r[i] for i in keep) for r in rows]
    click.echo(format_rows(columns, rows, fmt, max_rows=None))


def main() -> None:
    """The `clipshift` command (script, `python -m clipshift`, `python cli.py`). Once a command
    has returned, the process ends without Python's finalization: tearing down lance's and
    DuckDB's native state took 0.13-0.35 s here, up to a fifth of `clipshift stats` on a small
    store (benchmarks/fixed_cost.py). Exit handlers still run and the output is flushed; where
    another thread still runs, or the command failed with a traceback, Python exits as usual."""
    import atexit
    import threading

    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if (code is not None and not isinstance(code, int)) or any(not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
