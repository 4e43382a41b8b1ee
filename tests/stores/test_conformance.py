"""One suite, identical assertions, every store: memory, Redis, Redis Cluster, Sentinel."""

from __future__ import annotations

import asyncio
import time

from gateway.buckets import BucketOutcome, Limit
from gateway.stores import bucket_keys
from tests.stores.conftest import Backend, unique_client

HOURLY = Limit.per(5, 1, 3600)  # refill negligible during a test
HOUR_US = 3_600_000_000


async def test_a_fresh_bucket_is_full(backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    decision = await backend.store.acquire(keys, [HOURLY], 1)
    assert decision.allowed
    # A fresh bucket loses exactly one token: full again in exactly one token's refill time.
    assert decision.buckets == (BucketOutcome(remaining=4, reset_us=HOUR_US, wait_us=0),)
    assert decision.now_us > 0


async def test_all_or_nothing_and_refused_requests_cost_nothing(backend: Backend) -> None:
    roomy, tight = Limit.per(10, 1, 3600), Limit.per(2, 1, 3600)
    keys = bucket_keys("gw", unique_client(), "p", 2)
    for remaining in (9, 8):
        decision = await backend.store.acquire(keys, [roomy, tight], 1)
        assert decision.allowed
        assert decision.buckets[0].remaining == remaining
    for _ in range(5):  # hammering the closed bucket
        denied = await backend.store.acquire(keys, [roomy, tight], 1)
        assert not denied.allowed
        assert [o.remaining for o in denied.buckets] == [8, 0]
        assert denied.buckets[0].wait_us == 0
        assert 0 < denied.buckets[1].wait_us <= HOUR_US
    # The roomy bucket lost nothing to the denials.
    alone = await backend.store.acquire(keys[:1], [roomy], 1)
    assert alone.allowed
    assert alone.buckets[0].remaining == 7


async def test_all_or_nothing_across_clients(backend: Backend) -> None:
    # Buckets of two clients in one request (on a cluster: two slots, see ClusterStore).
    roomy, tight = Limit.per(10, 1, 3600), Limit.per(1, 1, 3600)
    key_a = bucket_keys("gw", unique_client(), "a", 1)[0]
    key_b = bucket_keys("gw", unique_client(), "b", 1)[0]
    assert (await backend.store.acquire([key_a, key_b], [roomy, tight], 1)).allowed
    denied = await backend.store.acquire([key_a, key_b], [roomy, tight], 1)
    assert not denied.allowed
    assert [o.remaining for o in denied.buckets] == [9, 0]
    assert denied.buckets[0].wait_us == 0
    after = await backend.store.acquire([key_a], [roomy], 0)
    assert after.buckets[0].remaining == 9


async def test_remaining_reset_and_wait(backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    limit = Limit.per(3, 1, 3600)
    started = time.monotonic()
    for _ in range(3):
        assert (await backend.store.acquire(keys, [limit], 1)).allowed
    denied = await backend.store.acquire(keys, [limit], 2)
    elapsed_us = int((time.monotonic() - started) * 1e6) + 1000
    assert not denied.allowed
    (outcome,) = denied.buckets
    assert outcome.remaining == 0
    # The first token comes back an hour after the first request, which was just now.
    assert 2 * HOUR_US - elapsed_us <= outcome.wait_us <= 2 * HOUR_US
    assert 3 * HOUR_US - elapsed_us <= outcome.reset_us <= 3 * HOUR_US


async def test_a_cost_beyond_capacity_never_passes_and_waits_a_full_refill(
    backend: Backend,
) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    decision = await backend.store.acquire(keys, [HOURLY], 6)
    assert not decision.allowed
    assert decision.buckets == (BucketOutcome(remaining=5, reset_us=0, wait_us=HOURLY.fill_us),)


async def test_cost_zero_peeks(backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    assert (await backend.store.acquire(keys, [HOURLY], 2)).allowed
    for _ in range(3):
        peek = await backend.store.acquire(keys, [HOURLY], 0)
        assert peek.allowed
        assert peek.buckets[0].remaining == 3


async def test_tokens_come_back_over_time(backend: Backend) -> None:
    limit = Limit.per(2, 20, 1)  # a token every 50 ms
    keys = bucket_keys("gw", unique_client(), "p", 1)
    assert (await backend.store.acquire(keys, [limit], 2)).allowed
    denied = await backend.store.acquire(keys, [limit], 1)
    denied_at = time.monotonic()
    assert not denied.allowed
    assert 0 < denied.buckets[0].wait_us <= 50_000
    deadline = denied_at + 5
    while not (decision := await backend.store.acquire(keys, [limit], 1)).allowed:
        assert time.monotonic() < deadline, "no token came back within 5 s"
        await asyncio.sleep(0.005)
    # Not before the promised wait (1 ms slack for the two clocks' granularity).
    assert time.monotonic() - denied_at >= denied.buckets[0].wait_us / 1e6 - 0.001
    assert decision.buckets[0].remaining == 0


async def test_concurrent_requests_admit_exactly_capacity(backend: Backend) -> None:
    limit = Limit.per(50, 1, 3600)
    keys = bucket_keys("gw", unique_client(), "p", 1)
    decisions = await asyncio.gather(*(backend.store.acquire(keys, [limit], 1) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.buckets[0].remaining for d in decisions if d.allowed) == list(range(50))


async def test_stores_sharing_a_backend_share_buckets(backend: Backend) -> None:
    if backend.name == "memory":
        return  # one process only, by definition
    limit = Limit.per(10, 1, 3600)
    keys = bucket_keys("gw", unique_client(), "p", 1)
    other = backend.make_store()
    try:
        decisions = await asyncio.gather(
            *(store.acquire(keys, [limit], 1) for store in [backend.store, other] * 10)
        )
    finally:
        await other.aclose()
    assert sum(d.allowed for d in decisions) == 10


async def test_ping(backend: Backend) -> None:
    await backend.store.ping()  # raises StoreError if not
