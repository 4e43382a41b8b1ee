"""The gateway as a real process for end-to-end tests: `python -m gateway run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.net import free_port, port_open, wait_until

__all__ = ["ROOT", "Gateway", "port_open", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]


class Gateway:
    """A running gateway process with its ports, config file and log."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.admin_port = free_port()
        server = config.setdefault("server", {})
        server.setdefault("host", "127.0.0.1")
        server["port"] = self.port
        admin = config.setdefault("admin", {})
        admin["host"] = "127.0.0.1"
        admin["port"] = self.admin_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.workdir = workdir
        self.config_path = workdir / "gateway.yaml"
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.args = args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> Gateway:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path), *self.args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gateway did not become ready:\n{self.log()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            r = httpx.get(self.admin_url + "/healthz", timeout=0.5)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and port_open(self.port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._log.close()
        self.proc = None
        return proc.returncode
