"""Forwarding one request: the upstream request, the exchange, and streaming back.

httpx is the client API: the request is an ``httpx.Request`` sent through the
upstream's transport, the answer an ``httpx.Response`` read with
``aiter_raw``. Transport failures are translated into the gateway's error
tree here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from random import random
from time import monotonic
from typing import TYPE_CHECKING, Any

import httpx

from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
    error_for_status,
)
from gateway.retry import parse_retry_after
from gateway.upstreams import Target, Upstream
from gateway.urls import UpstreamURL

if TYPE_CHECKING:
    from gateway.runtime import UpstreamRuntime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
HeaderList = list[tuple[bytes, bytes]]

# Bodies up to this size are read before forwarding, so a retry can replay them.
REPLAY_LIMIT = 64 * 1024
# A rewritten upstream error body is drained up to this much to keep the connection.
_DRAIN_LIMIT = 256 * 1024

# Hop-by-hop headers (RFC 9110 section 7.6.1) never cross the gateway.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Upstream statuses that count against a target's circuit breaker.
BREAKER_FAILURES = frozenset({502, 503, 504})
_PLACEHOLDER_URL = httpx.URL("http://upstream/")


class ClientDisconnected(Exception):
    """The client went away; there is nobody left to answer."""


class UpstreamAborted(Exception):
    """The upstream failed after the response started: the client connection is cut."""


class RequestBody(httpx.AsyncByteStream):
    """The client's request body, streamed to the upstream, bounded by ``limit``."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        receive = self.receive
        while not self.finished:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            body = message.get("body", b"")
            self.received += len(body)
            if self.received > self.limit:
                raise PayloadTooLarge()
            if not message.get("more_body", False):
                self.finished = True
            if body:
                yield body


async def read_body(receive: Receive, expected: int) -> bytes:
    """A whole (small) request body, for a replayable upstream request."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        body = message.get("body", b"")
        if body:
            parts.append(body)
            size += len(body)
            if size > expected:
                raise PayloadTooLarge()
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a ``Connection`` header lists, which are hop-by-hop too."""
    tokens = {t.strip().lower() for t in value.split(b",")}
    tokens.discard(b"close")
    tokens.discard(b"keep-alive")
    tokens.discard(b"")
    return frozenset(tokens)


async def send_upstream(
    transport: httpx.AsyncBaseTransport, request: httpx.Request
) -> httpx.Response:
    """One exchange with one target, its failures translated into gateway errors."""
    try:
        return await transport.handle_async_request(request)
    except (GatewayError, ClientDisconnected):
        raise  # from the request body: the client's doing, not the upstream's
    except httpx.ConnectTimeout as exc:
        # Never reached the upstream: as safe to retry as a refused connection.
        raise GatewayTimeout(
            "Connecting to the upstream service timed out.",
            reason="connect_timeout",
            kind="connect_error",
        ) from exc
    except httpx.PoolTimeout as exc:
        raise ServiceUnavailable(
            "No connection to the upstream service became free in time.", reason="pool_exhausted"
        ) from exc
    except httpx.TimeoutException as exc:
        raise GatewayTimeout(
            "The upstream service did not answer in time.",
            reason="upstream_timeout",
            kind="timeout",
        ) from exc
    except httpx.ConnectError as exc:
        raise BadGateway(
            "The upstream service refused the connection.",
            reason="connect_failed",
            kind="connect_error",
        ) from exc
    except httpx.TransportError as exc:
        raise BadGateway(
            "The upstream service broke the exchange.",
            reason="protocol_error",
            kind="protocol_error",
        ) from exc


def unavailable(pool: Upstream, now: float) -> ServiceUnavailable:
    """The 503 for an upstream with no target in rotation, with Retry-After when known."""
    wait = pool.retry_after(now)
    if wait is None:
        return ServiceUnavailable(
            "No healthy target is available for this upstream.", reason="no_healthy_target"
        )
    seconds = max(1, math.ceil(wait))
    return ServiceUnavailable(
        "Every target of this upstream is failing; its circuit is open.",
        reason="circuit_open",
        headers=[(b"retry-after", str(seconds).encode("ascii"))],
    )


async def forward(
    upstream: UpstreamRuntime,
    method: str,
    target_path: bytes,
    headers: HeaderList,
    body: httpx.AsyncByteStream | httpx.ByteStream,
    replayable: bool,
) -> tuple[httpx.Response, Target]:
    """Sends the request to a target in rotation, retrying per the upstream's policy.

    Returns the response and its target, which the caller must ``release`` once the
    response is over. Tries that fail are released here, with the breaker's verdict.
    """
    pool = upstream.pool
    policy = upstream.policy
    now = monotonic()
    upstream.budget.record_request(now)
    tried: list[Target] = []
    attempt = 0
    while True:
        attempt += 1
        target = pool.pick(now, tried)
        if target is None:
            raise unavailable(pool, now)
        host, base = upstream.wire[target]
        request = httpx.Request(
            method,
            _PLACEHOLDER_URL,
            headers=[*headers, (b"host", host)],
            stream=body,
            extensions=upstream.extensions,
        )
        # Request() copies (re-parses) any URL it is given; set ours afterwards.
        request.url = UpstreamURL(target.scheme, target.host, target.port, base + target_path)
        try:
            response = await send_upstream(upstream.transport, request)
        except GatewayError as err:
            now = monotonic()
            if err.kind is None:  # not the target's doing (client body, pool exhausted)
                target.release(None, now)
                raise
            target.release(False, now)
            upstream.metrics.failures[err.kind].inc()
            wait = policy.decide(
                method=method,
                attempt=attempt,
                outcome=err.kind,
                body_replayable=replayable,
                response_started=False,
                now=now,
                rng=random,
                budget=upstream.budget,
            )
            if wait is None:
                raise
        except BaseException:
            target.release(None, monotonic())
            raise
        else:
            status = response.status_code
            upstream.metrics.responses[status].inc()
            if status not in policy.on_statuses:
                return response, target
            now = monotonic()
            value = response.headers.get("retry-after")
            wait = policy.decide(
                method=method,
                attempt=attempt,
                outcome=status,
                body_replayable=replayable,
                response_started=False,
                now=now,
                rng=random,
                budget=upstream.budget,
                retry_after=parse_retry_after(value, time.time()) if value else None,
            )
            if wait is None:
                return response, target
            target.release(status not in BREAKER_FAILURES, now)
            await discard(response)
        tried.append(target)
        upstream.metrics.retries.inc()
        await asyncio.sleep(wait)
        now = monotonic()


async def discard(response: httpx.Response) -> None:
    """Drain a response nobody will see, so its connection can be reused; bounded."""
    seen = 0
    try:
        async for chunk in response.aiter_raw():
            seen += len(chunk)
            if seen > _DRAIN_LIMIT:
                break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()


async def rewrite(response: httpx.Response) -> GatewayError:
    """The uniform error replacing an upstream error response; its body is dropped."""
    err = error_for_status(response.status_code)
    retry_after = response.headers.get("retry-after")
    if retry_after is not None and len(retry_after) < 64:
        err.headers.append((b"retry-after", retry_after.encode("latin-1")))
    await discard(response)
    return err


def response_headers(
    response: httpx.Response, extra: HeaderList, request_id_header: bytes
) -> HeaderList:
    """The upstream's headers, minus hop-by-hop ones, plus the gateway's own."""
    out: HeaderList = []
    tokens: frozenset[bytes] = frozenset()
    chunked = False
    for name, value in response.headers.raw:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":
                tokens = connection_tokens(value)
            elif name == b"transfer-encoding":
                chunked = True
            continue
        if name != request_id_header:
            out.append((name, value))
    if tokens or chunked:
        # The transport decoded any chunking; the server frames the body anew.
        drop = tokens | {b"content-length"} if chunked else tokens
        out = [h for h in out if h[0] not in drop]
    out += extra
    return out


async def stream_back(
    send: Send,
    receive: Receive,
    response: httpx.Response,
    status: int,
    headers: HeaderList,
    body_done: bool,
) -> None:
    """Sends the response head and streams the body with back-pressure.

    Once the request body is fully read and the upstream's body has not all
    arrived yet, a watcher listens for the client going away, so an abandoned
    stream stops pulling from the upstream at once.
    """
    await send({"type": "http.response.start", "status": status, "headers": headers})
    watcher: asyncio.Task[None] | None = None
    gone = False
    sent_all = False
    if body_done and not getattr(response.stream, "complete", False):

        async def watch() -> None:
            nonlocal gone
            # First comes any unread (empty) request body, then the disconnect.
            while (await receive())["type"] != "http.disconnect":
                pass
            # The server also says "disconnect" once the response is complete.
            if not sent_all:
                gone = True
                await response.aclose()

        watcher = asyncio.create_task(watch())
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        sent_all = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (httpx.HTTPError, httpx.StreamClosed) as exc:
        if gone:
            raise ClientDisconnected() from exc
        raise UpstreamAborted(f"upstream failed mid-response: {exc}") from exc
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await response.aclose()
    if gone:
        raise ClientDisconnected()
