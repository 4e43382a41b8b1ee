"""The memory store's own promise: bounded memory, with an injected clock (no sleeping)."""

from __future__ import annotations

from gateway.buckets import Limit
from gateway.stores import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


SECOND = Limit.per(5, 5, 1)  # full again within 1 s of any request
HOUR = Limit.per(5, 5, 3600)  # within an hour


def test_buckets_are_forgotten_once_full_again() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for n in range(1000):
        assert store.take([f"client-{n}"], [SECOND], 1).allowed
    assert len(store) == 1000
    clock.now += 199_999  # one token back after 200 ms: not full yet
    store.take(["other"], [SECOND], 0)
    assert len(store) == 1000
    clock.now += 1
    store.take(["other"], [SECOND], 0)
    assert len(store) == 0  # swept by a later call, none of the 1000 clients returned


def test_a_swept_bucket_is_indistinguishable_from_a_kept_one() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    assert store.take(["a"], [SECOND], 5).allowed
    clock.now += 500_000
    half = store.take(["a"], [SECOND], 0)
    assert half.buckets[0].remaining == 2
    clock.now += 500_000
    store.take(["b"], [SECOND], 0)
    assert len(store) == 0
    assert store.take(["a"], [SECOND], 0).buckets[0].remaining == 5


def test_long_horizons_do_not_hold_back_short_ones() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    store.take(["slow"], [HOUR], 1)  # written first, full only in 12 minutes
    for n in range(100):
        store.take([f"fast-{n}"], [SECOND], 1)
    clock.now += 1_000_000
    store.take(["probe"], [SECOND], 0)
    assert len(store) == 1  # only the hourly bucket is left


def test_every_horizon_is_swept_eventually_even_if_unused() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for n in range(50):
        store.take([f"fast-{n}"], [SECOND], 1)
    clock.now += 1_000_000
    for _ in range(1024):  # traffic on another limit only
        store.take(["hourly"], [HOUR], 0)
    assert len(store) == 0


def test_a_bucket_whose_limit_changed_is_not_dropped_early() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    assert store.take(["k"], [SECOND], 4).allowed
    assert store.take(["k"], [HOUR], 1).allowed  # a reload gave the key a longer horizon
    clock.now += 1_000_000
    for _ in range(1024):
        store.take(["probe"], [SECOND], 0)
    assert len(store) == 1
    assert store.take(["k"], [HOUR], 0).buckets[0].remaining == 0


async def test_acquire_and_ping_never_fail() -> None:
    store = MemoryStore()
    await store.ping()
    decision = await store.acquire(["k"], [HOUR], 1)
    assert decision.allowed
    await store.aclose()
    assert len(store) == 0
