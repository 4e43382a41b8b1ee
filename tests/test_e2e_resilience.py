"""Upstream resilience end to end: balancing, retries, budgets, breakers, health checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import LEAK, Upstream, free_port

GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def second_upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


def route(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path_prefix": f"/{name}", "upstream": upstream, **extra}


def test_one_refusing_target_is_retried_for_gets_never_for_posts(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "upstreams": {"pair": {"targets": [upstream.url, dead]}},  # default retries and breaker
        "routes": [route("pair", "pair")],
    }
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        posts = [c.post("/pair/echo", content=f"post-{i}".encode()) for i in range(10)]
        ok = [p for p in posts if p.status_code == 200]
        refused = [p for p in posts if p.status_code == 502]
        assert len(ok) == len(refused) == 5  # round robin: every other one met the dead target
        assert all(p.json()["code"] == "bad_gateway" for p in refused)
        received = [r for r in upstream.requests if r["method"] == "POST"]
        assert len(received) == 5  # none was replayed onto the healthy target

        codes = [c.get("/pair/echo").status_code for _ in range(100)]
    assert codes == [200] * 100  # retried onto the healthy target until its breaker opened


def test_retries_rescue_a_flaky_status_and_are_bounded(
    start_gateway: GatewayFactory, upstream: Upstream, second_upstream: Upstream
) -> None:
    upstream.fail_with = 503
    config = {
        "upstreams": {
            "pair": {
                "targets": [upstream.url, second_upstream.url],
                "retries": {"attempts": 1, "backoff": "1ms", "max_backoff": "5ms"},
                "circuit_breaker": {"minimum_requests": 100000},
            }
        },
        "routes": [route("pair", "pair")],
    }
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        codes = [c.get("/pair/echo").status_code for _ in range(20)]
    assert codes == [200] * 20
    # The round-robin cursor moves past the retry's target, so every first try met the
    # failing target, and each was retried exactly once (attempts: 1) on the other.
    assert upstream.hits == 20
    assert second_upstream.hits == 20


def test_retry_budget_stops_retries_when_the_whole_upstream_fails(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    upstream.fail_with = 503
    config = {
        "upstreams": {
            "down": {
                "targets": [upstream.url],
                "retries": {"attempts": 2, "backoff": "1ms", "max_backoff": "2ms"},
                "circuit_breaker": {"minimum_requests": 100000},
            }
        },
        "routes": [route("down", "down")],
    }
    gw = start_gateway(config)
    n = 300
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(n):
            r = c.get("/down/echo")
            assert r.status_code == 503
            assert LEAK not in r.text
    retries = upstream.hits - n
    # Without a budget this would be 2 * n = 600. The budget: 20% of requests plus a
    # floor of 3/s over its 10 s window (30), however long the run took.
    assert 0 < retries <= 0.2 * n + 30 + 1, retries


def test_breaker_opens_answers_fast_then_closes(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    upstream.fail_with = 502
    config = {
        "upstreams": {
            "one": {
                "targets": [upstream.url],
                "retries": {"attempts": 0},
                "circuit_breaker": {
                    "failure_ratio": 0.5,
                    "minimum_requests": 5,
                    "window": "10s",
                    "open_for": "1s",
                },
            }
        },
        "routes": [route("one", "one")],
    }
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(5):
            assert c.get("/one/echo").status_code == 502
        hits = upstream.hits
        started = time.perf_counter()
        r = c.get("/one/echo")
        elapsed = time.perf_counter() - started
        assert r.status_code == 503
        assert elapsed < 0.05, elapsed
        body = r.json()
        assert body["code"] == "service_unavailable"
        assert body["reason"] == "circuit_open"
        assert 1 <= int(r.headers["retry-after"]) <= 1
        assert upstream.hits == hits  # the open target was not contacted

        upstream.fail_with = None  # the target recovers
        wait_until(
            lambda: c.get("/one/echo").status_code == 200, timeout=5, what="breaker to close"
        )
        assert [c.get("/one/echo").status_code for _ in range(10)] == [200] * 10


def test_health_checks_take_a_target_out_and_back(
    start_gateway: GatewayFactory, upstream: Upstream, second_upstream: Upstream
) -> None:
    config = {
        "upstreams": {
            "pair": {
                "targets": [upstream.url, second_upstream.url],
                "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms"},
            }
        },
        "routes": [route("pair", "pair")],
    }
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        second_upstream.health_status = 500
        # Out of rotation once its checks fail three times in a row.
        before = second_upstream.hits

        def only_first_serves() -> bool:
            mark = second_upstream.hits
            for _ in range(6):
                assert c.get("/pair/echo").status_code == 200
            return second_upstream.hits == mark

        wait_until(only_first_serves, timeout=5, what="unhealthy target out of rotation")
        assert second_upstream.hits >= before

        second_upstream.health_status = 200
        wait_until(lambda: _serves(c, second_upstream), timeout=5, what="target back in rotation")


def _serves(c: httpx.Client, server: Upstream) -> bool:
    mark = server.hits
    for _ in range(4):
        assert c.get("/pair/echo").status_code == 200
    return server.hits > mark


def test_health_checks_follow_a_target_stopped_and_restarted(
    start_gateway: GatewayFactory, upstream: Upstream, second_upstream: Upstream
) -> None:
    config = {
        "upstreams": {
            "pair": {
                "targets": [upstream.url, second_upstream.url],
                "retries": {"attempts": 0},
                "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms"},
            }
        },
        "routes": [route("pair", "pair")],
    }
    gw = start_gateway(config)
    port = second_upstream.port
    second_upstream.stop()
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        # Without retries, a request sent to the stopped target fails: all 200 means it is out.
        wait_until(
            lambda: all(c.get("/pair/echo").status_code == 200 for _ in range(6)),
            timeout=5,
            what="stopped target out of rotation",
        )
        revived = Upstream(port).start()
        try:
            wait_until(lambda: _serves(c, revived), timeout=5, what="restarted target in rotation")
        finally:
            revived.stop()


def test_200_concurrent_failing_requests_all_get_uniform_answers(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    upstream.fail_with = 503
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "upstreams": {
            "dead": {"targets": [dead], "circuit_breaker": {"minimum_requests": 100000}},
            "failing": {"targets": [upstream.url], "circuit_breaker": {"minimum_requests": 100000}},
        },
        "routes": [route("dead", "dead"), route("failing", "failing")],
    }
    gw = start_gateway(config)
    paths = {"/dead/x": 502, "/failing/x": 503}

    async def main() -> list[tuple[str, int, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=gw.url, timeout=15, limits=limits) as c:

            async def one(i: int) -> tuple[str, int, dict[str, Any]]:
                path = list(paths)[i % 2]
                r = await c.get(path)
                return path, r.status_code, r.json()

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 30)

    results = asyncio.run(main())
    assert len(results) == 200
    for path, status, body in results:
        assert status == paths[path]
        assert body["status"] == status
        assert LEAK not in str(body)
