"""A real Prometheus server for tests, scraping given targets every second.

::

    with PrometheusServer(["127.0.0.1:9100"], rule_files=[RULES]) as prom:
        prom.wait_scraped()
        ratio = prom.wait_for_value('some:rule{route="users"}', lambda v: v > 0)

It listens on a free port of 127.0.0.1, keeps its TSDB in its own temp dir, and scrapes and
evaluates rules every second. Rule files are used as they are (absolute paths).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.support.net import HOST, WaitTimeout, free_port, stop_process, wait_until

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def promtool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail (never skip) the calling test when it is not installed."""
    if not Path(PROMTOOL).exists():
        pytest.fail(f"{PROMTOOL} is missing: install the `prometheus` package (CI does)")
    return subprocess.run(
        [PROMTOOL, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class PrometheusServer:
    """One ``prometheus`` process; use as a context manager, or ``start()``/``stop()``."""

    def __init__(
        self,
        targets: Sequence[str],
        rule_files: Sequence[str | Path] = (),
        *,
        job: str = "gateway",
        metrics_path: str = "/metrics",
        binary: str = PROMETHEUS,
    ) -> None:
        self.targets = list(targets)
        self.rule_files = [str(Path(path).resolve()) for path in rule_files]
        self.job = job
        self.metrics_path = metrics_path
        self.binary = binary
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"prometheus-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=5.0)

    def config(self) -> str:
        """The prometheus.yml this server runs with (JSON is YAML)."""
        return json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": self.rule_files,
                "scrape_configs": [
                    {
                        "job_name": self.job,
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "metrics_path": self.metrics_path,
                        "static_configs": [{"targets": self.targets}],
                    }
                ],
            },
            indent=2,
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until ``/-/ready`` answers 200."""
        if not Path(self.binary).exists():
            pytest.fail(f"{self.binary} is missing: install the `prometheus` package (CI does)")
        config = self.dir / "prometheus.yml"
        config.write_text(self.config())
        log = (self.dir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._ready, timeout=timeout, interval=0.05)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log()}")
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        """The tail of the server's log, for failure messages."""
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _api(self, path: str, **params: str) -> Any:
        response = self._http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def wait_scraped(self, timeout: float = 20.0) -> None:
        """Wait until every target has been scraped successfully at least once."""

        def all_up() -> bool:
            active = self._api("targets", state="active")["activeTargets"]
            return len(active) == len(self.targets) and all(
                target["health"] == "up" for target in active
            )

        wait_until(all_up, timeout=timeout, interval=0.1)

    def query(self, expr: str) -> float | None:
        """The value of an instant query with at most one series, or None when it has none."""
        data = self._api("query", query=expr)
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        result = data["result"]
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{expr!r} gives {len(result)} series, expected at most one")
        return float(result[0]["value"][1])

    def wait_for_value(
        self, expr: str, predicate: Callable[[float], bool], timeout: float = 20.0
    ) -> float:
        """Poll ``expr`` until it has a value that satisfies ``predicate``; return it."""

        def satisfied() -> tuple[float] | None:
            value = self.query(expr)
            return (value,) if value is not None and predicate(value) else None

        try:
            return wait_until(satisfied, timeout=timeout, interval=0.2)[0]
        except WaitTimeout:
            raise TimeoutError(
                f"{expr!r} never satisfied the predicate in {timeout}s;"
                f" last value {self.query(expr)}\n{self.log()}"
            ) from None

    def stop(self) -> None:
        """Stop the server and remove its data."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        self._http.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
