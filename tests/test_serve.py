"""`clipshift serve`'s JSON API through the ASGI test client, on a real store ingested with the
tiny model: the numbers against `stats` and `sql`, the 404, 401 and read-only cases."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("httpx", reason="the ASGI test client needs httpx (the test extra)")

from starlette.testclient import TestClient  # noqa: E402

from cli import cli  # noqa: E402
from clipshift.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(ingested_store):
    with TestClient(create_app(ingested_store), raise_server_exceptions=False) as c:
        yield c


def command_json(db, *args) -> list[dict]:
    result = CliRunner().invoke(cli, [*args, "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_runs_lists_every_run_with_its_counts(client, ingested_store):
    runs = client.get("/api/runs").json()
    stored = command_json(
        ingested_store,
        "sql",
        "SELECT run_id, model, count(*) FILTER (WHERE variant = 'original') AS images, "
        "count(*) AS variants FROM variants JOIN runs USING (run_id) GROUP BY ALL",
    )
    assert [(r["run_id"], r["model"], r["images"], r["variants"]) for r in runs] == [
        (s["run_id"], s["model"], s["images"], s["variants"]) for s in stored
    ]
    assert runs[0]["suite"] == "paper" and runs[0]["precision"] == "fp32"
    assert len(runs[0]["perturbations"]) == 9


def test_stats_are_the_stats_commands(client, ingested_store):
    answer = client.get("/api/stats").json()
    assert answer["summary"] == command_json(ingested_store, "stats")
    assert answer["run"]["run_id"] == client.get("/api/runs").json()[0]["run_id"]


def test_gallery_ranks_by_the_metric_as_sql_does(client, ingested_store):
    page = client.get(
        "/api/images", params={"augmentation": "blur", "metric": "cosine", "limit": 4}
    ).json()
    expected = command_json(
        ingested_store,
        "sql",
        "SELECT image_id, cosine, l2 FROM shifts WHERE augmentation = 'blur' "
        "ORDER BY cosine, image_id",
    )
    assert page["total"] == len(expected) == 6
    assert page["order"] == "asc"  # most-moved first: the lowest cosine
    assert [(r["image_id"], r["cosine"], r["l2"]) for r in page["images"]] == [
        (e["image_id"], e["cosine"], e["l2"]) for e in expected[:4]
    ]
    assert all(r["original_pixels"] and r["variant_pixels"] for r in page["images"])
    # l2: the most moved is the largest; the next page follows on
    rest = client.get(
        "/api/images",
        params={"augmentation": "blur", "metric": "l2", "offset": 4, "limit": 4},
    ).json()
    by_l2 = sorted(expected, key=lambda e: (-e["l2"], e["image_id"]))
    assert [r["image_id"] for r in rest["images"]] == [e["image_id"] for e in by_l2[4:]]


def test_gallery_filters(client):
    everything = client.get("/api/images", params={"limit": 500}).json()
    assert everything["total"] == 6 * 9
    assert {a["augmentation"] for a in everything["augmentations"]} >= {"blur", "noise"}
    name = client.get("/api/images", params={"name": "ASTRO", "limit": 500}).json()
    assert name["total"] == 9
    assert all("astronaut" in r["path"] for r in name["images"])
    low = everything["images"][10]["cosine"]
    ranged = client.get("/api/images", params={"min": low, "limit": 500}).json()
    assert ranged["total"] == sum(r["cosine"] >= low for r in everything["images"])
    # no zero-shot stored: a flip filter keeps nothing, any keeps all
    assert client.get("/api/images", params={"flip": "true"}).json()["total"] == 0
    assert client.get("/api/images", params={"flip": "any"}).json()["total"] == 54


def test_image_has_every_variant_with_the_sql_metrics(client, ingested_store):
    image_id = client.get("/api/images", params={"limit": 1}).json()["images"][0]["image_id"]
    answer = client.get(f"/api/images/{image_id}").json()
    expected = command_json(
        ingested_store,
        "sql",
        f"SELECT variant, cosine, attention_similarity, patch_similarity FROM shifts "
        f"WHERE image_id = '{image_id}' ORDER BY variant",
    )
    variants = {v["variant"]: v for v in answer["variants"]}
    assert answer["variants"][0]["variant"] == "original"
    assert len(variants) == 10
    for e in expected:
        got = variants[e["variant"]]
        assert (got["cosine"], got["attention_similarity"], got["patch_similarity"]) == (
            e["cosine"],
            e["attention_similarity"],
            e["patch_similarity"],
        )
    grid, layers = answer["patch_grid"], answer["num_layers"]
    assert len(variants["blur"]["attention_layers"]) == layers * grid * grid
    # the nearest stored original to an original is itself
    nearest = variants["original"]["neighbors"][0]
    assert nearest["image_id"] == image_id and nearest["distance"] == pytest.approx(0, abs=1e-6)
    assert all(len(v["neighbors"]) == 5 for v in answer["variants"])


def test_pixels_are_the_stored_png(client):
    run = client.get("/api/runs").json()[0]["run_id"]
    image_id = client.get("/api/images", params={"limit": 1}).json()["images"][0]["image_id"]
    response = client.get(f"/api/pixels/{run}/{image_id}/blur.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (224, 224)


def test_map_projects_every_row_and_caches_it(client):
    first = client.get("/api/map").json()
    assert len(first["x"]) == len(first["y"]) == len(first["image"]) == 60
    assert first["variants"][0] == "original" and len(first["images"]) == 6
    assert first["pixels"] == [1] * 60  # the store kept every image's pixels
    again = client.get("/api/map").content
    assert json.loads(again) == first  # the cached bytes


def test_sql_matches_the_sql_command_and_caps_rows(client, ingested_store):
    query = "SELECT image_id, variant, cosine FROM shifts ORDER BY image_id, variant"
    answer = client.post("/api/sql", json={"query": query}).json()
    assert answer["rows"] == command_json(ingested_store, "sql", query)
    assert answer["total_rows"] == 54 and not answer["truncated"]
    csv = client.post("/api/sql", json={"query": query, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "image_id,variant,cosine"
    assert len(csv.text.splitlines()) == 55


@pytest.mark.parametrize(
    "path",
    [
        "/api/stats?run=nosuchrun",
        "/api/images?run=nosuchrun",
        "/api/images/deadbeef",
        "/api/pixels/nosuchrun/x/original.png",
        "/api/map?run=nosuchrun",
        "/api/nothing",
    ],
)
def test_unknown_things_are_a_one_line_404(client, path):
    one_line_error(client.get(path), 404)


def test_unknown_variant_and_missing_pixels_are_404(client):
    run = client.get("/api/runs").json()[0]["run_id"]
    image_id = client.get("/api/images", params={"limit": 1}).json()["images"][0]["image_id"]
    assert "no variant" in one_line_error(
        client.get(f"/api/pixels/{run}/{image_id}/nosuch.png"), 404
    )
    # a path in the request is never read: it names no (run, image, variant)
    one_line_error(client.get(f"/api/pixels/{run}/..%2F..%2Fetc/passwd.png"), 404)


def test_bad_parameters_are_a_one_line_400(client):
    assert "metric" in one_line_error(client.get("/api/images?metric=nope"), 400)
    assert "number" in one_line_error(client.get("/api/images?offset=x"), 400)


@pytest.mark.parametrize(
    "query",
    [
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW shifts",
        "COPY runs TO '/tmp/x.csv'",
        "INSERT INTO runs SELECT * FROM runs",
        "SET threads = 1",
    ],
)
def test_sql_refuses_writes(client, ingested_store, query):
    before = command_json(ingested_store, "sql", "SELECT count(*) AS n FROM variants")
    one_line_error(client.post("/api/sql", json={"query": query}), 400)
    assert command_json(ingested_store, "sql", "SELECT count(*) AS n FROM variants") == before


def test_sql_time_limit_stops_a_long_query(ingested_store):
    from clipshift import ClipshiftError
    from clipshift.serve import api

    with pytest.raises(ClipshiftError, match="ran past"):
        api.sql(
            ingested_store,
            "SELECT count(*) FROM range(10000000000) AS a(x) WHERE x % 7 = 3",
            time_limit=0.2,
        )


def test_nothing_writes(client):
    for method in ("put", "delete", "patch"):
        one_line_error(getattr(client, method)("/api/sql"), 405)
    one_line_error(client.post("/api/runs"), 405)
    one_line_error(client.post("/api/sql", content=b"not json"), 400)


def test_a_token_is_required_when_one_is_set(ingested_store):
    app = create_app(ingested_store, token="s3cret")
    with TestClient(app, raise_server_exceptions=False) as c:
        assert "token" in one_line_error(c.get("/api/runs"), 401)
        one_line_error(c.get("/api/runs", headers={"Authorization": "Bearer wrong"}), 401)
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # the page opened with ?token= sets the cookie the page's own requests then carry
        assert c.get("/?token=s3cret").status_code == 200
        assert c.get("/api/runs").status_code == 200


def test_serve_plans_a_token_off_loopback(ingested_store):
    from clipshift.serve import plan

    assert plan(ingested_store).token is None
    assert plan(ingested_store).url == "http://127.0.0.1:8765/#/runs"
    away = plan(ingested_store, host="0.0.0.0")
    assert away.token and f"?token={away.token}" in away.url
    assert plan(ingested_store, host="0.0.0.0", token="mine").token == "mine"


def test_serve_command_bad_input_is_one_line(ingested_store, tmp_path):
    for args in (
        ["--db", str(ingested_store), "--run", "nosuchrun"],
        ["--db", str(tmp_path / "none")],
        ["--db", str(ingested_store), "--port", "70000"],
    ):
        result = CliRunner().invoke(cli, ["serve", *args])
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text or "app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_a_running_ingest_shows_on_reload(tmp_path, tiny_model):
    """Each request reads the store's latest version: images ingested while the app runs are
    in the next answer, and the map's cached projection is recomputed."""
    from conftest import write_photos

    from clipshift.ingest import ingest

    first, second = tmp_path / "first", tmp_path / "second"
    write_photos(first, ("astronaut", "coffee"))
    write_photos(second, ("camera",))
    db = tmp_path / "db"
    options = {"augmentations": "blur,noise", "keep_pixels": 0, "device": "cpu"}
    ingest([first], db, str(tiny_model), **options)
    with TestClient(create_app(db), raise_server_exceptions=False) as c:
        assert c.get("/api/runs").json()[0]["images"] == 2
        assert {r["n"] for r in c.get("/api/stats").json()["summary"]} == {2}
        assert c.get("/api/map").json()["pixels"] == [0] * 6
        page = c.get("/api/images").json()
        assert page["total"] == 4
        # no stored pixels: the page shows the file name instead
        assert not any(r["original_pixels"] or r["variant_pixels"] for r in page["images"])
        ingest([second], db, str(tiny_model), **options)
        assert c.get("/api/runs").json()[0]["images"] == 3
        # the kept summary was of the store's earlier version
        assert {r["n"] for r in c.get("/api/stats").json()["summary"]} == {3}
        assert c.get("/api/images").json()["total"] == 6
        assert len(c.get("/api/map").json()["x"]) == 9


def test_serve_command_listens_and_asks_for_a_token_off_loopback(ingested_store):
    """The real command in a subprocess: it prints its URL, serves, and off 127.0.0.1 refuses
    a request without the printed token."""
    import os
    import re
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, str(root / "cli.py"), "serve", "--db", str(ingested_store)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(
        [*command, "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stderr.readline()
        found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=(\w+)#/runs", line)
        assert found, line
        base = f"http://127.0.0.1:{found.group(1)}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/api/runs")
        assert refused.value.code == 401
        assert "token" in json.loads(refused.value.read())["error"]
        with urllib.request.urlopen(f"{base}/api/runs?token={found.group(2)}") as answer:
            assert json.loads(answer.read())[0]["images"] == 6
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_levelled_perturbations_filter_by_severity(tmp_path, tiny_model):
    from conftest import write_photos

    from clipshift.ingest import ingest

    write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    db = tmp_path / "db"
    spec = "brightness@1,brightness@3,blur"
    ingest([tmp_path / "photos"], db, str(tiny_model), augmentations=spec, device="cpu")
    with TestClient(create_app(db), raise_server_exceptions=False) as c:
        run = c.get("/api/runs").json()[0]
        assert sorted(run["perturbations"]) == ["blur", "brightness@1", "brightness@3"]
        assert run["suite"] == "custom"
        stats = c.get("/api/stats").json()
        assert stats["severity"] == command_json(db, "stats", "--part", "severity")
        both = c.get("/api/images", params={"augmentation": "brightness"}).json()
        assert both["total"] == 4 and {r["severity"] for r in both["images"]} == {1, 3}
        one = c.get("/api/images", params={"augmentation": "brightness", "severity": 3}).json()
        assert one["total"] == 2
        assert {r["variant"] for r in one["images"]} == {"brightness@3"}
        detail = c.get(f"/api/images/{one['images'][0]['image_id']}").json()
        assert [v["variant"] for v in detail["variants"]] == [
            "original",
            "blur",
            "brightness@1",
            "brightness@3",
        ]


def test_zero_shot_flip_label_and_top5(tmp_path, tiny_text_model):
    """Where `clipshift zeroshot` stored predictions (here while the server runs): the
    gallery's flip and label filters and the image view's top-5, against the stored rows read
    with `sql`."""
    from conftest import write_photos

    from clipshift.ingest import ingest
    from clipshift.zeroshot import zeroshot

    write_photos(tmp_path / "photos", ("astronaut", "coffee", "chelsea", "rocket"))
    db = tmp_path / "db"
    ingest(
        [tmp_path / "photos"],
        db,
        str(tiny_text_model),
        augmentations="blur,noise,horizontal_flip",
        keep_pixels=0,
        device="cpu",
    )
    with TestClient(create_app(db), raise_server_exceptions=False) as c:
        # the server started before the predictions: they show on the next request (the
        # snapshot it keeps is of the zero-shot tables' version too)
        before = c.get("/api/images", params={"flip": "true"}).json()
        assert before["total"] == 0 and before["labels"] == []
        labels = tmp_path / "labels.txt"
        labels.write_text("cat\nrocket\ncoffee cup\nastronaut\ncamera\nlogo\ntree\n")
        zeroshot(db, labels=str(labels), device="cpu")
        flips = command_json(
            db,
            "sql",
            "SELECT z.image_id, z.variant FROM zeroshot AS z JOIN zeroshot AS o "
            "USING (run_id, label_set, template, image_id) "
            "WHERE o.variant = 'original' AND z.variant <> 'original' "
            "AND z.top_labels[1] <> o.top_labels[1] ORDER BY 1, 2",
        )
        tops = command_json(
            db,
            "sql",
            "SELECT z.image_id, z.variant, z.top_labels, z.top_probs, l.label AS top1 "
            "FROM zeroshot AS z JOIN zeroshot_labels AS l "
            "ON l.label_set = z.label_set AND l.label_index = z.top_labels[1]",
        )
        flipped = c.get("/api/images", params={"flip": "true", "limit": 500}).json()
        assert sorted((r["image_id"], r["variant"]) for r in flipped["images"]) == [
            (f["image_id"], f["variant"]) for f in flips
        ]
        assert all(r["flipped"] and r["label"] != r["variant_label"] for r in flipped["images"])
        kept = c.get("/api/images", params={"flip": "false", "limit": 500}).json()
        assert flipped["total"] + kept["total"] == 4 * 3
        originals = {t["image_id"]: t["top1"] for t in tops if t["variant"] == "original"}
        assert flipped["labels"] == sorted(set(originals.values()))
        label = flipped["labels"][0]
        by_label = c.get("/api/images", params={"label": label, "limit": 500}).json()
        wanted = sum(v == label for v in originals.values())
        assert by_label["total"] == 3 * wanted
        image_id = next(iter(originals))
        detail = c.get(f"/api/images/{image_id}").json()
        for variant in detail["variants"]:
            stored = next(
                t for t in tops if t["image_id"] == image_id and t["variant"] == variant["variant"]
            )
            top5 = variant["zeroshot_top5"]
            assert [t["label_index"] for t in top5] == stored["top_labels"]
            assert top5[0]["label"] == stored["top1"]
            assert [t["probability"] for t in top5] == pytest.approx(stored["top_probs"])


def test_report_figures_are_served_by_name_only(ingested_store, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    Image.new("RGB", (8, 8)).save(report / "radar.png")
    (report / "index.html").write_text("<html></html>")
    (tmp_path / "secret.png").write_bytes(b"not yours")
    with TestClient(create_app(ingested_store, report=report)) as c:
        assert c.get("/api/config").json()["report_figures"] == ["radar.png"]
        figure = c.get("/api/report/radar.png")
        assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
        one_line_error(c.get("/api/report/index.html"), 404)
        one_line_error(c.get("/api/report/..%2Fsecret.png"), 404)
    with TestClient(create_app(ingested_store, report=tmp_path / "none")) as c:
        assert c.get("/api/config").json()["report_figures"] == []


def test_an_internal_failure_is_one_line_without_its_trace(ingested_store, monkeypatch):
    from clipshift.serve import api

    def broken(db, memo=None):
        raise RuntimeError("private detail\nTraceback (most recent call last)")

    monkeypatch.setattr(api, "runs", broken)
    with TestClient(create_app(ingested_store), raise_server_exceptions=False) as c:
        message = one_line_error(c.get("/api/runs"), 500)
    assert message == "internal error (RuntimeError): see the server log"


def test_image_neighbours_are_the_neighbors_commands(tmp_path):
    """The image view's neighbours: found exactly in memory while the run's table has no vector
    index, by LanceDB through the index once one is built; either way those `neighbors` finds
    (with --exact, and through the index)."""
    from clipshift import neighbors as nb
    from clipshift.index import build_index, has_vector_index
    from clipshift.store import Store
    from clipshift.synthetic import build_synthetic_store

    db = tmp_path / "db"
    build_synthetic_store(db, n_images=300, dim=32, grid=2, layers=1)
    image_id = f"{7:064x}"
    variants = ("original", "noise", "blur")

    def command(exact: bool) -> dict:
        return {
            v: [
                (r.image_id, r.distance)
                for r in nb.neighbors(db, image_id, variant=v, exact=exact).rows[:5]
            ]
            for v in variants
        }

    def shown(answer: dict) -> dict:
        return {
            v["variant"]: [(n["image_id"], n["distance"]) for n in v["neighbors"]]
            for v in answer["variants"]
            if v["variant"] in variants
        }

    def same(found: dict, expected: dict) -> None:
        for variant, rows in expected.items():
            assert [i for i, _ in found[variant]] == [i for i, _ in rows]
            assert [d for _, d in found[variant]] == pytest.approx([d for _, d in rows], abs=1e-6)

    with TestClient(create_app(db), raise_server_exceptions=False) as c:
        same(shown(c.get(f"/api/images/{image_id}").json()), command(exact=True))
        build_index(db, measure=False)
        assert has_vector_index(Store.open(db), "variants_32")
        same(shown(c.get(f"/api/images/{image_id}").json()), command(exact=False))


def test_a_store_without_runs_starts_and_says_so(tmp_path):
    """The warm-up finds nothing to compute: the server starts, and each view's request says
    why in one line."""
    from clipshift.store import Store

    Store.open(tmp_path / "db", create=True)
    with TestClient(create_app(tmp_path / "db"), raise_server_exceptions=False) as c:
        assert c.get("/api/runs").json() == []
        assert "no runs yet" in one_line_error(c.get("/api/images"), 404)
        assert "no runs yet" in one_line_error(c.get("/api/stats"), 404)
