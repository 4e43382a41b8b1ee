"""Rate limiting end to end: real gateways, a real redis-server, real upstreams."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, wait_until
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream

GatewayFactory = Callable[..., Gateway]
HOUR = "1/h"  # refill so slow that a test's arithmetic is exact


def limited(
    upstream: Upstream,
    limits: list[dict[str, Any]],
    *,
    redis: RedisServer | None = None,
    key: str = "client_ip",
    on_error: str = "allow",
    timeout: str = "50ms",
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "upstreams": {"app": {"targets": [upstream.url]}},
        "rate_limits": {"p": {"key": key, "limits": limits}},
        "routes": [{"name": "app", "path_prefix": "/", "upstream": "app", "rate_limit": "p"}],
        **extra,
    }
    if redis is not None:
        config["redis"] = {"url": redis.url, "timeout": timeout, "on_error": on_error}
    return config


def test_headers_along_a_scripted_sequence(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    gw = start_gateway(limited(upstream, [{"capacity": 3, "refill": HOUR}], redis=redis_server))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for remaining in (2, 1, 0):
            r = c.get("/echo")
            now = time.time()
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit"] == "3"
            assert r.headers["x-ratelimit-remaining"] == str(remaining)
            full_in = (3 - remaining) * 3600
            assert abs(int(r.headers["x-ratelimit-reset"]) - (now + full_in)) <= 2
            assert r.headers["ratelimit-policy"] == '"p-0";q=3;w=10800'
            assert r.headers["ratelimit"] == f'"p-0";r={remaining};t={full_in}'
            assert "retry-after" not in r.headers

        denied = c.get("/echo")
        assert denied.status_code == 429
        assert denied.headers["content-type"] == "application/problem+json"
        assert denied.headers["retry-after"] == "3600"
        assert denied.headers["x-ratelimit-remaining"] == "0"
        assert denied.headers["ratelimit"] == '"p-0";r=0;t=3600'
        body = denied.json()
        assert body["code"] == "rate_limit_exceeded"
        assert body["status"] == 429
        assert body["violated_policies"] == ["p-0"]
        assert body["request_id"] == denied.headers["x-request-id"]
    assert len(upstream.requests) == 3  # the denied request never reached the upstream


def test_the_tighter_of_two_buckets_governs(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    buckets = [{"capacity": 10, "refill": HOUR}, {"capacity": 2, "refill": HOUR}]
    gw = start_gateway(limited(upstream, buckets, redis=redis_server))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        first = c.get("/echo")
        assert first.headers["x-ratelimit-limit"] == "2"  # the most restrictive bucket
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert first.headers["ratelimit"] == '"p-0";r=9;t=3600, "p-1";r=1;t=3600'
        assert c.get("/echo").status_code == 200
        denied = c.get("/echo")
        assert denied.status_code == 429
        assert denied.json()["violated_policies"] == ["p-1"]
        # All or nothing: the roomy bucket was not debited by the refused request.
        assert denied.headers["ratelimit"] == '"p-0";r=8;t=7200, "p-1";r=0;t=3600'


def test_refused_requests_consume_nothing(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    gw = start_gateway(limited(upstream, [{"capacity": 2, "refill": "1/s"}], redis=redis_server))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert [c.get("/echo").status_code for _ in range(2)] == [200, 200]
        # Hammer the empty bucket: every refusal must leave the refill schedule alone.
        started = time.monotonic()
        refused = 0
        while c.get("/echo").status_code == 429:
            refused += 1
            assert time.monotonic() - started < 1.5, "refusals pushed recovery back"
    assert refused > 0


def test_spoofed_forwarding_headers_do_not_change_the_key(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    gw = start_gateway(limited(upstream, [{"capacity": 2, "refill": HOUR}], redis=redis_server))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        codes = [
            c.get("/echo", headers={"X-Forwarded-For": f"10.9.8.{i}"}).status_code for i in range(3)
        ]
        codes += [c.get("/echo", headers={"Forwarded": "for=192.0.2.9"}).status_code]
    assert codes == [200, 200, 429, 429]


def test_trusted_proxy_forwarded_client_gets_its_own_bucket(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    config = limited(
        upstream,
        [{"capacity": 1, "refill": HOUR}],
        redis=redis_server,
        server={"trusted_proxies": ["127.0.0.1/32"]},
    )
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        a = {"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}  # the proxy appended .1
        b = {"X-Forwarded-For": "198.51.100.2"}
        assert c.get("/echo", headers=a).status_code == 200
        assert c.get("/echo", headers=a).status_code == 429
        assert c.get("/echo", headers=b).status_code == 200
    # A trusted proxy's chain is kept and its own address appended.
    first = upstream.requests[0]["headers"]
    assert [v for k, v in first if k == "x-forwarded-for"] == ["6.6.6.6, 198.51.100.1, 127.0.0.1"]


def test_per_api_key_buckets_and_missing_key(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    config = limited(
        upstream, [{"capacity": 1, "refill": HOUR}], redis=redis_server, key="header:X-API-Key"
    )
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/echo", headers={"X-API-Key": "alice"}).status_code == 200
        assert c.get("/echo", headers={"X-API-Key": "alice"}).status_code == 429
        assert c.get("/echo", headers={"X-API-Key": "bob"}).status_code == 200
        # No key: the client's address is the key, not one bucket shared by all keyless.
        assert c.get("/echo").status_code == 200
        assert c.get("/echo").status_code == 429
    keys = [k.decode() for k in redis_server.client().keys("*") if isinstance(k, bytes)]
    assert keys
    assert not any("alice" in k or "bob" in k or "127.0.0.1" in k for k in keys)
    assert all(k.startswith("gw:{") for k in keys)


def test_missing_key_rejected_when_configured(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    config = limited(upstream, [{"capacity": 5, "refill": HOUR}], key="header:X-API-Key")
    config["rate_limits"]["p"]["on_missing_key"] = "reject"
    gw = start_gateway(config)
    r = httpx.get(gw.url + "/echo", timeout=10)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert httpx.get(gw.url + "/echo", headers={"X-API-Key": "k"}, timeout=10).status_code == 200


def _timed(c: httpx.Client, n: int) -> tuple[list[int], list[float]]:
    codes, times = [], []
    for _ in range(n):
        started = time.perf_counter()
        codes.append(c.get("/echo").status_code)
        times.append(time.perf_counter() - started)
    return codes, times


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_redis_down_allow_fails_open_quickly(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer, outage: str
) -> None:
    config = limited(
        upstream, [{"capacity": 2, "refill": HOUR}], redis=redis_server, timeout="200ms"
    )
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert [c.get("/echo").status_code for _ in range(3)] == [200, 200, 429]
        if outage == "stopped":
            redis_server.stop()
        else:
            redis_server.pause()
        codes, times = _timed(c, 20)
        r = c.get("/echo")
        assert r.status_code == 200
        assert "x-ratelimit-limit" not in r.headers  # no headers without a decision
        ready = httpx.get(gw.admin_url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["not_ready"] == ["redis"]
        # Redis back: limits apply again, without a restart (the bucket is still empty).
        if outage == "stopped":
            redis_server.start()
        else:
            redis_server.resume()
        wait_until(lambda: c.get("/echo").status_code == 429, timeout=10, what="limits back")
        assert httpx.get(gw.admin_url + "/readyz", timeout=5).status_code == 200
    assert codes == [200] * 20
    # After the first failure the limiter stops asking Redis for a cool-down: requests do
    # not each pay the 200 ms timeout.
    assert statistics.median(times) < 0.05, times
    assert sum(t >= 0.15 for t in times) <= 2, times


def test_redis_down_deny_answers_503_quickly(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    config = limited(
        upstream, [{"capacity": 5, "refill": HOUR}], redis=redis_server, on_error="deny"
    )
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/echo").status_code == 200
        redis_server.pause()
        codes, times = _timed(c, 10)
        r = c.get("/echo")
        redis_server.resume()
        wait_until(lambda: c.get("/echo").status_code == 200, timeout=10, what="redis back")
    assert codes == [503] * 10
    assert r.json()["code"] == "rate_limiter_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert statistics.median(times) < 0.05, times


def test_redis_down_local_applies_the_policy_in_process(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    config = limited(
        upstream, [{"capacity": 3, "refill": HOUR}], redis=redis_server, on_error="local"
    )
    gw = start_gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/echo").status_code == 200
        redis_server.stop()
        codes, _ = _timed(c, 5)
        degraded = c.get("/echo")
        redis_server.start()  # empty: the Redis bucket starts full again
        wait_until(
            lambda: c.get("/echo").headers.get("x-ratelimit-remaining") == "1",
            timeout=10,
            what="redis decisions again",
        )
    # In-process buckets: the same policy, counted from scratch.
    assert codes == [200, 200, 200, 429, 429]
    assert degraded.status_code == 429
    assert degraded.headers["x-ratelimit-limit"] == "3"


def test_exact_across_two_gateways_sharing_redis(
    start_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    # A bucket deep enough (0.5 s of refill) that a scheduling stall of the test client
    # does not let tokens overflow unclaimed.
    capacity, rate = 100, 200  # tokens, per second
    config = limited(
        upstream,
        [{"capacity": capacity, "refill": f"{rate}/s"}],
        redis=redis_server,
        key="global",
    )
    # An unlimited route to open every connection before the measured window.
    config["routes"].insert(0, {"name": "warm", "path_prefix": "/warm", "upstream": "app"})
    gateways = [start_gateway(dict(config)) for _ in range(2)]
    sent: list[float] = []  # when each request went out
    answered: list[float] = []  # when each answer came back
    counts = [0, 0]  # admitted, refused
    pressing: list[float] = []  # the moment every client starts, the moment they stop

    async def hammer(url: str, ready: asyncio.Barrier) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            assert (await c.get("/warm/echo")).status_code == 200
            await ready.wait()  # every client presses from the same moment on
            while time.monotonic() < pressing[1]:
                sent.append(time.monotonic())
                r = await c.get("/echo")
                answered.append(time.monotonic())
                counts[0 if r.status_code == 200 else 1] += 1

    async def main() -> None:
        clients = 16

        def start() -> None:
            now = time.monotonic()
            pressing[:] = [now, now + 4.0]

        ready = asyncio.Barrier(clients + 1)
        await asyncio.gather(
            *(hammer(gw.url, ready) for gw in gateways for _ in range(clients // 2)),
            _start_when_all_wait(ready, clients, start),
        )

    asyncio.run(main())
    admitted, refused = counts
    assert refused > 0.2 * admitted, "the clients hardly pressed the limit: proves nothing"
    # Never more than the bucket allows over the whole exchange: first send to last answer.
    most = capacity + rate * (max(answered) - min(sent)) + 1
    assert admitted <= most, (admitted, most)
    # And at least 99% of what the bucket allowed while the clients were pressing.
    least = 0.99 * (capacity + rate * (pressing[1] - pressing[0]))
    assert admitted >= least, (admitted, least)
    assert len([r for r in upstream.requests if r["path"] == "/echo"]) == admitted


async def _start_when_all_wait(
    barrier: asyncio.Barrier, parties: int, action: Callable[[], None]
) -> None:
    """Once ``parties`` wait at ``barrier``, runs ``action`` and releases them all."""
    while barrier.n_waiting < parties:
        await asyncio.sleep(0.001)
    action()
    await barrier.wait()


def test_memory_store_refused_with_several_workers(upstream: Upstream, tmp_path: Any) -> None:
    import subprocess
    import sys

    import yaml

    from tests.support.gateway import ROOT

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(limited(upstream, [{"capacity": 1, "refill": "1/s"}])))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path), "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "redis.allow_per_process_buckets" in result.stderr
