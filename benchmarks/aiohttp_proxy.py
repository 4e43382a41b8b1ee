"""The reference: the simplest honest streaming reverse proxy on bare aiohttp.

One aiohttp web server, one shared ``ClientSession`` (pooled keep-alive connections);
method, raw path, query, end-to-end headers and the body are forwarded as a stream, and
the response is streamed back. Every benchmark ratio is computed against this proxy.

Usage: ``python -m benchmarks.aiohttp_proxy --port 8001 --upstream http://127.0.0.1:8000``
"""

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from benchmarks.proxy_common import end_to_end, parse_proxy_args

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one request to the upstream and stream its response back."""
    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    headers = CIMultiDict(end_to_end(request.headers.items(), drop=("host",)))
    body = request.content if request.body_exists else None
    async with session.request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=CIMultiDict(end_to_end(upstream.headers.items())),
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(upstream: str) -> web.Application:
    """Build the proxy application forwarding to ``upstream`` (``http://host:port``)."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        # Raw bytes both ways: no decompression, so Content-Length stays true.
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    args = parse_proxy_args("The reference aiohttp streaming reverse proxy")
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
