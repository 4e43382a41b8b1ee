"""The naive reference point: a straightforward Starlette + httpx streaming proxy.

A catch-all Starlette route, one ``httpx.AsyncClient`` with its default transport,
``StreamingResponse`` over ``aiter_raw()``, served by uvicorn with its defaults.

Usage: ``python -m benchmarks.naive_proxy --port 8002 --upstream http://127.0.0.1:8000``
"""

import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from benchmarks.proxy_common import end_to_end, parse_proxy_args

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(upstream: str) -> Starlette:
    """Build the proxy application forwarding to ``upstream`` (``http://host:port``)."""
    base = upstream.rstrip("/")
    clients: list[httpx.AsyncClient] = []

    async def proxy(request: Request) -> StreamingResponse:
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        query: bytes = request.scope.get("query_string", b"")
        target = base + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        outgoing = clients[0].build_request(
            request.method,
            target,
            headers=end_to_end(request.headers.items(), drop=("host",)),
            content=request.stream() if has_body else None,
        )
        incoming = await clients[0].send(outgoing, stream=True)
        response = StreamingResponse(
            incoming.aiter_raw(),
            status_code=incoming.status_code,
            background=BackgroundTask(incoming.aclose),
        )
        # Raw pairs rather than a dict, so repeated headers (Set-Cookie) survive.
        response.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in end_to_end(incoming.headers.multi_items())
        ]
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client:
            clients.append(client)
            yield

    return Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)


def main() -> None:
    args = parse_proxy_args("A naive Starlette + httpx streaming reverse proxy")
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
