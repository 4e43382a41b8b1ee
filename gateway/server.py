"""Running the gateway: uvicorn for the proxy and the admin app, signals, reload.

One process serves both ports from one event loop. The gateway installs its
own signal handlers (uvicorn's would re-raise SIGTERM after shutdown and exit
non-zero): SIGTERM/SIGINT stop accepting and let in-flight requests finish
within ``server.shutdown_grace``; SIGHUP reloads the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from gateway import logs
from gateway.admin import create_admin_app
from gateway.app import GatewayApp
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.metrics import Metrics, multiprocess_dir, render
from gateway.protocol import GatewayHttpProtocol
from gateway.runtime import Retired, Runtime

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # GatewayProcess owns the signal handlers


def uvicorn_config(app: Any, host: str, port: int, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the caller's loop (uvloop) is already running
        http=extra.pop("http", "httptools"),
        ws="none",
        lifespan=extra.pop("lifespan", "off"),
        proxy_headers=False,  # the gateway decides whom to believe (trusted_proxies)
        server_header=False,
        access_log=False,
        log_config=None,
        backlog=4096,
        **extra,
    )


class GatewayProcess:
    """One serving process: the proxy, the admin app, reload and shutdown.

    As a worker of ``--workers N`` (``worker=True``), a reload is the supervisor's
    decision: SIGHUP and ``POST /-/reload`` ask the parent, which validates the file
    and tells every worker to swap it in with SIGUSR1.
    """

    def __init__(
        self,
        config: GatewayConfig,
        config_path: str | None,
        *,
        overrides: dict[str, Any] | None = None,
        worker: bool = False,
    ) -> None:
        self.config_path = config_path
        self.overrides = overrides or {}
        self.worker = worker
        # One registry per process; with --workers, the admin port sums every worker's files.
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.app = GatewayApp(config, self.metrics)
        self.main: _Server | None = None
        self.admin: _Server | None = None
        self.stopping = False
        self.generation = 0  # config swaps so far
        self._reload_lock = asyncio.Lock()
        self._retire_tasks: set[asyncio.Task[None]] = set()

    async def readiness(self) -> dict[str, Any]:
        """Ready once the config is loaded and, when Redis is configured, it answers."""
        runtime = self.app.runtime
        checks: dict[str, bool] = {"config": runtime is not None}
        limiter = runtime.limiter if runtime is not None else None
        if limiter is not None and limiter.remote:
            checks["redis"] = await limiter.ready()
        if self.stopping:
            checks["accepting"] = False
        not_ready = sorted(name for name, ok in checks.items() if not ok)
        return {"ready": not not_ready, "checks": checks, "not_ready": not_ready}

    def _load(self) -> GatewayConfig:
        assert self.config_path is not None
        config = load_config(self.config_path)
        if self.overrides:
            server = dataclasses.replace(config.server, **self.overrides)
            config = dataclasses.replace(config, server=server)
        return config

    async def reload(self) -> tuple[bool, list[str]]:
        """Loads the config file again; an invalid file leaves the old config serving."""
        if self.config_path is None:
            return False, ["the gateway was not started from a file"]
        if not self.worker:
            return await self.apply_reload(count=True)
        try:
            self._load()
        except ConfigError as exc:
            self._rejected(exc)
            return False, exc.errors
        seen = self.generation
        os.kill(os.getppid(), signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 5.0
        # Polling a counter for a few seconds: this is the admin endpoint, not the hot path.
        while self.generation == seen:
            if asyncio.get_running_loop().time() > deadline:
                return False, ["the supervisor did not confirm the reload in time"]
            await asyncio.sleep(0.02)
        return True, []

    def _rejected(self, exc: ConfigError) -> None:
        for line in exc.errors:
            log.error("reload rejected: %s", line)
        self.metrics.reload_failure.inc()

    async def apply_reload(self, *, count: bool) -> tuple[bool, list[str]]:
        """Swaps in the file's config; ``count`` records the result in the metrics."""
        async with self._reload_lock:
            try:
                config = self._load()
            except ConfigError as exc:
                if count:
                    self._rejected(exc)
                else:
                    log.error("reload from the supervisor failed: %s", exc.errors)
                return False, exc.errors
            old = self.app.runtime
            retired = self.app.install(config)
            logs.configure_logging(config.logging.level)
            logs.configure(config.logging.access_log)
            self.generation += 1
            if count:
                self.metrics.reload_success.inc()
            log.info("config reloaded from %s", self.config_path)
            if old is not None and retired:
                task = asyncio.create_task(self._retire(old, retired))
                self._retire_tasks.add(task)
                task.add_done_callback(self._retire_tasks.discard)
            return True, []

    async def _retire(self, old: Runtime, retired: Retired) -> None:
        # Requests that started under the old config finish with its upstreams.
        deadline = asyncio.get_running_loop().time() + max(
            (u.config.timeouts.read for u in retired.upstreams), default=30.0
        )
        # Polling: the request path must not pay for signalling "last one out".
        while old.inflight > 0 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for upstream in retired.upstreams:
            await upstream.aclose()
        if retired.limiter is not None:
            await retired.limiter.aclose()

    def render_metrics(self) -> tuple[bytes, str]:
        return render(None if multiprocess_dir() is not None else self.registry)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            logs.flush()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: draining in-flight requests")
        if self.main is not None:
            self.main.should_exit = True

    async def serve(
        self,
        sockets: list[socket.socket] | None = None,
        admin_sockets: list[socket.socket] | None = None,
    ) -> None:
        config = self.app.config
        server = config.server
        self.main = _Server(
            uvicorn_config(
                self.app,
                server.host,
                server.port,
                lifespan="on",
                http=GatewayHttpProtocol,
                timeout_graceful_shutdown=server.shutdown_grace,
                # Proxied responses carry the upstream's Date; errors get the gateway's.
                date_header=False,
            )
        )
        admin_app = create_admin_app(
            readiness=self.readiness, reload=self.reload, metrics=self.render_metrics
        )
        self.admin = _Server(uvicorn_config(admin_app, config.admin.host, config.admin.port))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        if self.worker:
            loop.add_signal_handler(signal.SIGHUP, lambda: os.kill(os.getppid(), signal.SIGHUP))
            loop.add_signal_handler(
                signal.SIGUSR1, lambda: loop.create_task(self.apply_reload(count=False))
            )
        else:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        logs.configure(config.logging.access_log)
        admin_task = asyncio.create_task(self.admin.serve(admin_sockets))
        flusher = asyncio.create_task(self._flush_logs())
        try:
            await self.main.serve(sockets)
        finally:
            self.admin.should_exit = True
            await admin_task
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            logs.flush()
            for task in list(self._retire_tasks):
                task.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)


def run(config: GatewayConfig, config_path: str | None, overrides: dict[str, Any]) -> int:
    """Serves in this one process until stopped; the process exit code."""
    import uvloop

    logs.configure_logging(config.logging.level)
    process = GatewayProcess(config, config_path, overrides=overrides)
    uvloop.run(process.serve())
    return 0
