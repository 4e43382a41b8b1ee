"""What every Redis-backed store must also do: keys, expiry, script cache, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from gateway.buckets import Decision, Limit
from gateway.stores import BucketStore, StoreError, bucket_keys
from gateway.stores.script import SHA
from tests.stores.conftest import Backend, unique_client

HOURLY = Limit.per(5, 1, 3600)
ROOMY = Limit.per(100, 1, 3600)


async def test_keys_hash_the_client_and_share_one_slot(redis_backend: Backend) -> None:
    client = unique_client()
    keys = [*bucket_keys("gw", client, "per_client", 2), *bucket_keys("gw", client, "other", 1)]
    limits = [HOURLY, HOURLY, HOURLY]
    assert (await redis_backend.store.acquire(keys, limits, 1)).allowed
    stored = redis_backend.keys()
    assert sorted(stored) == sorted(key.encode() for key in keys)
    assert not any(client.encode() in key for key in stored)
    assert len({key_slot(key) for key in stored}) == 1
    assert len(set(stored.values())) == 1  # on one node, even in the cluster
    tag = keys[0].split("{")[1].split("}")[0]
    assert len(tag) == 32
    assert all(key.decode().startswith(f"gw:{{{tag}}}:") for key in stored)


async def test_keys_expire_when_their_bucket_is_full_again(redis_backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 2)
    fast = Limit.per(2, 10, 1)  # full again 100 ms after one token is taken
    assert (await redis_backend.store.acquire(keys, [HOURLY, fast], 1)).allowed
    slow_ttl = redis_backend.client_for(keys[0]).pttl(keys[0])
    fast_ttl = redis_backend.client_for(keys[1]).pttl(keys[1])
    assert 3_600_000 - 5_000 < slow_ttl <= 3_600_000  # one token: one hour, rounded up
    assert 0 < fast_ttl <= 100
    client = redis_backend.client_for(keys[0])
    deadline = time.monotonic() + 5
    while client.exists(keys[1]):
        assert time.monotonic() < deadline, "the full bucket's key did not expire"
        await asyncio.sleep(0.01)
    assert client.exists(keys[0])


async def test_a_denied_request_leaves_keys_untouched(redis_backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    tight = Limit.per(1, 1, 3600)
    assert (await redis_backend.store.acquire(keys, [tight], 1)).allowed
    client = redis_backend.client_for(keys[0])
    before = client.get(keys[0])
    ttl_before = client.pttl(keys[0])
    assert not (await redis_backend.store.acquire(keys, [tight], 1)).allowed
    assert client.get(keys[0]) == before
    assert client.pttl(keys[0]) <= ttl_before


async def test_a_request_that_fills_the_bucket_deletes_its_key(redis_backend: Backend) -> None:
    # Refunding into a full bucket, or taking nothing from one: no key left behind.
    keys = bucket_keys("gw", unique_client(), "p", 1)
    assert (await redis_backend.store.acquire(keys, [HOURLY], 2)).allowed
    assert keys[0].encode() in redis_backend.keys()  # noqa: SIM118 (a method, not a dict)
    refund = await redis_backend.store.acquire(keys, [HOURLY], -2)
    assert refund.allowed
    assert refund.buckets[0].reset_us == 0
    assert keys[0].encode() not in redis_backend.keys()  # noqa: SIM118


async def test_the_script_survives_script_flush(redis_backend: Backend) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    assert (await redis_backend.store.acquire(keys, [HOURLY], 1)).allowed
    for client in redis_backend.clients():
        client.script_flush()
        assert client.script_exists(SHA) == [False]
    decision = await redis_backend.store.acquire(keys, [HOURLY], 1)
    assert decision.allowed
    assert decision.buckets[0].remaining == 3
    # EVAL put it back in the cache of the node that ran it: EVALSHA works again.
    assert redis_backend.client_for(keys[0]).script_exists(SHA) == [True]


async def test_a_paused_redis_times_out_then_recovers(redis_backend: Backend) -> None:
    timeout_s = 0.2
    store = redis_backend.make_store(timeout_s=timeout_s)
    keys = bucket_keys("gw", unique_client(), "p", 1)
    try:
        assert (await store.acquire(keys, [ROOMY], 1)).allowed
        for node in redis_backend.nodes:
            node.pause()
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.acquire(keys, [ROOMY], 1) for _ in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(result, StoreError) for result in results), results
        assert timeout_s * 0.9 <= elapsed < timeout_s + 1.0  # no call hangs past its timeout
        with pytest.raises(StoreError):
            await store.ping()
        for node in redis_backend.nodes:
            node.resume()
        decision = await _eventually_decides(store, keys, ROOMY)
        assert decision.allowed
        # Calls that timed out may still have run once Redis resumed: they were sent.
        assert 100 - 1 - 1 - 20 <= decision.buckets[0].remaining <= 100 - 1 - 1
    finally:
        await store.aclose()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_stopped_redis_fails_fast_then_recovers(redis_backend: Backend, how: str) -> None:
    timeout_s = 1.0
    store = redis_backend.make_store(timeout_s=timeout_s)
    keys = bucket_keys("gw", unique_client(), "p", 1)
    try:
        assert (await store.acquire(keys, [HOURLY], 1)).allowed
        for node in redis_backend.nodes:
            getattr(node, how)()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.acquire(keys, [HOURLY], 1)
            assert time.monotonic() - started < timeout_s / 2  # refused, not timed out
        redis_backend.restore()  # same ports, data gone
        decision = await _eventually_decides(store, keys, HOURLY)
        assert decision.allowed
        assert decision.buckets[0].remaining == HOURLY.capacity - 1
    finally:
        await store.aclose()


async def _eventually_decides(store: BucketStore, keys: tuple[str, ...], limit: Limit) -> Decision:
    """The first decision the store makes again, within 10 s of polling."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await store.acquire(keys, [limit], 1)
        except StoreError:
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.02)
