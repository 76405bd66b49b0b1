"""Zero-shot consistency: does an augmentation change what the model sees?

`zeroshot` classifies every original and every variant of a run by cosine against text
prompts, one per label ("a photo of a {}."), and stores each variant's top-5 labels and
probabilities in the `zeroshot` table, keyed by (run, label set, template). The metrics
(flip_rate, top1_prob_drop, top5_retention) are sql/zeroshot.sql over that table. A second
call with the same labels and template classifies only images stored since, usually none:
it reads the stored predictions back and never loads the model.

Probabilities, as the model was trained to score image-text pairs (docs/metrics.md):
- CLIP: softmax over the label set of logit_scale * cos(image, prompt), logit_scale the
  exp of the model's learned scale (100 for OpenAI's CLIP);
- sigmoid-trained models (SigLIP), recognised by a logit_bias: each label's own
  sigmoid(logit_scale * cos + logit_bias), which need not sum to 1 over the labels.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import ClipshiftError
from .defaults import DEFAULT_LABELS, DEFAULT_TEMPLATE, LABEL_SETS
from .knn import normalise
from .query import (
    Rows,
    connect,
    named_arrow,
    named_count,
    named_query,
    require_augmented_rows,
)
from .runs import Run, resolve_run
from .sources import list_entries
from .store import Store

TOP_K = 5
# images classified per matrix product: 8,192 rows x 1,000 labels is a 33 MB logit block
CHUNK_ROWS = 8192
DATA_DIR = Path(__file__).resolve().parent / "data"


# -- label sets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    """Class names in class-index order, and the key the store files their results under."""

    key: str  # "imagenet", "cifar100", or "file:" + a hash of a label file's labels
    labels: tuple[str, ...]
    source: str  # the built-in name or the file's path, for messages

    def prompts(self, template: str) -> list[str]:
        return [template.replace("{}", label) for label in self.labels]

    def arrow(self) -> pa.Table:
        """The set's rows of `zeroshot_labels`."""
        return pa.table(
            {
                "label_set": [self.key] * len(self.labels),
                "label_index": pa.array(range(len(self.labels)), pa.int32()),
                "label": list(self.labels),
            }
        )


def load_labels(spec: str) -> LabelSet:
    """A built-in set (imagenet, cifar100) or a file of one label per line (UTF-8).

    Blank lines and # comments are skipped, as in a list of image paths; a file with a repeated
    label, a byte that is not UTF-8 or fewer than two labels is refused with a one-line
    ClipshiftError naming the line.
    """
    if spec in LABEL_SETS:
        text = (DATA_DIR / f"{spec}.txt").read_text(encoding="utf-8")
        return LabelSet(spec, tuple(text.splitlines()), spec)
    labels = read_lines(spec, what="label")
    digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]
    return LabelSet(f"file:{digest}", tuple(labels), spec)


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The entries of a UTF-8 text file of one `what` per line, read as path lists are
    (sources.list_entries: blank lines and # comments skipped, surrounding spaces dropped),
    checked: no repeat, no byte that is not UTF-8, at least two entries."""
    path = Path(path).expanduser()
    builtin = f" (or one of: {', '.join(LABEL_SETS)})" if what == "label" else ""
    if not path.is_file():
        raise ClipshiftError(f"no {what} file {path}{builtin}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClipshiftError(f"cannot read {path}: {exc.strerror or exc}") from None
    decoded: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ClipshiftError(
                f"{path}: line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}): save the file as UTF-8"
            ) from None
    lines: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in list_entries(decoded):
        if line in first_seen:
            raise ClipshiftError(
                f"{path}: line {number} repeats {line!r} (first on line {first_seen[line]}): "
                f"each {what} once"
            )
        first_seen[line] = number
        lines.append(line)
    if len(lines) < 2:
        raise ClipshiftError(
            f"{path}: {len(lines)} {what}s: give at least two, one per line (blank lines and "
            "# comments are skipped)"
        )
    return lines


def check_template(template: str) -> str:
    if template.count("{}") != 1:
        raise ClipshiftError(
            f"--template {template!r}: put {{}} exactly once where the label goes, "
            f'e.g. "{DEFAULT_TEMPLATE}"'
        )
    return template


# -- classification --------------------------------------------------------------------------


def encode_prompts(encoder, prompts: list[str]) -> np.ndarray:
    """(len(prompts), D) unit text embeddings."""
    return normalise(encoder.encode_text(prompts))


def classify(
    embeddings: np.ndarray,
    image_index: np.ndarray,
    is_original: np.ndarray,
    texts: np.ndarray,
    scale: float,
    bias: float | None,
    k: int = TOP_K,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k labels and probabilities of every row, and each row's probability of its image's
    original top-1 label. `image_index` numbers each row's image (0..n-1); `is_original`
    marks the one original row of each image.

    The originals go first, so each variant knows its original's top-1 label; an original's
    top-1 is by definition its top_labels[0]. Probabilities are taken from the logits only
    where needed (the top k and the original's label): both are increasing in the logit, so
    the top k of the logits are those of the probabilities, and no (N, L) probability matrix
    is made (softmax: exp(logit - logsumexp); sigmoid: of logit + bias).
    """
    k = min(k, len(texts))
    top_labels = np.empty((len(embeddings), k), np.int32)
    top_probs = np.empty((len(embeddings), k), np.float32)
    of_original = np.empty(len(embeddings), np.float32)
    original_top1 = np.zeros(int(image_index.max()) + 1, np.int64)
    for rows, original in (
        (np.flatnonzero(is_original), True),
        (np.flatnonzero(~is_original), False),
    ):
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            wanted = None if original else original_top1[image_index[chunk]]
            labels, probs, wanted_probs = _classify_chunk(
                normalise(embeddings[chunk]), texts, scale, bias, k, wanted
            )
            top_labels[chunk], top_probs[chunk] = labels, probs
            if original:
                original_top1[image_index[chunk]] = labels[:, 0]
                of_original[chunk] = probs[:, 0]
            else:
                of_original[chunk] = wanted_probs
    return top_labels, top_probs, of_original


def _classify_chunk(
    images: np.ndarray,
    texts: np.ndarray,
    scale: float,
    bias: float | None,
    k: int,
    wanted: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One block of rows: top-k labels and probabilities, and the probability of `wanted`."""
    import torch

    logits = scale * (torch.from_numpy(images) @ torch.from_numpy(texts).T)
    values, indices = torch.topk(logits, k, dim=1, sorted=True)
    chosen = None if wanted is None else logits.gather(1, torch.from_numpy(wanted)[:, None])[:, 0]
    if bias is None:
        total = torch.logsumexp(logits, dim=1)
        probs = torch.exp(values - total[:, None])
        chosen = None if chosen is None else torch.exp(chosen - total)
    else:
        probs = torch.sigmoid(values + bias)
        chosen = None if chosen is None else torch.sigmoid(chosen + bias)
    return (
        indices.numpy().astype(np.int32),
        probs.numpy(),
        None if chosen is None else chosen.numpy(),
    )


# -- the command -----------------------------------------------------------------------------


@dataclass
class ZeroshotResult:
    """Per augmentation (and severity): flip_rate, top1_prob_drop, top5_retention."""

    rows: Rows
    label_set: LabelSet
    template: str
    classified_images: int  # images classified by this call; 0: every result was stored
    probability: str | None  # "softmax" or "sigmoid" where this call classified, else None


def zeroshot(
    db: str | os.PathLike,
    labels: str = DEFAULT_LABELS,
    template: str = DEFAULT_TEMPLATE,
    run: str | None = None,
    device: str = "auto",
    reference: str | None = None,
) -> ZeroshotResult:
    """Classify a run's originals and variants against `labels` (imagenet, cifar100 or a
    file), store the predictions, and return the per-augmentation metrics of
    sql/zeroshot.sql. Images already classified with these labels and template are read
    back, not classified again.

    Where the run's images carry labels (a dataset's, migration 0007), `rows.sections` adds
    "accuracy" (top-1, top-5 and error per augmentation and severity, sql/accuracy.sql) and,
    for perturbations with severity levels, "corruption_error" (CE, relative CE, mCE against
    the run `reference`, sql/corruption_error.sql). A label the label set does not hold is a
    ClipshiftError naming it, before anything is classified."""
    label_set = load_labels(labels)
    template = check_template(template)
    store = Store.open(db)
    con = connect(store)
    chosen = resolve_run(store, run)
    reference_id = resolve_run(store, reference).run_id if reference is not None else None
    key = {"run_id": chosen.run_id, "label_set": label_set.key, "template": template}
    labelled = check_run_labels(con, chosen, label_set)
    classified = 0
    probability = None
    if named_count(con, "zeroshot_pending", **key):
        prompts = label_set.prompts(template)
        # The text tower loads (torch and transformers imports included) and encodes the
        # prompts in a thread while this one fetches the embeddings, which DuckDB and Arrow
        # do without the GIL: together a second of a first call's ten here.
        with ThreadPoolExecutor(1) as pool:
            text_job = pool.submit(_encode_labels, chosen, device, prompts)
            pending = named_arrow(con, "zeroshot_pending", **key)
            rows = PendingRows.of(pending)
            texts, scale, bias = text_job.result()
        probability = "softmax" if bias is None else "sigmoid"
        schema = store.dataset("zeroshot").schema
        predictions = _predictions(pending, rows, texts, scale, bias, key, schema)
        store.write_zeroshot(predictions, label_set.arrow())
        classified = rows.images
        con = connect(store)  # a fresh snapshot that sees the rows just written
    result = named_query(con, "zeroshot", **key)
    rows = Rows([d[0] for d in result.description], result.fetchall(), chosen)
    if not rows.rows:  # say why: no images, or originals only
        require_augmented_rows(con, chosen)
    if labelled:
        rows.sections.update(accuracy_sections(con, chosen, key, reference_id))
    elif reference is not None:
        raise ClipshiftError(
            f"--reference: run {chosen.run_id}'s images carry no labels to score "
            "(ingest a dataset with its labels, e.g. --labels-from folder)"
        )
    return ZeroshotResult(rows, label_set, template, classified, probability)


def check_run_labels(con, run: Run, label_set: LabelSet) -> int:
    """How many of the run's images carry a label (sql/run_labels.sql); a ClipshiftError
    naming the first label the set does not hold."""
    found = named_query(con, "run_labels", run_id=run.run_id).fetchall()
    known = set(label_set.labels)
    missing = [(label, n) for label, n in found if label not in known]
    if missing:
        label, n = missing[0]
        more = f" (and {len(missing) - 1} more labels)" if len(missing) > 1 else ""
        raise ClipshiftError(
            f"label {label!r} of {n} images is not in the label set {label_set.source}{more}: "
            "pass --labels with a set that holds the dataset's class names"
        )
    return sum(n for _, n in found)


def accuracy_sections(con, run: Run, key: dict, reference_id: str | None) -> dict[str, Rows]:
    """ "accuracy" and, where the run has severity levels, "corruption_error"."""
    sections = {"accuracy": _rows(named_query(con, "accuracy", **key, reference=reference_id), run)}
    errors = _rows(named_query(con, "corruption_error", **key, reference=reference_id), run)
    if errors.rows:
        sections["corruption_error"] = errors
    return sections


def _rows(result, run: Run) -> Rows:
    return Rows([d[0] for d in result.description], result.fetchall(), run)


def _encode_labels(
    run: Run, device: str, prompts: list[str]
) -> tuple[np.ndarray, float, float | None]:
    """The run's model's unit text embeddings of `prompts`, its logit scale and bias."""
    from .encoder import text_encoder

    encoder = text_encoder(run.as_dict(), device)  # encoder.text_encoder reads a runs dict
    return encode_prompts(encoder, prompts), encoder.logit_scale, encoder.logit_bias


@dataclass
class PendingRows:
    """The rows of sql/zeroshot_pending.sql as arrays: embeddings, each row's image number
    (0..images-1) and whether it is the image's original."""

    vectors: np.ndarray
    image_index: np.ndarray
    is_original: np.ndarray
    images: int

    @classmethod
    def of(cls, pending: pa.Table) -> PendingRows:
        # the variants view gives FLOAT[] lists (one view over every width): all one width here;
        # Arrow joins the chunks (without the GIL) and numpy views the result
        values = pa.concat_arrays([chunk.flatten() for chunk in pending["embedding"].chunks])
        vectors = values.to_numpy(zero_copy_only=False).reshape(pending.num_rows, -1)
        # images numbered by Arrow's hash-based dictionary encoding (numpy's sort of 133,120
        # strings took 0.3 s)
        ids = pending["image_id"].combine_chunks().dictionary_encode()
        image_index = ids.indices.to_numpy(zero_copy_only=False)
        is_original = pc.equal(pending["variant"], "original").combine_chunks()
        is_original = is_original.fill_null(False).to_numpy(zero_copy_only=False)
        originals = np.bincount(image_index[is_original], minlength=len(ids.dictionary))
        missing = int((originals == 0).sum())
        if missing:  # an ingest stores an image's variants with its original, in one commit
            raise ClipshiftError(f"{missing} images have variants but no original row")
        return cls(vectors, image_index, is_original, len(ids.dictionary))


def _predictions(
    pending: pa.Table,
    rows: PendingRows,
    texts: np.ndarray,
    scale: float,
    bias: float | None,
    key: dict,
    schema: pa.Schema,
) -> pa.Table:
    """The `zeroshot` rows of the pending variant rows (sql/zeroshot_pending.sql)."""
    top_labels, top_probs, of_original = classify(
        rows.vectors, rows.image_index, rows.is_original, texts, scale, bias
    )
    n, k = top_labels.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.table(
        {
            "run_id": pa.repeat(key["run_id"], n),
            "label_set": pa.repeat(key["label_set"], n),
            "template": pa.repeat(key["template"], n),
            "image_id": pending["image_id"],
            "variant": pending["variant"],
            "severity": pending["severity"].cast(pa.int32()),
            "top_labels": pa.ListArray.from_arrays(offsets, pa.array(top_labels.reshape(-1))),
            "top_probs": pa.ListArray.from_arrays(offsets, pa.array(top_probs.reshape(-1))),
            "original_top1_prob": pa.array(of_original),
        },
        schema=schema,
    )
