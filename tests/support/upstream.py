"""A real HTTP upstream for tests: aiohttp.web on 127.0.0.1, in its own thread and loop.

Endpoints (any prefix before them is ignored, so routes may add one):
  /echo            method, raw path, query, headers and a hash of the body, as JSON
  /status/<code>   that status, with a body that must never reach a client;
                   ?retry_after=N adds Retry-After
  /delay/<secs>    answers after sleeping
  /stream?chunks=N&interval=S  a chunked body, one chunk every S seconds
  /bytes/<n>       n bytes, streamed in 64 KiB chunks (?chunked=1 without Content-Length)
  /headers         hop-by-hop headers in the response, for stripping tests
  /healthz         200, or what ``health_status`` says
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any

from aiohttp import web

from tests.support.net import free_port

__all__ = ["LEAK", "Upstream", "free_port"]

LEAK = "SECRET-UPSTREAM-STACKTRACE at db-internal-7.corp:5432"


class Upstream:
    """An upstream server; ``requests`` records what it received."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.health_status = 200
        self.fail_with: int | None = None  # set: every non-health request gets this status
        self.hits = 0  # non-health requests served
        self.stream_progress = 0  # chunks of /stream sent so far
        self.stream_aborted = False  # the reader of /stream went away before the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # handlers ------------------------------------------------------------------------

    def _record(self, request: web.Request, body: bytes) -> dict[str, Any]:
        info = {
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "query": request.raw_path.partition("?")[2],
            "headers": [
                [k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in request.raw_headers
            ],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_length": len(body),
        }
        self.requests.append(info)
        return info

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = path.split("/")
        kind = (
            parts[-2]
            if len(parts) >= 2 and parts[-2] in ("status", "delay", "bytes")
            else parts[-1]
        )
        arg = parts[-1]
        if kind == "healthz":
            return web.Response(status=self.health_status, text="health")
        self.hits += 1
        if self.fail_with is not None:
            body = await request.read()
            self._record(request, body)
            return web.Response(status=self.fail_with, text=LEAK)
        if kind == "status":
            body = await request.read()
            self._record(request, body)
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(arg), text=LEAK, headers=headers)
        if kind == "delay":
            await asyncio.sleep(float(arg))
            return web.Response(text="slow")
        if kind == "stream":
            return await self._stream(request)
        if kind == "bytes":
            return await self._bytes(request, int(arg))
        if kind == "headers":
            resp = web.Response(text="hop")
            resp.headers["Connection"] = "X-Private-Hop"
            resp.headers["X-Private-Hop"] = "must-not-pass"
            resp.headers["Keep-Alive"] = "timeout=5"
            resp.headers["X-End-To-End"] = "passes"
            resp.headers["X-Request-ID"] = "upstream-made-this-up"
            return resp
        # /echo and anything else
        body = await request.read()
        info = self._record(request, body)
        return web.Response(text=json.dumps(info), content_type="application/json")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("chunks", "5"))
        interval = float(request.query.get("interval", "0.2"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.stream_progress = 0
        self.stream_aborted = False
        try:
            for i in range(chunks):
                await resp.write(f"chunk-{i}\n".encode())
                self.stream_progress = i + 1
                if i + 1 < chunks:
                    await asyncio.sleep(interval)
            await resp.write_eof()
        except ConnectionError:
            self.stream_aborted = True
        return resp

    async def _bytes(self, request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse()
        if request.query.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = n
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < n:
            piece = block if n - sent >= len(block) else block[: n - sent]
            await resp.write(piece)
            sent += len(piece)
        await resp.write_eof()
        return resp

    # lifecycle -----------------------------------------------------------------------

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=self._run, name=f"upstream-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("test upstream did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        loop.run_until_complete(site.start())
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self._started.clear()
