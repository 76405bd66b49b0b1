"""The clipshift command line: each command parses its options, calls one library function
of the same name, and prints the result."""

from __future__ import annotations

import functools
import os
import sys

import click

from clipshift import ClipshiftError, __version__
from clipshift.encoder import DEFAULT_MODEL
from clipshift.store import DEFAULT_DB

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def user_errors(command):
    """Print a ClipshiftError (a user mistake) on one line and exit 1: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ClipshiftError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


db_option = click.option(
    "--db",
    default=lambda: os.environ.get("CLIPSHIFT_DB", DEFAULT_DB),
    show_default="$CLIPSHIFT_DB or ./clipshift-store",
    type=click.Path(file_okay=True, dir_okay=True),
    help="The store: a LanceDB directory.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipshift")
def cli():
    """How does a vision-language model's representation move when the image changes?

    Ingest images into a store with `clipshift ingest`, then query it.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@db_option
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="A Hugging Face hub id, or a local folder saved with save_pretrained.",
)
@click.option(
    "--image-size",
    default=224,
    show_default=True,
    type=int,
    help="Working size S: every image is resized to S x S.",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=int,
    help="Images per forward pass; each brings its original and augmented copies.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Run seed for the augmentations."
)
@click.option(
    "--augmentations", default="all", show_default=True, help="Comma list of augmentation names."
)
@click.option("--limit", type=int, default=None, help="Ingest at most N images.")
@click.option(
    "--keep-pixels",
    default=64,
    show_default=True,
    type=int,
    help="Store PNG pixels for the first N images (0 none, -1 all).",
)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda", "mps"])
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@user_errors
def ingest(
    paths, db, model, image_size, batch_size, seed, augmentations, limit, keep_pixels, device, quiet
):
    """Embed images under PATHS (folders, image files or text files listing paths), original
    and augmented, into the store. Running it again stores nothing twice and resumes."""
    from clipshift.ingest import ingest as run_ingest

    bar = _ProgressBar(enabled=not quiet and sys.stderr.isatty())
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
        on_start=bar.start,
        on_progress=bar.update,
    )
    bar.finish()
    if not quiet:
        click.echo(format_ingest_summary(summary))


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
            rate = f"{summary.stored / summary.seconds:.2f} images/s" if summary.seconds else ""
            self.bar.update(done - self.done, rate)
            self.done = done

    def finish(self) -> None:
        if self.bar:
            self.bar.__exit__(None, None, None)


def format_ingest_summary(summary) -> str:
    lines = [
        f"run        {summary.run_id}  ({summary.model}, {summary.model_revision})",
        f"           image size {summary.image_size}, seed {summary.seed}, "
        f"{len(summary.augmentations)} augmentations",
        f"stored     {summary.stored} images ({summary.stored * (1 + len(summary.augmentations))} "
        "variant rows)",
        f"skipped    {summary.skipped} already in the store"
        + (f", {summary.duplicates} duplicate files" if summary.duplicates else ""),
        f"failed     {summary.failed}",
    ]
    for failure in summary.failures[:10]:
        lines.append(f"           {failure.stage}: {failure.path}: {failure.message}")
    if summary.failed > 10:
        lines.append(
            f'           ... {summary.failed - 10} more: clipshift sql "SELECT * FROM '
            f"errors WHERE run_id = '{summary.run_id}'\""
        )
    lines += [
        f"time       {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)",
        f"store      {summary.db}",
    ]
    return "\n".join(lines)


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


# -- analysis: stats, sql, clusters (clipshift/analysis.py) -----------------------------------

run_option = click.option(
    "--run", "run_id", default=None, help="A run_id (or a unique prefix); default: the latest run."
)
model_option = click.option(
    "--model", default=None, help="The most recent run of this model (a Hugging Face id)."
)
format_option = click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(["table", "csv", "json"]),
    help="table for reading; csv and json carry every column at full precision.",
)


def _note_run(run: dict | None) -> None:
    """Say on stderr which run is shown when the choice was not obvious."""
    if run and run.get("selection_note"):
        click.echo(run["selection_note"], err=True)


@cli.command()
@db_option
@run_option
@model_option
@format_option
@user_errors
def stats(db, run_id, model, fmt):
    """Per-augmentation summary of a run, sorted by rank (1 = least shift): n, mean and std of
    cosine and l2, the mean of every other score, overall score. csv and json add the median,
    p5 and p95 of every metric."""
    from clipshift.analysis import STATS_TABLE_COLUMNS
    from clipshift.analysis import stats as run_stats
    from clipshift.formatting import format_rows

    result = run_stats(db, run=run_id, model=model)
    _note_run(result.run)
    columns, rows = result.columns, result.rows
    if fmt == "table":
        keep = [columns.index(name) for name in STATS_TABLE_COLUMNS]
        columns, rows = list(STATS_TABLE_COLUMNS), [tuple(r[i] for i in keep) for r in rows]
    click.echo(format_rows(columns, rows, fmt, max_rows=None))


@cli.command()
@click.argument("query", required=False)
@click.option("--file", "-f", "query_file", type=click.File("r"), help="Read the SQL from F.")
@db_option
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(["table", "csv", "json", "parquet"]),
    help="parquet needs --output.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file.")
@click.option(
    "--max-rows",
    default=50,
    show_default=True,
    type=int,
    help="Rows a table shows (the rest are counted); csv, json and parquet carry all.",
)
@user_errors
def sql(query, query_file, db, fmt, output, max_rows):
    """Run QUERY (or --file F) over the views runs, images, variants, errors, shifts, summary,
    pairwise and layer_shifts. Read-only: nothing a query says can change the store."""
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
    default="ward",
    show_default=True,
    type=click.Choice(["ward", "average", "complete", "single"]),
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

    found = find_clusters(db, run=run_id, model=model, method=method, threshold=threshold)
    _note_run(found.run)
    how = "given" if threshold is not None else "0.7 x the largest merge height"
    click.echo(
        f"run {found.run['run_id']} ({found.run['model']}): {method} linkage, "
        f"cut at {found.threshold:.6g} ({how}): {len(found.members)} clusters"
    )
    for label, names in found.members.items():
        click.echo(f"  cluster {label}: {', '.join(names)}")
    click.echo("merges (height: joined groups):")
    for height, left, right in found.merges():
        click.echo(f"  {height:.6g}: {' + '.join(left)}  |  {' + '.join(right)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
