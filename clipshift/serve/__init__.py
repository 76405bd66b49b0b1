"""`clipshift serve`: a local, read-only web app over the store (docs/serve.md).

app.py holds the routes, api.py the data functions they call, static/ the front end (plain
HTML, CSS and JavaScript drawing on canvases: no network, no build step).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .. import ClipshiftError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Served:
    """Where the app listens: the URL to open (with the token where one is needed)."""

    url: str
    host: str
    port: int
    token: str | None
    run: str | None  # the full run_id the page opens on (None: the latest)


def plan(
    db: str | os.PathLike,
    run: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
) -> Served:
    """Check the store and the run, and decide the URL: a token is generated (or `token` taken)
    whenever `host` is not a loopback address, as Jupyter does; none on 127.0.0.1."""
    from ..runs import resolve_run
    from ..store import Store
    from .app import is_loopback, new_token

    if not 0 <= port <= 65535:
        raise ClipshiftError(f"--port {port}: give 0 to 65535")
    store = Store.open(db)
    if run is not None:
        run = resolve_run(store, run).run_id
    if token is None and not is_loopback(host):
        token = new_token()
    return Served(_url(host, port, token, run), host, port, token, run)


def _url(host: str, port: int, token: str | None, run: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={token}" if token else ""
    fragment = f"#/gallery?run={run}" if run else "#/runs"
    return f"http://{shown}:{port}/{query}{fragment}"


def serve(
    db: str | os.PathLike,
    run: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    ready: Callable[[Served], None] | None = None,
    report: str | os.PathLike | None = None,
) -> None:
    """Serve the app on host:port until interrupted; `ready` is told the URL once it listens.
    `report`: a `clipshift report` folder whose figures the runs view shows."""
    import asyncio

    import uvicorn

    from .app import create_app

    served = plan(db, run, host, port, token)
    # the app warms up as it starts (api.warm), before `ready` prints the URL
    app = create_app(db, run=served.run, token=served.token, report=report)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and ready is not None:
            # --port 0: the port the system gave
            port = server.servers[0].sockets[0].getsockname()[1]
            url = _url(host, port, served.token, served.run)
            ready(Served(url, host, port, served.token, served.run))
        await task

    asyncio.run(main())
    if not server.started:
        raise ClipshiftError(f"cannot listen on {host}:{port}: is it in use? try another --port")
