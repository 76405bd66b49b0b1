"""What the figures read: named queries of one run, run once each and shared between figures."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import duckdb
import numpy as np
from PIL import Image

from .. import ClipshiftError
from ..defaults import DEFAULT_LABELS, DEFAULT_TEMPLATE, SCORES
from ..query import named_query
from ..runs import Run
from ..store import Store

NO_LAYER_METRICS = (
    "this run holds no layer metrics: it was stored before clipshift measured them (migration 0006)"
)


class FigureUnavailable(Exception):
    """The store lacks what a figure needs (pixels, per-layer attention): said on the page."""


@dataclass(frozen=True)
class LeftOutRun:
    """A run of the store the model comparison leaves out, and why."""

    run_id: str
    model: str
    reason: str


def variant_label(augmentation, severity) -> str:
    """A stored (augmentation, severity) as the figures name it: NAME, or NAME@SEVERITY."""
    if severity is None or severity != severity:
        return str(augmentation)
    return f"{augmentation}@{int(severity)}"


@dataclass
class ReportData:
    """One run's named-query results, fetched on first use and cached for the other figures."""

    con: duckdb.DuckDBPyConnection
    run: Run
    samples: int = 4
    heatmap_images: int = 50
    method: str = "ward"
    reference: str | None = None  # a run_id: the corruption mean relative to it
    # the store, for what is not SQL: the CKA of the pooled hidden states (clipshift.layers)
    store: Store | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def query(self, name: str, *, by_variant: bool = True, **params) -> dict[str, np.ndarray]:
        """`sql/NAME.sql` for this run as columns of numpy arrays (NULL floats become NaN).

        With `by_variant` (what the paper's figures draw: one entry per stored variant), a
        levelled perturbation's `augmentation` becomes its variant label NAME@SEVERITY; the
        severity figures ask for the plain columns.
        """
        key = (name, by_variant, tuple(sorted(params.items())))
        if key not in self._cache:
            result = named_query(self.con, name, run_id=self.run_id, **params).fetchnumpy()
            columns = {column: _unmask(values) for column, values in result.items()}
            if by_variant and "severity" in columns and "augmentation" in columns:
                columns["augmentation"] = np.array(
                    [
                        variant_label(a, s)
                        for a, s in zip(columns["augmentation"], columns["severity"], strict=True)
                    ],
                    dtype=object,
                )
            self._cache[key] = columns
        return self._cache[key]

    def corruption_mean(self) -> dict[str, np.ndarray] | None:
        """sql/corruption_mean.sql, relative to the reference run where one is named; None when
        the run has no levels."""
        means = self.query("corruption_mean", by_variant=False, reference=self.reference)
        return means if len(means["augmentation"]) else None

    def severity_curves(self) -> dict[str, np.ndarray]:
        """sql/severity_curves.sql; FigureUnavailable when the run has no severity levels."""
        curves = self.query("severity_curves", by_variant=False)
        if not len(curves["severity"]):
            raise FigureUnavailable(
                "this run has no perturbations with severity levels: ingest with "
                "--augmentations corruptions (or a suite file with severities)"
            )
        return curves

    def layer_curves(self) -> dict[str, np.ndarray]:
        """sql/layer_onset.sql; FigureUnavailable for a run stored before the layer metrics."""
        curves = self.query("layer_onset")
        if not len(curves["layer"]):
            raise FigureUnavailable(NO_LAYER_METRICS)
        return curves

    def token_drift(self) -> dict[str, np.ndarray]:
        """sql/token_drift.sql; FigureUnavailable for a run stored before the layer metrics."""
        maps = self.query("token_drift")
        if not len(maps["augmentation"]):
            raise FigureUnavailable(NO_LAYER_METRICS)
        return maps

    def layer_cka(self) -> dict[tuple[str, int], float | None]:
        """(variant label, layer) -> linear CKA of the pooled hidden states (clipshift.cka);
        FigureUnavailable for a run ingested without --hidden-states."""
        if "layer_cka" not in self._cache:
            from ..cka import run_cka

            cka = run_cka(self.store, self.run).by_key() if self.store is not None else {}
            if not cka:
                raise FigureUnavailable(
                    "this run stored no hidden states: ingest with --hidden-states for CKA"
                )
            self._cache["layer_cka"] = {
                (variant_label(name, severity), layer): value
                for (name, severity, layer), (value, _) in cka.items()
            }
        return self._cache["layer_cka"]

    def summary(self) -> dict[str, np.ndarray]:
        return self.query("summary")

    def scores(self) -> dict[str, np.ndarray]:
        """The five-score table (sql/scores.sql's columns), taken from the summary the page
        already fetched rather than running the same aggregation twice; sorted by rank."""
        summary = self.summary()
        columns = {"augmentation": summary["augmentation"]}
        columns.update({score: summary[f"{score}_mean"] for score in SCORES})
        columns.update(overall=summary["overall"], rank=summary["rank"])
        return columns

    def runs_summary(self) -> dict[str, np.ndarray]:
        """The summary of every run of the store in long format (sql/summary_runs.sql)."""
        if "runs_summary" not in self._cache:
            run_ids = [row[0] for row in self.con.execute("SELECT run_id FROM runs").fetchall()]
            result = named_query(self.con, "summary_runs", run_ids=run_ids).fetchnumpy()
            self._cache["runs_summary"] = {c: _unmask(v) for c, v in result.items()}
        return self._cache["runs_summary"]

    def comparable_runs(self) -> tuple[dict[str, np.ndarray], list[LeftOutRun]]:
        """The rows of runs_summary for the runs that stored exactly this run's augmented
        variants (the model comparison's runs), and every other run with the reason it is
        left out: a paper-suite run beside a corruptions run has no variant in common, and
        drawn together they made 84 bar groups of one bar each (a 14177 px wide figure)."""
        if "comparable_runs" not in self._cache:
            rows = self.runs_summary()
            variants: dict[str, set[str]] = {}
            for run_id, augmentation, severity in zip(
                rows["run_id"], rows["augmentation"], rows["severity"], strict=True
            ):
                variants.setdefault(str(run_id), set()).add(variant_label(augmentation, severity))
            mine = variants.get(self.run_id, set())
            left_out = []
            for run_id, model in self.con.execute(
                "SELECT run_id, model FROM runs ORDER BY run_id"
            ).fetchall():
                if run_id == self.run_id:
                    continue
                theirs = variants.get(run_id)
                if theirs is None:
                    reason = "it has no augmented rows yet"
                elif theirs != mine:
                    reason = (
                        f"its {len(theirs)} augmented variants are not run {self.run_id[:12]}'s "
                        f"{len(mine)} ({len(theirs & mine)} in common)"
                    )
                else:
                    continue
                left_out.append(LeftOutRun(run_id, str(model), reason))
            dropped = {run.run_id for run in left_out}
            keep = np.array([str(r) not in dropped for r in rows["run_id"]], dtype=bool)
            self._cache["comparable_runs"] = (
                {column: values[keep] for column, values in rows.items()},
                left_out,
            )
        return self._cache["comparable_runs"]

    def zeroshot_models(self) -> dict[str, np.ndarray]:
        """Stored zero-shot flip rates of every run sharing this run's label set and template
        (ImageNet with the default template where the run has them)."""
        rows = self.query("zeroshot_models", label_set=DEFAULT_LABELS, template=DEFAULT_TEMPLATE)
        if not len(rows["run_id"]):
            raise FigureUnavailable(
                "no zero-shot predictions stored for this run: run `clipshift zeroshot "
                f"--run {self.run_id}` first"
            )
        return rows

    def shift_accuracy(self):
        """Shift against accuracy of the run's labelled images (clipshift.accuracy), from the
        stored predictions of its first label set and template (ImageNet with the default
        template where it has them): nothing is classified here."""
        from ..accuracy import shift_against_accuracy

        if "shift_accuracy" not in self._cache:
            sets = named_query(
                self.con,
                "accuracy_sets",
                run_id=self.run_id,
                label_set=DEFAULT_LABELS,
                template=DEFAULT_TEMPLATE,
            ).fetchall()
            if not sets:
                raise FigureUnavailable(
                    "no labelled images classified in this run: ingest a dataset with its "
                    f"labels, then run `clipshift accuracy --run {self.run_id}`"
                )
            label_set, template = sets[0]
            self._cache["shift_accuracy"] = shift_against_accuracy(
                self.con, self.run, label_set, template
            )
        return self._cache["shift_accuracy"]

    def alignment(self):
        """The run's text-direction alignment (clipshift.directions), computed once."""
        if "alignment" not in self._cache:
            from ..directions import run_directions

            try:
                self._cache["alignment"] = run_directions(self.con, self.run)
            except ClipshiftError as exc:
                raise FigureUnavailable(str(exc)) from None
        return self._cache["alignment"]

    def images(self) -> dict[str, int]:
        counts = self.query("run_images")
        return {column: int(values[0]) for column, values in counts.items()}

    def pixel_sample(self) -> list[dict]:
        """The sampled images that kept pixels: {image_id, path, variants: {name: row}}."""
        rows = self.query("pixel_sample", samples=self.samples)
        if not len(rows["pick"]):
            raise FigureUnavailable(
                "this run kept no pixels: ingest with --keep-pixels N (or -1 for all) "
                "to draw the images"
            )
        picks: dict[int, dict] = {}
        for i, pick in enumerate(rows["pick"]):
            image = picks.setdefault(
                int(pick),
                {"image_id": rows["image_id"][i], "path": rows["path"][i], "variants": {}},
            )
            image["variants"][rows["variant"][i]] = {
                "pixels": decode_png(rows["pixels"][i]),
                "attention": np.asarray(rows["attention"][i], dtype=np.float64),
                "cosine": float(rows["cosine"][i]),
            }
        return [picks[pick] for pick in sorted(picks)]


def _unmask(values: np.ndarray) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        if values.dtype.kind in "fiu":
            return values.astype(np.float64).filled(np.nan)
        return values.filled(None)
    return values


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
