"""Active health checks: probe every target of an upstream on an interval.

Only for upstreams with ``health_check`` configured. One background task per upstream, with
one probing loop per target inside it, each on its own jittered schedule so targets are not
probed in lockstep. A target leaves rotation after ``unhealthy_threshold`` consecutive
failed probes and rejoins after ``healthy_threshold`` consecutive good ones.

Health checks and circuit breakers are independent: a passing ``/healthz`` does not prove
the routes work, so it does not close a breaker; a half-open breaker is probed by a real
request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import httpx

from gateway.upstreams import Target, Upstream

__all__ = ["HealthChecker", "HealthTracker", "Probe", "http_probe", "jittered"]

logger = logging.getLogger(__name__)

Probe = Callable[[Target], Awaitable[bool]]
"""Checks one target once: True when it answered well in time. Should not raise."""


def http_probe(client: httpx.AsyncClient, path: str, timeout: float) -> Probe:
    """A probe that GETs ``path`` on the target's origin and wants a 2xx within ``timeout``.

    ``path`` is absolute on the target's host (the target's base path is not prepended), as
    in Envoy and Kong. Redirects are not followed. ``timeout`` bounds the whole probe:
    waiting for a pool slot, connecting, and reading the (small) body, which is read so the
    connection can go back to the pool for the next probe.
    """

    async def probe(target: Target) -> bool:
        try:
            async with asyncio.timeout(timeout):
                response = await client.get(
                    target.origin + path, timeout=timeout, follow_redirects=False
                )
            return 200 <= response.status_code < 300
        except (TimeoutError, httpx.HTTPError, OSError):
            return False

    return probe


def jittered(interval: float, jitter: float, rng: Callable[[], float]) -> float:
    """``interval`` moved by up to ``jitter`` (a fraction) either way."""
    return interval * (1.0 + jitter * (2.0 * rng() - 1.0))


class HealthTracker:
    """Pure hysteresis for one target: consecutive results flip healthy / unhealthy."""

    __slots__ = ("_streak", "healthy", "healthy_threshold", "unhealthy_threshold")

    def __init__(
        self, *, healthy: bool = True, healthy_threshold: int = 2, unhealthy_threshold: int = 3
    ) -> None:
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("health thresholds must be >= 1")
        self.healthy = healthy
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self._streak = 0  # consecutive results contradicting the current verdict

    def observe(self, ok: bool) -> bool:
        """Take one probe result; returns the (possibly new) verdict."""
        if ok == self.healthy:
            self._streak = 0
            return self.healthy
        self._streak += 1
        if self._streak >= (self.healthy_threshold if ok else self.unhealthy_threshold):
            self.healthy = ok
            self._streak = 0
        return self.healthy


class HealthChecker:
    """Runs active health checks for one upstream: ``start()``, then ``await aclose()``."""

    def __init__(
        self,
        upstream: Upstream,
        probe: Probe,
        *,
        interval: float,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"health check interval must be > 0, got {interval}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.upstream = upstream
        self._probe = probe
        self._interval = interval
        self._jitter = jitter
        self._rng = rng
        self._trackers = {
            target: HealthTracker(
                healthy=target.healthy,
                healthy_threshold=healthy_threshold,
                unhealthy_threshold=unhealthy_threshold,
            )
            for target in upstream.targets
        }
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``aclose()``."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start probing (in the running event loop). Does nothing when already started."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"health-check:{self.upstream.name}"
            )

    async def aclose(self) -> None:
        """Stop probing and wait until the task is gone. Safe to call more than once."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves, not just our task

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for target, tracker in self._trackers.items():
                group.create_task(self._watch(target, tracker))

    async def _watch(self, target: Target, tracker: HealthTracker) -> None:
        # A random first delay spreads the targets over one interval.
        await asyncio.sleep(self._interval * self._rng())
        while True:
            ok = await self._check(target)
            self.upstream.set_healthy(target, tracker.observe(ok))
            await asyncio.sleep(jittered(self._interval, self._jitter, self._rng))

    async def _check(self, target: Target) -> bool:
        try:
            return await self._probe(target)
        except Exception:
            # A probe bug must not end the checks (TaskGroup would cancel every target's).
            logger.exception("health probe of %s raised; counted as failed", target.label)
            return False
