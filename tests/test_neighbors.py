"""Nearest-neighbour queries and retrieval scores against an exact numpy computation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import direct_text_embeddings

from cli import cli
from clipshift import ClipshiftError
from clipshift import index as vector_index
from clipshift import knn as kernel
from clipshift import neighbors as nb
from clipshift import retrieval as rt
from clipshift.query import connect
from clipshift.runs import resolve_run
from clipshift.store import Store

KS = [1, 2, 3]


def _embeddings(db):
    """The run's embeddings read through DuckDB: an independent path from the library's."""
    con = connect(db)
    rows = con.execute(
        "SELECT image_id, variant, embedding FROM variants ORDER BY image_id, variant"
    ).fetchall()
    originals = {i: np.asarray(e, np.float64) for i, v, e in rows if v == "original"}
    augmented = [(i, v, np.asarray(e, np.float64)) for i, v, e in rows if v != "original"]
    return originals, augmented


def _unit(x):
    return x / np.linalg.norm(x)


def _reference(db, ks):
    """recall@k, MRR and overlap@k per augmentation, by the definitions, in float64."""
    originals, augmented = _embeddings(db)
    ids = sorted(originals)
    unit = {i: _unit(originals[i]) for i in ids}

    def ranked(vector, exclude):
        sims = {j: float(_unit(vector) @ unit[j]) for j in ids if j != exclude}
        return sorted(sims, key=lambda j: -sims[j]), sims

    per = {}
    for image_id, variant, vector in augmented:
        order, _ = ranked(vector, None)
        sims = {j: float(_unit(vector) @ unit[j]) for j in ids}
        rank = 1 + sum(s > sims[image_id] for s in sims.values())
        aug_knn, _ = ranked(vector, image_id)
        orig_knn, _ = ranked(originals[image_id], image_id)
        entry = per.setdefault(variant, {"ranks": [], "jaccard": {k: [] for k in ks}})
        entry["ranks"].append(rank)
        for k in ks:
            a, b = set(aug_knn[:k]), set(orig_knn[:k])
            entry["jaccard"][k].append(len(a & b) / len(a | b))
    out = {}
    for variant, entry in per.items():
        ranks = np.array(entry["ranks"])
        row = {"n": len(ranks), "mrr": float(np.mean(1.0 / ranks))}
        row.update({f"recall_at_{k}": float(np.mean(ranks <= k)) for k in ks})
        row.update({f"overlap_at_{k}": float(np.mean(entry["jaccard"][k])) for k in ks})
        out[variant] = row
    return out


def test_exact_retrieval_matches_numpy(ingested_store):
    result = rt.retrieval(ingested_store, KS, exact=True)
    reference = _reference(ingested_store, KS)
    assert result.method == "exact"
    assert {row["augmentation"] for row in result.rows} == set(reference)
    for row in result.rows:
        expected = reference[row["augmentation"]]
        assert row["n"] == expected["n"] == 6
        for k in KS:
            assert row[f"recall_at_{k}"] == expected[f"recall_at_{k}"]
            assert row[f"overlap_at_{k}"] == pytest.approx(expected[f"overlap_at_{k}"], abs=1e-12)
        assert row["mrr"] == pytest.approx(expected["mrr"], abs=1e-12)


def test_exact_retrieval_is_the_same_in_many_blocks(ingested_store, monkeypatch):
    """Streamed 4 queries at a time (14 store blocks, each split over the kernel's workers),
    exact retrieval gives the figures of one pass, and reports its progress up to the total."""
    whole = rt.retrieval(ingested_store, KS, exact=True)
    monkeypatch.setattr(rt, "RETRIEVAL_BLOCK", 4)
    monkeypatch.setattr(kernel, "EXACT_BLOCK", 2)
    progress = []
    blocks = rt.retrieval(ingested_store, KS, exact=True, on_progress=lambda *p: progress.append(p))
    assert blocks.method == "exact" and blocks.columns == whole.columns
    for row, expected in zip(blocks.rows, whole.rows, strict=True):
        assert row["augmentation"] == expected["augmentation"] and row["n"] == expected["n"]
        for key in whole.columns[2:]:
            assert row[key] == pytest.approx(expected[key], abs=1e-12), key
    total = 6 + 9 * 6  # the originals against themselves, then every augmented query
    assert progress[-1] == (total, total) and len(progress) >= 2 + 14
    assert [done for done, _ in progress] == sorted({done for done, _ in progress})


def test_retrieval_cli_json_keys(ingested_store):
    out = CliRunner().invoke(
        cli, ["retrieval", "--db", str(ingested_store), "-k", "1,3,5", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 9
    assert list(rows[0]) == [
        "augmentation",
        "n",
        "recall_at_1",
        "recall_at_3",
        "recall_at_5",
        "mrr",
        "overlap_at_1",
        "overlap_at_3",
        "overlap_at_5",
    ]
    # six images: the five others are every original's 5-NN, augmented or not
    assert all(row["overlap_at_5"] == 1.0 for row in rows)
    assert "capped" not in out.stderr


def test_retrieval_caps_k_at_the_other_originals_and_says_so(ingested_store):
    """Six originals: at k 10 or 100 the own original is always found (recall 1 by
    construction), so k is cut to the five others, on stderr, and the columns show k 5."""
    before = rt.retrieval(ingested_store, [1, 5], exact=True)
    out = CliRunner().invoke(
        cli, ["retrieval", "--db", str(ingested_store), "-k", "1,10,100", "--format", "json"]
    )
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    notes = [line for line in out.stderr.splitlines() if "capped" in line]
    assert notes == [
        "note: -k 10,100 capped at 5: the run has 6 originals, so a query has 5 neighbours "
        "besides its own"
    ]
    rows = json.loads(out.stdout)
    assert [k for k in rows[0] if k.startswith("recall_at_")] == ["recall_at_1", "recall_at_5"]
    assert rows == before.rows  # the figures of -k 1,5, nothing else
    assert any(row["recall_at_5"] < 1 for row in rows)
    table = CliRunner().invoke(cli, ["retrieval", "--db", str(ingested_store), "-k", "100"])
    assert table.exit_code == 0 and "recall_at_5 " in table.stdout
    assert "recall_at_100" not in table.output


def test_neighbors_of_a_stored_variant_rank_own_original_exactly(ingested_store):
    originals, augmented = _embeddings(ingested_store)
    image_id, variant, vector = next(a for a in augmented if a[1] == "blur")
    distances = {j: 1 - float(_unit(vector) @ _unit(e)) for j, e in originals.items()}
    order = sorted(distances, key=distances.get)
    result = nb.neighbors(ingested_store, image_id[:10], variant="blur", k=3)
    assert [n.image_id for n in result.rows] == order[:3]
    expected = [distances[j] for j in order[:3]]
    assert [n.distance for n in result.rows] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert result.own_rank == order.index(image_id) + 1
    assert result.own_distance == pytest.approx(distances[image_id], rel=1e-4, abs=1e-7)
    assert [n.own for n in result.rows] == [j == image_id for j in order[:3]]


def test_a_run_without_images_is_a_one_line_error(ingested_store, photos, tmp_path):
    """A run whose table another run of the same width made, but which stored nothing, used
    to end in a reshape ValueError for a text or a new-file query."""
    import shutil

    from clipshift.store import Store

    db = tmp_path / "db"
    shutil.copytree(ingested_store, db)
    Store.open(db).table("variants_16").delete("true")
    new_file = tmp_path / "new.png"
    new_file.write_bytes((photos / "coffee.png").read_bytes()[:-1] + b"\0")

    def snapshot():
        return sorted((p.relative_to(db).as_posix(), p.stat().st_size) for p in db.rglob("*"))

    before = snapshot()
    for query in (["--text", "cat"], [str(new_file)], [str(photos / "coffee.png")]):
        out = CliRunner().invoke(cli, ["neighbors", *query, "--db", str(db)])
        assert out.exit_code == 1, (query, out.output)
        lines = out.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.output, (query, out.output)
        assert "holds no images yet" in lines[0], lines[0]
    assert snapshot() == before


def test_distances_are_never_negative_zero(ingested_store):
    """1 - cos of an image with itself comes out as a float error either side of 0."""
    shown = nb._distance(np.array([-3e-8, -0.0, 0.0, 0.25], np.float32))
    assert not np.signbit(shown).any() and shown.tolist() == [0.0, 0.0, 0.0, 0.25]
    for image_id in sorted(nb.Store.open(ingested_store).stored_images(_run_id(ingested_store))):
        result = nb.neighbors(ingested_store, image_id, k=6)
        distances = [n.distance for n in result.rows] + [result.own_distance]
        assert not any(np.signbit(d) for d in distances), distances
        out = CliRunner().invoke(cli, ["neighbors", image_id, "--db", str(ingested_store)])
        # a negative zero, not the exponent of a float error such as 5.96e-08
        negative_zero = re.search(r"(?<![\w.])-0(\.0*)?(?![\d.])", out.output)
        assert out.exit_code == 0 and negative_zero is None, out.output


def _run_id(db) -> str:
    return resolve_run(db).run_id


def test_neighbors_cli_by_path_and_among_all(ingested_store, photos):
    path = photos / "coffee.png"
    out = CliRunner().invoke(
        cli, ["neighbors", str(path), "--db", str(ingested_store), "-k", "1", "--exact"]
    )
    assert out.exit_code == 0, out.output
    assert "own original" in out.output and "rank 1, distance 0.0000" in out.output

    out = CliRunner().invoke(
        cli,
        ["neighbors", str(path), "--db", str(ingested_store), "-k", "20", "--among", "all"]
        + ["--format", "json"],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 20 and rows[0]["own"] and rows[0]["distance"] == pytest.approx(0, abs=1e-6)
    assert {r["variant"] for r in rows} - {"original"}


def test_new_image_is_embedded_as_an_ingest_would(ingested_store, photos, tmp_path):
    from clipshift.sources import read_source

    source = read_source(photos / "rocket.png")
    con = connect(ingested_store)
    chosen = resolve_run(ingested_store)
    stored = con.execute(
        "SELECT embedding FROM variants WHERE image_id = ? AND variant = 'perspective'",
        [source.image_id],
    ).fetchone()[0]
    embedded = nb._embed_new(chosen, source, "perspective", "cpu")
    assert np.allclose(embedded, stored, atol=1e-5)

    # a file with new content: embedded on the fly, no own original
    from PIL import Image

    new = tmp_path / "new.png"
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(new)
    result = nb.neighbors(ingested_store, str(new), variant="blur", k=2)
    assert result.own_rank is None and len(result.rows) == 2
    assert not any(n.own for n in result.rows)


def test_different_prompts_embed_differently(tiny_text_model):
    from clipshift.encoder import Encoder

    texts = ["a blurry photo", "a photo of a cat", "a blurry photo"]
    vectors = Encoder(str(tiny_text_model), device="cpu").encode_text(texts)
    assert float(_unit(vectors[0]) @ _unit(vectors[1])) < 0.99
    np.testing.assert_allclose(vectors[0], vectors[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        vectors, direct_text_embeddings(tiny_text_model, texts), rtol=1e-4, atol=1e-5
    )


def test_prompts_sharing_a_prefix_encode_as_transformers_does(tiny_text_model, monkeypatch):
    """CLIP's causal text tower computes the tokens all prompts start with once: the result
    is transformers' own, for prompts of different lengths (padded) in several batches."""
    from clipshift import encoder as encoder_module
    from clipshift.encoder import Encoder
    from clipshift.families import eos_positions, shared_prefix

    labels = ["cat", "tabby cat", "great white shark", "cat", "rocket", "a", "coffee mug"]
    texts = [f"a photo of a {label}." for label in labels]
    encoder = Encoder(str(tiny_text_model), device="cpu")
    tokens = encoder.family.tokenize(encoder._tokenizer(), texts, 77)
    ids = tokens["input_ids"]
    shared = shared_prefix(ids, tokens["attention_mask"], eos_positions(encoder.whole_model, ids))
    assert shared >= 4  # the prefix path is the one tested
    expected = direct_text_embeddings(tiny_text_model, texts)
    for batch in (256, 3):  # one batch, and batches of different shared lengths
        monkeypatch.setattr(encoder_module, "TEXT_BATCH", batch)
        vectors = encoder.encode_text(texts)
        np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[3], rtol=1e-5, atol=1e-6)
    assert encoder.encode_text([]).shape == (0, encoder.embedding_dim)


def test_text_query(tiny_text_model, photos, tmp_path):
    from clipshift.ingest import ingest

    db = tmp_path / "db"
    ingest(
        [photos],
        db,
        str(tiny_text_model),
        limit=3,
        augmentations="blur",
        keep_pixels=0,
        device="cpu",
    )

    text = "a blurry photo"
    # the query vector from transformers directly, not from the encoder under test
    vector = direct_text_embeddings(tiny_text_model, [text])[0]
    assert vector.shape == (16,)
    originals, _ = _embeddings(db)
    distances = {j: 1 - float(_unit(vector) @ _unit(e)) for j, e in originals.items()}
    out = CliRunner().invoke(
        cli, ["neighbors", "--text", text, "--db", str(db), "-k", "3", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["image_id"] for r in rows] == sorted(distances, key=distances.get)
    assert [r["distance"] for r in rows] == pytest.approx(sorted(distances.values()), abs=1e-5)
    # a different text is a different query: the ranking follows the text
    other = direct_text_embeddings(tiny_text_model, ["a photo of a rocket"])[0]
    out_other = CliRunner().invoke(
        cli,
        ["neighbors", "--text", "a photo of a rocket", "--db", str(db), "-k", "3"]
        + ["--format", "json"],
    )
    distances_other = {j: 1 - float(_unit(other) @ _unit(e)) for j, e in originals.items()}
    assert [r["distance"] for r in json.loads(out_other.stdout)] == pytest.approx(
        sorted(distances_other.values()), abs=1e-5
    )
    assert sorted(distances_other.values()) != pytest.approx(sorted(distances.values()))


def test_text_query_without_tokenizer_is_a_clear_error(ingested_store):
    out = CliRunner().invoke(cli, ["neighbors", "--text", "a cat", "--db", str(ingested_store)])
    assert out.exit_code == 1
    assert "tokenizer" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["neighbors", "ffffffff"], "neither an image_id"),
        (["neighbors"], "either QUERY"),
        (["neighbors", "-k", "0", "x"], "-k 0"),
        (["neighbors", "--run", "nope", "x"], "no run 'nope' in the store"),
        (["retrieval", "-k", "a,b"], "comma list"),
        (["retrieval", "-k", "0"], "1 or more"),
        (["index"], "at least 256"),
    ],
)
def test_user_mistakes_are_one_line_errors(ingested_store, args, message):
    out = CliRunner().invoke(cli, [*args, "--db", str(ingested_store)])
    assert out.exit_code == 1
    assert message in out.output and "Traceback" not in out.output


def test_neighbors_variant_must_be_in_the_run(ingested_store, photos):
    with pytest.raises(ClipshiftError, match="--variant sharpen"):
        nb.neighbors(ingested_store, str(photos / "coffee.png"), variant="sharpen")


def test_index_search_agrees_with_exact(tmp_path, monkeypatch):
    """On a small synthetic store forced onto the index: it is built once, used, and close."""
    from clipshift.synthetic import build_synthetic_store

    db = tmp_path / "db"
    build_synthetic_store(db, n_images=400, dim=32, grid=2, layers=1)
    monkeypatch.setattr(vector_index, "INDEX_MIN_ROWS", 1000)
    monkeypatch.setattr(rt, "RETRIEVAL_INDEX_MIN_ORIGINALS", 100)
    monkeypatch.setattr(rt, "RETRIEVAL_BLOCK", 500)  # the recall sample spans the blocks
    ann = rt.retrieval(db, [1, 10])
    exact = rt.retrieval(db, [1, 10], exact=True)
    assert ann.method == "index" and exact.method == "exact"
    assert ann.ann_recall_at_10 >= 0.9 and ann.ann_sample == 200
    # the sample streamed past is the one ann_recall loads itself
    store = Store.open(db)
    table = store.variants_table_of(ann.run_id)
    assert ann.ann_recall_at_10 == vector_index.ann_recall(store, table, ann.run_id)[0]
    assert any("searching through the vector index" in note for note in ann.notes)
    assert not any("vector index" in note for note in exact.notes)
    by_default = CliRunner().invoke(cli, ["retrieval", "--db", str(db), "-k", "1"])
    assert by_default.exit_code == 0, by_default.output
    assert "400 originals: searching through the vector index" in by_default.stderr
    assert "ANN recall@10 against exact" in by_default.stderr
    forced = CliRunner().invoke(cli, ["retrieval", "--db", str(db), "-k", "1", "--exact"])
    assert forced.exit_code == 0, forced.output
    assert "vector index" not in forced.stderr and "ANN recall" not in forced.stderr
    for a, e in zip(ann.rows, exact.rows, strict=True):
        assert a["augmentation"] == e["augmentation"]
        assert a["recall_at_1"] == pytest.approx(e["recall_at_1"], abs=0.05)
        assert a["overlap_at_10"] == pytest.approx(e["overlap_at_10"], abs=0.1)

    out = CliRunner().invoke(cli, ["index", "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "ANN recall@10 against exact" in out.output
    image_id = f"{7:064x}"
    indexed = nb.neighbors(db, image_id, variant="noise", k=5)
    flat = nb.neighbors(db, image_id, variant="noise", k=5, exact=True)
    assert indexed.used_index and not flat.used_index
    assert indexed.own_rank == flat.own_rank
    assert indexed.rows[0].image_id == flat.rows[0].image_id


def _unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _near_tied(seed=0, dim=128):
    """Queries each with a group of originals at similarities 0.6 + 3e-5 j, all within 3e-3
    of each other (far below bfloat16's resolution, far above float32's), among random
    originals at similarity ~0 +- 0.1. Groups of 30 fit the screen's candidates, groups of 90
    do not; own originals sit at the top, the middle or the bottom of their group, or, for
    every fifth query, among the random ones (a deep rank)."""
    rng = np.random.default_rng(seed)
    queries = _unit_rows(rng.normal(size=(48, dim)))
    originals, own = [_unit_rows(rng.normal(size=(600, dim)))], []
    count = 600
    for i, q in enumerate(queries.astype(np.float64)):
        size = 30 if i % 2 else 90
        similarity = 0.6 + 3e-5 * rng.permutation(size)
        side = rng.normal(size=(size, dim))
        side -= np.outer(side @ q, q)
        side /= np.linalg.norm(side, axis=1, keepdims=True)
        originals.append(
            _unit_rows(similarity[:, None] * q + np.sqrt(1 - similarity**2)[:, None] * side)
        )
        position = [np.argmax(similarity), np.argsort(similarity)[size // 2], np.argmin(similarity)]
        own.append(count + position[i % 3] if i % 5 else rng.integers(600))
        count += size
    return np.concatenate(originals), queries, np.asarray(own)


def _numpy_neighbors(originals, queries, own, depth):
    similarities = queries @ originals.T  # float32, numpy's own product
    rows = np.arange(len(queries))
    ranks = 1 + (similarities > similarities[rows, own][:, None]).sum(1)
    similarities[rows, own] = -np.inf
    return ranks, np.argsort(-similarities, axis=1, kind="stable")[:, :depth]


def test_screened_exact_neighbors_match_numpy_on_near_ties(monkeypatch):
    originals, queries, own = _near_tied()
    monkeypatch.setattr(kernel, "EXACT_BLOCK", 16)  # several blocks, spread over the workers
    monkeypatch.setattr(kernel, "native_bf16", lambda: True)  # the screen, even where emulated
    recomputed = []
    full_rows = kernel.full_rows
    monkeypatch.setattr(
        kernel, "full_rows", lambda o, q, *a: recomputed.append(len(q)) or full_rows(o, q, *a)
    )
    ranks, knn = kernel.exact_neighbors(originals, queries, own, 10)
    expected_ranks, expected_knn = _numpy_neighbors(originals, queries, own, 10)
    assert ranks.tolist() == expected_ranks.tolist()
    assert knn.tolist() == expected_knn.tolist()
    # both paths ran: the screen's candidates settled some queries, the full product others
    assert 0 < sum(recomputed) < len(queries)
    assert ranks.min() == 1 and 1 < np.median(ranks) < 90 < ranks.max()

    # without native bfloat16: the plain float32 product throughout
    monkeypatch.setattr(kernel, "native_bf16", lambda: False)
    recomputed.clear()
    ranks, knn = kernel.exact_neighbors(originals, queries, own, 10)
    assert ranks.tolist() == expected_ranks.tolist() and knn.tolist() == expected_knn.tolist()
    assert sum(recomputed) == len(queries)
    monkeypatch.setattr(kernel, "native_bf16", lambda: True)

    # one original (no neighbours) and two
    ranks, knn = kernel.exact_neighbors(originals[:1], queries, np.zeros(len(queries), int), 0)
    assert ranks.tolist() == [1] * len(queries) and knn.shape == (len(queries), 0)
    pair = originals[[0, 700]]
    own = np.arange(len(queries)) % 2
    ranks, knn = kernel.exact_neighbors(pair, queries, own, 1)
    expected_ranks, expected_knn = _numpy_neighbors(pair, queries, own, 1)
    assert ranks.tolist() == expected_ranks.tolist() and knn.tolist() == expected_knn.tolist()


def test_bf16_screen_error_bound():
    """The screen's error bound, without its margin, holds on this machine's bfloat16 kernel,
    for random and for near-parallel unit vectors (similarities close to 1)."""
    import torch

    rng = np.random.default_rng(1)
    originals = _unit_rows(rng.normal(size=(2000, 512)))
    near = originals[:500] + rng.normal(scale=0.002, size=(500, 512))
    queries = _unit_rows(np.concatenate([rng.normal(size=(500, 512)), near]))
    screen = kernel.Bf16Screen(torch.from_numpy(originals))
    approx, error = screen(torch.from_numpy(queries))
    approx = approx.float()
    exact = queries.astype(np.float64) @ originals.astype(np.float64).T
    worst = np.abs(approx.numpy() - exact) / (error(approx).numpy() / screen.MARGIN)
    assert approx.max() > 0.99 and worst.max() <= 1.0
