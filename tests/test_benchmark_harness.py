"""The benchmark harness: its parsers and tables, the two reference proxies, one short run."""

import http.client
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks import candidates as cand
from benchmarks.configs import (
    UPSTREAM_BODY,
    gateway_config,
    gateway_yaml,
    nginx_upstream_conf,
)
from benchmarks.cpu import ProcStat, parse_proc_stat, tree_ticks
from benchmarks.harness import main
from benchmarks.profiling import function_stats, parse_collapsed, speedscope_document
from benchmarks.proxy_common import end_to_end
from benchmarks.report import (
    FAILED_TO_START,
    OK,
    CandidateStatus,
    RunRecord,
    markdown_report,
    summarize,
)
from benchmarks.servers import Fleet, ServerSpec, free_port, http_get, wait_ready
from benchmarks.wrk import WrkParseError, parse_wrk_output

WRK_CLEAN = """\
Running 2s test @ http://127.0.0.1:47925/bench/x
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   195.65us  161.23us   4.14ms   97.11%
    Req/Sec   139.98k    17.43k  173.22k    65.00%
  Latency Distribution
     50%  190.00us
     75%  225.00us
     90%  275.00us
     99%  498.00us
  277919 requests in 2.00s, 97.27MB read
Requests/sec: 138860.84
Transfer/sec:     48.60MB
"""

WRK_ERRORS = """\
Running 1s test @ http://127.0.0.1:18090/
  1 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.88ms    4.75ms  24.44ms   94.10%
    Req/Sec     1.95k     1.79k    3.73k    66.67%
  Latency Distribution
     50%  437.00us
     75%  588.00us
     90%    4.22ms
     99%    1.50s
  2862 requests in 1.02s, 494.70KB read
  Socket errors: connect 0, read 35883, write 0, timeout 7
  Non-2xx or 3xx responses: 2862
Requests/sec:   2803.59
Transfer/sec:    484.60KB
"""

HAVE_LOAD_TOOLS = shutil.which("wrk") is not None and (
    shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
)


def test_wrk_report_is_parsed() -> None:
    result = parse_wrk_output(WRK_CLEAN)
    assert result.requests == 277919
    assert result.rps == pytest.approx(138860.84)
    assert result.duration_s == pytest.approx(2.0)
    assert result.latency_ms["50"] == pytest.approx(0.19)
    assert result.latency_ms["99"] == pytest.approx(0.498)
    assert result.errors == 0


def test_wrk_errors_and_units_are_parsed() -> None:
    result = parse_wrk_output(WRK_ERRORS)
    assert result.non_2xx == 2862
    assert result.socket_errors == {"read": 35883, "timeout": 7}
    assert result.errors == 2862 + 35883 + 7
    assert result.latency_ms["90"] == pytest.approx(4.22)
    assert result.latency_ms["99"] == pytest.approx(1500.0)


def test_incomplete_wrk_output_is_an_error() -> None:
    with pytest.raises(WrkParseError):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_proc_stat_with_awkward_command_name() -> None:
    fields = ["S", "7"] + ["0"] * 9 + ["120", "30", "5", "1"] + ["0"] * 30
    stat = parse_proc_stat("42 (py (x) y) " + " ".join(fields))
    assert stat == ProcStat(pid=42, ppid=7, ticks=156)


def test_tree_ticks_sums_descendants_only() -> None:
    stats = [
        ProcStat(1, 0, 1000),  # init: not ours
        ProcStat(10, 1, 5),  # the server
        ProcStat(11, 10, 7),  # its worker
        ProcStat(12, 11, 2),  # the worker's child
        ProcStat(20, 1, 300),  # a neighbour
    ]
    assert tree_ticks(stats, 10) == 14
    assert tree_ticks(stats, 99) == 0


def test_end_to_end_headers_drop_hop_by_hop_and_connection_listed() -> None:
    headers = [
        ("Host", "a"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    kept = end_to_end(headers, drop=("host",))
    assert kept == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


def test_upstream_body_is_json_and_nginx_safe(tmp_path: Path) -> None:
    assert 150 <= len(UPSTREAM_BODY) <= 250
    assert json.loads(UPSTREAM_BODY)["ok"] is True
    conf = nginx_upstream_conf(prefix=tmp_path, port=8000)
    assert f"return 200 '{UPSTREAM_BODY}';" in conf
    with pytest.raises(ValueError, match="must not contain"):
        nginx_upstream_conf(prefix=tmp_path, port=8000, body='{"price":"$5"}')


def test_gateway_configs_follow_the_spec_schema() -> None:
    plain = gateway_config(port=1, admin_port=2, upstream_url="http://127.0.0.1:3")
    assert plain["routes"] == [{"name": "bench", "path_prefix": "/", "upstream": "bench"}]
    assert "redis" not in plain
    assert "rate_limits" not in plain
    limited = gateway_config(
        port=1,
        admin_port=2,
        upstream_url="http://127.0.0.1:3",
        rate_limited=True,
        redis_url="redis://127.0.0.1:4/0",
    )
    assert limited["routes"][0]["rate_limit"] == "bench"
    assert limited["redis"] == {"url": "redis://127.0.0.1:4/0"}
    policy = limited["rate_limits"]["bench"]
    assert policy["key"] == "client_ip"
    assert policy["limits"] == [{"capacity": 100_000_000, "refill": "100000000/s"}]
    assert "refill: 100000000/s" in gateway_yaml(limited)


def test_candidate_selection() -> None:
    assert cand.select([], ["upstream"]) == list(cand.ALL[1:])
    assert cand.select(["gateway", "upstream"], []) == ["upstream", "gateway"]
    with pytest.raises(ValueError, match="nope"):
        cand.select(["nope"], [])


def _record(name: str, round_no: int, rps: float, cpu: float, non_2xx: int = 0) -> RunRecord:
    return RunRecord(
        name,
        round_no,
        32,
        1,
        5,
        requests=int(rps * 5),
        rps=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        non_2xx=non_2xx,
        cpu_us_per_request=cpu,
    )


def test_summary_takes_medians_and_ratios_against_the_reference() -> None:
    records = [
        _record("aiohttp-proxy", 1, 1000, 200),
        _record("aiohttp-proxy", 2, 3000, 100),
        _record("aiohttp-proxy", 3, 2000, 150),
        _record("gateway", 1, 500, 400, non_2xx=3),
        _record("gateway", 2, 700, 300),
        RunRecord("gateway", 3, 32, 1, 5, error="wrk exited with code 1"),
    ]
    statuses = [
        CandidateStatus("aiohttp-proxy", OK),
        CandidateStatus("gateway", OK),
        CandidateStatus("naive-proxy", FAILED_TO_START, "process exited", "Traceback ..."),
    ]
    rows = summarize(records, statuses, [32], "aiohttp-proxy")
    reference, gateway, naive = rows
    assert (reference.rps, reference.cpu_us_per_request, reference.ratio) == (2000, 150, 1.0)
    assert (gateway.rps, gateway.ratio, gateway.runs, gateway.failed_runs) == (600, 0.3, 2, 1)
    assert gateway.errors == 3
    assert naive.state == FAILED_TO_START
    assert naive.rps is None
    text = markdown_report(
        rows, statuses, reference="aiohttp-proxy", rounds=3, duration_s=5, threads=1
    )
    assert "| aiohttp-proxy | 2,000 | 1.00 | 2.00 | 150.0 | 0 | 1.00x |" in text
    assert "| gateway | 600 |" in text
    assert "**3** (non-2xx 3, 1 failed wrk run(s))" in text
    assert "| naive-proxy | *failed to start* |" in text
    assert "Traceback ..." in text


def test_collapsed_stacks_aggregate_into_own_and_total() -> None:
    raw = (
        'process 12:"python -m gateway";main (a.py:1);handle (b.py:5);parse (c.py:9) 6\n'
        'process 12:"python -m gateway";main (a.py:1);handle (b.py:5) 3\n'
        'process 12:"python -m gateway";main (a.py:1);rec (d.py:2);rec (d.py:2) 1\n'
    )
    stacks = parse_collapsed(raw)
    assert stacks[0] == (("main (a.py:1)", "handle (b.py:5)", "parse (c.py:9)"), 6)
    stats = {s.name: (s.own, s.total) for s in function_stats(stacks)}
    assert stats["parse (c.py:9)"] == (6, 6)
    assert stats["handle (b.py:5)"] == (3, 9)
    assert stats["main (a.py:1)"] == (0, 10)
    assert stats["rec (d.py:2)"] == (1, 1)  # recursion counts once per sample
    document = speedscope_document(stacks, "gateway")
    frames = document["shared"]["frames"]
    assert frames[0] == {"name": "main", "file": "a.py", "line": 1}
    assert document["profiles"][0]["weights"] == [6, 3, 1]
    assert document["profiles"][0]["samples"][1] == [0, 1]


def test_a_server_that_never_listens_is_reported_and_stopped(tmp_path: Path) -> None:
    spec = ServerSpec(
        "sleeper",
        (
            sys.executable,
            "-c",
            "import sys, time; print('booting', file=sys.stderr, flush=True); time.sleep(60)",
        ),
        free_port(),
    )
    with Fleet(tmp_path) as fleet:
        server = fleet.start(spec)
        readiness = wait_ready(server, timeout_s=1.0)
        assert not readiness.ready
        assert "not open within" in readiness.detail
    assert not server.alive()
    assert "booting" in server.log_tail()


class _Echo(BaseHTTPRequestHandler):
    """Answers with what it received, so a test can see what a proxy forwarded."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        echoed = {
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body,
        }
        payload = json.dumps(echoed).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("name", [cand.AIOHTTP_PROXY, cand.NAIVE_PROXY])
def test_reference_proxies_forward_honestly(name: str, echo_port: int, tmp_path: Path) -> None:
    workspace = cand.Workspace(
        repo=Path(__file__).resolve().parent.parent,
        conf_dir=tmp_path,
        scratch=tmp_path,
        python=sys.executable,
    )
    spec = cand.proxy_spec(workspace, name, free_port(), echo_port, None)
    with Fleet(tmp_path / "logs") as fleet:
        server = fleet.start(spec)
        readiness = wait_ready(server, timeout_s=15.0)
        assert readiness.ready, server.log_tail()
        connection = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=10)
        try:
            connection.request(
                "POST",
                "/some/path?a=1&b=%2F",
                body=b"hello upstream",
                headers={"X-Custom": "kept", "Connection": "keep-alive, X-Secret", "X-Secret": "s"},
            )
            response = connection.getresponse()
            echoed = json.loads(response.read())
        finally:
            connection.close()
        status, headers, _ = http_get(spec.port, "/again")
    assert response.status == 201
    assert response.getheader("X-Upstream") == "echo"
    assert response.getheader("Content-Type") == "application/json"
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/some/path?a=1&b=%2F"
    assert echoed["body"] == "hello upstream"
    assert echoed["headers"]["x-custom"] == "kept"
    assert "x-secret" not in echoed["headers"]
    assert echoed["headers"]["host"] == f"127.0.0.1:{echo_port}"
    assert (status, headers["x-upstream"]) == (201, "echo")


@pytest.mark.skipif(not HAVE_LOAD_TOOLS, reason="needs wrk and nginx (apt-get install wrk nginx)")
def test_a_short_run_measures_the_references_and_reports_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / "out.json"
    code = main(
        [
            "--rounds", "1", "--duration", "1", "--warmup", "0", "--connections", "4",
            "--only", "upstream,aiohttp-proxy,gateway-ratelimited-memory",
            "--json", str(json_path), "--results-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads(json_path.read_text())
    summary = {row["candidate"]: row for row in document["summary"]}
    assert summary["aiohttp-proxy"]["rps"] > 0
    assert summary["aiohttp-proxy"]["ratio"] == 1.0
    assert summary["aiohttp-proxy"]["cpu_us_per_request"] > 0
    assert summary["upstream"]["errors"] == 0
    assert "| aiohttp-proxy |" in printed
    # The gateway is optional here: running or not, it must be accounted for.
    assert summary["gateway-ratelimited-memory"]["state"] in (OK, FAILED_TO_START)
    assert "gateway-ratelimited-memory" in printed
