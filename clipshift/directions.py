"""Text directions: does a shift point where the words for the perturbation point?

For each augmentation of a run, the shift of an image (unit variant embedding minus unit
original embedding) is compared by cosine with text directions, unit embed(prompt) minus
unit embed("a photo"), one per prompt. Identification accuracy: how often, from its shift
alone, an image's augmentation is picked among the descriptions of the run's augmentations
(the prompt of highest cosine). The metrics are sql/directions.sql; this module builds the
text directions and shapes the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from . import ClipshiftError
from .knn import normalise
from .query import Rows, connect, named_query, require_augmented_rows
from .runs import Run, resolve_run
from .store import Store
from .suites import BASE_PROMPT, DEFAULT_PROMPT, perturbations_of_run
from .zeroshot import read_lines

# the one-line summary per augmentation; the matrix has a row per (augmentation, prompt)
SUMMARY_COLUMNS = (
    "augmentation",
    "severity",
    "n",
    "prompt",
    "cosine",
    "identification",
    "chance",
    "most_picked",
)


@dataclass(frozen=True)
class Prompt:
    text: str
    describes: str | None  # the augmentation it describes; None: an extra prompt


@dataclass
class DirectionsResult:
    run: Run
    prompts: list[Prompt]
    matrix: Rows  # sql/directions.sql: augmentation, severity, prompt, describes, n, ...
    summary: Rows  # SUMMARY_COLUMNS, one row per augmentation (and severity)


def run_prompts(run: Run, path: str | os.PathLike | None = None) -> list[Prompt]:
    """The prompts for a run: each perturbation's own description (its suite's `prompt`,
    clipshift.suites), or those of a file. A file line `NAME: text` describes the run's
    perturbation NAME; any other line is an extra prompt, shown in the matrix but never
    picked. A perturbation without a description of its own is left out of the default."""
    perturbations = perturbations_of_run(run)
    names = list(dict.fromkeys(p.name for p in perturbations))
    if path is None:
        described = {p.name: p.prompt for p in perturbations if p.prompt != DEFAULT_PROMPT}
        prompts, seen = [], set()
        for name, text in described.items():
            if text not in seen:  # two perturbations described alike: the first keeps it
                prompts.append(Prompt(text, name))
                seen.add(text)
        if not prompts:
            raise ClipshiftError(
                f"run {run.run_id}'s perturbations have no descriptions: give --prompts FILE "
                "with lines such as `blur: a blurry photo`"
            )
        return prompts
    prompts = []
    for line in read_lines(path, what="prompt"):
        name, _, text = line.partition(":")
        if text.strip() and name.strip() in names:
            prompts.append(Prompt(text.strip(), name.strip()))
        else:
            prompts.append(Prompt(line, None))
    texts = [p.text for p in prompts]
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise ClipshiftError(f"{path}: the prompt {repeated[0]!r} is given twice")
    if BASE_PROMPT in texts:
        raise ClipshiftError(
            f"{path}: {BASE_PROMPT!r} is the neutral prompt every direction starts from"
        )
    return prompts


def text_directions(encoder, prompts: list[Prompt]) -> pa.Table:
    """The `text_directions` table sql/directions.sql reads: prompt, describes, direction."""
    vectors = normalise(encoder.encode_text([BASE_PROMPT] + [p.text for p in prompts]))
    directions = vectors[1:] - vectors[0]
    dim = directions.shape[1]
    return pa.table(
        {
            "prompt": [p.text for p in prompts],
            "describes": pa.array([p.describes for p in prompts], pa.string()),
            "direction": pa.FixedSizeListArray.from_arrays(
                pa.array(directions.astype(np.float32).reshape(-1)), dim
            ),
        }
    )


def directions(
    db: str | os.PathLike,
    prompts: str | os.PathLike | None = None,
    run: str | None = None,
    device: str = "auto",
) -> DirectionsResult:
    """Per augmentation (and severity) and prompt: the mean cosine between shifts and the
    prompt's text direction, and how often the prompt is picked; per augmentation, its
    identification accuracy among the descriptions of the run's augmentations."""
    store = Store.open(db)
    return run_directions(connect(store), resolve_run(store, run), prompts, device)


def run_directions(
    con: duckdb.DuckDBPyConnection,
    run: Run,
    prompts: str | os.PathLike | None = None,
    device: str = "auto",
) -> DirectionsResult:
    """`directions` for a run already chosen, on an open connection (the report's)."""
    from .encoder import text_encoder

    chosen_prompts = run_prompts(run, prompts)
    require_augmented_rows(con, run)
    # encoder.text_encoder reads a runs row as a dict
    table = text_directions(text_encoder(run.as_dict(), device), chosen_prompts)
    con.register("text_directions", table)
    result = named_query(con, "directions", run_id=run.run_id)
    matrix = Rows([d[0] for d in result.description], result.fetchall(), run)
    return DirectionsResult(run, chosen_prompts, matrix, _summary(matrix, chosen_prompts))


def _summary(matrix: Rows, prompts: list[Prompt]) -> Rows:
    """One row per augmentation (and severity): its own prompt, the mean cosine with it, its
    identification accuracy against chance, and the prompt picked most often."""
    candidates = sum(p.describes is not None for p in prompts)
    groups: dict[tuple, list[dict]] = {}
    for row in matrix.records():
        groups.setdefault((row["augmentation"], row["severity"]), []).append(row)
    rows = []
    for (augmentation, severity), cells in groups.items():
        own = next((c for c in cells if c["describes"] == augmentation), None)
        picked = [c for c in cells if c["picked"] is not None]
        best = max(picked, key=lambda c: c["picked"])["prompt"] if picked else None
        rows.append(
            (
                augmentation,
                severity,
                max(c["n"] for c in cells),
                own["prompt"] if own else None,
                own["mean_cosine"] if own else None,
                own["picked"] if own else None,
                1.0 / candidates if candidates else None,
                best,
            )
        )
    return Rows(list(SUMMARY_COLUMNS), rows, matrix.run)
