"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with two changes.

1. A request head larger than ``server.max_header_bytes`` is answered 431 with
   the uniform error body as soon as it crosses the limit, instead of being
   buffered whole first (llhttp itself has no limit).
2. A response head is held back ("corked") until the first body write of the
   same event-loop turn, so a small response leaves in one ``write`` - one
   syscall instead of two, as aiohttp's server does. If the body is not
   written in that turn (a streaming upstream), the head goes out on its own
   at the next turn, so a slow first chunk never delays the head.

Both hook into uvicorn internals (``HttpToolsProtocol`` callbacks and the
cycle's ``transport``); pyproject pins uvicorn to a tested range.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import GatewayApp


class _Cork:
    """A transport stand-in for one response: the head waits for the body's write."""

    __slots__ = ("_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: bytes | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.write(pending + data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100"):
            self._pending = data  # the response head; 100 Continue must go at once
            asyncio.get_running_loop().call_soon(self.flush)
        elif data:
            self._transport.write(data)

    def flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not self._transport.is_closing():
                self._transport.write(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a bounded request head and corked response heads."""

    _head = 0  # bytes received of the current request head so far
    _in_head = True  # between requests and while a head arrives
    _boundary = False  # a head or a message ended during the current chunk
    _limit = 1 << 62

    @property
    def gateway(self) -> GatewayApp:
        app = self.config.app
        assert isinstance(app, GatewayApp)
        return app

    def _read_limit(self) -> None:
        runtime = self.gateway.runtime
        if runtime is not None:  # a reload may change the limit between requests
            self._limit = runtime.max_header_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_limit()

    def data_received(self, data: bytes) -> None:
        self._boundary = False
        super().data_received(data)
        # llhttp keeps a header value it has not seen the end of, however long: count
        # the bytes of chunks that only ever belonged to an unfinished head.
        if self._in_head and not self._boundary:
            self._head += len(data)
            if self._head > self._limit and not self.transport.is_closing():
                url = getattr(self, "url", b"") or b"/"
                path = url.split(b"?", 1)[0][:2048]
                self.transport.write(self.gateway.head_too_large_response(path))
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._boundary = True
        self._head = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # this request's new cycle
            cycle.transport = _Cork(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._boundary = True
        self._head = 0
        self._read_limit()
