"""Retry decisions: which failed tries to repeat, how long to wait, and a retry budget.

Pure: the caller passes the clock (``now``, monotonic; ``wall_now``, Unix time for HTTP-date
``Retry-After``) and the randomness (``rng``, returning floats in [0, 1)).

One failed try, in order (``RetryPolicy.decide`` does all four)::

    should_retry(...)  -> eligible? (method, attempts left, kind or status, body, bytes sent)
    delay(...)         -> seconds to wait, or None when the upstream's Retry-After is too long
    budget.try_acquire_retry(now) -> within the retry budget?
    sleep(delay), pick another target, send again
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final, get_args

from gateway.breaker import RollingCounter
from gateway.errors import FailureKind

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_ON",
    "FailureKind",
    "Outcome",
    "RetryBudget",
    "RetryPolicy",
    "parse_retry_after",
]


Outcome = FailureKind | int
"""What a try produced: a failure kind, or the upstream's status code."""

FAILURE_KINDS: Final[frozenset[str]] = frozenset(get_args(FailureKind))  # for lookups
DEFAULT_METHODS: Final = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
DEFAULT_ON: Final[tuple[Outcome, ...]] = ("connect_error", 502, 503, 504)

# Caps the exponent so ``backoff * 2**n`` never overflows; far beyond any sane max_backoff.
_MAX_EXPONENT: Final = 62
# More digits than this is longer than any clock: an "effectively forever" Retry-After.
_MAX_DELTA_DIGITS: Final = 15


def parse_retry_after(value: str, wall_now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait, or None when it is not understood.

    Accepts delta-seconds (``120``) and any HTTP-date form of RFC 9110 (IMF-fixdate,
    RFC 850, asctime; asctime carries no zone and is read as GMT). A date in the past
    means 0. ``wall_now`` is Unix time.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        return math.inf if len(text) > _MAX_DELTA_DIGITS else float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - wall_now)


class RetryPolicy:
    """A retry policy for one upstream, compiled once from its config; treat as read-only.

    ``attempts`` is the number of extra tries after the first. ``attempt`` arguments are the
    1-based number of the try that just failed, so a request gets at most ``attempts + 1``
    tries.
    """

    __slots__ = ("attempts", "backoff", "max_backoff", "methods", "on_kinds", "on_statuses")

    def __init__(
        self,
        *,
        attempts: int = 2,
        methods: Iterable[str] = DEFAULT_METHODS,
        on: Iterable[str | int] = DEFAULT_ON,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> None:
        if attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {attempts}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        kinds: set[str] = set()
        statuses: set[int] = set()
        for item in on:
            if isinstance(item, int) or item.isdigit():
                status = int(item)
                if not 100 <= status <= 599:
                    raise ValueError(f"retry on: {item!r} is not an HTTP status code")
                statuses.add(status)
            elif item in FAILURE_KINDS:
                kinds.add(item)
            else:
                known = ", ".join(sorted(FAILURE_KINDS))
                raise ValueError(f"retry on: unknown {item!r} (a status code or one of {known})")
        self.attempts = attempts
        self.methods = frozenset(m.upper() for m in methods)
        self.on_kinds = frozenset(kinds)
        self.on_statuses = frozenset(statuses)
        self.backoff = backoff
        self.max_backoff = max_backoff

    def __repr__(self) -> str:
        on = sorted(self.on_kinds) + [str(s) for s in sorted(self.on_statuses)]
        return (
            f"RetryPolicy(attempts={self.attempts}, methods={sorted(self.methods)}, on={on}, "
            f"backoff={self.backoff}, max_backoff={self.max_backoff})"
        )

    def should_retry(
        self,
        *,
        method: str,
        attempt: int,
        outcome: Outcome,
        body_replayable: bool,
        response_started: bool,
    ) -> bool:
        """Is the try that just failed eligible for another?

        Never once a response byte has reached the client, nor when the request body was
        streamed (not replayable). ``method`` is the request's method, upper case.
        """
        if response_started or not body_replayable or attempt > self.attempts:
            return False
        if method not in self.methods:
            return False
        if isinstance(outcome, int):
            return outcome in self.on_statuses
        return outcome in self.on_kinds

    def backoff_for(self, attempt: int, rng: Callable[[], float]) -> float:
        """Full-jitter exponential backoff before retrying after try ``attempt``.

        Uniform in [0, min(max_backoff, backoff * 2**(attempt - 1))).
        """
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        ceiling = min(self.max_backoff, self.backoff * (1 << exponent))
        return rng() * ceiling

    def delay(
        self, *, attempt: int, rng: Callable[[], float], retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait before the retry, or None when it should not happen.

        ``retry_after`` is the upstream's parsed ``Retry-After`` (see ``parse_retry_after``).
        It is honoured (the wait is at least that) when it fits under ``max_backoff``; when it
        asks for longer, the gateway does not hold the client that long: None, and the
        upstream's answer (with its Retry-After) goes back to the client.
        """
        jittered = self.backoff_for(attempt, rng)
        if retry_after is None:
            return jittered
        if retry_after > self.max_backoff:
            return None
        return max(retry_after, jittered)

    def decide(
        self,
        *,
        method: str,
        attempt: int,
        outcome: Outcome,
        body_replayable: bool,
        response_started: bool,
        now: float,
        rng: Callable[[], float],
        budget: RetryBudget | None = None,
        retry_after: float | None = None,
    ) -> float | None:
        """The whole decision: seconds to wait before retrying, or None not to retry.

        Takes a retry from ``budget`` only when every other check passed.
        """
        if not self.should_retry(
            method=method,
            attempt=attempt,
            outcome=outcome,
            body_replayable=body_replayable,
            response_started=response_started,
        ):
            return None
        wait = self.delay(attempt=attempt, rng=rng, retry_after=retry_after)
        if wait is None or (budget is not None and not budget.try_acquire_retry(now)):
            return None
        return wait


class RetryBudget:
    """Caps retries to a share of recent requests, so a failing upstream is not hammered.

    Over the last ``window`` seconds, retries may number at most
    ``ratio * requests + min_per_second * window`` (the floor lets a quiet upstream still
    retry, as Envoy's and Linkerd's budgets do). Call ``record_request`` once per client
    request sent upstream (not per retry) and ``try_acquire_retry`` before each retry.
    """

    __slots__ = ("_floor", "_requests", "_retries", "ratio")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        window: float = 10.0,
        min_per_second: float = 3.0,
        buckets: int = 10,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError("ratio and min_per_second must be >= 0")
        self.ratio = ratio
        self._floor = min_per_second * window
        self._requests = RollingCounter(window, buckets)
        self._retries = RollingCounter(window, buckets)

    def record_request(self, now: float) -> None:
        """Count one original request."""
        self._requests.add(now)

    def try_acquire_retry(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        allowed = self.ratio * self._requests.total(now) + self._floor
        if self._retries.total(now) + 1 > allowed:
            return False
        self._retries.add(now)
        return True
