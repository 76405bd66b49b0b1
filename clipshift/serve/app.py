"""`clipshift serve`'s routes: the JSON API (clipshift.serve.api) and the static front end.

Read-only: every route is a GET but POST /api/sql, whose query passes the `sql` command's
read-only guards. A failure reaches the browser as one line of JSON, never a stack trace:
an unknown run, image or variant is a 404, a bad parameter or query a 400, anything else a
500 whose detail stays in the server's log.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import ClipshiftError
from . import api

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "clipshift_token"
log = logging.getLogger("clipshift.serve")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine (no token needed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_hex(24)


def create_app(
    db: str | os.PathLike,
    run: str | None = None,
    token: str | None = None,
    report: str | os.PathLike | None = None,
    warm: bool = True,
):
    """The ASGI app over the store at `db`. `run` is the run the page opens on (default: the
    latest); with `token`, every request must carry it (?token=, a Bearer header, or the
    cookie the first page load with ?token= sets), else 401. `report` is a `clipshift
    report` folder whose figures the runs view shows (where it exists). With `warm`, the app
    computes what the run's first views need (`api.warm`) as it starts, before the server
    listens, so the first page is as quick as the next."""
    db = str(db)
    kept = api.Kept()

    @asynccontextmanager
    async def lifespan(app):
        if warm:
            started = time.perf_counter()
            try:
                await run_in_threadpool(api.warm, db, run, kept)
            except ClipshiftError as exc:  # e.g. a run with no images yet: its requests say so
                log.info("nothing to warm up: %s", exc)
            except Exception:  # noqa: BLE001 - the requests will say what is wrong, one line each
                log.warning("warming up failed: the first requests compute instead", exc_info=True)
            log.info("warmed up in %.1f s", time.perf_counter() - started)
        yield

    def query_run(request: Request) -> str | None:
        return request.query_params.get("run") or None

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "default_run": run,
                "metrics": list(api.METRICS),
                "projection_methods": api.projection_methods(),
                "page_size": api.PAGE_SIZE,
                "sql_max_rows": api.SQL_MAX_ROWS,
                "report_figures": api.report_figures(report),
            }
        )

    async def runs(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(api.runs, db, kept.runs))

    async def stats(request: Request) -> Response:
        answer = await run_in_threadpool(api.stats, db, query_run(request), kept.summaries)
        return JSONResponse(answer)

    async def images(request: Request) -> Response:
        q = request.query_params
        query = api.GalleryQuery(
            augmentation=q.get("augmentation") or None,
            severity=_number(q, "severity", int),
            metric=q.get("metric") or "cosine",
            order=q.get("order") or None,
            offset=_number(q, "offset", int) or 0,
            limit=_number(q, "limit", int) or api.PAGE_SIZE,
            low=_number(q, "min", float),
            high=_number(q, "max", float),
            name=q.get("name") or None,
            flipped=_flag(q, "flip"),
            label=q.get("label") or None,
        )
        answer = await run_in_threadpool(api.images, db, query_run(request), query, kept.snapshots)
        return JSONResponse(answer)

    async def image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        answer = await run_in_threadpool(
            api.image, db, query_run(request), image_id, kept.snapshots
        )
        return JSONResponse(answer)

    async def pixels(request: Request) -> Response:
        p = request.path_params
        data = await run_in_threadpool(api.pixels, db, p["run"], p["image_id"], p["variant"])
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def projection(request: Request) -> Response:
        method = request.query_params.get("method") or "pca"
        data = await run_in_threadpool(kept.projections.get, db, query_run(request), method)
        return Response(data, media_type="application/json")

    async def sql(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise ClipshiftError('give a JSON body: {"query": "SELECT ..."}') from None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise ClipshiftError('give a JSON body: {"query": "SELECT ..."}')
        result = await run_in_threadpool(api.sql, db, body["query"])
        if body.get("format") == "csv":
            return Response(
                api.sql_csv(result),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="clipshift-sql.csv"'},
            )
        return JSONResponse(api.sql_json(result))

    async def figure(request: Request) -> Response:
        return FileResponse(api.report_figure(report, request.path_params["name"]))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such page: {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not served: the server only reads")

    routes = [
        Route("/", index),
        Route("/api/config", config),
        Route("/api/runs", runs),
        Route("/api/stats", stats),
        Route("/api/images", images),
        Route("/api/images/{image_id}", image),
        Route("/api/pixels/{run}/{image_id}/{variant}.png", pixels),
        Route("/api/map", projection),
        Route("/api/sql", sql, methods=["POST"]),
        Route("/api/report/{name}", figure),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: method_not_allowed},
        lifespan=lifespan,
    )
    # outermost: every failure, the token check's included, becomes one line of JSON
    app.add_middleware(_Guard, token=token)
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _number(params, name: str, kind):
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise ClipshiftError(f"{name}={value!r}: give a number") from None


def _flag(params, name: str) -> bool | None:
    value = (params.get(name) or "").lower()
    if value in ("", "any"):
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ClipshiftError(f"{name}={value!r}: true, false or any")


class _Guard:
    """The token check, and the one-line JSON error for every failure (pure ASGI, so an
    exception of a route reaches it before Starlette's own 500 page)."""

    def __init__(self, app, token: str | None = None):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.token and not self._authorised(request):
            return await _error(
                401, "a token is needed: open the URL `clipshift serve` printed (?token=...)"
            )(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # noqa: BLE001 - logged here; the browser gets one line
            if started:  # part of the answer is sent: the server can only drop the connection
                raise
            if isinstance(exc, api.NotFound):
                response = _error(404, str(exc))
            elif isinstance(exc, ClipshiftError):
                response = _error(400, str(exc))
            else:
                log.exception("serving %s", scope.get("path"))
                response = _error(500, f"internal error ({type(exc).__name__}): see the server log")
            await response(scope, receive, send)

    def _authorised(self, request: Request) -> bool:
        given = (
            request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE)
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())
