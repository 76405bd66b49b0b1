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


@cli.command()
@db_option
@click.option("--run", "run_id", default=None, help="The run to report on (default: the only one).")
@click.option("--model", default=None, help="Report on the run of this model.")
@click.option(
    "--out",
    default="clipshift-report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the figures and index.html; an earlier report there is replaced.",
)
@click.option("--figures", default=None, help="Comma list of figures (default: all).")
@click.option(
    "--samples",
    default=4,
    show_default=True,
    type=int,
    help="Images in attention_grid (cosine_heatmap always takes up to 50).",
)
@click.option(
    "--format",
    "fmt",
    default="png",
    show_default=True,
    type=click.Choice(["png", "svg", "pdf"]),
    help="File format of the figures.",
)
@click.option(
    "--method",
    default="ward",
    show_default=True,
    help="scipy linkage method of the dendrogram and clustermap.",
)
@user_errors
def report(db, run_id, model, out, figures, samples, fmt, method):
    """Render every figure of the paper for one run into --out, with index.html showing them,
    their captions and the stats table."""
    from clipshift.report import report as run_report

    def progress(figure):
        if figure.path is None:
            click.echo(f"{figure.name:<20} skipped: {figure.note}", err=True)
        else:
            click.echo(f"{figure.name:<20} {figure.seconds:6.1f} s  {figure.path}", err=True)

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
    )
    drawn = sum(f.path is not None for f in result.figures)
    click.echo(
        f"{drawn} of {len(result.figures)} figures for run {result.run['run_id']}: {result.index}"
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
