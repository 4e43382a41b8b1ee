"""The admin app, on its own port (loopback by default): health, readiness, reload."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

ReadinessCheck = Callable[[], Awaitable[dict[str, Any]]]
ReloadHook = Callable[[], Awaitable[tuple[bool, list[str]]]]
MetricsRender = Callable[[], tuple[bytes, str]]


def create_admin_app(
    *,
    readiness: ReadinessCheck,
    reload: ReloadHook,
    metrics: MetricsRender | None = None,
) -> Starlette:
    """``/healthz``, ``/readyz``, ``POST /-/reload`` and, when given, ``/metrics``."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        report = await readiness()
        status = 200 if report.get("ready") else 503
        return JSONResponse(report, status_code=status)

    async def do_reload(request: Request) -> Response:
        ok, errors = await reload()
        body = {"reloaded": ok, "errors": errors}
        return Response(
            json.dumps(body) + "\n",
            status_code=200 if ok else 400,
            media_type="application/json",
        )

    async def metrics_endpoint(request: Request) -> Response:
        assert metrics is not None
        body, content_type = metrics()
        return Response(body, media_type=content_type)

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/-/reload", do_reload, methods=["POST"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET", "HEAD"]))
    return Starlette(routes=routes)
