"""Dissection inside the network: `clipshift layers`.

Per augmentation (and severity) and layer of a run: the mean cosine between the variants' and
the originals' pooled tokens with its 95% interval, the drift (1 - that mean) and the onset
layer (sql/layer_onset.sql), and, where the run was ingested with --hidden-states, the linear
CKA between the originals' and the variants' pooled hidden states at that layer, over the
run's images (Kornblith et al. 2019; Nguyen, Raghu and Kornblith 2021). docs/metrics.md
defines them.

CKA is computed in clipshift.cka, not in SQL: it needs every image's (width)-vector of a
layer. It is computed once per state of the run and kept in the store (`layer_cka`, migration
0008): at the end of an ingest with --hidden-states, else by the first `layers` that finds it
missing or stale, which says so in a note first. After that, `layers` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from . import ClipshiftError
from .cka import run_cka
from .query import Rows, as_dicts, connect, fetch, named_query
from .runs import Run, read_runs, resolve_run
from .store import Store

LAYERS_COLUMNS = (
    "run_id",
    "model",
    "augmentation",
    "severity",
    "layer",
    "is_head",
    "depth",
    "n",
    "cosine_mean",
    "cosine_ci95",
    "drift",
    "onset_layer",
    "cka",
    "cka_estimator",
)


# -- the command -------------------------------------------------------------------------------


def layers(
    db: str | os.PathLike | Store,
    run: str | Sequence[str] | None = None,
    model: str | None = None,
    *,
    all_runs: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Rows:
    """The layer table (LAYERS_COLUMNS) of one run, or of several side by side (`run` a list,
    or `all_runs`). Runs without layer metrics (stored before migration 0006) are named in one
    line: a ClipshiftError where no chosen run has them, else `Rows.sections["note"]`'s
    first column. `cka` is NULL for a run ingested without --hidden-states. Where a run's CKA
    is missing from the store or stale, it is computed and kept (clipshift.cka.run_cka), and
    `notify` gets a line saying so before."""
    store = db if isinstance(db, Store) else Store.open(db)
    runs = _chosen_runs(store, run, model, all_runs)
    con = connect(store)
    measured = {
        r["run_id"]: r
        for r in as_dicts(
            con.execute(
                "SELECT run_id, count(layer_cosine) AS layered FROM variants "
                "WHERE run_id IN (SELECT unnest($ids)) GROUP BY run_id",
                {"ids": [r.run_id for r in runs]},
            )
        )
    }
    lacking = [r for r in runs if not measured.get(r.run_id, {}).get("layered")]
    note = None
    if lacking:
        names = ", ".join(f"{r.run_id} ({r.model})" for r in lacking)
        line = (
            f"no layer metrics in run{'s' if len(lacking) > 1 else ''} {names}: "
            "stored before clipshift measured them (migration 0006); ingest again into a new "
            "store to measure them"
        )
        if len(lacking) == len(runs):
            raise ClipshiftError(line)
        note = line
    rows = []
    for chosen in runs:
        if chosen in lacking:
            continue
        curve = fetch(named_query(con, "layer_onset", run_id=chosen.run_id)).records()
        cka = run_cka(store, chosen, notify=notify).by_key()
        for row in curve:
            key = (row["augmentation"], row["severity"], row["layer"])
            value, estimator = cka.get(key, (None, None))
            rows.append(
                (
                    chosen.run_id,
                    chosen.model,
                    row["augmentation"],
                    row["severity"],
                    row["layer"],
                    row["is_head"],
                    row["depth"],
                    row["n"],
                    row["cosine_mean"],
                    row["cosine_ci95"],
                    row["drift"],
                    row["onset_layer"],
                    value,
                    estimator,
                )
            )
    result = Rows(list(LAYERS_COLUMNS), rows, runs[0] if len(runs) == 1 else None)
    if note:
        result.sections["note"] = Rows(["note"], [(note,)])
    return result


def _chosen_runs(store: Store, run, model: str | None, all_runs: bool) -> list[Run]:
    if all_runs:
        chosen = read_runs(store)
        if not chosen:
            resolve_run(store)  # the empty-store error
        return chosen
    names = [run] if isinstance(run, str) or run is None else list(run)
    picked = [resolve_run(store, name, model) for name in names]
    return list({r.run_id: r for r in picked}.values())


def hidden_state_bytes(db: str | os.PathLike | Store, run_id: str) -> int | None:
    """The bytes --hidden-states adds to each of the run's rows (None where it holds none)."""
    store = db if isinstance(db, Store) else Store.open(db)
    chosen = resolve_run(store, run_id)
    table = store.dataset(chosen.variants_table).to_table(
        columns=["hidden_states"],
        filter=f"run_id = '{run_id}' AND hidden_states IS NOT NULL",
        limit=1,
    )
    if not table.num_rows:
        return None
    return len(table["hidden_states"][0].as_py())
