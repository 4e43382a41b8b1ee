"""Upstreams and their targets: who is in rotation, and which target takes the next request.

A target is in rotation while it is healthy (active health checks; always, without them) and
its circuit breaker lets requests through. ``Upstream.pick`` runs on every request, so it only
reads state; every state change happens where the evidence arrives (``Target.release``,
``Upstream.set_healthy``, the breaker itself).

Every target that ``pick`` returns must be handed back exactly once with ``Target.release``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import partial

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.config import Balance

__all__ = ["Target", "Upstream"]


class Target:
    """One backend address of an upstream (as parsed by the config), with its live state."""

    __slots__ = (
        "base_path",
        "breaker",
        "healthy",
        "host",
        "inflight",
        "label",
        "origin",
        "port",
        "scheme",
    )

    def __init__(
        self,
        *,
        scheme: str,
        host: str,
        port: int,
        base_path: str = "",
        breaker: CircuitBreaker | None = None,
        label: str | None = None,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"target scheme must be http or https, got {scheme!r}")
        self.scheme = scheme
        self.host = host
        self.port = port
        self.base_path = base_path.rstrip("/")
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.healthy = True  # written by active health checks only
        self.inflight = 0  # requests picked and not yet released
        netloc = f"[{host}]" if ":" in host else host
        self.origin = f"{scheme}://{netloc}:{port}"
        # The metrics label: pass the target URL as configured; a bounded value either way.
        self.label = label if label is not None else self.origin + self.base_path

    def __repr__(self) -> str:
        return f"<Target {self.label} healthy={self.healthy} inflight={self.inflight}>"

    def release(self, success: bool | None, now: float) -> None:
        """Hand back a target that ``Upstream.pick`` returned, once, when its try is over.

        ``success`` is the breaker's verdict on the try (True / False), or None when there is
        none (the client went away, the gateway cancelled): then its half-open probe permit,
        if it held one, is returned unused.
        """
        self.inflight -= 1
        if success is None:
            self.breaker.release_probe()
        else:
            self.breaker.record(success, now)


class Upstream:
    """A named group of targets and the balancer that spreads requests over them.

    Hooks, for metrics; each is also called once at construction with the initial value:

    - ``on_breaker_state(upstream, target_label, state)`` when a target's breaker changes;
    - ``on_healthy_targets(upstream, count)`` when the number of targets in rotation
      (healthy and breaker not open) changes.

    The upstream takes over each target breaker's ``on_state_change``.
    """

    __slots__ = ("_choose", "_in_rotation", "_next", "_on_healthy_targets", "name", "targets")

    def __init__(
        self,
        name: str,
        targets: Sequence[Target],
        *,
        balance: Balance = "round_robin",
        on_breaker_state: Callable[[str, str, BreakerState], None] | None = None,
        on_healthy_targets: Callable[[str, int], None] | None = None,
    ) -> None:
        if not targets:
            raise ValueError(f"upstream {name!r} has no targets")
        if balance not in ("round_robin", "least_inflight"):
            raise ValueError(f"upstream {name!r}: unknown balance {balance!r}")
        self.name = name
        self.targets: tuple[Target, ...] = tuple(targets)
        self._choose = self._least_inflight if balance == "least_inflight" else self._round_robin
        self._next = 0  # round-robin cursor: index of the first target to consider
        self._on_healthy_targets = on_healthy_targets
        self._in_rotation = -1
        for target in self.targets:
            target.breaker.on_state_change = partial(
                self._breaker_changed, target, on_breaker_state
            )
            if on_breaker_state is not None:
                on_breaker_state(name, target.label, target.breaker.last_state)
        self._count_in_rotation()

    def __repr__(self) -> str:
        return f"<Upstream {self.name} targets={len(self.targets)} in_rotation={self._in_rotation}>"

    @property
    def in_rotation(self) -> int:
        """Targets that are healthy and whose breaker is not open (as last observed)."""
        return self._in_rotation

    def pick(self, now: float, exclude: Collection[Target] = ()) -> Target | None:
        """The target for the next try, or None when every target is unhealthy or open.

        Prefers targets not in ``exclude`` (those this request already tried) and falls back
        to them when nothing else is available. The returned target has its in-flight count
        raised and, if half-open, holds a probe permit: hand it back with ``Target.release``.
        """
        choose = self._choose
        target = choose(now, exclude)
        if target is None and exclude:
            target = choose(now, ())
        if target is not None:
            target.inflight += 1
        return target

    def _round_robin(self, now: float, exclude: Collection[Target]) -> Target | None:
        targets = self.targets
        size = len(targets)
        index = self._next
        for _ in range(size):
            target = targets[index]
            index = index + 1 if index + 1 < size else 0
            # allow() last: in half-open it takes a probe permit, so only for the one we return.
            if target.healthy and not (exclude and target in exclude) and target.breaker.allow(now):
                self._next = index  # the one after the chosen: skipped targets do not skew
                return target
        return None

    def _least_inflight(self, now: float, exclude: Collection[Target]) -> Target | None:
        targets = self.targets
        size = len(targets)
        start = self._next
        best: Target | None = None
        best_index = 0
        for step in range(size):
            index = (start + step) % size
            target = targets[index]
            if (
                target.healthy
                # Strict <: on ties the earliest in round-robin order wins, so load spreads.
                and (best is None or target.inflight < best.inflight)
                and not (exclude and target in exclude)
                and target.breaker.available(now)
            ):
                best, best_index = target, index
        if best is not None:
            best.breaker.allow(now)  # cannot refuse: it was just seen available
            self._next = (best_index + 1) % size
        return best

    def retry_after(self, now: float) -> float | None:
        """When none is available: seconds until the first target may be probed again.

        None when no healthy target has a known reopening time (all are unhealthy by active
        health checks). 0 when a target is available or half-open with its probes out.
        """
        waits = [t.breaker.retry_after(now) for t in self.targets if t.healthy]
        return min(waits) if waits else None

    def set_healthy(self, target: Target, healthy: bool) -> None:
        """Record an active health check verdict (the only writer of ``Target.healthy``)."""
        if target.healthy != healthy:
            target.healthy = healthy
            self._count_in_rotation()

    def _breaker_changed(
        self,
        target: Target,
        hook: Callable[[str, str, BreakerState], None] | None,
        state: BreakerState,
    ) -> None:
        if hook is not None:
            hook(self.name, target.label, state)
        self._count_in_rotation()

    def _count_in_rotation(self) -> None:
        count = sum(
            1 for t in self.targets if t.healthy and t.breaker.last_state is not BreakerState.OPEN
        )
        if count != self._in_rotation:
            self._in_rotation = count
            if self._on_healthy_targets is not None:
                self._on_healthy_targets(self.name, count)
