"""index.html: the run's facts, every figure with its caption, and the stats table."""

from __future__ import annotations

from datetime import datetime
from html import escape

import numpy as np

from ..defaults import METRICS
from ..runs import Run
from .style import colour, label

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1300px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
td { white-space: nowrap; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
table.facts td { text-align: left; border: none; padding: 0.1em 0.8em 0.1em 0; }
table.facts td:first-child { color: #666; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          border-radius: 2px; vertical-align: baseline; }
figure { margin: 2.5em 0; }
figure img, figure object { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { margin-top: 0.4em; color: #444; }
figcaption b { color: #222; }
.missing { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.8em 1em; }
nav a { margin-right: 0.8em; }
"""


def render_page(
    run: Run,
    images: dict,
    figures: list,
    stats: dict | None,
    widths: dict[str, int] | None = None,
    corruption_mean: dict | None = None,
    reference: str | None = None,
    left_out: list | None = None,
) -> str:
    """The whole page. `figures`: (name, file name or None, caption, note) in display order;
    `widths`: a figure's display width in CSS pixels, where known; `left_out`: the runs the
    model comparison leaves out (LeftOutRun)."""
    widths = widths or {}
    facts = [
        ("run", run.run_id),
        ("model", f"{run.model} ({run.model_revision or 'unknown revision'})"),
        ("images", f"{images['images']:,} ({images['with_pixels']:,} with pixels kept)"),
        ("seed", run.seed),
        ("image size", f"{run.image_size} x {run.image_size}"),
        ("attention grid", f"{run.patch_grid} x {run.patch_grid}"),
        ("created", _when(run.created_at)),
        ("clipshift", run.clipshift_version),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>clipshift report: {escape(str(run.model))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>clipshift report: {escape(str(run.model))}</h1>",
        '<table class="facts">',
        *(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in facts),
        "</table>",
        "<nav><p>"
        + " ".join(f'<a href="#{name}">{escape(name)}</a>' for name, *_ in figures)
        + (' <a href="#stats">stats</a>' if stats is not None else "")
        + "</p></nav>",
    ]
    for name, filename, caption, note in figures:
        parts.append(f'<figure id="{escape(name)}">')
        if filename is None:
            parts.append(f'<p class="missing"><b>{escape(name)}</b>: {escape(note)}</p>')
        else:
            parts.append(_embed(name, filename, widths.get(name)))
        parts.append(f"<figcaption><b>{escape(name)}</b>. {escape(caption)}</figcaption>")
        parts.append("</figure>")
    if left_out:
        parts += [
            '<h2 id="left-out">Runs left out of the model comparison</h2>',
            "<p>The model figures compare only runs that stored the same augmented variants as "
            f"run {escape(run.run_id)}; these runs did not:</p>",
            "<ul>",
            *(
                f"<li><code>{escape(r.run_id)}</code> ({escape(r.model)}): {escape(r.reason)}</li>"
                for r in left_out
            ),
            "</ul>",
        ]
    if stats is not None:
        parts += [
            '<h2 id="stats">Stats</h2>',
            "<p>Per augmentation: mean ± std (population) of each metric over the run's images, "
            "the overall score (mean of the five scores) and its rank; "
            "<code>clipshift</code>'s <code>summary</code> query.</p>",
            _stats_table(stats),
        ]
    if corruption_mean is not None:
        parts += [
            '<h2 id="corruption-mean">Corruption mean</h2>',
            "<p>Per perturbation with severity levels: the mean over its severities of the mean "
            "1 - cosine to the original; the last row is the mean over corruptions and "
            "severities (<code>corruption_mean</code> query"
            + (
                f"; relative: the ratio to run {escape(reference)}, as ImageNet-C's CE and mCE)."
                if reference
                else "; <code>clipshift report --reference RUN</code> adds the ratio to another "
                "run)."
            )
            + "</p>",
            _corruption_table(corruption_mean, with_reference=reference is not None),
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _embed(name: str, filename: str, width: int | None = None) -> str:
    src = escape(filename)
    size = f' width="{width}"' if width else ""
    if filename.endswith(".pdf"):
        # browsers show a PDF in <object>, not in <img>; the link is the fallback
        return (
            f'<object data="{src}" type="application/pdf" width="100%" height="700">'
            f'<a href="{src}">{src}</a></object>'
        )
    return f'<a href="{src}"><img src="{src}"{size} alt="{escape(name)}"></a>'


def _stats_table(stats: dict) -> str:
    """The `summary` query: mean ± std of each metric, overall and rank, one row per
    augmentation in rank order."""
    head = ["augmentation", "n", *(label(m) for m in METRICS), "overall", "rank"]
    rows = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for i, name in enumerate(stats["augmentation"]):
        cells = [
            f'<span class="swatch" style="background:{colour(name)}"></span>{escape(str(name))}',
            f"{int(stats['n'][i]):,}",
        ]
        for metric in METRICS:
            mean, std = stats[f"{metric}_mean"][i], stats[f"{metric}_std"][i]
            cells.append("n/a" if not np.isfinite(mean) else f"{mean:.3f} ± {std:.3f}")
        cells += [f"{stats['overall'][i]:.3f}", f"{int(stats['rank'][i])}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _corruption_table(means: dict, with_reference: bool = False) -> str:
    columns = ["shift", "reference_shift", "relative"] if with_reference else ["shift"]
    head = ["augmentation", "severities", *columns]
    rows = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, name in enumerate(means["augmentation"]):
        values = (float(means[c][i]) for c in columns)
        rows.append(
            f"<tr><td>{escape(str(name))}</td><td>{int(means['severities'][i])}</td>"
            + "".join(f"<td>{v:.4f}</td>" if np.isfinite(v) else "<td>n/a</td>" for v in values)
            + "</tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _when(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M %Z").strip()
    return str(value or "")
