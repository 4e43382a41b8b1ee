"""A lean HTTP/1.1 keep-alive transport for httpx, built on asyncio protocols and httptools.

Chosen by measurement (see benchmarks/README.md): httpx's default pool spends
most of a proxied request in connection-pool bookkeeping, and an aiohttp-backed
transport pays for two request/response models. This one is an
``httpx.AsyncBaseTransport`` - httpx stays the client API - that writes the
request head in one ``write`` and parses the response with llhttp (httptools).

Per origin (scheme, host, port) a pool keeps idle connections LIFO, so the
freshest is reused and stale ones age out from the bottom. Bodies stream both
ways with back-pressure: reading from the upstream pauses while more than
``_HIGH_WATER`` bytes wait for the client, and the request body is written as
the client sends it. A request body is written by its own task, so an upstream
that answers before reading the whole body (or echoes while reading) cannot
deadlock the exchange.

Failures are raised as httpx exceptions (``ConnectError``, ``ConnectTimeout``,
``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``, ``RemoteProtocolError``,
``ReadError``, ``WriteError``); the proxy translates them at one boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024  # pause reading the upstream beyond this many unsent bytes
_CHUNK_END = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_IDLE_TIMEOUT = 60.0  # close keep-alive connections unused for this long

Origin = tuple[str, str, int]


def _timeout_fired(fut: asyncio.Future[Any], exc: type[Exception], message: str) -> None:
    if not fut.done():
        fut.set_exception(exc(message))


async def _bounded(
    fut: asyncio.Future[Any], timeout: float, exc: type[Exception], message: str
) -> Any:
    """Awaits ``fut``, failing it with ``exc(message)`` after ``timeout`` seconds.

    A loop timer rather than ``asyncio.timeout``: no task cancellation to unwind, and
    the exception is only built when the timer fires.
    """
    timer = asyncio.get_running_loop().call_later(timeout, _timeout_fired, fut, exc, message)
    try:
        return await fut
    finally:
        timer.cancel()


class _Conn(asyncio.Protocol):
    """One upstream connection; at most one exchange at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = 0  # exchanges completed on this connection
        self.idle_since = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: Exception | None = None
        self.keep_alive = True
        self.until_close = True  # no Content-Length and not chunked: body ends at EOF
        self.head_only = False
        self.got_bytes = False
        self.read_paused = False
        self.writer_done = True

    # asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.head is None or self.done:
            # Bytes nobody asked for: the connection is out of step, drop it.
            self._close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid response from upstream: {exc}"))
            self._close()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.head is not None and not self.done:
            if self.head.done() and self.until_close and self.error is None:
                self.done = True  # a body delimited by the end of the connection
                self.keep_alive = False
                self._wake()
            elif self.head.done():
                self._fail(httpx.ReadError("upstream closed the connection mid-response"))
            elif self.got_bytes:
                self._fail(httpx.RemoteProtocolError("upstream closed the connection mid-head"))
            else:
                self._fail(httpx.RemoteProtocolError("upstream closed the connection"))
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.WriteError("upstream closed the connection"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self.until_close = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim response: the final one follows
            self.until_close = True
            return
        self.status = status
        if status in (204, 304):
            self.until_close = False
        self.keep_alive = self.parser.should_keep_alive()
        head = self.head
        if self.head_only:
            # llhttp cannot be told a HEAD response has no body; finish here and
            # do not reuse the connection, so its parser state never matters.
            self.done = True
            self.keep_alive = False
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # end of an interim (1xx) response
        self.done = True
        self._wake()

    # exchange ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        self._wake()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    async def drain(self, timeout: float) -> None:
        if self.closed:
            raise httpx.WriteError("upstream closed the connection")
        fut = self.drain_waiter = self.loop.create_future()
        try:
            await _bounded(fut, timeout, httpx.WriteTimeout, "writing to upstream timed out")
        finally:
            self.drain_waiter = None

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise httpx.WriteError("upstream closed the connection")
        self.transport.write(data)

    async def wait_head(self, timeout: float) -> None:
        head = self.head
        assert head is not None
        if head.done():
            head.result()
            return
        await _bounded(head, timeout, httpx.ReadTimeout, "upstream did not answer in time")

    async def wait_body(self, timeout: float) -> None:
        fut = self.waiter = self.loop.create_future()
        try:
            await _bounded(fut, timeout, httpx.ReadTimeout, "upstream stopped sending")
        finally:
            self.waiter = None

    def take(self) -> bytes:
        """Every buffered body byte, as one chunk."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    def finish(self, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed."""
        self.used += 1
        if (
            reusable
            and self.done
            and self.keep_alive
            and self.writer_done
            and self.error is None
            and not self.closed
        ):
            self._reset()
            self.pool.release(self)
        else:
            # Anyone still waiting on this exchange (a reader after an abort) learns it ended.
            self._fail(httpx.ReadError("the exchange was aborted"))
            self._close()
            self.pool.forget(self)
            head = self.head
            if head is not None and head.done() and not head.cancelled():
                head.exception()  # retrieved: nobody else will await it
            self.head = None  # connection_lost must not fail an exchange that is over


class _Pool:
    """Connections to one origin: idle ones LIFO, a cap, and waiters for a free slot."""

    def __init__(self, transport: PoolTransport, origin: Origin) -> None:
        self.owner = transport
        self.loop = asyncio.get_running_loop()
        self.scheme, self.host, self.port = origin
        self.idle: list[_Conn] = []
        self.count = 0  # open or opening connections
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.members: set[_Conn] = set()

    async def acquire(self, connect_timeout: float, pool_timeout: float) -> tuple[_Conn, bool]:
        """A connection and whether it was reused."""
        idle = self.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.owner.idle_timeout:
                return conn, True
            conn._close()
            self.forget(conn)
        if self.count >= self.owner.max_connections:
            fut: asyncio.Future[_Conn | None] = self.loop.create_future()
            self.waiters.append(fut)
            try:
                handed = await _bounded(
                    fut,
                    pool_timeout,
                    httpx.PoolTimeout,
                    "no upstream connection became free in time",
                )
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    # Handed a connection or a slot just as we gave up: pass it on.
                    given = fut.result()
                    if given is not None:
                        self.release(given)
                    else:
                        self._hand_slot()  # a freed slot: pass it to the next waiter
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(fut)
                raise
            if handed is not None:
                return handed, True
            # A slot was freed for us: open a new connection in it.
        self.count += 1
        try:
            conn = await self._connect(connect_timeout)
        except BaseException:
            self.count -= 1
            self._hand_slot()
            raise
        self.members.add(conn)
        return conn, False

    async def _connect(self, timeout: float) -> _Conn:
        ctx = self.owner.ssl_context if self.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self),
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=self.host if ctx is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def release(self, conn: _Conn) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        # Stale connections sink to the bottom of the LIFO stack; drop one per release.
        bottom = self.idle[0]
        if conn.idle_since - bottom.idle_since > self.owner.idle_timeout:
            self.idle.pop(0)
            bottom._close()
            self.forget(bottom)

    def forget(self, conn: _Conn) -> None:
        if conn in self.members:
            self.members.discard(conn)
            self.count -= 1
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
            self._hand_slot()

    def _hand_slot(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self.members):
            conn._close()
        self.idle.clear()


class _ResponseStream(httpx.AsyncByteStream):
    """The response body, read straight from the connection's buffer."""

    def __init__(self, conn: _Conn, read_timeout: float, writer: asyncio.Task[None] | None) -> None:
        self.conn = conn
        self.read_timeout = read_timeout
        self.writer = writer
        self.finished = False

    @property
    def complete(self) -> bool:
        """Whether the whole body has already arrived (nothing left to wait for)."""
        return self.conn.done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.done:
                break
            if conn.error is not None:
                self._end(False)
                raise conn.error
            try:
                await conn.wait_body(self.read_timeout)
            except BaseException:
                self._end(False)
                raise
        self._end(True)

    def _end(self, complete: bool) -> None:
        if self.finished:
            return
        self.finished = True
        writer = self.writer
        if writer is not None and not writer.done():
            # The upstream answered without reading the whole body; the connection
            # cannot be reused, and the rest of the body is not wanted.
            writer.cancel()
            complete = False
        self.conn.finish(complete)

    async def aclose(self) -> None:
        self._end(self.conn.done and not self.conn.chunks)


class PoolTransport(httpx.AsyncBaseTransport):
    """httpx transport with per-origin HTTP/1.1 keep-alive pools.

    Timeouts come from ``request.extensions["timeout"]`` (httpx's convention:
    ``connect``, ``read``, ``write``, ``pool`` in seconds), else the defaults.
    """

    def __init__(
        self,
        *,
        max_connections: int = 512,
        timeout: httpx.Timeout | None = None,
        idle_timeout: float = _IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        t = timeout or httpx.Timeout(30.0, connect=2.0, pool=2.0)
        self.default_timeouts = {
            "connect": t.connect or 2.0,
            "read": t.read or 30.0,
            "write": t.write or 30.0,
            "pool": t.pool or 2.0,
        }
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    def _pool(self, url: httpx.URL) -> _Pool:
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        origin = (scheme, url.host, port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self, origin)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        timeouts: dict[str, float] = request.extensions.get("timeout") or self.default_timeouts
        pool = self._pool(request.url)
        head = _serialize_head(request)
        stream = request.stream
        # A body with a known, small size was buffered by the caller and may be replayed.
        replayable = isinstance(stream, httpx.ByteStream)
        for attempt in (0, 1):
            conn, reused = await pool.acquire(timeouts["connect"], timeouts["pool"])
            try:
                return await self._exchange(conn, request, head, timeouts)
            except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
                conn.finish(False)
                # A reused connection the upstream closed while idle never saw the
                # request: try once more on a fresh one when the body can be replayed.
                if attempt == 0 and reused and not conn.got_bytes and replayable:
                    continue
                raise
            except BaseException:
                conn.finish(False)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, conn: _Conn, request: httpx.Request, head: bytes, timeouts: dict[str, float]
    ) -> httpx.Response:
        conn.head = conn.loop.create_future()
        conn.head_only = request.method == "HEAD"
        stream = request.stream
        writer: asyncio.Task[None] | None = None
        if isinstance(stream, httpx.ByteStream):
            body = b"".join(stream)  # ByteStream is sync-iterable too
            conn.write(head + body if body else head)
        else:
            conn.write(head)
            chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
            conn.writer_done = False
            writer = asyncio.create_task(self._write_body(conn, stream, chunked, timeouts["write"]))
            writer.add_done_callback(lambda t: _writer_finished(conn, t))
        if conn.write_paused:
            await conn.drain(timeouts["write"])
        try:
            await conn.wait_head(timeouts["read"])
        except BaseException:
            if writer is not None and not writer.done():
                writer.cancel()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(conn, timeouts["read"], writer),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _write_body(
        self, conn: _Conn, stream: Any, chunked: bool, write_timeout: float
    ) -> None:
        async for chunk in stream:
            if not chunk:
                continue
            if chunked:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                conn.write(chunk)
            if conn.write_paused:
                await conn.drain(write_timeout)
        if chunked:
            conn.write(_LAST_CHUNK)

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _writer_finished(conn: _Conn, task: asyncio.Task[None]) -> None:
    conn.writer_done = True
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # The request body failed (client gone, body too large, upstream gone):
        # the exchange cannot complete; whoever waits learns why.
        conn._fail(exc if isinstance(exc, Exception) else httpx.WriteError(str(exc)))
        conn._close()


def _serialize_head(request: httpx.Request) -> bytes:
    url = request.url
    parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        parts += (name, b": ", value, _CHUNK_END)
    parts.append(_CHUNK_END)
    return b"".join(parts)
