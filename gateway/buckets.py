"""Exact integer token-bucket arithmetic, shared by every bucket store.

No I/O and no clock: callers pass ``now_us``. The Redis script
(``stores/token_bucket.lua``) repeats this arithmetic line for line, so both
stores decide identically.

Units. Time is in integer microseconds. A limit of ``tokens`` per ``period_s``
is exact in integers when, with ``g = gcd(tokens, period_s * 10**6)``, one
token is ``unit = period_us // g`` units and the refill is ``rate = tokens // g``
units per microsecond. A bucket's level is a whole number of units, so a token
completes exactly on a microsecond boundary and no request is refused early by
rounding. Redis' Lua numbers are doubles, exact up to 2**53; a level plus the
refill added before it is clamped stays below ``2 * full``, hence the limit
``full <= MAX_UNITS = 2**52`` that :func:`limit_error` enforces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd
from typing import NamedTuple

MAX_UNITS = 2**52
"""Largest bucket capacity in units (``capacity * unit``) the Lua script handles exactly."""

US_PER_S = 1_000_000


def limit_error(capacity: int, tokens: int, period_s: int) -> str | None:
    """Why ``capacity`` tokens refilled at ``tokens`` per ``period_s`` is refused, or None."""
    if capacity < 1 or tokens < 1 or period_s < 1:
        return "capacity, refill tokens and refill period must be positive integers"
    period_us = period_s * US_PER_S
    unit = period_us // gcd(tokens, period_us)
    if capacity * unit > MAX_UNITS:
        return (
            f"capacity {capacity} with refill {tokens} per {period_s}s needs "
            f"{capacity * unit} units, more than the exact maximum 2**52; "
            "use a smaller capacity or a refill that divides the period evenly"
        )
    return None


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket: ``capacity`` whole tokens, refilled by ``tokens`` every ``period_s``.

    The derived integer fields are computed once, at construction (config load).
    Equality and hashing use only the three given numbers.
    """

    capacity: int
    tokens: int
    period_s: int
    unit: int = field(init=False, compare=False)
    """Units per token."""
    rate: int = field(init=False, compare=False)
    """Units refilled per microsecond."""
    full: int = field(init=False, compare=False)
    """Capacity in units."""
    fill_us: int = field(init=False, compare=False)
    """Microseconds for an empty bucket to become full."""

    def __post_init__(self) -> None:
        error = limit_error(self.capacity, self.tokens, self.period_s)
        if error is not None:
            raise ValueError(error)
        period_us = self.period_s * US_PER_S
        g = gcd(self.tokens, period_us)
        unit = period_us // g
        rate = self.tokens // g
        full = self.capacity * unit
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "full", full)
        object.__setattr__(self, "fill_us", -(-full // rate))

    @classmethod
    def per(cls, capacity: int, tokens: int, period_s: int) -> Limit:
        """``Limit.per(20, 10, 1)``: 20 tokens, refilled at 10 per second.

        Raises ValueError with :func:`limit_error`'s message for an invalid limit.
        """
        return cls(capacity, tokens, period_s)


# Per-request values are NamedTuples: immutable like frozen dataclasses, but built by
# tuple.__new__ instead of one object.__setattr__ per field (3x faster to create).


class BucketState(NamedTuple):
    """What a store keeps per bucket; a missing bucket is full."""

    level: int
    """Units held at ``stamp_us``."""
    stamp_us: int
    """Clock of the last write."""
    unit: int
    """Units per token of the limit it was written under (a reload may change the limit)."""


class BucketOutcome(NamedTuple):
    """One bucket's side of a decision.

    ``wait_us`` is measured on the bucket before this request's debit: 0 when it
    held ``cost`` tokens. When ``cost`` exceeds the capacity the request can never
    pass; ``wait_us`` is then ``limit.fill_us`` (an empty bucket's time to fill), the
    longest wait any satisfiable request could see: finite, never 0.
    """

    remaining: int
    """Whole tokens left after this request (when denied: whole tokens now)."""
    reset_us: int
    """Microseconds until the bucket is full again."""
    wait_us: int
    """Microseconds until ``cost`` tokens are available; 0 when they are now."""


class Decision(NamedTuple):
    """An all-or-nothing verdict over every bucket of a request."""

    allowed: bool
    now_us: int
    """The clock the decision was made on (for Redis, the server's ``TIME``)."""
    buckets: tuple[BucketOutcome, ...]
    """One per limit, in the request's order."""


def level_at(state: BucketState | None, limit: Limit, now_us: int) -> tuple[int, int]:
    """``(level in units, effective now)`` of a bucket at ``now_us``.

    The effective now is ``max(now_us, stamp)``: a clock that went backwards
    refills nothing rather than rewinding the bucket.
    """
    if state is None:
        return limit.full, now_us
    level = state.level
    if state.unit != limit.unit:
        # Written under another limit (config reload): keep its whole tokens.
        level = min(level // state.unit, limit.capacity) * limit.unit
    elapsed = now_us - state.stamp_us
    if elapsed < 0:
        return min(level, limit.full), state.stamp_us
    if elapsed >= limit.fill_us:
        return limit.full, now_us
    return min(level + elapsed * limit.rate, limit.full), now_us


def decide(
    states: Sequence[BucketState | None],
    limits: Sequence[Limit],
    now_us: int,
    cost: int,
) -> tuple[Decision, tuple[BucketState | None, ...] | None]:
    """Take ``cost`` tokens from every bucket, or from none.

    Returns the decision and, when allowed, the state to store per bucket (None:
    the bucket is full, delete it). A denied request changes nothing, so it
    returns None for the states. A negative ``cost`` is a refund: always allowed,
    capped at capacity (used to undo a debit a later cluster slot denied).
    """
    levels = [level_at(state, limit, now_us) for state, limit in zip(states, limits, strict=True)]
    allowed = all(
        level >= cost * limit.unit for (level, _), limit in zip(levels, limits, strict=True)
    )
    outcomes: list[BucketOutcome] = []
    new_states: list[BucketState | None] = []
    for (level, t), limit in zip(levels, limits, strict=True):
        need = cost * limit.unit
        after = min(level - need, limit.full) if allowed else level
        wait = 0
        if level < need:
            if need > limit.full:
                wait = limit.fill_us  # can never pass: see BucketOutcome
            else:
                wait = t - now_us + -(-(need - level) // limit.rate)
        reset = t - now_us + -(-(limit.full - after) // limit.rate)
        outcomes.append(BucketOutcome(after // limit.unit, reset, wait))
        new_states.append(None if after == limit.full else BucketState(after, t, limit.unit))
    decision = Decision(allowed, now_us, tuple(outcomes))
    return decision, (tuple(new_states) if allowed else None)
