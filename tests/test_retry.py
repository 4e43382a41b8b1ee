"""Retry policy, Retry-After parsing and the retry budget: pure, with clock and rng injected."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.retry import Outcome, RetryBudget, RetryPolicy, parse_retry_after

WALL_NOW = 784_111_777.0  # Sun, 06 Nov 1994 08:49:37 GMT


def policy(**overrides: object) -> RetryPolicy:
    settings: dict[str, object] = {
        "attempts": 2,
        "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
        "on": ["connect_error", 502, 503, 504],
        "backoff": 0.05,
        "max_backoff": 1.0,
    }
    settings.update(overrides)
    return RetryPolicy(**settings)  # type: ignore[arg-type]


def eligible(p: RetryPolicy, **overrides: object) -> bool:
    args: dict[str, object] = {
        "method": "GET",
        "attempt": 1,
        "outcome": "connect_error",
        "body_replayable": True,
        "response_started": False,
    }
    args.update(overrides)
    return p.should_retry(**args)  # type: ignore[arg-type]


def fixed(value: float) -> random.Random:
    class Fixed(random.Random):
        def random(self) -> float:
            return value

    return Fixed()


# --- should_retry -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_configured_methods_are_retried(method: str) -> None:
    assert eligible(policy(), method=method)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
def test_other_methods_are_not(method: str) -> None:
    assert not eligible(policy(), method=method)


def test_methods_are_normalised_to_upper_case() -> None:
    p = policy(methods=["get", "Post"])
    assert eligible(p, method="POST")
    assert eligible(p, method="GET")


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("connect_error", True),
        ("timeout", False),
        ("protocol_error", False),
        (502, True),
        (503, True),
        (504, True),
        (500, False),
        (429, False),
        (200, False),
    ],
)
def test_retried_only_on_configured_kinds_and_statuses(outcome: Outcome, expected: bool) -> None:
    assert eligible(policy(), outcome=outcome) is expected


def test_kinds_and_string_statuses_can_be_configured() -> None:
    p = policy(on=["timeout", "protocol_error", "500"])
    assert eligible(p, outcome="timeout")
    assert eligible(p, outcome="protocol_error")
    assert eligible(p, outcome=500)
    assert not eligible(p, outcome="connect_error")
    assert not eligible(p, outcome=502)


def test_attempts_counts_extra_tries_after_the_first() -> None:
    p = policy(attempts=2)
    assert eligible(p, attempt=1)
    assert eligible(p, attempt=2)
    assert not eligible(p, attempt=3)


def test_zero_attempts_never_retries() -> None:
    assert not eligible(policy(attempts=0), attempt=1)


def test_never_after_a_response_byte_reached_the_client() -> None:
    assert not eligible(policy(), response_started=True)
    assert not eligible(policy(), outcome="protocol_error", response_started=True)


def test_never_with_a_body_that_cannot_be_replayed() -> None:
    assert not eligible(policy(), method="PUT", body_replayable=False)


@pytest.mark.parametrize(
    ("on", "match"),
    [(["bogus"], "unknown"), ([99], "status"), ([600], "status"), (["1000"], "status")],
)
def test_bad_on_entries_are_rejected(on: list[object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        policy(on=on)


def test_negative_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="attempts"):
        policy(attempts=-1)
    with pytest.raises(ValueError, match="backoff"):
        policy(backoff=-0.1)


def test_repr_is_readable() -> None:
    text = repr(policy())
    assert "attempts=2" in text
    assert "'connect_error', '502'" in text


# --- backoff ----------------------------------------------------------------------------


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    p = policy(backoff=0.05, max_backoff=1.0)
    top = fixed(0.999999).random
    ceilings = [p.backoff_for(attempt, top) for attempt in range(1, 8)]
    assert ceilings == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0], rel=1e-5)


def test_backoff_is_full_jitter_from_zero() -> None:
    p = policy(backoff=0.05, max_backoff=1.0)
    assert p.backoff_for(3, fixed(0.0).random) == 0.0
    assert p.backoff_for(3, fixed(0.5).random) == pytest.approx(0.1)


def test_backoff_stays_within_bounds_for_many_draws() -> None:
    p = policy(backoff=0.05, max_backoff=1.0)
    rng = random.Random(1234)
    for attempt in range(1, 12):
        ceiling = min(1.0, 0.05 * 2 ** (attempt - 1))
        draws = [p.backoff_for(attempt, rng.random) for _ in range(500)]
        assert all(0.0 <= d < ceiling for d in draws)
        # Full jitter spreads over the whole range, not a narrow band around the ceiling.
        assert min(draws) < ceiling * 0.1
        assert max(draws) > ceiling * 0.9


def test_backoff_does_not_overflow_on_huge_attempt_numbers() -> None:
    p = policy(backoff=0.05, max_backoff=1.0)
    assert p.backoff_for(10_000, fixed(0.5).random) == pytest.approx(0.5)


# --- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("  120 ", 120.0),
        ("Sun, 06 Nov 1994 08:49:39 GMT", 2.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:40 GMT", 3.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:41 1994", 4.0),  # obsolete asctime, read as GMT
        ("Sun, 06 Nov 1994 08:49:30 GMT", 0.0),  # in the past
        ("Sun, 06 Nov 1994 10:49:39 +0200", 2.0),  # a zone offset is honoured
    ],
)
def test_parse_retry_after(header: str, expected: float) -> None:
    assert parse_retry_after(header, WALL_NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "soon",
        "-5",
        "1.5",
        "+3",
        "٣",  # a non-ASCII digit
        "²",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 99999 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "\x00\xff",
    ],
)
def test_garbage_retry_after_is_ignored(header: str) -> None:
    assert parse_retry_after(header, WALL_NOW) is None


def test_absurdly_long_delta_means_forever() -> None:
    assert parse_retry_after("9" * 5000, WALL_NOW) == math.inf


def test_parse_round_trips_a_formatted_date() -> None:
    later = datetime.fromtimestamp(WALL_NOW + 42, tz=UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), WALL_NOW) == pytest.approx(42)


def test_delay_without_retry_after_is_the_jittered_backoff() -> None:
    p = policy(backoff=0.2, max_backoff=1.0)
    assert p.delay(attempt=2, rng=fixed(0.5).random) == pytest.approx(0.2)


def test_retry_after_within_max_backoff_is_respected() -> None:
    p = policy(backoff=0.05, max_backoff=1.0)
    assert p.delay(attempt=1, rng=fixed(0.5).random, retry_after=0.75) == 0.75
    assert p.delay(attempt=1, rng=fixed(0.5).random, retry_after=1.0) == 1.0


def test_retry_after_shorter_than_backoff_waits_the_backoff() -> None:
    p = policy(backoff=0.4, max_backoff=1.0)
    assert p.delay(attempt=2, rng=fixed(0.9).random, retry_after=0.0) == pytest.approx(0.72)


def test_retry_after_beyond_max_backoff_means_no_retry() -> None:
    p = policy(max_backoff=1.0)
    assert p.delay(attempt=1, rng=fixed(0.5).random, retry_after=1.001) is None
    assert p.delay(attempt=1, rng=fixed(0.5).random, retry_after=math.inf) is None


# --- decide -----------------------------------------------------------------------------


def decide(p: RetryPolicy, budget: RetryBudget | None, **overrides: object) -> float | None:
    args: dict[str, object] = {
        "method": "GET",
        "attempt": 1,
        "outcome": 503,
        "body_replayable": True,
        "response_started": False,
        "now": 0.0,
        "rng": fixed(0.5).random,
        "budget": budget,
    }
    args.update(overrides)
    return p.decide(**args)  # type: ignore[arg-type]


def test_decide_returns_the_delay_and_takes_from_the_budget() -> None:
    budget = RetryBudget(ratio=0.0, window=1.0, min_per_second=1.0)
    assert decide(policy(), budget) == pytest.approx(0.025)
    assert decide(policy(), budget) is None  # the budget's single retry is spent


def test_decide_takes_nothing_from_the_budget_when_not_retrying() -> None:
    budget = RetryBudget(ratio=0.0, window=1.0, min_per_second=1.0)
    assert decide(policy(), budget, method="POST") is None
    assert decide(policy(), budget, retry_after=5.0) is None
    assert decide(policy(), budget, response_started=True) is None
    assert decide(policy(), budget) is not None  # the one retry was still there


def test_decide_without_budget() -> None:
    assert decide(policy(), None, retry_after=0.5) == 0.5


# --- budget -----------------------------------------------------------------------------


def test_budget_floor_allows_retries_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, window=10.0, min_per_second=3.0)
    granted = sum(budget.try_acquire_retry(0.0) for _ in range(100))
    assert granted == 30


def test_budget_ratio_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.2, window=10.0, min_per_second=0.0)
    for _ in range(50):
        budget.record_request(1.0)
    granted = sum(budget.try_acquire_retry(1.0) for _ in range(100))
    assert granted == 10


def test_budget_refills_as_the_window_slides() -> None:
    budget = RetryBudget(ratio=0.0, window=10.0, min_per_second=1.0)
    assert sum(budget.try_acquire_retry(0.0) for _ in range(20)) == 10
    assert not budget.try_acquire_retry(9.9)
    assert budget.try_acquire_retry(10.0)  # the retries of t=0 have left the window


def test_budget_under_sustained_failure_caps_extra_load() -> None:
    # 100 requests/s against an upstream that always fails, each wanting 2 retries.
    budget = RetryBudget(ratio=0.2, window=10.0, min_per_second=3.0)
    retries_per_second: list[int] = []
    for second in range(60):
        granted = 0
        for i in range(100):
            now = second + i / 100
            budget.record_request(now)
            granted += sum(budget.try_acquire_retry(now) for _ in range(2))
        retries_per_second.append(granted)
    # Any 10 s window: at most 20% of its 1000 requests plus the 3/s floor, where the policy
    # alone would add 200 retries per second.
    windows = [sum(retries_per_second[k : k + 10]) for k in range(51)]
    assert max(windows) <= 0.2 * 1000 + 3 * 10
    assert min(windows) >= 0.2 * 1000  # and the budget is actually used, not starved


def test_budget_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-0.1)
