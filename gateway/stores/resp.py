"""A lean, auto-pipelined RESP2 client for one Redis server.

The rate limiter calls one script per request, so the client's own CPU is what
this module cuts: one persistent connection driven by an ``asyncio.Protocol``,
shared by concurrent callers (Redis answers in order, so replies resolve a FIFO
of futures); the commands issued during one event-loop iteration leave in one
write, and replies are parsed by ``hiredis.Reader``.

Failure rules, which the rate limiter relies on:

- every call resolves by its deadline (by default ``timeout_s`` from now): one
  timer per connection watches the oldest unanswered command (its deadline is
  the earliest). When that expires, Redis is stuck or too slow: the connection is
  dropped and every pending call fails, since later replies could no longer be
  matched to their callers;
- nothing is retried here: a failed connect or a lost connection fails the calls
  that needed it, and the next call opens a new connection;
- every failure is a ``StoreError`` raised from its cause.

Error replies are returned, not raised, as ``hiredis.ReplyError`` values: the
caller decides (a ``NOSCRIPT`` or ``MOVED`` is not a failure).
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any, cast

import hiredis

from gateway.stores.base import StoreError
from gateway.stores.urls import RedisTarget

PING = b"*1\r\n$4\r\nPING\r\n"


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One socket; pending replies in send order, each with its deadline.

    A pending entry without a future is a reply to drop (e.g. ``ASKING``'s).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.failed = False
        self._reader = hiredis.Reader()
        self._pending: deque[tuple[asyncio.Future[Any] | None, float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._batch: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, deadline: float, replies: int = 1) -> asyncio.Future[Any]:
        """Queue encoded commands; the future gets the last of their ``replies``."""
        future = self.loop.create_future()
        if self.failed:
            future.set_exception(StoreError("Redis connection is closed"))
            return future
        pending = self._pending
        for _ in range(replies - 1):
            pending.append((None, deadline))
        pending.append((future, deadline))
        if not self._batch:
            self.loop.call_soon(self._flush)
        self._batch.append(payload)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        # Commands issued in one loop iteration leave in one write: fewer syscalls.
        batch = self._batch
        if not self.failed and self._transport is not None:
            self._transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
        batch.clear()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            while (reply := reader.gets()) is not False:
                future = pending.popleft()[0]
                if future is not None and not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # Garbage, or a reply nobody asked for: the stream cannot be trusted.
            self._fail("Redis protocol error", exc)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline > self.loop.time():
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._fail(f"Redis did not answer within {self.timeout_s * 1000:g} ms", None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection to Redis lost", exc)

    def _fail(self, message: str, cause: BaseException | None) -> None:
        if self.failed:
            return
        self.failed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if future is not None and not future.done():
                # One exception object per caller: a shared one would collect every traceback.
                error = StoreError(message)
                error.__cause__ = cause
                future.set_exception(error)

    def close(self) -> None:
        """Drop the connection; pending calls fail."""
        self._fail("Redis client closed", None)


class RespClient:
    """Calls on one Redis server over one shared connection, opened lazily.

    Created outside the event loop (at config load); the connection belongs to
    the loop of the first call. ``setup`` commands (e.g. ``SCRIPT LOAD``) run on
    every new connection after AUTH and SELECT.
    """

    connection_class: type[_Connection] = _Connection

    def __init__(
        self, target: RedisTarget, *, timeout_s: float, setup: tuple[bytes, ...] = ()
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._tls = target.tls.context() if target.tls else None
        handshake: list[bytes] = []
        if target.password is not None:
            if target.username is not None:
                handshake.append(encode_command("AUTH", target.username, target.password))
            else:
                handshake.append(encode_command("AUTH", target.password))
        if target.db:
            handshake.append(encode_command("SELECT", target.db))
        self.handshake = (*handshake, *setup)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._connect_deadline = 0.0

    @property
    def where(self) -> str:
        """The server's address, for messages."""
        target = self.target
        return target.path or f"{target.host}:{target.port}"

    def deadline(self) -> float:
        """The deadline of a call starting now, for steps that share one budget."""
        return asyncio.get_running_loop().time() + self.timeout_s

    async def call(self, payload: bytes, deadline: float | None = None, replies: int = 1) -> Any:
        """Send encoded commands, return the last of their ``replies``.

        An error reply is returned, not raised. Raises StoreError when Redis
        cannot be reached or does not answer by ``deadline`` (default: the timeout).
        """
        conn = self._conn
        if conn is None or conn.failed:
            return await self._call_connecting(payload, deadline, replies)
        if deadline is None:
            deadline = conn.loop.time() + self.timeout_s
        return await conn.send(payload, deadline, replies)

    async def ping(self, deadline: float | None = None) -> None:
        """Raise StoreError unless the server answers PING by the deadline."""
        reply = await self.call(PING, deadline)
        if reply != b"PONG":
            raise StoreError(f"unexpected PING reply from Redis at {self.where}: {reply!r:.100}")

    async def _call_connecting(self, payload: bytes, deadline: float | None, replies: int) -> Any:
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout_s
        task = self._connecting
        if task is None or task.done():
            # One attempt shared by every caller until it succeeds or fails.
            task = self._connecting = loop.create_task(self._open(deadline))
            task.add_done_callback(forget_exception)
            self._connect_deadline = deadline
        if deadline >= self._connect_deadline:
            conn = await asyncio.shield(task)  # the attempt ends by its own deadline
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await asyncio.shield(task)
            except TimeoutError as exc:
                raise StoreError(
                    f"no Redis connection within {self.timeout_s * 1000:g} ms"
                ) from exc
        return await conn.send(payload, deadline, replies)

    async def _open(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        conn: _Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                factory = partial(self.connection_class, loop, self.timeout_s)
                if target.path is not None:
                    _, conn = await loop.create_unix_connection(factory, target.path)
                else:
                    _, conn = await loop.create_connection(
                        factory,
                        target.host,
                        target.port,
                        ssl=self._tls,
                        server_hostname=target.host if self._tls else None,
                    )
                replies = await asyncio.gather(*(conn.send(p, deadline) for p in self.handshake))
            refused = [reply for reply in replies if isinstance(reply, hiredis.ReplyError)]
            if refused:
                raise StoreError(f"Redis refused the connection setup: {refused[0]}")
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, OSError | TimeoutError):
                raise StoreError(f"cannot connect to Redis at {self.where}") from exc
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the connection (pending calls fail); a later call opens a new one."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        """``close``, for the store protocol."""
        self.close()


def forget_exception(task: asyncio.Future[Any]) -> None:
    """Done-callback for shared tasks whose waiters may all have given up.

    Their error was already raised to those waiters; retrieving it here keeps
    asyncio from logging "exception was never retrieved".
    """
    if not task.cancelled():
        task.exception()
