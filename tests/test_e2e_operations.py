"""Operations end to end: reload by signal and endpoint, shutdown, several workers."""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import Gateway, port_open, wait_until
from tests.support.upstream import Upstream

GatewayFactory = Callable[..., Gateway]


def two_routes(upstream: Upstream, names: list[str]) -> dict[str, Any]:
    return {
        "upstreams": {name: {"targets": [upstream.url]} for name in names},
        "routes": [{"name": n, "path_prefix": f"/{n}", "upstream": n} for n in names],
    }


def status(gw: Gateway, path: str) -> int:
    return httpx.get(gw.url + path, timeout=10).status_code


def reloads(gw: Gateway, result: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_config_reloads_total" and s.labels["result"] == result:
                return s.value
    return 0.0


def rewrite(gw: Gateway, config: dict[str, Any]) -> None:
    keep = {k: gw.config[k] for k in ("server", "admin")}
    gw.write_config({**config, **keep})


def test_reload_by_signal_adds_and_removes_routes(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]))
    assert status(gw, "/a/echo") == 200
    assert status(gw, "/b/echo") == 404
    rewrite(gw, two_routes(upstream, ["b"]))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: status(gw, "/b/echo") == 200, what="route b after SIGHUP")
    assert status(gw, "/a/echo") == 404
    assert reloads(gw, "success") == 1


def test_reload_by_admin_endpoint(start_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]))
    rewrite(gw, two_routes(upstream, ["a", "b"]))
    r = httpx.post(gw.admin_url + "/-/reload", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"reloaded": True, "errors": []}
    assert status(gw, "/b/echo") == 200  # at once: the endpoint answers after the swap
    assert status(gw, "/a/echo") == 200


def test_invalid_file_is_rejected_and_the_old_config_keeps_serving(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]))
    gw.config_path.write_text("routes:\n  - name: a\n    path_prefixx: /a\n")
    r = httpx.post(gw.admin_url + "/-/reload", timeout=10)
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert (
        f"{gw.config_path}:3: routes[0].path_prefixx: unknown key (did you mean path_prefix?)"
        in (errors)
    )
    gw.signal(signal.SIGHUP)
    wait_until(lambda: reloads(gw, "failure") == 2, what="the rejected SIGHUP reload counted")
    assert status(gw, "/a/echo") == 200
    assert reloads(gw, "success") == 0
    assert "reload rejected" in gw.log()


def test_request_in_flight_finishes_across_a_reload(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]))
    slow, result = _slow_request(gw)
    rewrite(gw, two_routes(upstream, ["b"]))  # removes route a and its upstream
    assert httpx.post(gw.admin_url + "/-/reload", timeout=10).status_code == 200
    assert status(gw, "/a/echo") == 404  # new requests see the new config
    slow.join(10)
    assert result[0].status_code == 200  # the old one finished under the old config
    assert result[0].text == "slow"


def _slow_request(gw: Gateway) -> tuple[threading.Thread, list[httpx.Response]]:
    """A 1.5 s request on route a, running in a thread once this returns."""
    result: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: result.append(httpx.get(gw.url + "/a/delay/1.5", timeout=10))
    )
    slow.start()
    wait_until(lambda: _inflight(gw) == 1, what="the slow request in flight")
    return slow, result


def _inflight(gw: Gateway) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_in_flight_requests":
            return family.samples[0].value
    return -1.0


def test_sigterm_drains_in_flight_requests_and_exits_0(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]))
    slow, result = _slow_request(gw)
    gw.signal(signal.SIGTERM)
    wait_until(lambda: not port_open(gw.port), timeout=5, what="stop accepting")
    # Still draining: the admin port tells load balancers to stop sending.
    ready = httpx.get(gw.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["not_ready"] == ["accepting"]
    slow.join(10)
    assert gw.proc is not None
    assert gw.proc.wait(15) == 0
    assert result[0].status_code == 200
    assert result[0].text == "slow"


def _worker_pids(gw: Gateway) -> list[int]:
    assert gw.proc is not None
    return [
        p.pid for p in psutil.Process(gw.proc.pid).children() if "spawn" in " ".join(p.cmdline())
    ]


def _per_worker_requests(gw: Gateway, pid: int) -> float:
    # A spawned worker's environment shows the directory the parent chose before spawning.
    directory = Path(psutil.Process(pid).environ()["PROMETHEUS_MULTIPROC_DIR"])
    alone = gw.workdir / f"metrics-{pid}"
    alone.mkdir()
    for f in directory.glob(f"*_{pid}.db"):
        shutil.copy(f, alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(alone))  # type: ignore[no-untyped-call]
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == "gateway_requests_total":
                total += s.value
    return total


def test_two_workers_serve_sum_their_metrics_and_reload(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = start_gateway(two_routes(upstream, ["a"]), args=["--workers", "2"])
    wait_until(lambda: len(_worker_pids(gw)) == 2, what="two workers")
    n = 200
    for _ in range(n):  # a new connection each: the kernel spreads them over both workers
        assert status(gw, "/a/echo") == 200
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    summed = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "gateway_requests_total"
    )
    assert summed == n
    per_worker = [_per_worker_requests(gw, pid) for pid in _worker_pids(gw)]
    assert sum(per_worker) == n
    assert all(count > 0 for count in per_worker), per_worker

    rewrite(gw, two_routes(upstream, ["a", "b"]))
    gw.signal(signal.SIGHUP)
    wait_until(
        lambda: all(status(gw, "/b/echo") == 200 for _ in range(20)),
        what="every worker serving route b",
    )
    r = httpx.post(gw.admin_url + "/-/reload", timeout=10)
    assert r.json() == {"reloaded": True, "errors": []}
    assert reloads(gw, "success") == 2
    assert gw.stop() == 0
