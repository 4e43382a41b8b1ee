"""A small demo upstream for the quick start and the compose stack.

``python -m gateway.demo --port 8001`` serves:
  GET  /v1/users/<id>     a user as JSON
  ANY  /v1/echo...        what it received, as JSON
  GET  /v1/flaky          503 with an internal stack trace (the gateway rewrites it)
  GET  /v1/slow?seconds=  answers late
  GET  /healthz           200
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

INTERNAL_TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/db.py", line 88, in connect\n'
    "psycopg.OperationalError: connection to users-db.internal:5432 refused\n"
)


async def user(request: Request) -> Response:
    uid = request.path_params["uid"]
    return JSONResponse({"id": uid, "name": f"user {uid}", "served_by": "demo-upstream"})


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body_bytes": len(body),
        }
    )


async def flaky(request: Request) -> Response:
    return PlainTextResponse(INTERNAL_TRACE, status_code=503, headers={"Retry-After": "7"})


async def slow(request: Request) -> Response:
    await asyncio.sleep(min(float(request.query_params.get("seconds", "2")), 60.0))
    return PlainTextResponse("finally\n")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


app = Starlette(
    routes=[
        Route("/v1/users/{uid}", user),
        Route("/v1/echo", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/v1/echo/{rest:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/v1/flaky", flaky),
        Route("/v1/slow", slow),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description="demo upstream for the gateway quick start")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
