"""Real redis-server processes for tests: single node, 3-master cluster, Sentinel.

Each process listens on a free port of 127.0.0.1, keeps nothing on disk
(``--save '' --appendonly no``, its own temp dir) and is stopped at session end.
Import the fixtures into a conftest: ``redis_server`` (per test: running and
flushed), ``redis_cluster`` and ``redis_sentinel`` (per session).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.net import HOST, free_port, stop_process, wait_until

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port


class RedisServer:
    """One redis-server process that can be stopped, killed, paused and started again."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        cluster: bool = False,
        config: str | None = None,
    ) -> None:
        self.port = port or (cluster_port() if cluster else free_port())
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.args = args
        self.cluster = cluster
        self.config: Path | None = None
        if config is not None:  # e.g. Sentinel, which needs (and rewrites) a config file
            self.config = self.dir / "redis.conf"
            self.config.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def command(self) -> list[str]:
        cmd = [REDIS_SERVER, *([str(self.config)] if self.config else [])]
        cmd += ["--port", str(self.port), "--bind", HOST, "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir), *self.args]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            cmd += ["--cluster-node-timeout", "5000"]
        return cmd

    def start(self) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        assert self.process is None, "already running"
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.paused = False
        try:
            wait_until(self._answers, timeout=10, what=f"redis-server on {self.port} to answer")
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited:\n{tail}")
        try:
            return bool(self.client(timeout=0.2).ping())
        except redis.AuthenticationError:  # a ConnectionError: catch it first
            return True  # it answers; this server wants a password
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def client(self, timeout: float = 2.0, **options: Any) -> redis.Redis:
        """A synchronous client without retries, for inspecting the server.

        ``options`` go to ``redis.Redis`` (``username``, ``password``, ``db`` ...).
        """
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        proc = psutil.Process(self.process.pid)
        wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, timeout=5, what="SIGSTOP")

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM) and wait for the process to exit."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything first."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None
        self.paused = False

    def ensure_running(self) -> None:
        """Undo whatever a test did: resume a paused server, restart a stopped one."""
        if self.paused:
            self.resume()
        if self.process is not None and self.process.poll() is not None:
            self.process = None
        if self.process is None:
            self.start()

    def flush(self) -> None:
        """Drop every key (the script cache stays, as after a normal test)."""
        self.client().flushall()

    def cleanup(self) -> None:
        """Stop and remove the temp dir."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three ``--cluster-enabled`` masters (no replicas) joined by ``redis-cli --cluster``."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(size)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        create = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        subprocess.run(
            [*create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.ready, timeout=30, interval=0.05, what="cluster_state:ok everywhere")

    def ready(self) -> bool:
        """Every node says ``cluster_state:ok`` and knows every other node."""
        for node in self.nodes:
            try:
                info = node.client(timeout=0.5).cluster("INFO")
            except (redis.ConnectionError, redis.TimeoutError):
                return False
            known = int(info["cluster_known_nodes"])
            if info["cluster_state"] != "ok" or known != len(self.nodes):
                return False
        return True

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def owner(self, slot: int) -> RedisServer:
        """The master serving ``slot``, as the first node sees it."""
        ranges = self.nodes[0].client().execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        for start, end, master, *_ in ranges:
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == master[1])
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        node_id: bytes = node.client().execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
        return node_id.decode()

    def assign(self, slot: int, node: RedisServer) -> None:
        """``CLUSTER SETSLOT <slot> NODE <node>`` on every node: the slot has moved."""
        node_id = self.node_id(node)
        for each in self.nodes:
            each.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id)  # type: ignore[no-untyped-call]

    def ensure_running(self) -> None:
        """Resume or restart nodes a test paused or stopped, and wait for state ok."""
        for node in self.nodes:
            node.ensure_running()
        wait_until(self.ready, timeout=30, interval=0.05, what="cluster_state:ok everywhere")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class RedisSentinel:
    """One sentinel watching ``master`` as ``service``, with quorum 1.

    By default it takes a minute to call the master down, so stopping it in a test
    causes no failover; ``down_after_ms`` shortens that for failover tests.
    """

    def __init__(
        self, master: RedisServer, service: str = "gwmaster", *, down_after_ms: int = 60_000
    ) -> None:
        self.master = master
        self.service = service
        self.server = RedisServer(
            "--sentinel",
            config=f"sentinel monitor {service} {HOST} {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {max(3 * down_after_ms, 3000)}\n",
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.server.port}/{self.service}"

    def start(self) -> None:
        self.server.start()
        wait_until(self._knows_master, timeout=10, what="the sentinel to know its master")

    def master_port(self) -> int:
        """The master's port, as the sentinel currently names it."""
        reply = self.server.client().sentinel_get_master_addr_by_name(self.service)
        assert isinstance(reply, tuple)
        return int(reply[1])

    def _knows_master(self) -> bool:
        try:
            return self.master_port() == self.master.port
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def cleanup(self) -> None:
        self.server.cleanup()


def _cleanup_on_failure(start: Callable[[], None], cleanup: Callable[[], None]) -> None:
    try:
        start()
    except BaseException:
        cleanup()
        raise


@pytest.fixture(scope="session")
def redis_session_server() -> Iterator[RedisServer]:
    """One redis-server for the session; use ``redis_server`` in tests."""
    server = RedisServer()
    _cleanup_on_failure(server.start, server.cleanup)
    yield server
    server.cleanup()


@pytest.fixture
def redis_server(redis_session_server: RedisServer) -> Iterator[RedisServer]:
    """A running, empty redis-server; stop/kill/pause it freely, it is restored after."""
    redis_session_server.ensure_running()
    redis_session_server.flush()
    yield redis_session_server
    redis_session_server.ensure_running()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the session, state ok on every node."""
    cluster = RedisCluster()
    _cleanup_on_failure(cluster.start, cluster.cleanup)
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A master and one sentinel watching it, for the session."""
    master = RedisServer()
    sentinel = RedisSentinel(master)

    def start() -> None:
        master.start()
        sentinel.start()

    def cleanup() -> None:
        sentinel.cleanup()
        master.cleanup()

    _cleanup_on_failure(start, cleanup)
    yield sentinel
    cleanup()


__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "cluster_port",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
    "redis_session_server",
]
