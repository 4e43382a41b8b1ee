"""Starting, probing and stopping the benchmark's server processes.

Every server runs in its own session (process group), writes stdout and stderr to log
files, and is stopped with its whole group by ``Fleet`` however the run ends.
"""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

READY_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One GET to 127.0.0.1:``port``: status, headers (lower-case names) and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server and where it listens."""

    name: str
    argv: tuple[str, ...]
    port: int
    env: Mapping[str, str] | None = None  # None: inherit the harness's environment
    cwd: Path | None = None
    probe_path: str | None = "/bench/x"  # GET once the port opens; None: TCP only


@dataclass
class Server:
    """A started server process and its log files."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of stderr (or of stdout when stderr is empty)."""
        for path in (self.stderr_path, self.stdout_path):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                return "\n".join(text.splitlines()[-lines:])
        return "(no output)"

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        try:
            if self.alive():
                _signal_group(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=grace_s)
            # Children (nginx workers, uvicorn workers) may outlive their leader.
            _signal_group(self.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)
        finally:
            for log in self._logs:
                log.close()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signum)


@dataclass(frozen=True)
class Readiness:
    """Outcome of waiting for a server: ready or not, why not, and the probe's status."""

    ready: bool
    detail: str = ""
    probe_status: int | None = None


def wait_ready(
    server: Server,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> Readiness:
    """Poll until the port accepts connections (then probe it once over HTTP), the
    process exits, or ``timeout_s`` passes."""
    deadline = clock() + timeout_s
    while True:
        code = server.process.poll()
        if code is not None:
            return Readiness(False, f"process exited with code {code}")
        if port_open(server.spec.port):
            break
        if clock() > deadline:
            return Readiness(False, f"port {server.spec.port} not open within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)
    if server.spec.probe_path is None:
        return Readiness(True)
    try:
        status, _, _ = http_get(server.spec.port, server.spec.probe_path)
    except (OSError, http.client.HTTPException) as exc:
        return Readiness(False, f"HTTP probe failed: {exc!r}")
    detail = "" if 200 <= status < 400 else f"probe answered HTTP {status}"
    return Readiness(True, detail, status)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers
        return
    names = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Fleet:
    """Starts servers and stops every one of them on exit, in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def start(self, spec: ServerSpec) -> Server:
        """Start ``spec``'s process with its output in ``<log_dir>/<name>.{out,err}.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stdout_path = self.log_dir / f"{spec.name}.out.log"
        stderr_path = self.log_dir / f"{spec.name}.err.log"
        stdout, stderr = stdout_path.open("wb"), stderr_path.open("wb")
        try:
            process = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=None if spec.env is None else dict(spec.env),
                cwd=spec.cwd,
                start_new_session=True,
            )
        except OSError:
            stdout.close()
            stderr.close()
            raise
        server = Server(spec, process, stdout_path, stderr_path, [stdout, stderr])
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        """Stop every server started, newest first; one failure does not spare the rest,
        and a second Ctrl-C or SIGTERM meanwhile does not cut the cleanup short."""
        with _signals_ignored():
            while self.servers:
                server = self.servers.pop()
                try:
                    server.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"warning: could not stop {server.spec.name}: {exc!r}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
