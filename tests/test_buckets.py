"""The token-bucket arithmetic against an independent exact model (fractions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.buckets import (
    MAX_UNITS,
    BucketOutcome,
    BucketState,
    Decision,
    Limit,
    decide,
    limit_error,
)


@dataclass
class ModelBucket:
    """A bucket in exact rationals: tokens held at time ``t`` (µs); None = never used."""

    capacity: int
    per_us: Fraction  # tokens per microsecond
    tokens: Fraction
    t: int | None = None

    @classmethod
    def of(cls, capacity: int, tokens: int, period_s: int) -> ModelBucket:
        return cls(capacity, Fraction(tokens, period_s * 1_000_000), Fraction(capacity))

    def at(self, now: int) -> Fraction:
        if self.t is None:
            return Fraction(self.capacity)
        return min(Fraction(self.capacity), self.tokens + (now - self.t) * self.per_us)


def model_decide(buckets: Sequence[ModelBucket], now: int, cost: int) -> Decision:
    """What a token bucket must answer, worked out with fractions, not units."""
    held = [bucket.at(now) for bucket in buckets]
    allowed = all(tokens >= cost for tokens in held)
    outcomes = []
    for bucket, tokens in zip(buckets, held, strict=True):
        after = min(tokens - cost, Fraction(bucket.capacity)) if allowed else tokens
        if tokens >= cost:
            wait = 0
        elif cost > bucket.capacity:
            wait = math.ceil(bucket.capacity / bucket.per_us)
        else:
            wait = math.ceil((cost - tokens) / bucket.per_us)
        reset = math.ceil((bucket.capacity - after) / bucket.per_us)
        outcomes.append(BucketOutcome(math.floor(after), reset, wait))
        if allowed:
            bucket.tokens, bucket.t = after, now
    return Decision(allowed, now, tuple(outcomes))


class Implementation:
    """``decide`` with states kept the way a store keeps them."""

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = list(limits)
        self.states: list[BucketState | None] = [None] * len(limits)

    def __call__(self, now: int, cost: int) -> Decision:
        decision, states = decide(self.states, self.limits, now, cost)
        if states is not None:
            self.states = list(states)
        return decision


limit_args = st.tuples(
    st.integers(1, 60),  # capacity
    st.integers(1, 5000),  # tokens per period
    st.sampled_from([1, 60, 3600]),  # period
)
# A step: how to pick the gap to the next request, a raw gap, and the cost.
steps = st.lists(
    st.tuples(
        st.sampled_from(["gap", "wait", "wait-1", "reset", "reset-1"]),
        st.integers(0, 5_000_000),
        st.integers(0, 8),
    ),
    max_size=40,
)


@given(st.lists(limit_args, min_size=1, max_size=3), steps, st.integers(0, 2**40))
def test_decisions_match_the_exact_model(
    args: list[tuple[int, int, int]], script: list[tuple[str, int, int]], start: int
) -> None:
    model = [ModelBucket.of(*a) for a in args]
    implementation = Implementation([Limit.per(*a) for a in args])
    now, last = start, None
    for how, gap, cost in script:
        # Land exactly on (or one µs before) the moments the last answer named.
        if last is not None and how.startswith("wait"):
            gap = max(o.wait_us for o in last.buckets) - how.endswith("-1")
        elif last is not None and how.startswith("reset"):
            gap = max(o.reset_us for o in last.buckets) - how.endswith("-1")
        now += max(gap, 0)
        expected = model_decide(model, now, cost)
        assert implementation(now, cost) == expected
        last = expected


@given(limit_args, st.integers(1, 8))
def test_a_request_arriving_exactly_when_its_tokens_complete_is_admitted(
    args: tuple[int, int, int], cost: int
) -> None:
    limit = Limit.per(*args)
    implementation = Implementation([limit])
    while implementation(0, 1).allowed:  # drain
        pass
    denied = implementation(0, cost)
    wait = denied.buckets[0].wait_us
    if cost > limit.capacity:
        assert wait == limit.fill_us
        return
    assert wait > 0
    assert not implementation(wait - 1, cost).allowed
    assert implementation(wait, cost).allowed


def test_exact_boundary_of_ten_per_second() -> None:
    implementation = Implementation([Limit.per(1, 10, 1)])
    assert implementation(0, 1).allowed
    first = implementation(0, 1)
    assert not first.allowed
    assert first.buckets[0] == BucketOutcome(remaining=0, reset_us=100_000, wait_us=100_000)
    assert not implementation(99_999, 1).allowed
    assert implementation(100_000, 1).allowed


def test_thirds_of_a_second_never_round_against_the_client() -> None:
    # 3 tokens per second: token k completes at k/3 s, between two microseconds.
    implementation = Implementation([Limit.per(3, 3, 1)])
    for _ in range(3):
        assert implementation(0, 1).allowed
    assert implementation(0, 1).buckets[0].wait_us == 333_334  # ceil(10**6 / 3)
    assert not implementation(333_333, 1).allowed
    assert implementation(333_334, 1).allowed
    # Two tokens' refill from t=0 land at 666_667 µs (2/3 s rounded up), not 666_668.
    assert not implementation(666_666, 1).allowed
    assert implementation(666_667, 1).allowed


def test_all_or_nothing_and_denials_cost_nothing() -> None:
    roomy, tight = Limit.per(10, 1, 3600), Limit.per(2, 1, 3600)
    implementation = Implementation([roomy, tight])
    assert implementation(0, 1).allowed
    assert implementation(0, 1).allowed
    for _ in range(5):  # hammering a closed bucket
        denied = implementation(10, 1)
        assert not denied.allowed
        assert [o.remaining for o in denied.buckets] == [8, 0]
        assert denied.buckets[0].wait_us == 0
    # The tight bucket recovers one token exactly one hour after the first request.
    assert implementation(3_600_000_000, 1).allowed


def test_cost_beyond_capacity_waits_one_full_refill() -> None:
    limit = Limit.per(5, 1, 60)
    decision = Implementation([limit])(0, 6)
    assert not decision.allowed
    assert decision.buckets[0] == BucketOutcome(remaining=5, reset_us=0, wait_us=300_000_000)


def test_refund_is_capped_at_capacity() -> None:
    limit = Limit.per(4, 1, 1)
    implementation = Implementation([limit])
    assert implementation(0, 3).buckets[0].remaining == 1
    refund = implementation(0, -2)
    assert refund.allowed
    assert refund.buckets[0].remaining == 3
    capped = implementation(0, -10)
    assert capped.buckets[0] == BucketOutcome(remaining=4, reset_us=0, wait_us=0)
    assert implementation.states == [None]  # a full bucket is not stored


def test_full_buckets_are_not_stored_and_partial_ones_are() -> None:
    limit = Limit.per(2, 1, 1)
    decision, states = decide([None], [limit], 5, 0)
    assert decision.allowed
    assert states == (None,)
    decision, states = decide([None], [limit], 5, 1)
    assert states == (BucketState(level=limit.unit, stamp_us=5, unit=limit.unit),)


def test_a_clock_going_backwards_refills_nothing() -> None:
    limit = Limit.per(2, 1, 1)  # one token per second
    state = BucketState(level=0, stamp_us=10_000_000, unit=limit.unit)
    decision, states = decide([state], [limit], 9_000_000, 1)
    assert not decision.allowed
    # Measured from the decision's clock, the token is one second after the stamp.
    assert decision.buckets[0].wait_us == 2_000_000
    assert decision.buckets[0].reset_us == 3_000_000
    assert states is None


def test_a_changed_limit_keeps_whole_tokens() -> None:
    old, new = Limit.per(10, 10, 1), Limit.per(10, 3, 1)
    state = BucketState(level=old.unit * 4 + old.unit // 2, stamp_us=0, unit=old.unit)
    decision, _ = decide([state], [new], 0, 4)
    assert decision.allowed  # 4.5 tokens under the old limit: 4 whole ones survive
    assert decision.buckets[0].remaining == 0
    shrunk = Limit.per(2, 3, 1)
    decision, _ = decide([state], [shrunk], 0, 0)
    assert decision.buckets[0].remaining == 2  # capped by the new capacity


def test_limit_derived_integers() -> None:
    limit = Limit.per(20, 10, 1)
    assert (limit.unit, limit.rate, limit.full, limit.fill_us) == (100_000, 1, 2_000_000, 2_000_000)
    hourly = Limit.per(1000, 1000, 3600)
    assert (hourly.unit, hourly.rate) == (3_600_000, 1)
    fast = Limit.per(5, 7, 1)
    assert (fast.unit, fast.rate, fast.fill_us) == (1_000_000, 7, 714_286)
    assert Limit.per(20, 10, 1) == Limit(20, 10, 1)
    assert hash(Limit.per(20, 10, 1)) == hash(Limit(20, 10, 1))


def test_limit_error_refuses_what_lua_cannot_compute_exactly() -> None:
    # One token per hour: a token is 3.6e9 units.
    largest = MAX_UNITS // 3_600_000_000
    assert limit_error(largest, 1, 3600) is None
    message = limit_error(largest + 1, 1, 3600)
    assert message is not None
    assert "2**52" in message
    with pytest.raises(ValueError, match="2\\*\\*52"):
        Limit.per(largest + 1, 1, 3600)


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 1, 1)])
def test_limit_error_refuses_non_positive_numbers(args: tuple[int, int, int]) -> None:
    assert limit_error(*args) is not None
    with pytest.raises(ValueError, match="positive"):
        Limit.per(*args)
