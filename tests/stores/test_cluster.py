"""Redis Cluster specifics: requests spanning nodes, redirects while a slot moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot

from gateway.buckets import Limit
from gateway.stores import BucketStore, StoreError, bucket_keys, create_store
from tests.stores.conftest import unique_client
from tests.support.redis_server import RedisCluster

HOURLY = Limit.per(10, 1, 3600)


@pytest.fixture
async def store(redis_cluster: RedisCluster) -> AsyncIterator[BucketStore]:
    redis_cluster.ensure_running()
    store = create_store(redis_cluster.url, cluster=True, timeout_s=1, key_prefix="gw")
    yield store
    await store.aclose()


def _key_on_another_node(cluster: RedisCluster, than: str) -> str:
    owner = cluster.owner(key_slot(than.encode()))
    while True:
        key = bucket_keys("gw", unique_client(), "other", 1)[0]
        if cluster.owner(key_slot(key.encode())) is not owner:
            return key


async def test_a_denial_on_one_node_refunds_the_other(
    store: BucketStore, redis_cluster: RedisCluster
) -> None:
    roomy_key = bucket_keys("gw", unique_client(), "p", 1)[0]
    tight_key = _key_on_another_node(redis_cluster, roomy_key)
    roomy, tight = Limit.per(10, 1, 3600), Limit.per(1, 1, 3600)
    first = await store.acquire([roomy_key, tight_key], [roomy, tight], 1)
    assert first.allowed
    assert [o.remaining for o in first.buckets] == [9, 0]
    for _ in range(3):
        denied = await store.acquire([roomy_key, tight_key], [roomy, tight], 1)
        assert not denied.allowed
        assert [o.remaining for o in denied.buckets] == [9, 0]
        assert denied.buckets[0].wait_us == 0
    peek = await store.acquire([roomy_key], [roomy], 0)
    assert peek.buckets[0].remaining == 9  # every debit of a denied request was refunded


async def test_requests_follow_a_slot_that_moves(
    store: BucketStore, redis_cluster: RedisCluster
) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    slot = key_slot(keys[0].encode())
    source = redis_cluster.owner(slot)
    target = next(node for node in redis_cluster.nodes if node is not source)
    await store.ping()  # the store has loaded the slot table
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    try:
        # Migrating: a key the source does not hold is answered by ASK, to the target.
        target.client().cluster("SETSLOT", slot, "IMPORTING", source_id)
        source.client().cluster("SETSLOT", slot, "MIGRATING", target_id)
        for remaining in (9, 8):
            decision = await store.acquire(keys, [HOURLY], 1)
            assert decision.allowed
            assert decision.buckets[0].remaining == remaining
        assert target.client().cluster("COUNTKEYSINSLOT", slot) == 1
        assert source.client().cluster("COUNTKEYSINSLOT", slot) == 0
        # Migrated: the source answers MOVED, and the store remembers the new owner.
        redis_cluster.assign(slot, target)
        for remaining in (7, 6):
            decision = await store.acquire(keys, [HOURLY], 1)
            assert decision.buckets[0].remaining == remaining
    finally:
        redis_cluster.assign(slot, target)
        target.client().delete(keys[0])
        redis_cluster.assign(slot, source)
    decision = await store.acquire(keys, [HOURLY], 1)  # moved back, key gone: a full bucket
    assert decision.buckets[0].remaining == 9


async def test_a_failed_node_refunds_the_others(
    store: BucketStore, redis_cluster: RedisCluster
) -> None:
    healthy_key = bucket_keys("gw", unique_client(), "p", 1)[0]
    failing_key = _key_on_another_node(redis_cluster, healthy_key)
    assert (await store.acquire([healthy_key, failing_key], [HOURLY, HOURLY], 1)).allowed
    failing = redis_cluster.owner(key_slot(failing_key.encode()))
    failing.stop()
    try:
        with pytest.raises(StoreError):
            await store.acquire([healthy_key, failing_key], [HOURLY, HOURLY], 1)
        peek = await store.acquire([healthy_key], [HOURLY], 0)
        assert peek.buckets[0].remaining == 9  # the healthy node's debit was undone
    finally:
        redis_cluster.ensure_running()
