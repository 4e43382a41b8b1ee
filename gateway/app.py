"""The gateway's ASGI application: one request, in order.

request id -> head size -> path normalisation -> route match -> client
identity -> (rate limit) -> body -> upstream exchange -> rewrite or stream
back. The per-request path uses raw ASGI ``receive``/``send``: everything
config-dependent was compiled into the ``Runtime`` at load, and a request
keeps the runtime it started with even if a reload swaps in a new one.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from random import getrandbits
from time import monotonic, perf_counter
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from gateway import logs, proxy
from gateway.config import GatewayConfig
from gateway.errors import (
    BadRequest,
    ErrorRenderer,
    GatewayError,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from gateway.metrics import Metrics
from gateway.paths import normalize_path
from gateway.proxy import ClientDisconnected, Receive, Scope, Send, UpstreamAborted
from gateway.routing import host_without_port
from gateway.runtime import SANE_REQUEST_ID, Retired, RouteRuntime, Runtime, build_runtime

log = logging.getLogger("gateway")

# Request headers the gateway handles itself; everything else is passed on as is.
_HOST, _CL, _TE, _CONN, _XFF, _FWD, _XFP, _XFH, _RID, _DROP, _EXPECT = range(11)
_SPECIAL_BASE: dict[bytes, int] = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"x-forwarded-for": _XFF,
    b"forwarded": _FWD,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"expect": _EXPECT,  # the server answered any 100-continue; the upstream gets the body
    **{
        name: _DROP
        for name in proxy.HOP_BY_HOP
        if name not in (b"connection", b"transfer-encoding")
    },
}
_TE_CHUNKED = (b"transfer-encoding", b"chunked")


class Exchange:
    """What the access log and metrics need to know about one request."""

    __slots__ = (
        "client_ip",
        "error_code",
        "error_source",
        "path",
        "rate_limit",
        "rate_limit_headers",
        "request_id",
        "route",
        "started",
        "status",
        "target",
    )

    def __init__(self) -> None:
        self.client_ip = ""
        self.route: RouteRuntime | None = None
        self.status = 0
        self.request_id = ""
        self.started = False  # the response head went out
        self.error_code: str | None = None
        self.error_source = "gateway"
        self.target: str | None = None
        self.path: str | None = None
        self.rate_limit: str | None = None  # the decision, for the access log
        self.rate_limit_headers: list[tuple[bytes, bytes]] = []


_date_cache: list[Any] = [0, b""]


def http_date() -> bytes:
    """The current Date header value, formatted at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    value: bytes = _date_cache[1]
    return value


def error_response(
    renderer: ErrorRenderer, err: GatewayError, path: bytes, request_id: str, rid_header: bytes
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of the uniform error response for ``err``."""
    body = renderer.render(err, path.decode("latin-1"), request_id)
    headers = [
        (b"date", http_date()),
        (b"content-type", renderer.content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        (rid_header, request_id.encode("ascii")),
        (b"cache-control", b"no-store"),
        *err.headers,
    ]
    return headers, body


def new_request_id() -> str:
    # 128 random bits; ids need uniqueness, not secrecy, so no syscall per request.
    return f"{getrandbits(128):032x}"


class GatewayApp:
    """The proxy's ASGI app. ``runtime`` is swapped whole on reload."""

    def __init__(self, config: GatewayConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics(CollectorRegistry())
        self.runtime: Runtime | None = None
        self.special: dict[bytes, int] = {}

    # lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        self.install(self.config)

    def install(self, config: GatewayConfig) -> Retired:
        """Swaps in a runtime for ``config``; returns what the old one used and this does not."""
        runtime, retired = build_runtime(config, self.metrics, self.runtime)
        for upstream in runtime.upstreams.values():
            upstream.start()  # health checks of new upstreams; kept ones already run
        special = dict(_SPECIAL_BASE)
        special[runtime.request_id_header] = _RID
        self.config = config
        self.special = special
        self.runtime = runtime
        return retired

    async def shutdown(self) -> None:
        runtime = self.runtime
        if runtime is not None:
            for upstream in runtime.upstreams.values():
                await upstream.aclose()
            if runtime.limiter is not None:
                await runtime.limiter.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # one request ------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        assert runtime is not None, "lifespan startup has not run"
        runtime.inflight += 1
        in_flight = self.metrics.in_flight
        in_flight.inc()
        started = perf_counter()
        ex = Exchange()
        try:
            await self._proxy(runtime, ex, scope, receive, send)
        except GatewayError as err:
            if ex.started:
                raise UpstreamAborted(str(err)) from err
            await self._send_error(runtime, ex, scope, send, err)
        except ClientDisconnected:
            ex.status = 499  # nginx's "client closed request", for logs only
        except UpstreamAborted:
            raise  # the server cuts the connection; the client sees a truncated body
        except Exception:
            if ex.started:
                raise
            log.exception("internal error handling request %s", ex.request_id)
            await self._send_error(runtime, ex, scope, send, InternalError())
        finally:
            runtime.inflight -= 1
            in_flight.dec()
            self._account(runtime, ex, scope, perf_counter() - started)

    def _account(self, runtime: Runtime, ex: Exchange, scope: Scope, elapsed: float) -> None:
        """Metrics and the access-log line of one finished request."""
        route = ex.route
        metrics = route.metrics if route is not None else runtime.unmatched
        method: str = scope["method"]
        per_method = metrics.methods[method]
        per_method.duration.observe(elapsed)
        per_method.requests[ex.status].inc()
        if ex.error_code is not None:
            metrics.errors[(ex.error_code, ex.error_source)].inc()
        if logs.enabled():
            logs.write(
                logs.line(
                    request_id=ex.request_id,
                    route=route.name if route is not None else None,
                    method=method,
                    path=ex.path or scope["raw_path"].decode("latin-1"),
                    status=ex.status,
                    upstream=route.upstream.name if route is not None else None,
                    target=ex.target,
                    duration=elapsed,
                    client_ip=ex.client_ip,
                    rate_limit=ex.rate_limit,
                    error=ex.error_code,
                )
            )

    async def _send_error(
        self, runtime: Runtime, ex: Exchange, scope: Scope, send: Send, err: GatewayError
    ) -> None:
        if not ex.request_id:
            ex.request_id = new_request_id()
        renderer = ex.route.renderer if ex.route is not None else runtime.renderer
        path = scope.get("raw_path") or b"/"
        headers, body = error_response(
            renderer, err, path, ex.request_id, runtime.request_id_header
        )
        headers += ex.rate_limit_headers
        ex.status = err.status
        ex.error_code = err.code
        if err.reason == "upstream_status":
            ex.error_source = "upstream"
        ex.started = True
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def head_too_large_response(self, path: bytes) -> bytes:
        """A whole 431 response, for the server protocol to write before any app runs."""
        runtime = self.runtime
        assert runtime is not None
        err = HeadersTooLarge()
        request_id = new_request_id()
        headers, body = error_response(
            runtime.renderer, err, path, request_id, runtime.request_id_header
        )
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        head.append(b"connection: close\r\n\r\n")
        self.metrics.unmatched.errors[(err.code, "gateway")].inc()
        return b"".join(head) + body

    async def _proxy(
        self, runtime: Runtime, ex: Exchange, scope: Scope, receive: Receive, send: Send
    ) -> None:
        special = self.special
        host = b""
        length: bytes | None = None
        chunked = False
        conn_header: bytes | None = None
        xff: bytes | None = None
        forwarded: bytes | None = None
        xfp: bytes | None = None
        xfh: bytes | None = None
        rid: bytes | None = None
        raw_path: bytes = scope["raw_path"]
        query: bytes = scope["query_string"]
        # The exact limit on a complete head; the server protocol bounds an endless one.
        size = len(raw_path) + len(query) + 16
        out: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            kind = special.get(name)
            if kind is None:
                out.append((name, value))
            elif kind == _HOST:
                host = value
            elif kind == _CL:
                length = value
            elif kind == _TE:
                chunked = True
            elif kind == _RID:
                rid = value
            elif kind == _CONN:
                conn_header = value
            elif kind == _XFF:
                xff = value if xff is None else xff + b", " + value
            elif kind == _FWD:
                forwarded = value if forwarded is None else forwarded + b", " + value
            elif kind == _XFP:
                xfp = value
            elif kind == _XFH:
                xfh = value
        ex.request_id = (
            rid.decode("ascii") if rid and SANE_REQUEST_ID.match(rid) else new_request_id()
        )
        if size > runtime.max_header_bytes:
            raise HeadersTooLarge()

        path = ex.path = normalize_path(raw_path, keep_escaped_slashes=runtime.keep_escaped_slashes)
        method: str = scope["method"]
        match = runtime.table.match(host_without_port(host), path, method)
        route = match.route
        if route is None:
            if match.allowed:
                allow = ", ".join(match.allowed).encode("ascii")
                raise MethodNotAllowed(headers=[(b"allow", allow)])
            raise NotFound()
        ex.route = route

        client = scope.get("client")
        peer = client[0] if client else ""
        resolver = runtime.resolver
        trusted = resolver.enabled and resolver.is_trusted(peer)
        ex.client_ip = resolver.client_ip(peer, xff, forwarded) if trusted else peer

        limits = route.limits
        if limits is not None:
            limiter = runtime.limiter
            assert limiter is not None
            try:
                ex.rate_limit_headers, ex.rate_limit = await limiter.check(
                    limits, ex.client_ip, scope["headers"]
                )
            except RateLimited:
                ex.rate_limit = "limited"
                raise

        # The body: none, small and buffered (replayable), or streamed as it arrives.
        body: httpx.AsyncByteStream | httpx.ByteStream
        body_done = True
        if chunked:
            body = proxy.RequestBody(receive, runtime.max_body)
            out.append(_TE_CHUNKED)
            body_done = False
        elif length is not None and length != b"0":
            if not length.isdigit():
                raise BadRequest("The Content-Length header is not a number.")
            expected = int(length)
            if expected > runtime.max_body:
                raise PayloadTooLarge()
            if expected <= proxy.REPLAY_LIMIT:
                body = httpx.ByteStream(await proxy.read_body(receive, expected))
            else:
                body = proxy.RequestBody(receive, expected)
                body_done = False
            out.append((b"content-length", length))
        else:
            body = _EMPTY
            if method in _BODY_METHODS:
                out.append((b"content-length", b"0"))

        if conn_header is not None:
            tokens = proxy.connection_tokens(conn_header)
            if tokens:
                out = [h for h in out if h[0] not in tokens]

        forward_path = path
        if route.strip:
            forward_path = path[len(route.strip) :]
            if not forward_path.startswith("/"):
                forward_path = "/" + forward_path
        target_path = forward_path.encode("ascii")
        if query:
            target_path += b"?" + query

        scheme: str = scope.get("scheme", "http")
        request_id = ex.request_id.encode("ascii")
        if trusted:
            out.append((b"x-forwarded-for", (xff + b", " if xff else b"") + peer.encode("ascii")))
            out.append((b"x-forwarded-proto", xfp or scheme.encode("ascii")))
            out.append((b"x-forwarded-host", xfh or host))
            if forwarded is not None:
                out.append((b"forwarded", forwarded))
        else:
            out.append((b"x-forwarded-for", peer.encode("ascii")))
            out.append((b"x-forwarded-proto", scheme.encode("ascii")))
            if host:
                out.append((b"x-forwarded-host", host))
        out.append((runtime.request_id_header, request_id))

        response, target = await proxy.forward(
            route.upstream, method, target_path, out, body, replayable=body_done
        )
        ex.target = target.label
        verdict: bool | None = True
        try:
            status = response.status_code
            if status in proxy.BREAKER_FAILURES:
                verdict = False
            if status in route.rewrite:
                raise await proxy.rewrite(response)
            headers = proxy.response_headers(
                response,
                [(runtime.request_id_header, request_id), *ex.rate_limit_headers],
                runtime.request_id_header,
            )
            ex.status = status
            ex.started = True
            if isinstance(body, proxy.RequestBody):
                body_done = body.finished
            await proxy.stream_back(send, receive, response, status, headers, body_done)
        except UpstreamAborted:
            verdict = False
            raise
        finally:
            target.release(verdict, monotonic())


_EMPTY = httpx.ByteStream(b"")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
