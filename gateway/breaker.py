"""Circuit breaker per upstream target: pure state, time passed in as ``now``.

States and their gauge values (``gateway_circuit_breaker_state``)::

    CLOSED (0) --failure ratio reached--> OPEN (2) --open_for elapsed--> HALF_OPEN (1)
    HALF_OPEN --probe succeeds--> CLOSED (fresh window)
    HALF_OPEN --probe fails-----> OPEN (for open_for again)

``now`` is monotonic seconds (``time.monotonic()``). Nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "CircuitBreaker", "RollingCounter"]


class BreakerState(IntEnum):
    """Breaker state; the value is what the metrics gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# Module constants: reading an enum member off its class costs ~100 ns on Python 3.11, and
# ``allow`` runs on every request.
_CLOSED, _HALF_OPEN, _OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


class RollingCounter:
    """Count of events over the last ``window`` seconds, in ``buckets`` sub-buckets.

    Recording is O(1) amortised: expired buckets are cleared as time moves forward, and a
    running total is kept, so reading the total never sums the buckets. An event counts for
    between ``window - window / buckets`` and ``window`` seconds, depending on where in its
    bucket it fell.
    """

    __slots__ = ("_counts", "_edge", "_head", "_total", "_width")

    def __init__(self, window: float, buckets: int = 10) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self._width = window / buckets
        self._counts = [0] * buckets
        # Absolute index of the newest bucket; far in the past so the first call clears all.
        self._head = -(2**62)
        self._edge = -math.inf  # when the bucket after the newest one begins
        self._total = 0

    def _advance(self, now: float) -> None:
        if now < self._edge:
            return  # still in the newest bucket: the common case, one comparison
        index = int(now // self._width)
        steps = index - self._head
        if steps <= 0:
            return  # same bucket (or a clock that stepped back: keep counting in the newest)
        counts = self._counts
        size = len(counts)
        if steps >= size:
            counts[:] = [0] * size
            self._total = 0
        else:
            for absolute in range(self._head + 1, index + 1):
                slot = absolute % size
                self._total -= counts[slot]
                counts[slot] = 0
        self._head = index
        self._edge = (index + 1) * self._width

    def add(self, now: float, amount: int = 1) -> None:
        """Record ``amount`` events at ``now``."""
        self._advance(now)
        self._counts[self._head % len(self._counts)] += amount
        self._total += amount

    def total(self, now: float) -> int:
        """Events recorded in the window ending at ``now``."""
        self._advance(now)
        return self._total

    def clear(self) -> None:
        """Forget every event."""
        self._counts[:] = [0] * len(self._counts)
        self._total = 0


class CircuitBreaker:
    """Failure-ratio circuit breaker for one target.

    Every ``allow(now)`` that returns True must be followed by exactly one ``record(...)``
    (the request got a verdict) or ``release_probe()`` (it never completed, e.g. cancelled),
    so that a half-open breaker cannot be left waiting for a probe that will never report.
    Results that arrive while open are ignored (the breaker has already decided); results
    that arrive while half-open are taken as the probe's verdict.
    """

    __slots__ = (
        "_failures",
        "_open_until",
        "_probes",
        "_requests",
        "_state",
        "failure_ratio",
        "half_open_probes",
        "minimum_requests",
        "on_state_change",
        "open_for",
    )

    def __init__(
        self,
        *,
        failure_ratio: float = 0.5,
        minimum_requests: int = 20,
        window: float = 10.0,
        open_for: float = 30.0,
        half_open_probes: int = 1,
        buckets: int = 10,
        on_state_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if not 0.0 < failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {failure_ratio}")
        if minimum_requests < 1:
            raise ValueError(f"minimum_requests must be >= 1, got {minimum_requests}")
        if open_for < 0:
            raise ValueError(f"open_for must be >= 0, got {open_for}")
        if half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {half_open_probes}")
        self.failure_ratio = failure_ratio
        self.minimum_requests = minimum_requests
        self.open_for = open_for
        self.half_open_probes = half_open_probes
        self.on_state_change = on_state_change
        self._requests = RollingCounter(window, buckets)
        self._failures = RollingCounter(window, buckets)
        self._state = _CLOSED
        self._open_until = 0.0
        self._probes = 0  # probe permits handed out while half-open

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state.name} probes={self._probes}>"

    @property
    def last_state(self) -> BreakerState:
        """The state as last observed, without applying time elapsed since (no side effect)."""
        return self._state

    def allow(self, now: float) -> bool:
        """May a request be sent now? In half-open, a True hands out a probe permit."""
        if self._state is _CLOSED:
            return True
        if self._observe(now) is _HALF_OPEN and self._probes < self.half_open_probes:
            self._probes += 1
            return True
        return False

    def available(self, now: float) -> bool:
        """Would ``allow(now)`` return True? Takes no permit."""
        if self._state is _CLOSED:
            return True
        return self._observe(now) is _HALF_OPEN and self._probes < self.half_open_probes

    def record(self, success: bool, now: float) -> None:
        """Report the outcome of a request that ``allow`` let through."""
        state = self._state
        if state is not _CLOSED:
            state = self._observe(now)
        if state is _CLOSED:
            requests = self._requests
            requests.add(now)
            if not success:
                self._failures.add(now)
            total = requests.total(now)
            # Division, not ``failures >= ratio * total``: 0.3 * 10 rounds above 3.
            if (
                total >= self.minimum_requests
                and self._failures.total(now) / total >= self.failure_ratio
            ):
                self._open(now)
        elif state is _HALF_OPEN:
            if success:
                self._requests.clear()
                self._failures.clear()
                self._set(_CLOSED)
            else:
                self._open(now)
        # OPEN: a late result of a request sent before the breaker opened; already decided.

    def release_probe(self) -> None:
        """Give back a permit whose request never completed (cancelled, no verdict)."""
        if self._state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def state(self, now: float) -> BreakerState:
        """Current state at ``now`` (an open breaker whose time is up becomes half-open)."""
        return self._observe(now)

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may be sent: 0 unless open.

        A half-open breaker whose permits are all out answers 0: when its probe reports is
        not known in advance.
        """
        if self._observe(now) is _OPEN:
            return self._open_until - now
        return 0.0

    def _observe(self, now: float) -> BreakerState:
        if self._state is _OPEN and now >= self._open_until:
            self._probes = 0
            self._set(_HALF_OPEN)
        return self._state

    def _open(self, now: float) -> None:
        self._open_until = now + self.open_for
        self._probes = 0
        self._set(_OPEN)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        if self.on_state_change is not None:
            self.on_state_change(state)
