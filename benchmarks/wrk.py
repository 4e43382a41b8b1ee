"""Running wrk and parsing its text report."""

import re
import subprocess
from dataclasses import dataclass, field

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkParseError(ValueError):
    """wrk printed something that is not a complete report."""


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run."""

    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]  # percentile ("50", "99", ...) -> milliseconds
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)  # only the non-zero kinds

    @property
    def errors(self) -> int:
        """Responses outside 2xx/3xx plus socket errors of every kind."""
        return self.non_2xx + sum(self.socket_errors.values())


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the report of ``wrk --latency``; raise ``WrkParseError`` if it is incomplete."""
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if requests is None or rps is None:
        raise WrkParseError(f"no request count or Requests/sec in wrk output: {text[-300:]!r}")
    latency = {
        match.group(1): _ms(match.group(2), match.group(3)) for match in _PERCENTILE.finditer(text)
    }
    socket_errors: dict[str, int] = {}
    socket_match = _SOCKET_ERRORS.search(text)
    if socket_match is not None:
        kinds = ("connect", "read", "write", "timeout")
        socket_errors = {
            kind: int(count)
            for kind, count in zip(kinds, socket_match.groups(), strict=True)
            if int(count)
        }
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=_ms(requests.group(2), requests.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_command(
    wrk: str, url: str, *, threads: int, connections: int, duration_s: float
) -> list[str]:
    """The wrk argv for one latency-reporting run."""
    return [
        wrk,
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration_s))}s",
        url,
    ]


@dataclass(frozen=True)
class WrkRun:
    """What one wrk process printed, and its exit code."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_wrk(argv: list[str], *, duration_s: float) -> WrkRun:
    """Run wrk to completion (bounded by ``duration_s`` plus a margin) and capture it."""
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    return WrkRun(argv, completed.returncode, completed.stdout, completed.stderr)
