"""gateway.metrics: SPEC section 6 names, pre-bound children, multiprocess aggregation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    MULTIPROC_ENV,
    NO_ROUTE,
    OTHER_METHOD,
    Metrics,
    mark_process_dead,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
    render,
)
from tests.support.exporter_stub import touch_every_metric
from tests.support.prometheus_server import promtool

ROOT = Path(__file__).resolve().parents[1]

# SPEC section 6, as written there.
SPEC_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "gateway_requests_total": ("counter", frozenset({"route", "method", "code"})),
    "gateway_request_duration_seconds": ("histogram", frozenset({"route", "method"})),
    "gateway_errors_total": ("counter", frozenset({"route", "code", "source"})),
    "gateway_upstream_responses_total": ("counter", frozenset({"upstream", "code"})),
    "gateway_upstream_failures_total": ("counter", frozenset({"upstream", "kind"})),
    "gateway_upstream_retries_total": ("counter", frozenset({"upstream"})),
    "gateway_circuit_breaker_state": ("gauge", frozenset({"upstream", "target"})),
    "gateway_upstream_healthy_targets": ("gauge", frozenset({"upstream"})),
    "gateway_rate_limit_decisions_total": (
        "counter",
        frozenset({"route", "policy", "decision"}),
    ),
    "gateway_rate_limit_backend_seconds": ("histogram", frozenset({"backend"})),
    "gateway_rate_limit_backend_up": ("gauge", frozenset({"backend"})),
    "gateway_in_flight_requests": ("gauge", frozenset()),
    "gateway_config_reloads_total": ("counter", frozenset({"result"})),
}


def exposed(body: bytes) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name (counters with ``_total``, as SPEC writes them) -> (type, label names)."""
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        families[name] = (family.type, frozenset(labels))
    return families


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def no_multiproc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PROMETHEUS_MULTIPROC_DIR during the test, and none left after it, whatever the
    test (or the code under test) sets."""
    monkeypatch.setenv(MULTIPROC_ENV, "")  # records the original state for the undo
    monkeypatch.delenv(MULTIPROC_ENV)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def test_exposition_has_exactly_the_spec_metrics(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    touch_every_metric(metrics)
    body, content_type = render(registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert exposed(body) == SPEC_METRICS


def test_exposition_passes_promtool_check_metrics(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    touch_every_metric(metrics)
    result = promtool("check", "metrics", stdin=render(registry)[0].decode())
    assert result.returncode == 0, result.stdout + result.stderr


def test_route_children_update_their_own_series(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    users = metrics.for_route("users", ["GET", "PURGE"])
    users.methods["GET"].requests[200].inc()
    users.methods["GET"].requests[200].inc()
    users.methods["GET"].requests[503].inc()
    users.methods["GET"].duration.observe(0.03)
    users.methods["POST"].requests[201].inc()
    users.methods["PURGE"].requests[204].inc()  # a method the route declares keeps its name
    users.methods["BREW"].requests[405].inc()  # any other non-standard method does not
    metrics.for_route("orders", ["GET"]).methods["GET"].requests[200].inc()

    def requests(route: str, method: str, code: str) -> float | None:
        labels = {"route": route, "method": method, "code": code}
        return registry.get_sample_value("gateway_requests_total", labels)

    assert requests("users", "GET", "200") == 2
    assert requests("users", "GET", "503") == 1
    assert requests("users", "POST", "201") == 1
    assert requests("users", "PURGE", "204") == 1
    assert requests("users", OTHER_METHOD, "405") == 1
    assert requests("users", "BREW", "405") is None
    assert requests("orders", "GET", "200") == 1
    bucket = {"route": "users", "method": "GET", "le": "0.05"}
    assert registry.get_sample_value("gateway_request_duration_seconds_bucket", bucket) == 1
    bucket["le"] = "0.025"
    assert registry.get_sample_value("gateway_request_duration_seconds_bucket", bucket) == 0
    # Bound once: the same child every time; unknown methods are not remembered one by one.
    assert users.methods["GET"].requests[200] is users.methods["GET"].requests[200]
    assert users.methods["GET"] is users.methods["GET"]
    assert users.methods["BREW"] is users.methods["TEAPOT"]
    assert set(users.methods) == {"GET", "PURGE", "POST"}


def test_other_children_update_their_own_series(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    route = metrics.for_route("users", ["GET"], ["per_client", "global"])
    route.errors[("bad_gateway", "upstream")].inc()
    route.errors[("rate_limit_exceeded", "gateway")].inc(2)
    route.rate_limits["per_client"].limited.inc()
    route.rate_limits["global"].degraded.inc()
    metrics.unmatched.methods["GET"].requests[404].inc()
    assert value("gateway_errors_total", route="users", code="bad_gateway", source="upstream") == 1
    assert (
        value("gateway_errors_total", route="users", code="rate_limit_exceeded", source="gateway")
        == 2
    )
    assert value("gateway_requests_total", route=NO_ROUTE, method="GET", code="404") == 1
    decisions = {
        (policy, decision): value(
            "gateway_rate_limit_decisions_total", route="users", policy=policy, decision=decision
        )
        for policy in ("per_client", "global")
        for decision in ("allowed", "limited", "degraded")
    }
    assert decisions == {
        ("per_client", "allowed"): 0,
        ("per_client", "limited"): 1,
        ("per_client", "degraded"): 0,
        ("global", "allowed"): 0,
        ("global", "limited"): 0,
        ("global", "degraded"): 1,
    }

    # Upstream series exist from config load: breakers closed, every target healthy.
    upstream = metrics.for_upstream("users", ["http://a:1", "http://b:2"])
    assert value("gateway_upstream_healthy_targets", upstream="users") == 2
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://b:2") == 0
    assert value("gateway_upstream_failures_total", upstream="users", kind="timeout") == 0
    upstream.responses[502].inc()
    upstream.failures["connect_error"].inc()
    upstream.retries.inc()
    upstream.healthy_targets.set(1)
    upstream.breakers["http://b:2"].set(2)
    assert value("gateway_upstream_responses_total", upstream="users", code="502") == 1
    assert value("gateway_upstream_failures_total", upstream="users", kind="connect_error") == 1
    assert value("gateway_upstream_failures_total", upstream="users", kind="timeout") == 0
    assert value("gateway_upstream_retries_total", upstream="users") == 1
    assert value("gateway_upstream_healthy_targets", upstream="users") == 1
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://b:2") == 2
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://a:1") == 0

    # The hooks upstreams.Upstream calls write the same series.
    metrics.set_breaker_state("users", "http://a:1", 1)
    metrics.set_healthy_targets("users", 0)
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://a:1") == 1
    assert value("gateway_upstream_healthy_targets", upstream="users") == 0

    backend = metrics.for_backend("redis")
    backend.seconds.observe(0.0003)
    backend.up.set(0)
    assert value("gateway_rate_limit_backend_seconds_bucket", backend="redis", le="0.0005") == 1
    assert value("gateway_rate_limit_backend_seconds_bucket", backend="redis", le="0.00025") == 0
    assert value("gateway_rate_limit_backend_up", backend="redis") == 0

    metrics.in_flight.inc()
    metrics.in_flight.inc()
    metrics.in_flight.dec()
    assert value("gateway_in_flight_requests") == 1
    assert value("gateway_config_reloads_total", result="success") == 0
    metrics.reload_failure.inc()
    assert value("gateway_config_reloads_total", result="failure") == 1


# One worker of `gateway run --workers N`: a fresh interpreter that inherits the directory.
WORKER = """
import json, os, sys
from prometheus_client import CollectorRegistry
from gateway.metrics import Metrics

plan = json.loads(sys.argv[1])
metrics = Metrics(CollectorRegistry())
route = metrics.for_route("users", ["GET"])
for code, n in plan["requests"].items():
    route.methods["GET"].requests[int(code)].inc(n)
route.methods["GET"].duration.observe(plan["duration"])
for _ in range(plan["in_flight"]):
    metrics.in_flight.inc()
upstream = metrics.for_upstream("users", ["http://a:1"])
upstream.breakers["http://a:1"].set(plan["breaker"])
upstream.healthy_targets.set(plan["healthy"])
metrics.for_backend("redis").up.set(plan["up"])
print(os.getpid())
"""


def start_worker(plan: dict[str, object]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(plan)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str]) -> int:
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    return int(out)


@pytest.mark.usefixtures("no_multiproc_env")
def test_multiprocess_render_sums_the_workers(tmp_path: Path) -> None:
    directory = prepare_multiprocess_dir(tmp_path / "metrics")
    assert os.environ[MULTIPROC_ENV] == str(directory)
    first = start_worker(
        {
            "requests": {"200": 3},
            "duration": 0.003,
            "in_flight": 2,
            "breaker": 2,
            "healthy": 1,
            "up": 1,
        }
    )
    second = start_worker(
        {
            "requests": {"200": 4, "502": 1},
            "duration": 0.3,
            "in_flight": 1,
            "breaker": 0,
            "healthy": 2,
            "up": 0,
        }
    )
    first_pid, second_pid = finish(first), finish(second)
    assert first_pid != second_pid

    body, _ = render(None)
    values = samples(body)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("gateway_requests_total", route="users", method="GET", code="200") == 7
    assert value("gateway_requests_total", route="users", method="GET", code="502") == 1
    assert value("gateway_request_duration_seconds_count", route="users", method="GET") == 2
    le = {"route": "users", "method": "GET", "le": "0.005"}
    assert value("gateway_request_duration_seconds_bucket", **le) == 1
    assert value("gateway_in_flight_requests") == 3  # livesum
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://a:1") == 2
    assert value("gateway_upstream_healthy_targets", upstream="users") == 1  # livemin
    assert value("gateway_rate_limit_backend_up", backend="redis") == 0  # livemin
    assert exposed(body).keys() <= SPEC_METRICS.keys()
    result = promtool("check", "metrics", stdin=body.decode())
    assert result.returncode == 0, result.stdout + result.stderr

    # The first worker exits for good: its gauges leave, its counts stay.
    mark_process_dead(first_pid)
    values = samples(render(None)[0])
    assert value("gateway_requests_total", route="users", method="GET", code="200") == 7
    assert value("gateway_in_flight_requests") == 1
    assert value("gateway_circuit_breaker_state", upstream="users", target="http://a:1") == 0
    assert value("gateway_upstream_healthy_targets", upstream="users") == 2
    assert value("gateway_rate_limit_backend_up", backend="redis") == 0


def test_metrics_refuses_a_directory_set_after_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process imported prometheus_client without the variable: its values stay in memory.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="prepare_multiprocess_dir"):
        Metrics(CollectorRegistry())


@pytest.mark.usefixtures("no_multiproc_env")
def test_prepare_multiprocess_dir_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    assert prepare_multiprocess_dir(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert os.environ[MULTIPROC_ENV] == str(tmp_path)

    private = prepare_multiprocess_dir()
    assert private.is_dir()
    assert not any(private.iterdir())
    assert os.environ[MULTIPROC_ENV] == str(private)
    remove_multiprocess_dir(private)
    assert not private.exists()
    assert MULTIPROC_ENV not in os.environ


@pytest.mark.usefixtures("no_multiproc_env")
def test_render_none_needs_a_directory() -> None:
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        render(None)
