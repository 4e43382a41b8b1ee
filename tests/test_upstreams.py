"""Targets, balancers and target selection: pure, with an explicit clock."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.config import Balance
from gateway.upstreams import Target, Upstream


def breaker() -> CircuitBreaker:
    return CircuitBreaker(minimum_requests=2, failure_ratio=0.5, window=10.0, open_for=30.0)


def targets(count: int) -> list[Target]:
    return [
        Target(scheme="http", host="127.0.0.1", port=8001 + i, breaker=breaker())
        for i in range(count)
    ]


def upstream(count: int = 3, balance: Balance = "round_robin") -> Upstream:
    return Upstream("users", targets(count), balance=balance)


def ports(picked: list[Target | None]) -> list[int | None]:
    return [t.port if t is not None else None for t in picked]


def pick_and_release(up: Upstream, times: int, now: float = 0.0) -> list[int | None]:
    picked = []
    for _ in range(times):
        target = up.pick(now)
        picked.append(target)
        if target is not None:
            target.release(True, now)
    return ports(picked)


def open_breaker(target: Target, now: float) -> None:
    for _ in range(target.breaker.minimum_requests):
        target.breaker.record(False, now)
    assert target.breaker.state(now) is BreakerState.OPEN


# --- Target -----------------------------------------------------------------------------


def test_target_defaults() -> None:
    target = Target(scheme="http", host="127.0.0.1", port=8001)
    assert target.origin == "http://127.0.0.1:8001"
    assert target.label == "http://127.0.0.1:8001"
    assert target.base_path == ""
    assert target.healthy
    assert target.inflight == 0
    assert target.breaker.state(0.0) is BreakerState.CLOSED


def test_target_origin_brackets_ipv6_and_label_is_the_configured_url() -> None:
    target = Target(
        scheme="https", host="::1", port=9443, base_path="/api/", label="https://[::1]:9443/api/"
    )
    assert target.origin == "https://[::1]:9443"
    assert target.base_path == "/api"
    assert target.label == "https://[::1]:9443/api/"


def test_target_constructor_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Target(scheme="ws", host="h", port=1)


# --- round robin ------------------------------------------------------------------------


def test_round_robin_cycles_through_targets() -> None:
    assert pick_and_release(upstream(3), 7) == [8001, 8002, 8003, 8001, 8002, 8003, 8001]


def test_round_robin_skips_unhealthy_and_stays_fair() -> None:
    up = upstream(3)
    up.set_healthy(up.targets[0], False)
    assert Counter(pick_and_release(up, 100)) == {8002: 50, 8003: 50}


def test_round_robin_skips_open_breaker_and_stays_fair() -> None:
    up = upstream(3)
    open_breaker(up.targets[1], 0.0)
    assert Counter(pick_and_release(up, 100, now=1.0)) == {8001: 50, 8003: 50}


def test_pick_returns_none_when_every_target_is_out() -> None:
    up = upstream(2)
    up.set_healthy(up.targets[0], False)
    open_breaker(up.targets[1], 0.0)
    assert up.pick(1.0) is None


def test_half_open_target_gets_one_probe_then_is_skipped() -> None:
    up = upstream(2)
    probe_target = up.targets[0]
    open_breaker(probe_target, 0.0)
    picks = [up.pick(30.0) for _ in range(4)]
    assert ports(picks) == [8001, 8002, 8002, 8002]
    assert probe_target.breaker.state(30.0) is BreakerState.HALF_OPEN
    # The probe is cancelled: its permit comes back and the next pick may probe again.
    probe_target.release(None, 30.5)
    assert probe_target.inflight == 0
    assert up.pick(30.5) is probe_target


def test_probe_success_via_release_closes_the_breaker() -> None:
    up = upstream(1)
    target = up.targets[0]
    open_breaker(target, 0.0)
    assert up.pick(29.0) is None
    picked = up.pick(30.0)
    assert picked is target
    assert up.pick(30.0) is None  # one probe at a time
    target.release(True, 30.2)
    assert target.breaker.state(30.2) is BreakerState.CLOSED
    assert pick_and_release(up, 3, now=30.3) == [8001, 8001, 8001]


def test_failures_reported_through_release_open_the_breaker() -> None:
    up = upstream(2)
    first = up.targets[0]
    for _ in range(2):
        picked = up.pick(0.0)
        assert picked is not None
        picked.release(picked is not first, 0.0)
    assert first.breaker.state(0.0) is BreakerState.CLOSED  # 1 failure in 1 request of its own
    picked = up.pick(0.0)
    assert picked is first
    first.release(False, 0.0)
    assert first.breaker.state(0.0) is BreakerState.OPEN
    assert pick_and_release(up, 3, now=0.1) == [8002, 8002, 8002]


# --- exclude ----------------------------------------------------------------------------


def test_exclude_prefers_untried_targets() -> None:
    up = upstream(3)
    first = up.pick(0.0)
    assert first is not None
    tried = [first]
    second = up.pick(0.0, exclude=tried)
    assert second is not None
    tried.append(second)
    third = up.pick(0.0, exclude=tried)
    assert {first.port, second.port, third.port if third else None} == {8001, 8002, 8003}


def test_exclude_falls_back_to_a_tried_target_when_nothing_else_is_available() -> None:
    up = upstream(2)
    tried = up.targets[0]
    open_breaker(up.targets[1], 0.0)
    assert up.pick(1.0, exclude=[tried]) is tried


def test_exclude_fallback_returns_none_when_tried_target_is_out_too() -> None:
    up = upstream(1)
    only = up.targets[0]
    open_breaker(only, 0.0)
    assert up.pick(1.0, exclude=[only]) is None


# --- least in flight --------------------------------------------------------------------


def test_least_inflight_picks_the_least_busy() -> None:
    up = upstream(3, balance="least_inflight")
    held = [up.pick(0.0) for _ in range(3)]  # one each
    assert ports(held) == [8001, 8002, 8003]
    assert held[0] is not None
    held[0].release(True, 0.0)
    assert up.pick(0.0) is held[0]


def test_least_inflight_breaks_ties_round_robin() -> None:
    up = upstream(3, balance="least_inflight")
    assert pick_and_release(up, 6) == [8001, 8002, 8003, 8001, 8002, 8003]


def test_least_inflight_spreads_concurrent_requests_evenly() -> None:
    up = upstream(3, balance="least_inflight")
    held = [up.pick(0.0) for _ in range(30)]
    assert Counter(ports(held)) == {8001: 10, 8002: 10, 8003: 10}
    assert all(t.inflight == 10 for t in up.targets)


def test_least_inflight_ignores_unavailable_targets_even_if_idle() -> None:
    up = upstream(3, balance="least_inflight")
    busy = up.pick(0.0)
    assert busy is up.targets[0]
    up.set_healthy(up.targets[1], False)
    open_breaker(up.targets[2], 0.0)
    assert up.pick(1.0) is busy
    assert busy.inflight == 2


def test_least_inflight_with_exclude() -> None:
    up = upstream(2, balance="least_inflight")
    a, b = up.targets
    for _ in range(3):
        b.inflight += 1  # b is very busy
    assert up.pick(0.0, exclude=[a]) is b


# --- retry_after ------------------------------------------------------------------------


def test_retry_after_is_the_soonest_reopening() -> None:
    up = upstream(2)
    open_breaker(up.targets[0], 0.0)
    open_breaker(up.targets[1], 10.0)
    assert up.pick(12.0) is None
    assert up.retry_after(12.0) == pytest.approx(18.0)


def test_retry_after_ignores_unhealthy_targets() -> None:
    up = upstream(2)
    open_breaker(up.targets[0], 0.0)
    open_breaker(up.targets[1], 10.0)
    up.set_healthy(up.targets[0], False)
    assert up.retry_after(12.0) == pytest.approx(28.0)


def test_retry_after_unknown_when_all_unhealthy() -> None:
    up = upstream(2)
    for target in up.targets:
        up.set_healthy(target, False)
    assert up.retry_after(0.0) is None


# --- hooks ------------------------------------------------------------------------------


def test_hooks_report_initial_values_and_changes() -> None:
    states: list[tuple[str, str, BreakerState]] = []
    counts: list[tuple[str, int]] = []
    ts = targets(2)
    up = Upstream(
        "users",
        ts,
        on_breaker_state=lambda *args: states.append(args),
        on_healthy_targets=lambda *args: counts.append(args),
    )
    a, b = (t.label for t in ts)
    assert states == [("users", a, BreakerState.CLOSED), ("users", b, BreakerState.CLOSED)]
    assert counts == [("users", 2)]

    open_breaker(ts[0], 0.0)
    assert states[-1] == ("users", a, BreakerState.OPEN)
    assert counts[-1] == ("users", 1)

    up.set_healthy(ts[1], False)
    up.set_healthy(ts[1], False)  # no change, no call
    assert counts[-1] == ("users", 0)
    assert up.in_rotation == 0

    ts[0].breaker.state(30.0)  # half-open counts as in rotation: it may be probed
    assert states[-1] == ("users", a, BreakerState.HALF_OPEN)
    assert counts[-1] == ("users", 1)

    up.set_healthy(ts[1], True)
    assert counts == [("users", 2), ("users", 1), ("users", 0), ("users", 1), ("users", 2)]


def test_upstream_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="no targets"):
        Upstream("empty", [])
    with pytest.raises(ValueError, match="balance"):
        Upstream("x", targets(1), balance="random")  # type: ignore[arg-type]
