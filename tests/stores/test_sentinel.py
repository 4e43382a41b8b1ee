"""Sentinel specifics: when the master dies, the store follows the failover by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway.buckets import Limit
from gateway.stores import StoreError, bucket_keys, create_store
from gateway.stores.script import state_from_value
from tests.support.gateway import wait_until
from tests.support.net import HOST
from tests.support.redis_server import RedisSentinel, RedisServer

HOURLY = Limit.per(10, 1, 3600)


@pytest.fixture
def replicated() -> Iterator[tuple[RedisSentinel, RedisServer]]:
    """A master, its replica, and a sentinel that knows both and fails over within ~1 s."""
    master = RedisServer()
    replica = RedisServer("--replicaof", HOST, str(master.port))
    sentinel = RedisSentinel(master, service="failover", down_after_ms=500)
    try:
        master.start()
        replica.start()
        # Linked before the sentinel starts: its first look at the master finds the
        # replica (it would otherwise look again only 10 s later).
        wait_until(lambda: master.client().info("replication")["connected_slaves"] == 1)
        sentinel.start()
        wait_until(lambda: _replica_known(sentinel, replica), timeout=20, what="replica known")
        yield sentinel, replica
    finally:
        for server in (sentinel.server, replica, master):
            server.cleanup()


def _replica_known(sentinel: RedisSentinel, replica: RedisServer) -> bool:
    replicas = sentinel.server.client().sentinel_slaves(sentinel.service)
    return any(
        r["port"] == replica.port and not r["is_sdown"] and r["master-link-status"] == "ok"
        for r in replicas
    )


@pytest.mark.slow
async def test_the_store_follows_a_failover(replicated: tuple[RedisSentinel, RedisServer]) -> None:
    sentinel, replica = replicated
    store = create_store(sentinel.url, cluster=False, timeout_s=0.5, key_prefix="gw")
    keys = bucket_keys("gw", "203.0.113.5", "p", 1)
    try:
        assert (await store.acquire(keys, [HOURLY], 1)).buckets[0].remaining == 9
        wait_until(lambda: replica.client().exists(keys[0]), what="replication")
        sentinel.master.kill()
        failures = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                decision = await store.acquire(keys, [HOURLY], 1)
                break
            except StoreError:  # the master is gone and no replica is promoted yet
                failures += 1
            assert time.monotonic() < deadline, "the store did not follow the failover"
            await asyncio.sleep(0.05)
        assert failures > 0
        assert sentinel.master_port() == replica.port
        assert decision.allowed
        assert decision.buckets[0].remaining == 8  # the replicated first debit was kept
        value = replica.client().get(keys[0])
        assert isinstance(value, bytes)
        assert state_from_value(value).level // HOURLY.unit == 8
    finally:
        await store.aclose()
