"""Circuit breaker and rolling counter: pure, with an explicit clock."""

from __future__ import annotations

import pytest

from gateway.breaker import BreakerState, CircuitBreaker, RollingCounter

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


def make(
    changes: list[BreakerState] | None = None,
    *,
    minimum_requests: int = 4,
    failure_ratio: float = 0.5,
    half_open_probes: int = 1,
) -> CircuitBreaker:
    return CircuitBreaker(
        failure_ratio=failure_ratio,
        minimum_requests=minimum_requests,
        window=10.0,
        open_for=30.0,
        half_open_probes=half_open_probes,
        on_state_change=None if changes is None else changes.append,
    )


def trip(breaker: CircuitBreaker, now: float) -> None:
    for _ in range(breaker.minimum_requests):
        assert breaker.allow(now)
        breaker.record(False, now)
    assert breaker.state(now) is OPEN


# --- RollingCounter ---------------------------------------------------------------------


def test_counter_counts_within_window() -> None:
    counter = RollingCounter(10.0, buckets=10)
    counter.add(0.0)
    counter.add(5.5, 2)
    assert counter.total(9.99) == 3


def test_counter_expires_a_bucket_exactly_one_window_after_it_started() -> None:
    counter = RollingCounter(10.0, buckets=10)
    counter.add(0.5)  # bucket [0, 1)
    counter.add(1.0)  # bucket [1, 2)
    assert counter.total(9.999) == 2
    assert counter.total(10.0) == 1
    assert counter.total(11.0) == 0


def test_counter_slides_bucket_by_bucket() -> None:
    counter = RollingCounter(10.0, buckets=10)
    for second in range(20):
        counter.add(float(second))
        assert counter.total(float(second)) == min(second + 1, 10)


def test_counter_after_a_long_idle_gap_starts_empty() -> None:
    counter = RollingCounter(10.0, buckets=10)
    counter.add(1.0, 7)
    counter.add(1000.0)
    assert counter.total(1000.0) == 1


def test_counter_tolerates_a_clock_stepping_back() -> None:
    counter = RollingCounter(1.0, buckets=10)
    counter.add(5.0)
    counter.add(4.0)  # counted in the newest bucket, never negative or lost
    assert counter.total(5.0) == 2


def test_counter_clear() -> None:
    counter = RollingCounter(10.0)
    counter.add(1.0, 5)
    counter.clear()
    assert counter.total(1.0) == 0


@pytest.mark.parametrize(("window", "buckets"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_counter_rejects_bad_sizes(window: float, buckets: int) -> None:
    with pytest.raises(ValueError, match=r"must be"):
        RollingCounter(window, buckets)


# --- closed -> open ---------------------------------------------------------------------


def test_closed_allows_and_reports_closed() -> None:
    breaker = make()
    assert breaker.allow(0.0)
    assert breaker.state(0.0) is CLOSED
    assert breaker.retry_after(0.0) == 0.0


def test_does_not_open_below_minimum_requests_even_if_all_fail() -> None:
    breaker = make(minimum_requests=4)
    for _ in range(3):
        breaker.record(False, 1.0)
    assert breaker.state(1.0) is CLOSED


def test_opens_at_exactly_minimum_requests_and_exactly_the_ratio() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes, minimum_requests=4, failure_ratio=0.5)
    breaker.record(True, 1.0)
    breaker.record(True, 1.0)
    breaker.record(False, 1.0)
    assert breaker.state(1.0) is CLOSED  # 3 requests: below the minimum
    breaker.record(False, 1.0)  # 4 requests, 2 failures: ratio 0.5 >= 0.5
    assert breaker.state(1.0) is OPEN
    assert not breaker.allow(1.0)
    assert changes == [OPEN]


def test_ratio_just_below_threshold_stays_closed() -> None:
    breaker = make(minimum_requests=10, failure_ratio=0.3)
    for i in range(10):
        breaker.record(i >= 2, 1.0)  # 2 failures of 10
    assert breaker.state(1.0) is CLOSED
    breaker.record(False, 1.0)  # 3 of 11: 0.27
    assert breaker.state(1.0) is CLOSED
    breaker.record(False, 1.0)  # 4 of 12: 0.33
    assert breaker.state(1.0) is OPEN


def test_float_ratio_boundary_is_exact() -> None:
    # 3 / 10 == 0.3 must trip, although 0.3 * 10 > 3 in floating point.
    breaker = make(minimum_requests=10, failure_ratio=0.3)
    for i in range(10):
        breaker.record(i >= 3, 1.0)
    assert breaker.state(1.0) is OPEN


def test_a_success_that_reaches_minimum_requests_can_open() -> None:
    breaker = make(minimum_requests=4, failure_ratio=0.5)
    for ok in (False, False, False):
        breaker.record(ok, 1.0)
    breaker.record(True, 1.0)  # 3 of 4 failed
    assert breaker.state(1.0) is OPEN


def test_old_failures_slide_out_of_the_window() -> None:
    breaker = make(minimum_requests=4)
    for _ in range(3):
        breaker.record(False, 0.0)
    # At t=10 the failures of t=0 have left the 10 s window.
    breaker.record(False, 10.0)
    assert breaker.state(10.0) is CLOSED
    for _ in range(3):
        breaker.record(False, 10.5)
    assert breaker.state(10.5) is OPEN


def test_failures_spread_within_the_window_add_up() -> None:
    breaker = make(minimum_requests=4)
    for t in (0.0, 3.0, 6.0):
        breaker.record(False, t)
    breaker.record(False, 9.9)
    assert breaker.state(9.9) is OPEN


# --- open -> half-open ------------------------------------------------------------------


def test_open_refuses_until_open_for_elapses_exactly() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes)
    trip(breaker, 100.0)
    assert breaker.retry_after(100.0) == pytest.approx(30.0)
    assert breaker.retry_after(129.5) == pytest.approx(0.5)
    assert not breaker.allow(129.999)
    assert not breaker.available(129.999)
    assert breaker.state(130.0) is HALF_OPEN
    assert breaker.retry_after(130.0) == 0.0
    assert changes == [OPEN, HALF_OPEN]


def test_results_arriving_while_open_are_ignored() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes)
    trip(breaker, 0.0)
    breaker.record(True, 1.0)
    breaker.record(False, 2.0)
    assert breaker.state(2.0) is OPEN
    assert breaker.retry_after(2.0) == pytest.approx(28.0)  # not pushed further away
    assert changes == [OPEN]


# --- half-open probes -------------------------------------------------------------------


def test_half_open_hands_out_one_probe_at_a_time() -> None:
    breaker = make()
    trip(breaker, 0.0)
    assert breaker.available(30.0)
    assert breaker.allow(30.0)
    assert not breaker.available(30.0)
    assert not breaker.allow(30.0)
    assert not breaker.allow(31.0)
    assert breaker.state(31.0) is HALF_OPEN


def test_half_open_probe_permits_are_bounded_by_setting() -> None:
    breaker = make(half_open_probes=3)
    trip(breaker, 0.0)
    assert [breaker.allow(30.0) for _ in range(4)] == [True, True, True, False]


def test_probe_success_closes_with_a_fresh_window() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes, minimum_requests=4)
    trip(breaker, 0.0)
    assert breaker.allow(30.0)
    breaker.record(True, 30.0)
    assert breaker.state(30.0) is CLOSED
    assert changes == [OPEN, HALF_OPEN, CLOSED]
    # The failures that opened it are forgotten: three more do not reach the minimum.
    for _ in range(3):
        breaker.record(False, 30.5)
    assert breaker.state(30.5) is CLOSED


def test_probe_failure_reopens_for_open_for() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes)
    trip(breaker, 0.0)
    assert breaker.allow(35.0)
    breaker.record(False, 36.0)
    assert breaker.state(36.0) is OPEN
    assert breaker.retry_after(36.0) == pytest.approx(30.0)
    assert not breaker.allow(65.9)
    assert breaker.allow(66.0)
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN]


def test_released_probe_lets_another_probe_go() -> None:
    breaker = make()
    trip(breaker, 0.0)
    assert breaker.allow(30.0)
    breaker.release_probe()
    assert breaker.state(30.0) is HALF_OPEN
    assert breaker.allow(30.0)
    assert not breaker.allow(30.0)


def test_release_probe_is_harmless_when_closed_or_without_permits() -> None:
    breaker = make()
    breaker.release_probe()
    assert breaker.state(0.0) is CLOSED
    trip(breaker, 0.0)
    breaker.release_probe()  # open: nothing to give back
    assert breaker.allow(30.0)
    breaker.release_probe()
    breaker.release_probe()  # never below zero: still only one permit
    assert breaker.allow(30.0)
    assert not breaker.allow(30.0)


def test_record_after_open_for_without_allow_counts_as_probe() -> None:
    # A slow request from before the breaker opened reports after open_for: evidence either way.
    breaker = make()
    trip(breaker, 0.0)
    breaker.record(True, 40.0)
    assert breaker.state(40.0) is CLOSED


def test_last_state_has_no_side_effect() -> None:
    changes: list[BreakerState] = []
    breaker = make(changes)
    trip(breaker, 0.0)
    assert breaker.last_state is OPEN
    assert breaker.last_state is OPEN  # still open although time is not applied
    assert changes == [OPEN]
    assert breaker.state(30.0) is HALF_OPEN
    assert breaker.last_state is HALF_OPEN


def test_state_values_are_the_gauge_values() -> None:
    assert (int(CLOSED), int(HALF_OPEN), int(OPEN)) == (0, 1, 2)


def test_zero_open_for_goes_half_open_immediately() -> None:
    breaker = CircuitBreaker(minimum_requests=1, open_for=0.0)
    breaker.record(False, 5.0)
    assert breaker.state(5.0) is HALF_OPEN
    assert breaker.allow(5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_ratio": 0.0},
        {"failure_ratio": 1.5},
        {"minimum_requests": 0},
        {"open_for": -1.0},
        {"half_open_probes": 0},
        {"window": 0.0},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
