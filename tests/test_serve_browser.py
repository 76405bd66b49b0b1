"""`clipshift serve`'s page in a real Chromium (Playwright), over uvicorn on 127.0.0.1 and a
real store: runs -> gallery -> image -> map -> SQL, with what is on screen checked against the
API's answers, the thumbnails loaded and the console free of errors.

Chromium is Debian's package (/usr/bin/chromium; .ci/run installs it): Playwright's own browser
download cannot be reached here. With CLIPSHIFT_SERVE_SCREENSHOTS=docs/img the views are saved
there as docs/serve.md's pictures (serve-*.png).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "no Chromium at /usr/bin/chromium (apt-get install -y chromium; .ci/run does)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ingested_store):
    import uvicorn

    from clipshift.serve.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(ingested_store), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    yield page
    page.close()


def get(server: str, path: str):
    with urllib.request.urlopen(server + path) as response:
        return json.loads(response.read())


def post(server: str, path: str, body: dict):
    request = urllib.request.Request(
        server + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def open_view(page, url: str) -> None:
    page.goto(url)
    settle(page)


def settle(page) -> None:
    """Wait for the view of the page's current URL: ready, and rendered from that URL (after a
    click that changes it, the old view stays marked ready until the hashchange arrives)."""
    page.wait_for_function(
        "document.body.dataset.ready === 'true'"
        " && document.body.dataset.rendered === location.hash",
        timeout=30_000,
    )
    page.wait_for_load_state("networkidle")


def shot(page, name: str, tmp_path: Path) -> None:
    """A small PNG of the view: 900 px wide, 256 colours."""
    from PIL import Image

    raw = tmp_path / f"serve-{name}.png"
    page.screenshot(path=str(raw))
    image = Image.open(raw).convert("RGB")
    image = image.resize((900, round(image.height * 900 / image.width)), Image.LANCZOS)
    image.quantize(256).save(raw, optimize=True)
    target = os.environ.get("CLIPSHIFT_SERVE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, Path(target) / raw.name)


def close(a: str, b: float | None) -> bool:
    """A number as the page shows it (6 significant digits) against the API's."""
    if b is None:
        return a == ""
    return abs(float(a) - b) <= 1e-5 * max(1.0, abs(b))


def thumbnails_loaded(page) -> int:
    """The thumbnails shown, once every one has loaded (each is a request of its own, which
    a loaded machine may answer after the view is marked ready)."""
    page.wait_for_function(
        "(() => { const imgs = [...document.querySelectorAll('img.thumb')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); })()",
        timeout=30_000,
    )
    return page.eval_on_selector_all("img.thumb", "imgs => imgs.length")


def canvas_checksum(page, variant: str) -> int:
    """A checksum of what one variant's canvas in the image view shows."""
    return page.evaluate(
        """v => {
            const c = document.querySelector(`#variants canvas[data-variant="${v}"]`);
            const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let sum = 0;
            for (let i = 0; i < data.length; i++) sum = (sum * 31 + data[i]) % 1000000007;
            return sum;
        }""",
        variant,
    )


def test_runs_gallery_image_map_sql(server, page, tmp_path):
    runs = get(server, "/api/runs")
    run = runs[0]["run_id"]

    # runs and summary
    open_view(page, server + "/#/runs")
    shown = page.locator("#runs tbody tr td[data-column=run_id]").all_inner_texts()
    assert shown == [r["run_id"] for r in runs]
    summary = get(server, f"/api/stats?run={run}")["summary"]
    rows = page.locator("#summary tbody tr")
    assert rows.count() == len(summary)
    first = rows.nth(0).locator("td[data-column=augmentation]").inner_text()
    assert first == min(summary, key=lambda r: r["rank"])["augmentation"]
    # sorted by a column, in the URL
    page.click("#summary th[data-column=cosine_mean]")
    settle(page)
    assert "sort=cosine_mean" in page.url
    cosines = page.locator("#summary tbody td[data-column=cosine_mean]").all_inner_texts()
    assert [float(c) for c in cosines] == sorted(float(c) for c in cosines)
    shot(page, "runs", tmp_path)

    # the gallery: a summary row opens that augmentation's images, most moved first
    page.click("#summary tbody tr >> nth=0")
    settle(page)
    augmentation = page.locator("select[name=augmentation]").input_value()
    api = get(server, f"/api/images?run={run}&augmentation={augmentation}&limit=48")
    cards = page.locator("#gallery .card")
    assert cards.count() == len(api["images"]) == 6
    for i, row in enumerate(api["images"]):
        card = cards.nth(i)
        assert card.get_attribute("data-image-id") == row["image_id"]
        assert close(card.locator(".value").inner_text(), row["cosine"])
    assert thumbnails_loaded(page) == 12
    # a filter lives in the URL: reloading shows the same view
    page.fill("input[name=name]", "astro")
    page.press("input[name=name]", "Enter")
    settle(page)
    assert "name=astro" in page.url and cards.count() == 1
    page.reload()
    settle(page)
    assert cards.count() == 1
    page.go_back()
    settle(page)
    shot(page, "gallery", tmp_path)

    # one image: every variant, its metrics as the API gives them, the layer slider
    image_id = api["images"][0]["image_id"]
    cards.nth(0).click()
    settle(page)
    detail = get(server, f"/api/images/{image_id}?run={run}")
    assert page.locator("#variants .variant").count() == len(detail["variants"]) == 10
    for i, variant in enumerate(detail["variants"]):
        row = page.locator("#image-metrics tbody tr").nth(i)
        assert row.locator("td[data-column=variant]").inner_text() == variant["variant"]
        assert close(row.locator("td[data-column=cosine]").inner_text(), variant["cosine"])
    page.locator("#layer").fill("0")
    page.locator("#layer").dispatch_event("change")
    assert page.locator("#layer-value").inner_text() == "0"
    shot(page, "image", tmp_path)
    # the token-drift overlay (the layer metrics the tiny model's ingest stores): offered with
    # every per-patch drift column the API gives, and drawn over the variant
    drift = [c for c in detail["token_drift_columns"] if isinstance(detail["variants"][0][c], list)]
    assert {"token_drift", "token_drift_layers"} <= set(drift)
    options = page.locator("select[name=overlay] option").all_inner_texts()
    assert options == ["attention", *drift, "none"]
    variant = page.locator("#variants .variant.picked").get_attribute("data-variant")
    assert variant != "original"
    drawn = {}
    for overlay in ("token_drift_layers", "none"):
        page.select_option("select[name=overlay]", overlay)
        settle(page)
        assert f"overlay={overlay}" in page.url
        drawn[overlay] = canvas_checksum(page, variant)
    assert drawn["token_drift_layers"] != drawn["none"]
    page.select_option("select[name=overlay]", "attention")
    settle(page)
    # a neighbour opens its own image view
    neighbor = page.locator(".neighbors a").nth(1)
    target = neighbor.get_attribute("data-image-id")
    neighbor.click()
    settle(page)
    assert f"/image/{target}" in page.url
    assert page.locator("#variants .variant").count() == 10

    # the map: every stored row drawn
    page.click("#nav-map")
    settle(page)
    drawn = page.evaluate("window.clipshiftMap.points")
    assert drawn == len(get(server, f"/api/map?run={run}")["x"]) == 60
    shot(page, "map", tmp_path)
    # a click on a point opens its image
    x, y = page.evaluate("[window.clipshiftMap.px[0], window.clipshiftMap.py[0]]")
    box = page.locator("#map-canvas").bounding_box()
    # hovering shows the point's thumbnail
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_function(
        "(() => { const i = document.querySelector('#map-tip img');"
        " return i && i.complete && i.naturalWidth > 0; })()"
    )
    page.mouse.click(box["x"] + x, box["y"] + y)
    settle(page)
    assert "#/image/" in page.url

    # SQL: the console's table is the API's answer
    page.click("#nav-sql")
    settle(page)
    query = "SELECT variant, count(*) AS n, avg(cosine) AS mean FROM shifts GROUP BY 1 ORDER BY 1"
    page.fill("#sql-query", query)
    page.click("#sql-run")
    settle(page)
    result = post(server, "/api/sql", {"query": query})
    body = page.locator("#sql-result tbody tr")
    assert body.count() == len(result["rows"]) == 9
    for i, row in enumerate(result["rows"]):
        assert body.nth(i).locator("td[data-column=variant]").inner_text() == row["variant"]
        assert close(body.nth(i).locator("td[data-column=mean]").inner_text(), row["mean"])
    with page.expect_download() as download:
        page.click("#sql-csv")
    assert Path(download.value.path()).read_text().splitlines()[0] == "variant,n,mean"
    shot(page, "sql", tmp_path)

    assert page.console_errors == []


def test_an_unknown_run_shows_the_one_line_error(server, page):
    open_view(page, server + "/#/gallery?run=nosuchrun")
    message = page.locator("#error").inner_text()
    with pytest.raises(urllib.error.HTTPError) as failed:
        get(server, "/api/images?run=nosuchrun")
    assert failed.value.code == 404
    assert message == json.loads(failed.value.read())["error"]
    # a refused write says why, on the page
    open_view(page, server + "/#/sql?q=DROP%20VIEW%20shifts")
    assert "refused" in page.locator("#error").inner_text()
