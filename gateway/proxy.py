"""Forwarding one request: the upstream request, the exchange, and streaming back.

httpx is the client API: the request is an ``httpx.Request`` sent through the
upstream's transport, the answer an ``httpx.Response`` read with
``aiter_raw``. Transport failures are translated into the gateway's error
tree here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
    error_for_status,
)

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
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}


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
        raise GatewayTimeout(
            "Connecting to the upstream service timed out.", reason="connect_timeout"
        ) from exc
    except httpx.PoolTimeout as exc:
        raise ServiceUnavailable(
            "No connection to the upstream service became free in time.", reason="pool_exhausted"
        ) from exc
    except httpx.TimeoutException as exc:
        raise GatewayTimeout(
            "The upstream service did not answer in time.", reason="upstream_timeout"
        ) from exc
    except httpx.ConnectError as exc:
        raise BadGateway(
            "The upstream service refused the connection.", reason="connect_failed"
        ) from exc
    except httpx.TransportError as exc:
        raise BadGateway(
            "The upstream service broke the exchange.", reason="protocol_error"
        ) from exc


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
