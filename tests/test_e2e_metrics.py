"""Metrics end to end: scripted traffic through a real gateway, then exact values by label."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import ROOT, Gateway, wait_until
from tests.support.prometheus_server import PrometheusServer, promtool
from tests.support.upstream import Upstream, free_port

GatewayFactory = Callable[..., Gateway]
CLIENT = "198.51.100.77"  # the client address, as a trusted proxy reports it
RULES = ROOT / "config" / "prometheus" / "gateway.rules.yml"


def scrape(gw: Gateway) -> str:
    r = httpx.get(gw.admin_url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(start_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    config: dict[str, Any] = {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "upstreams": {
            "app": {"targets": [upstream.url], "retries": {"attempts": 0}},
            "flaky": {
                "targets": [upstream.url],
                "retries": {"attempts": 2, "backoff": "1ms", "max_backoff": "2ms"},
                "circuit_breaker": {"minimum_requests": 1000},
            },
            "slow": {
                "targets": [upstream.url],
                "timeouts": {"read": "200ms"},
                "retries": {"attempts": 0},
            },
            "dead": {"targets": [f"http://127.0.0.1:{free_port()}"], "retries": {"attempts": 0}},
        },
        "routes": [
            {"name": "ok", "path_prefix": "/ok", "upstream": "app"},
            {"name": "flaky", "path_prefix": "/flaky", "upstream": "flaky"},
            {"name": "slow", "path_prefix": "/slow", "upstream": "slow"},
            {"name": "dead", "path_prefix": "/dead", "upstream": "dead"},
            {"name": "lim", "path_prefix": "/lim", "upstream": "app", "rate_limit": "once"},
        ],
        "rate_limits": {"once": {"limits": [{"capacity": 1, "refill": "1/h"}]}},
    }
    return start_gateway(config)


def drive(gw: Gateway) -> None:
    headers = {"X-Forwarded-For": CLIENT}
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as c:
        for _ in range(3):
            assert c.get("/ok/echo/secret-path-1").status_code == 200
        assert c.post("/ok/echo", content=b"x").status_code == 200
        for _ in range(2):
            assert c.get("/ok/status/502").status_code == 502  # rewritten upstream 502
        assert c.get("/flaky/status/503").status_code == 503  # 3 tries, 2 retries
        assert c.get("/slow/delay/2").status_code == 504  # the gateway's own timeout
        assert c.get("/dead/x").status_code == 502  # refused connection
        for _ in range(2):
            assert c.get("/nowhere/secret-path-2").status_code == 404
        assert c.get("/lim/echo").status_code == 200
        assert c.get("/lim/echo").status_code == 429


def test_scripted_traffic_gives_exact_metrics(metered: Gateway) -> None:
    drive(metered)
    text = scrape(metered)

    def v(name: str, **labels: str) -> float:
        return value(text, name, **labels)

    assert v("gateway_requests_total", route="ok", method="GET", code="200") == 3
    assert v("gateway_requests_total", route="ok", method="POST", code="200") == 1
    assert v("gateway_requests_total", route="ok", method="GET", code="502") == 2
    assert v("gateway_requests_total", route="flaky", method="GET", code="503") == 1
    assert v("gateway_requests_total", route="slow", method="GET", code="504") == 1
    assert v("gateway_requests_total", route="dead", method="GET", code="502") == 1
    assert v("gateway_requests_total", route="_unmatched", method="GET", code="404") == 2
    assert v("gateway_requests_total", route="lim", method="GET", code="200") == 1
    assert v("gateway_requests_total", route="lim", method="GET", code="429") == 1

    assert v("gateway_request_duration_seconds_count", route="ok", method="GET") == 5
    assert v("gateway_request_duration_seconds_count", route="slow", method="GET") == 1
    assert v("gateway_request_duration_seconds_sum", route="slow", method="GET") >= 0.2

    assert v("gateway_errors_total", route="ok", code="bad_gateway", source="upstream") == 2
    assert (
        v("gateway_errors_total", route="flaky", code="service_unavailable", source="upstream") == 1
    )
    assert v("gateway_errors_total", route="slow", code="gateway_timeout", source="gateway") == 1
    assert v("gateway_errors_total", route="dead", code="bad_gateway", source="gateway") == 1
    assert v("gateway_errors_total", route="_unmatched", code="not_found", source="gateway") == 2
    limited = ("gateway_errors_total", "lim", "rate_limit_exceeded", "gateway")
    assert v(limited[0], route=limited[1], code=limited[2], source=limited[3]) == 1

    decisions = "gateway_rate_limit_decisions_total"
    assert v(decisions, route="lim", policy="once", decision="allowed") == 1
    assert v(decisions, route="lim", policy="once", decision="limited") == 1
    assert v(decisions, route="lim", policy="once", decision="degraded") == 0
    assert v("gateway_rate_limit_backend_up", backend="memory") == 1
    assert v("gateway_rate_limit_backend_seconds_count", backend="memory") == 2

    assert v("gateway_upstream_responses_total", upstream="app", code="200") == 5
    assert v("gateway_upstream_responses_total", upstream="app", code="502") == 2
    assert v("gateway_upstream_responses_total", upstream="flaky", code="503") == 3
    assert v("gateway_upstream_retries_total", upstream="flaky") == 2
    assert v("gateway_upstream_retries_total", upstream="app") == 0
    assert v("gateway_upstream_failures_total", upstream="slow", kind="timeout") == 1
    assert v("gateway_upstream_failures_total", upstream="dead", kind="connect_error") == 1
    assert v("gateway_upstream_failures_total", upstream="app", kind="connect_error") == 0

    assert v("gateway_upstream_healthy_targets", upstream="app") == 1
    dead_target = metered.config["upstreams"]["dead"]["targets"][0]
    assert v("gateway_circuit_breaker_state", upstream="dead", target=dead_target) == 0
    assert v("gateway_in_flight_requests") == 0


def test_no_label_holds_a_path_or_client_address(metered: Gateway) -> None:
    drive(metered)
    text = scrape(metered)
    assert text_string_to_metric_families(text)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, val in sample.labels.items():
                assert "secret-path" not in val, (family.name, label, val)
                assert "/echo" not in val, (family.name, label, val)
                assert "/status" not in val, (family.name, label, val)
                assert CLIENT not in val, (family.name, label, val)
    routes = {
        s.labels["route"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "route" in s.labels
    }
    assert routes <= {"ok", "flaky", "slow", "dead", "lim", "_unmatched"}


def test_promtool_accepts_a_real_scrape(metered: Gateway) -> None:
    drive(metered)
    result = promtool("check", "metrics", stdin=scrape(metered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_access_log_has_one_json_line_per_request(metered: Gateway) -> None:
    drive(metered)
    wait_until(lambda: metered.log().count('"request_id"') >= 13, timeout=5, what="log flush")
    lines = [json.loads(x) for x in metered.log().splitlines() if x.startswith('{"time"')]
    assert len(lines) == 13
    timeout = next(x for x in lines if x["status"] == 504)
    assert timeout["route"] == "slow"
    assert timeout["error"] == "gateway_timeout"
    assert timeout["client_ip"] == CLIENT
    assert timeout["upstream"] == "slow"
    assert timeout["duration_ms"] >= 200
    assert {"time", "request_id", "method", "path", "target", "rate_limit"} <= set(timeout)
    assert [x["status"] for x in lines if x["route"] is None] == [404, 404]
    assert [x["rate_limit"] for x in lines if x["route"] == "lim"] == ["allowed", "limited"]


def test_prometheus_scrapes_the_gateway_and_the_shipped_rule_computes(
    metered: Gateway, tmp_path: Path
) -> None:
    with httpx.Client(base_url=metered.url, timeout=10) as c:
        # Prime both series before the first scrape, in the proportion the test then
        # adds: rate() extrapolates each series towards zero by first value / increase,
        # and equal proportions keep that factor equal, so the ratio comes out exact.
        for _ in range(3):
            assert c.get("/ok/echo").status_code == 200
        assert c.get("/ok/status/502").status_code == 502
        target = f"127.0.0.1:{metered.admin_port}"
        with PrometheusServer([target], rule_files=[RULES]) as prom:
            prom.wait_scraped()
            for _ in range(3):
                assert c.get("/ok/echo").status_code == 200
            assert c.get("/ok/status/502").status_code == 502
            got = prom.wait_for_value(
                'route:gateway_requests_5xx:ratio_rate5m{route="ok"}',
                lambda x: abs(x - 0.25) < 1e-9,
                timeout=30,
            )
    assert got == pytest.approx(0.25)
