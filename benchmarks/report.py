"""Per-run records, their summary over rounds, and the Markdown tables (pure)."""

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

OK = "ok"
FAILED_TO_START = "failed to start"
EXITED = "exited during the run"


@dataclass(frozen=True)
class CandidateStatus:
    """Whether a candidate ran, and if not, why (with the tail of its log)."""

    name: str
    state: str  # OK | FAILED_TO_START | EXITED
    detail: str = ""
    log_tail: str = ""
    port: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """One wrk run against one candidate."""

    candidate: str
    round: int
    connections: int
    threads: int
    duration_s: float
    requests: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_us_per_request: float | None = None
    redis_cpu_us_per_request: float | None = None
    error: str | None = None  # wrk failed or the candidate was not running
    wrk_output: str = ""


@dataclass(frozen=True)
class SummaryRow:
    """One candidate at one connection count, medians over the rounds."""

    candidate: str
    connections: int
    state: str
    runs: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_request: float | None = None
    redis_cpu_us_per_request: float | None = None
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    failed_runs: int = 0
    ratio: float | None = None  # rps / the reference's rps
    note: str = ""  # e.g. the candidate exited after some runs succeeded


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(
    records: Sequence[RunRecord],
    statuses: Sequence[CandidateStatus],
    connections: Sequence[int],
    reference: str,
) -> list[SummaryRow]:
    """Median figures per (connection count, candidate), in the order of ``statuses``."""
    rows: list[SummaryRow] = []
    for conns in connections:
        block: list[SummaryRow] = []
        for status in statuses:
            runs = [r for r in records if r.candidate == status.name and r.connections == conns]
            good = [r for r in runs if r.error is None and r.rps is not None]
            kinds: Counter[str] = Counter()
            for run in good:
                kinds["non-2xx"] += run.non_2xx
                kinds.update(run.socket_errors)
            state = status.state if status.state != OK else "no successful run"
            block.append(
                SummaryRow(
                    candidate=status.name,
                    connections=conns,
                    state=OK if good else state,
                    runs=len(good),
                    rps=_median(r.rps for r in good),
                    p50_ms=_median(r.p50_ms for r in good),
                    p99_ms=_median(r.p99_ms for r in good),
                    cpu_us_per_request=_median(r.cpu_us_per_request for r in good),
                    redis_cpu_us_per_request=_median(r.redis_cpu_us_per_request for r in good),
                    errors=sum(kinds.values()),
                    error_kinds={kind: count for kind, count in kinds.items() if count},
                    failed_runs=len(runs) - len(good),
                    note=status.state if good and status.state != OK else "",
                )
            )
        reference_rps = next((r.rps for r in block if r.candidate == reference), None)
        rows.extend(
            replace(row, ratio=row.rps / reference_rps)
            if row.rps is not None and reference_rps
            else row
            for row in block
        )
    return rows


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _errors(row: SummaryRow) -> str:
    parts = [f"{kind} {count:,}" for kind, count in sorted(row.error_kinds.items())]
    if row.failed_runs:
        parts.append(f"{row.failed_runs} failed wrk run(s)")
    total = f"{row.errors:,}"
    return f"**{total}** ({', '.join(parts)})" if parts else total


def markdown_table(rows: Sequence[SummaryRow], reference: str) -> str:
    """One Markdown table for the rows of a single connection count."""
    with_redis = any(row.redis_cpu_us_per_request is not None for row in rows)
    header = ["candidate", "rps", "p50 ms", "p99 ms", "CPU µs/req"]
    header += ["+redis µs/req"] if with_redis else []
    header += ["errors", f"vs {reference}"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        if row.state != OK:
            cells = [row.candidate, f"*{row.state}*"] + [""] * (len(header) - 2)
        else:
            cells = [
                f"{row.candidate} ({row.note})" if row.note else row.candidate,
                _number(row.rps, 0),
                _number(row.p50_ms, 2),
                _number(row.p99_ms, 2),
                _number(row.cpu_us_per_request, 1),
            ]
            if with_redis:
                cells.append(_number(row.redis_cpu_us_per_request, 1))
            cells += [_errors(row), "n/a" if row.ratio is None else f"{row.ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(
    rows: Sequence[SummaryRow],
    statuses: Sequence[CandidateStatus],
    *,
    reference: str,
    rounds: int,
    duration_s: float,
    threads: int,
) -> str:
    """Every table (one per connection count) and the logs of candidates that did not run."""
    parts: list[str] = []
    for conns in dict.fromkeys(row.connections for row in rows):
        parts.append(
            f"### {conns} connections — wrk -t{threads}, {duration_s:g} s x {rounds} round(s), "
            "medians over rounds\n"
        )
        parts.append(markdown_table([r for r in rows if r.connections == conns], reference))
        parts.append("")
    for status in statuses:
        if status.state != OK or status.detail:
            parts.append(f"**{status.name}**: {status.state}; {status.detail}".rstrip("; "))
            if status.state != OK:
                parts.append(f"```\n{status.log_tail}\n```")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"
