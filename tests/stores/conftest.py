"""Backends for the store conformance suite: memory, Redis, Redis Cluster, Sentinel."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis

from gateway.stores import BucketStore, create_store
from tests.support.redis_server import RedisCluster, RedisSentinel, RedisServer

# The redis_* fixtures come from tests/conftest.py: one set of servers per session.

TIMEOUT_S = 0.5  # generous: the machine is shared; timeout tests choose their own
REDIS_BACKENDS = ["redis", "redis_cluster", "redis_sentinel"]
_client_ids = itertools.count()


@dataclass
class Backend:
    """A store under test and what the tests need to look behind it."""

    name: str
    url: str | None
    cluster: bool
    store: BucketStore
    nodes: list[RedisServer]
    """Servers that hold keys (empty for memory): inspect, flush, pause, stop."""
    restore: Callable[[], None]
    """Undo pauses and stops."""

    def make_store(self, timeout_s: float = TIMEOUT_S) -> BucketStore:
        """Another store on the same backend."""
        return create_store(self.url, cluster=self.cluster, timeout_s=timeout_s, key_prefix="gw")

    def clients(self) -> list[redis.Redis]:
        return [node.client() for node in self.nodes]

    def keys(self) -> dict[bytes, int]:
        """Every key in Redis, with the index of the node holding it."""
        return {key: n for n, c in enumerate(self.clients()) for key in c.scan_iter(count=1000)}

    def client_for(self, key: str) -> redis.Redis:
        """A client of the node holding ``key`` (which must exist)."""
        node = self.keys().get(key.encode())
        assert node is not None, f"{key} is in no node"
        return self.nodes[node].client()


def unique_client() -> str:
    """A client key no other test uses (the Redis servers live for the session)."""
    return f"198.51.100.{next(_client_ids)}"


async def _backend(request: pytest.FixtureRequest, name: str) -> AsyncIterator[Backend]:
    url: str | None = None
    cluster = name == "redis_cluster"
    nodes: list[RedisServer] = []
    restore: Callable[[], None] = lambda: None  # noqa: E731
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, nodes, restore = server.url, [server], server.ensure_running
    elif name == "redis_cluster":
        redis_cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        redis_cluster.flush()
        url, nodes, restore = redis_cluster.url, redis_cluster.nodes, redis_cluster.ensure_running
    elif name == "redis_sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        master = sentinel.master
        master.ensure_running()
        master.flush()
        url, nodes, restore = sentinel.url, [master], master.ensure_running
    store = create_store(url, cluster=cluster, timeout_s=TIMEOUT_S, key_prefix="gw")
    assert store.backend == name
    yield Backend(name, url, cluster, store, nodes, restore)
    await store.aclose()
    restore()


@pytest.fixture(params=["memory", *REDIS_BACKENDS])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each backend in turn."""
    async for value in _backend(request, request.param):
        yield value


@pytest.fixture(params=REDIS_BACKENDS)
async def redis_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each Redis-backed backend in turn."""
    async for value in _backend(request, request.param):
        yield value
