"""`clipshift serve` on the paper-size synthetic store (13,312 images x 10 variants).

Builds (or reuses, with --db) the store, starts uvicorn on 127.0.0.1 on a free port (the time
it takes is printed: the app warms up, computing the run's summary and gallery rows, before it
listens, as `clipshift serve` does before it prints its URL), and times, each against its
target:
- the first page until ready: the page, its script and the runs view's API calls, in Chromium
  (< 1 s), and again on a reload;
- a gallery page of 100 images, server time of GET /api/images (< 300 ms);
- the image view, server time of GET /api/images/{id} (< 200 ms);
- the projection of every point, GET /api/map, first time (< 10 s) and cached (< 0.5 s);
- drawing the map in Chromium, from the fetched JSON to the last point (< 3 s).
Server times are the best of --repeat calls after a first (the first is printed too).
Chromium is Debian's (/usr/bin/chromium); without it or playwright the browser figures are
left out.

    python benchmarks/serve.py [--db DIR] [--images N] [--repeat N]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipshift.store import Store  # noqa: E402
from clipshift.synthetic import PAPER_IMAGES, build_synthetic_store  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db: Path):
    import uvicorn

    from clipshift.serve.app import create_app

    port = free_port()
    started = time.perf_counter()
    server = uvicorn.Server(
        uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    print(f"{'server start (warming up; no target)':<44} {time.perf_counter() - started:8.1f} s")
    return server, thread, f"http://127.0.0.1:{port}"


def timed(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    return time.perf_counter() - started, body


def best(url: str, repeat: int) -> tuple[float, float]:
    """The first call's seconds and the best of the next `repeat`."""
    first, _ = timed(url)
    return first, min(timed(url)[0] for _ in range(repeat))


def line(what: str, seconds: float, target: float, first: float | None = None) -> None:
    verdict = "ok" if seconds < target else "OVER"
    extra = f" (first {first * 1000:.0f} ms)" if first is not None else ""
    print(f"{what:<44} {seconds * 1000:8.0f} ms  target < {target * 1000:.0f} ms  {verdict}{extra}")


def browser_figures(base: str, run_id: str) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("(no playwright: the browser figures are left out)")
        return
    if not CHROMIUM.exists():
        print("(no /usr/bin/chromium: the browser figures are left out)")
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        started = time.perf_counter()
        page.goto(f"{base}/#/runs?run={run_id}")
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        line("first page until ready (runs view)", time.perf_counter() - started, 1.0)
        started = time.perf_counter()
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        line("the page again (reloaded)", time.perf_counter() - started, 1.0)
        browser.close()


def browser_map(base: str, run_id: str) -> None:
    """Drawing the map in Chromium: its projection is cached by now (timed before)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not CHROMIUM.exists():
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{base}/#/map?run={run_id}")
        page.wait_for_function("window.clipshiftMap !== undefined", timeout=600_000)
        drawn = page.evaluate("window.clipshiftMap")
        line(f"drawing the map ({drawn['points']:,} points)", drawn["drawMs"] / 1000, 3.0)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=None, help="reuse (or build) this store")
    parser.add_argument("--images", type=int, default=PAPER_IMAGES)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scratch = None
    db = args.db
    if db is None:
        scratch = tempfile.TemporaryDirectory()
        db = Path(scratch.name) / "db"
    if not (db.exists() and Store.open(db).has_table("runs")):
        started = time.perf_counter()
        build_synthetic_store(db, n_images=args.images)
        print(
            f"built the synthetic store ({args.images:,} images) in "
            f"{time.perf_counter() - started:.0f} s"
        )
    server, thread, base = start(db)
    try:
        import json

        run_id = json.loads(timed(f"{base}/api/runs")[1])[0]["run_id"]
        q = f"run={run_id}"
        # the page first: the first request of all after the server starts
        browser_figures(base, run_id)
        first, seconds = best(f"{base}/api/runs", args.repeat)
        line("runs (server)", seconds, 1.0, first)
        first, seconds = best(f"{base}/api/images?{q}&augmentation=noise&limit=100", args.repeat)
        line("gallery page of 100 images (server)", seconds, 0.3, first)
        page = json.loads(timed(f"{base}/api/images?{q}&limit=1")[1])
        image_id = page["images"][0]["image_id"]
        first, seconds = best(f"{base}/api/images/{image_id}?{q}", args.repeat)
        line("image view (server)", seconds, 0.2, first)
        projected, body = timed(f"{base}/api/map?{q}")
        points = len(json.loads(body)["x"])
        line(f"projection of {points:,} points, first time", projected, 10.0)
        cached = min(timed(f"{base}/api/map?{q}")[0] for _ in range(args.repeat))
        line("projection, cached", cached, 0.5)
        browser_map(base, run_id)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if scratch is not None:
            scratch.cleanup()


if __name__ == "__main__":
    main()
