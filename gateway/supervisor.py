"""``gateway run --workers N``: a parent that binds, spawns, reloads and stops N workers.

The parent binds both listening sockets once and hands them to every worker
(the kernel spreads connections over the accepting processes). Before any
worker starts it prepares a private, empty prometheus multiprocess directory,
so ``/metrics`` on the admin port - served by whichever worker accepts the
scrape - sums every worker. This module imports nothing of prometheus_client
before that directory is set.

Signals: SIGHUP (or ``POST /-/reload`` on any worker, which forwards it here)
makes the parent validate the file; a valid one is announced to every worker
with SIGUSR1 and each swaps it in, an invalid one is logged and counted here
and nothing changes. SIGTERM/SIGINT are passed to the workers, which drain
within ``server.shutdown_grace``; the parent exits 0 once they are gone. A
worker that dies is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, GatewayConfig, load_config

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway")

_RESTART_BACKOFF = 1.0  # seconds between replacing workers that keep dying


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _worker_main(
    path: str | None,
    overrides: dict[str, Any],
    sockets: list[socket.socket],
    admin_sockets: list[socket.socket],
) -> None:
    import dataclasses

    import uvloop

    from gateway.logs import configure_logging
    from gateway.server import GatewayProcess

    assert path is not None
    config = load_config(path)
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    configure_logging(config.logging.level)
    process = GatewayProcess(config, path, overrides=overrides, worker=True)
    uvloop.run(process.serve(sockets, admin_sockets))


class Supervisor:
    def __init__(
        self, config: GatewayConfig, path: str | None, workers: int, overrides: dict[str, Any]
    ) -> None:
        self.config = config
        self.path = path
        self.count = workers
        self.overrides = overrides
        self.workers: list[BaseProcess] = []
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.reload_requested = False
        self.metrics: Metrics | None = None

    def _spawn(self, sockets: list[socket.socket], admin: list[socket.socket]) -> BaseProcess:
        proc = self.ctx.Process(
            target=_worker_main,
            args=(self.path, self.overrides, sockets, admin),
            name="gateway-worker",
        )
        proc.start()
        return proc

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_reload(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def _reload(self) -> None:
        self.reload_requested = False
        assert self.path is not None
        assert self.metrics is not None
        try:
            self.config = load_config(self.path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload rejected: %s", line)
            self.metrics.reload_failure.inc()
            return
        self.metrics.reload_success.inc()
        log.info("config valid; reloading %d workers", len(self.workers))
        for proc in self.workers:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGUSR1)

    def run(self) -> int:
        from gateway.logs import configure_logging

        configure_logging(self.config.logging.level)
        # Before prometheus_client is imported anywhere in this process or the workers.
        metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from prometheus_client import CollectorRegistry

        from gateway import metrics

        # The parent counts reloads it decides on (SIGHUP); workers add the rest.
        self.metrics = metrics.Metrics(CollectorRegistry())

        server, admin = self.config.server, self.config.admin
        sockets = [bind(server.host, server.port)]
        admin_sockets = [bind(admin.host, admin.port)]
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        log.info(
            "supervisor %d: %d workers on %s:%d (admin %s:%d)",
            os.getpid(),
            self.count,
            server.host,
            server.port,
            admin.host,
            admin.port,
        )
        self.workers = [self._spawn(sockets, admin_sockets) for _ in range(self.count)]
        last_restart = 0.0
        try:
            while not self.stopping:
                time.sleep(0.1)
                if self.reload_requested:
                    self._reload()
                for i, proc in enumerate(self.workers):
                    if proc.is_alive() or self.stopping:
                        continue
                    log.error("worker %s exited with %s; replacing it", proc.pid, proc.exitcode)
                    if proc.pid is not None:
                        metrics.mark_process_dead(proc.pid)
                    wait = _RESTART_BACKOFF - (time.monotonic() - last_restart)
                    if wait > 0:
                        time.sleep(wait)
                    last_restart = time.monotonic()
                    self.workers[i] = self._spawn(sockets, admin_sockets)
        finally:
            self._stop_workers()
            for sock in sockets + admin_sockets:
                sock.close()
            metrics.remove_multiprocess_dir(metrics_dir)
        return 0

    def _stop_workers(self) -> None:
        for proc in self.workers:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_grace + 5.0
        for proc in self.workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join(5)


def run_workers(
    config: GatewayConfig, path: str | None, workers: int, overrides: dict[str, Any]
) -> int:
    return Supervisor(config, path, workers, overrides).run()
