"""The benchmark run: start every candidate side by side, load them with wrk in
interleaved rounds, measure CPU per request, print Markdown tables, write JSON."""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import candidates as cand
from benchmarks.cpu import tree_cpu_seconds
from benchmarks.profiling import (
    find_py_spy,
    format_top,
    function_stats,
    parse_collapsed,
    py_spy_command,
    speedscope_document,
    start_py_spy,
)
from benchmarks.report import (
    EXITED,
    FAILED_TO_START,
    OK,
    CandidateStatus,
    RunRecord,
    markdown_report,
    summarize,
)
from benchmarks.servers import Fleet, Server, free_port, wait_ready
from benchmarks.wrk import WrkParseError, parse_wrk_output, run_wrk, wrk_command

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    rounds: int
    duration_s: int
    connections: list[int]
    threads: int
    only: list[str]
    skip: list[str]
    profile: list[str]  # candidates to py-spy after the rounds; empty: none
    json_path: Path | None
    warmup_s: int
    results_dir: Path


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas")
    return values


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Throughput and CPU/request of the gateway against nginx and bare "
        "Python proxies, all started side by side and loaded by wrk in interleaved rounds.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument(
        "--connections",
        type=_positive_ints,
        default=[8, 32, 64],
        help="comma-separated wrk connection counts (default 8,32,64)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--only", type=_names, default=[], help="candidates to run (a,b)")
    parser.add_argument("--skip", type=_names, default=[], help="candidates to leave out (a,b)")
    parser.add_argument(
        "--profile",
        type=_names,
        nargs="?",
        const=list(cand.PROFILED),
        default=[],
        metavar="NAMES",
        help="after the rounds, py-spy these candidates under load "
        f"(default: {','.join(cand.PROFILED)})",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="raw results (default RESULTS_DIR/<time>.json)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where logs, configs and profiles go (default benchmarks/results)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="warm-up seconds per candidate (default 2)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --threads must be at least 1, --warmup >= 0")
    try:
        cand.select(args.only, args.skip)
        cand.select(args.profile, [])
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        rounds=args.rounds,
        duration_s=args.duration,
        connections=args.connections,
        threads=args.threads,
        only=args.only,
        skip=args.skip,
        profile=args.profile,
        json_path=args.json,
        warmup_s=args.warmup,
        results_dir=args.results_dir,
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Bench:
    """One benchmark run's state: the servers, their statuses and the records so far."""

    options: Options
    workspace: cand.Workspace
    fleet: Fleet
    wrk: str
    run_dir: Path
    selected: list[str]
    statuses: dict[str, CandidateStatus] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    redis: Server | None = None
    warmups: list[RunRecord] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    # -- starting ---------------------------------------------------------------

    def _start(self, name: str, server: Server) -> bool:
        readiness = wait_ready(server)
        if readiness.ready:
            self.servers[name] = server
            self.statuses[name] = CandidateStatus(
                name, OK, readiness.detail, port=server.spec.port, pid=server.pid
            )
            _log(f"  {name}: ready on port {server.spec.port} (pid {server.pid})")
            return True
        tail = server.log_tail()
        self.statuses[name] = CandidateStatus(
            name, FAILED_TO_START, readiness.detail, tail, port=server.spec.port
        )
        _log(f"  {name}: FAILED TO START ({readiness.detail})\n    " + tail.replace("\n", "\n    "))
        server.stop()
        return False

    def start_all(self) -> bool:
        """Start the upstream, Redis if needed and every selected candidate; False when
        the upstream itself could not start (nothing can be measured then)."""
        _log("starting servers (logs in " + str(self.fleet.log_dir) + ")")
        upstream_port = free_port()
        upstream = self.fleet.start(cand.upstream_spec(self.workspace, upstream_port))
        if not self._start(cand.UPSTREAM, upstream):
            return False
        redis_port: int | None = None
        redis_error = ""
        if cand.USES_REDIS.intersection(self.selected):
            redis_port = free_port()
            redis = self.fleet.start(cand.redis_spec(self.workspace, redis_port))
            readiness = wait_ready(redis)
            if readiness.ready:
                self.redis = redis
            else:
                redis_error = f"redis-server did not start: {readiness.detail}"
                _log(f"  {redis_error}")
        for name in self.selected:
            if name == cand.UPSTREAM:
                continue
            if name in cand.USES_REDIS and redis_error:
                self.statuses[name] = CandidateStatus(name, FAILED_TO_START, redis_error)
                continue
            spec = cand.proxy_spec(self.workspace, name, free_port(), upstream_port, redis_port)
            self._start(name, self.fleet.start(spec))
        return True

    # -- measuring --------------------------------------------------------------

    def _check_alive(self, name: str) -> bool:
        server = self.servers.get(name)
        if server is None:
            return False
        if server.alive():
            return True
        status = self.statuses[name]
        detail = f"exited with code {server.process.returncode}"
        self.statuses[name] = dataclasses.replace(
            status, state=EXITED, detail=detail, log_tail=server.log_tail()
        )
        del self.servers[name]
        _log(f"  {name}: {detail}")
        return False

    def measure(self, name: str, connections: int, duration_s: float, round_no: int) -> RunRecord:
        """One wrk run against ``name``, with the CPU its process tree spent meanwhile."""
        base = RunRecord(name, round_no, connections, self.options.threads, duration_s)
        if not self._check_alive(name):
            return dataclasses.replace(base, error=f"not running ({self.statuses[name].state})")
        server = self.servers[name]
        url = f"http://127.0.0.1:{server.spec.port}{cand.BENCH_PATH}"
        argv = wrk_command(
            self.wrk,
            url,
            threads=self.options.threads,
            connections=connections,
            duration_s=duration_s,
        )
        redis = self.redis if name in cand.USES_REDIS else None
        cpu_before = tree_cpu_seconds(server.pid)
        redis_before = tree_cpu_seconds(redis.pid) if redis else 0.0
        try:
            run = run_wrk(argv, duration_s=duration_s)
        except subprocess.TimeoutExpired:
            return dataclasses.replace(base, error="wrk did not finish in time")
        cpu_s = tree_cpu_seconds(server.pid) - cpu_before
        redis_s = tree_cpu_seconds(redis.pid) - redis_before if redis else None
        self._check_alive(name)
        if run.returncode != 0:
            error = f"wrk exited with code {run.returncode}: {run.stderr.strip()[-300:]}"
            return dataclasses.replace(base, error=error, wrk_output=run.stdout)
        try:
            result = parse_wrk_output(run.stdout)
        except WrkParseError as exc:
            return dataclasses.replace(base, error=str(exc), wrk_output=run.stdout)
        per_request = 1e6 / result.requests if result.requests else None
        return dataclasses.replace(
            base,
            requests=result.requests,
            rps=result.rps,
            p50_ms=result.latency_ms.get("50"),
            p99_ms=result.latency_ms.get("99"),
            non_2xx=result.non_2xx,
            socket_errors=result.socket_errors,
            cpu_us_per_request=cpu_s * per_request if per_request else None,
            redis_cpu_us_per_request=(
                redis_s * per_request if per_request and redis_s is not None else None
            ),
            wrk_output=run.stdout,
        )

    def running(self) -> list[str]:
        return [name for name in self.selected if name in self.servers]

    def warm_up(self) -> None:
        """A short run per candidate at the highest connection count, not reported."""
        if self.options.warmup_s <= 0:
            return
        _log(f"warm-up: {self.options.warmup_s:g} s per candidate")
        for name in self.running():
            record = self.measure(name, max(self.options.connections), self.options.warmup_s, 0)
            self.warmups.append(record)

    def run_rounds(self) -> None:
        """For each round, each connection count, each candidate: one measured wrk run."""
        for round_no in range(1, self.options.rounds + 1):
            for connections in self.options.connections:
                for name in self.running():
                    record = self.measure(name, connections, self.options.duration_s, round_no)
                    self.records.append(record)
                    _log(f"  round {round_no} c={connections} {name}: {_progress(record)}")

    # -- profiling --------------------------------------------------------------

    def profile(self) -> None:
        """py-spy each running gateway candidate under one more wrk run."""
        py_spy = find_py_spy()
        targets = [name for name in self.options.profile if name in self.servers]
        if not targets:
            _log("profile: none of the candidates to profile is running")
            return
        if py_spy is None:
            _log("profile: py-spy not found; install it with: pip install -e '.[bench]'")
            return
        for name in targets:
            self.profiles.append(self._profile_one(py_spy, name))

    def _profile_one(self, py_spy: str, name: str) -> dict[str, Any]:
        server = self.servers[name]
        duration = self.options.duration_s
        connections = max(self.options.connections)
        raw_path = self.run_dir / f"profile-{name}.collapsed.txt"
        argv = py_spy_command(py_spy, server.pid, duration + 1, raw_path)
        spy = start_py_spy(argv, self.fleet.log_dir / f"py-spy-{name}.log")
        try:
            record = self.measure(name, connections, duration, -1)
            spy.wait(timeout=duration + 30)
        finally:
            if spy.poll() is None:
                spy.terminate()
                spy.wait(timeout=10)
        if spy.returncode != 0 or not raw_path.exists():
            _log(f"profile {name}: py-spy failed (exit {spy.returncode}); see its log")
            return {"candidate": name, "error": f"py-spy exited with {spy.returncode}"}
        stacks = parse_collapsed(raw_path.read_text())
        samples = sum(count for _, count in stacks)
        stats = function_stats(stacks)
        title = f"py-spy profile of {name} under wrk -c{connections} for {duration:g} s"
        top_path = self.run_dir / f"profile-{name}.top.txt"
        top_path.write_text(format_top(stats, samples, 25, title))
        speedscope_path = self.run_dir / f"profile-{name}.speedscope.json"
        speedscope_path.write_text(json.dumps(speedscope_document(stacks, name)))
        print(f"\n{name}: speedscope {speedscope_path}\n{name}: top functions {top_path}")
        print(format_top(stats, samples, 15, title))
        return {
            "candidate": name,
            "samples": samples,
            "collapsed": str(raw_path),
            "speedscope": str(speedscope_path),
            "top": str(top_path),
            "run": dataclasses.asdict(record),
        }


def _progress(record: RunRecord) -> str:
    if record.error is not None:
        return f"error: {record.error}"
    cpu = record.cpu_us_per_request
    return (
        f"{record.rps or 0:,.0f} rps, p99 {record.p99_ms or 0:.2f} ms, "
        f"{'n/a' if cpu is None else f'{cpu:.1f}'} µs CPU/req, "
        f"{record.non_2xx + sum(record.socket_errors.values())} errors"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, so every server gets stopped.
    raise KeyboardInterrupt


def _tool_versions(nginx: str, wrk: str) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return repr(exc)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else ""

    return {"nginx": first_line([nginx, "-v"]), "wrk": first_line([wrk, "-v"])}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit code is 0 unless the run could not happen at all."""
    options = parse_args(argv)
    selected = cand.select(options.only, options.skip)
    wrk = shutil.which("wrk")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if wrk is None or not os.access(nginx, os.X_OK):
        _log("wrk and nginx are required (apt-get install wrk nginx-light)")
        return 2
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    run_dir = options.results_dir / stamp
    json_path = options.json_path or options.results_dir / f"{stamp}.json"
    (run_dir / "conf").mkdir(parents=True, exist_ok=True)
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="gwbench-") as scratch,
            Fleet(run_dir / "logs") as fleet,
        ):
            workspace = cand.Workspace(
                repo=REPO,
                conf_dir=run_dir / "conf",
                scratch=Path(scratch),
                python=sys.executable,
                nginx=nginx,
            )
            bench = Bench(options, workspace, fleet, wrk, run_dir, selected)
            try:
                if not bench.start_all():
                    _log("the upstream nginx did not start; nothing to measure")
                    return 1
                bench.warm_up()
                bench.run_rounds()
                if options.profile:
                    bench.profile()
            except KeyboardInterrupt:
                interrupted = True
                _log("interrupted: stopping servers, reporting what was measured")
    finally:
        signal.signal(signal.SIGTERM, previous)
    statuses = [bench.statuses[name] for name in selected if name in bench.statuses]
    rows = summarize(bench.records, statuses, options.connections, cand.REFERENCE)
    print()
    print(
        markdown_report(
            rows,
            statuses,
            reference=cand.REFERENCE,
            rounds=options.rounds,
            duration_s=options.duration_s,
            threads=options.threads,
        )
    )
    document = {
        "started_at": started.isoformat(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "interrupted": interrupted,
        "options": {
            **dataclasses.asdict(options),
            "json_path": str(json_path),
            "results_dir": str(options.results_dir),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version,
            **_tool_versions(nginx, wrk),
        },
        "reference": cand.REFERENCE,
        "results_dir": str(run_dir),
        "candidates": [dataclasses.asdict(status) for status in statuses],
        "summary": [dataclasses.asdict(row) for row in rows],
        "runs": [dataclasses.asdict(record) for record in bench.records],
        "warmup": [dataclasses.asdict(record) for record in bench.warmups],
        "profiles": bench.profiles,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"raw results: {json_path}\nlogs and configs: {run_dir}")
    return 130 if interrupted else 0
