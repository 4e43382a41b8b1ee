"""Active health checks against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiohttp import web

from gateway.health import HealthChecker, HealthTracker, http_probe, jittered
from gateway.upstreams import Target, Upstream

INTERVAL = 0.05
PROBE_TIMEOUT = 0.5


class HealthServer:
    """A real HTTP server whose ``/healthz`` answers ``status`` after ``delay`` seconds.

    Keeps its port across ``stop()`` / ``start()`` so a target can come back.
    """

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.received = 0
        self.served: Counter[int] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def target(self, base_path: str = "") -> Target:
        return Target(scheme="http", host="127.0.0.1", port=self.port, base_path=base_path)

    async def _health(self, request: web.Request) -> web.Response:
        self.received += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.status
        self.served[status] += 1
        return web.Response(status=status, text="health")


def unreached_target() -> Target:
    """A target the test never connects to: its probe is injected."""
    return Target(scheme="http", host="127.0.0.1", port=9)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    srv = HealthServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def server2() -> AsyncIterator[HealthServer]:
    srv = HealthServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


def checker(upstream: Upstream, client: httpx.AsyncClient) -> HealthChecker:
    return HealthChecker(
        upstream, http_probe(client, "/healthz", PROBE_TIMEOUT), interval=INTERVAL, jitter=0.2
    )


# --- the default HTTP probe -------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [(200, True), (204, True), (299, True)])
async def test_probe_accepts_2xx(
    server: HealthServer, client: httpx.AsyncClient, status: int, expected: bool
) -> None:
    server.status = status
    assert await http_probe(client, "/healthz", PROBE_TIMEOUT)(server.target()) is expected


@pytest.mark.parametrize("status", [301, 404, 500, 503])
async def test_probe_rejects_other_statuses(
    server: HealthServer, client: httpx.AsyncClient, status: int
) -> None:
    server.status = status
    assert not await http_probe(client, "/healthz", PROBE_TIMEOUT)(server.target())
    assert server.served[status] == 1


async def test_probe_path_is_on_the_origin_not_under_the_base_path(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    assert await http_probe(client, "/healthz", PROBE_TIMEOUT)(server.target("/api/v1"))


async def test_probe_fails_on_a_closed_port(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    target = server.target()
    await server.stop()
    assert not await http_probe(client, "/healthz", PROBE_TIMEOUT)(target)


async def test_probe_fails_within_its_timeout_on_a_slow_server(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    server.delay = 2.0
    started = time.monotonic()
    assert not await http_probe(client, "/healthz", 0.1)(server.target())
    assert time.monotonic() - started < 1.0


# --- leaving and rejoining rotation -----------------------------------------------------


async def test_failing_target_leaves_and_rejoins_rotation(
    server: HealthServer, server2: HealthServer, client: httpx.AsyncClient
) -> None:
    sick, well = server.target(), server2.target()
    # The served counts at each transition show the thresholds: 3 failures out, 2 successes in.
    at_transition: list[tuple[int, int, int]] = []
    upstream = Upstream(
        "users",
        [sick, well],
        on_healthy_targets=lambda _name, count: at_transition.append(
            (count, server.served[500], server.served[200])
        ),
    )
    checks = checker(upstream, client)
    checks.start()
    try:
        await wait_until(lambda: server.served[200] >= 1)
        server.status = 500
        await wait_until(lambda: not sick.healthy)
        assert at_transition[-1][:2] == (1, 3)
        picks = [upstream.pick(0.0) for _ in range(10)]
        assert all(p is well for p in picks)

        ok_before = server.served[200]
        server.status = 200
        await wait_until(lambda: sick.healthy)
        count, _, ok_at_rejoin = at_transition[-1]
        assert count == 2
        assert ok_at_rejoin - ok_before == 2
        assert upstream.pick(0.0) is not upstream.pick(0.0)  # both in rotation again
        assert well.healthy  # the other target was never affected
        assert [count for count, _, _ in at_transition] == [2, 1, 2]
    finally:
        await checks.aclose()


async def test_stopped_server_leaves_rotation_and_returns_after_restart(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    target = server.target()
    upstream = Upstream("users", [target])
    checks = checker(upstream, client)
    checks.start()
    try:
        await wait_until(lambda: server.served[200] >= 1)
        await server.stop()
        await wait_until(lambda: not target.healthy)
        assert upstream.pick(0.0) is None
        assert upstream.retry_after(0.0) is None  # no breaker time to offer

        await server.start()
        await wait_until(lambda: target.healthy)
        assert upstream.pick(0.0) is target
    finally:
        await checks.aclose()


async def test_slow_health_endpoint_counts_as_down(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    target = server.target()
    upstream = Upstream("users", [target])
    checks = HealthChecker(
        upstream, http_probe(client, "/healthz", 0.05), interval=INTERVAL, unhealthy_threshold=2
    )
    server.delay = 5.0
    checks.start()
    try:
        await wait_until(lambda: not target.healthy)
    finally:
        await checks.aclose()
    assert server.served[200] == 0  # every probe gave up before the answer


async def test_a_raising_probe_counts_as_failed_and_checks_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = unreached_target()
    upstream = Upstream("users", [target])
    broken = True

    async def probe(_: Target) -> bool:
        if broken:
            raise RuntimeError("probe bug")
        return True

    checks = HealthChecker(upstream, probe, interval=0.01)
    checks.start()
    try:
        await wait_until(lambda: not target.healthy)
        assert "probe bug" in caplog.text
        broken = False
        await wait_until(lambda: target.healthy)
        assert checks.running
    finally:
        await checks.aclose()


# --- lifecycle --------------------------------------------------------------------------


def health_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("health-check:")]


async def test_start_is_idempotent_and_aclose_leaves_no_task(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    checks = checker(Upstream("users", [server.target()]), client)
    await checks.aclose()  # before start: nothing to do
    checks.start()
    checks.start()
    assert len(health_tasks()) == 1
    await wait_until(lambda: server.served[200] >= 2)
    await checks.aclose()
    await checks.aclose()
    assert not checks.running
    assert health_tasks() == []
    served = server.served[200]
    await asyncio.sleep(INTERVAL * 3)  # nothing to race: asserting that nothing happens
    assert server.served[200] == served


async def test_aclose_during_an_inflight_probe_is_prompt(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    server.delay = 5.0
    target = server.target()
    checks = HealthChecker(
        Upstream("users", [target]), http_probe(client, "/healthz", 10.0), interval=0.01
    )
    checks.start()
    await wait_until(lambda: server.received >= 1)  # a probe is stuck on the slow server
    loop = asyncio.get_running_loop()
    started = loop.time()
    await checks.aclose()
    assert loop.time() - started < 1.0
    assert health_tasks() == []
    assert target.healthy  # a cancelled probe is no verdict


async def test_aclose_does_not_swallow_its_own_cancellation() -> None:
    probing = asyncio.Event()
    stopping = asyncio.Event()
    stopped = asyncio.Event()

    async def probe(_: Target) -> bool:
        probing.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stopping.set()
            await stopped.wait()  # a probe slow to stop, so aclose is caught waiting
            raise
        return True

    upstream = Upstream("users", [unreached_target()])
    checks = HealthChecker(upstream, probe, interval=1.0, rng=lambda: 0.0)
    checks.start()
    await probing.wait()
    closer = asyncio.create_task(checks.aclose())
    await stopping.wait()  # the closer is now waiting for the health task
    closer.cancel()
    stopped.set()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await wait_until(lambda: health_tasks() == [])


def test_rejects_bad_settings() -> None:
    upstream = Upstream("users", [unreached_target()])

    async def probe(_: Target) -> bool:
        return True

    with pytest.raises(ValueError, match="interval"):
        HealthChecker(upstream, probe, interval=0.0)
    with pytest.raises(ValueError, match="jitter"):
        HealthChecker(upstream, probe, interval=1.0, jitter=1.0)
    with pytest.raises(ValueError, match="thresholds"):
        HealthChecker(upstream, probe, interval=1.0, healthy_threshold=0)


# --- pure parts -------------------------------------------------------------------------


def test_jitter_bounds() -> None:
    assert jittered(1.0, 0.1, lambda: 0.0) == pytest.approx(0.9)
    assert jittered(1.0, 0.1, lambda: 0.5) == pytest.approx(1.0)
    assert jittered(1.0, 0.1, lambda: 0.999999) == pytest.approx(1.1, abs=1e-5)
    assert jittered(2.0, 0.0, lambda: 0.7) == 2.0


def test_tracker_needs_consecutive_failures_to_go_down() -> None:
    tracker = HealthTracker(healthy_threshold=2, unhealthy_threshold=3)
    assert [tracker.observe(ok) for ok in (False, False, True, False, False)] == [True] * 5
    assert tracker.observe(False) is False


def test_tracker_needs_consecutive_successes_to_come_back() -> None:
    tracker = HealthTracker(healthy=False, healthy_threshold=2, unhealthy_threshold=3)
    assert tracker.observe(True) is False
    assert tracker.observe(False) is False  # the streak is broken
    assert tracker.observe(True) is False
    assert tracker.observe(True) is True
    assert tracker.observe(True) is True


def test_tracker_thresholds_of_one_flip_immediately() -> None:
    tracker = HealthTracker(healthy_threshold=1, unhealthy_threshold=1)
    assert [tracker.observe(ok) for ok in (False, True, False)] == [False, True, False]
