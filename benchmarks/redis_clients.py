"""Client CPU per rate-limit call: the lean RESP client against redis.asyncio.

Run: ``python -m benchmarks.redis_clients [--calls 20000] [--loop asyncio|uvloop]``.
Starts its own redis-server and 3-node cluster; prints the gateway process's CPU
(``time.process_time``) per call, for sequential calls and for calls from 100
concurrent tasks, best of interleaved rounds (noise on a shared machine only
ever adds CPU). Not collected by pytest (no ``test_`` prefix): figures, not
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from gateway.buckets import Decision, Limit
from gateway.stores import BucketStore, create_store
from gateway.stores.base import bucket_keys
from gateway.stores.redis import RedisStore
from gateway.stores.resp import RespClient, _Connection
from gateway.stores.script import LOAD, SCRIPT, SHA, decision_from_reply, limit_arg
from gateway.stores.urls import parse_redis_url
from tests.support.redis_server import RedisCluster, RedisServer

LIMITS = (Limit.per(1_000_000, 1_000_000, 1), Limit.per(10_000_000, 10_000_000, 3600))
WORKERS = 100
ROUNDS = 3
TIMEOUT_S = 1.0


class RedisPyStore:
    """The same script call through redis.asyncio (hiredis parser, retries off)."""

    backend = "redis"
    key_prefix = "gw"

    def __init__(self, client: Any, cluster: bool = False) -> None:
        self._client = client
        self._cluster = cluster
        # redis-py's async cluster fails calls when more than max_connections are in
        # flight, and when many first calls race its lazy initialisation.
        self._gate = asyncio.Semaphore(WORKERS)

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        args = [len(keys), *keys, cost, *(limit_arg(limit) for limit in limits)]
        async with self._gate, asyncio.timeout(TIMEOUT_S):
            reply = await self._client.execute_command("EVALSHA", SHA, *args)
        return decision_from_reply(reply, len(keys))

    async def warm_up(self, keys: Sequence[str]) -> None:
        if self._cluster:
            await self._client.initialize()
            node = self._client.get_node_from_key(keys[0])
            await self._client.execute_command("SCRIPT", "LOAD", SCRIPT, target_nodes=node)
        else:
            await self._client.execute_command("SCRIPT", "LOAD", SCRIPT)

    async def aclose(self) -> None:
        await self._client.aclose()


class WaitForClient(RespClient):
    """Lean client variant: ``asyncio.wait_for`` per call instead of the shared timer."""

    async def call(self, payload: bytes, deadline: float | None = None, replies: int = 1) -> Any:
        far = asyncio.get_running_loop().time() + 3600
        return await asyncio.wait_for(super().call(payload, far, replies), self.timeout_s)


class TimeoutCtxClient(RespClient):
    """Lean client variant: ``async with asyncio.timeout`` per call."""

    async def call(self, payload: bytes, deadline: float | None = None, replies: int = 1) -> Any:
        far = asyncio.get_running_loop().time() + 3600
        async with asyncio.timeout(self.timeout_s):
            return await super().call(payload, far, replies)


class _DirectConnection(_Connection):
    """Each command written at once, no per-iteration batching."""

    def send(self, payload: bytes, deadline: float, replies: int = 1) -> asyncio.Future[Any]:
        future = super().send(payload, deadline, replies)
        self._flush()
        return future


class DirectClient(RespClient):
    """Lean client variant: one ``transport.write`` per command."""

    connection_class = _DirectConnection


async def _run(acquire: Callable[[], Awaitable[Decision]], calls: int, workers: int) -> float:
    """CPU microseconds per call."""
    per_worker = calls // workers

    async def worker() -> None:
        for _ in range(per_worker):
            decision = await acquire()
            assert decision.allowed

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return (time.process_time() - start) / (per_worker * workers) * 1e6


async def _bench(single: str, cluster: str, calls: int) -> list[tuple[str, float, float]]:
    keys = bucket_keys("gw", "198.51.100.7", "per_client", 2)
    target = parse_redis_url(single)

    def lean(client_class: type[RespClient]) -> RedisStore:
        client = client_class(target, timeout_s=TIMEOUT_S, setup=(LOAD,))
        return RedisStore(client, backend="redis", timeout_s=TIMEOUT_S, key_prefix="gw")

    no_retry = Retry(NoBackoff(), 0)
    redis_py_single = RedisPyStore(
        redis.asyncio.Redis.from_url(single, retry=no_retry, socket_timeout=TIMEOUT_S)
    )
    redis_py_cluster = RedisPyStore(
        redis.asyncio.cluster.RedisCluster.from_url(
            cluster, retry=no_retry, socket_timeout=TIMEOUT_S, max_connections=WORKERS
        ),
        cluster=True,
    )
    candidates: list[tuple[str, BucketStore | RedisPyStore]] = [
        ("redis.asyncio + hiredis", redis_py_single),
        ("lean: batched writes, shared timer (chosen)", lean(RespClient)),
        ("lean: direct writes, shared timer", lean(DirectClient)),
        ("lean: batched writes, asyncio.wait_for", lean(WaitForClient)),
        ("lean: batched writes, asyncio.timeout", lean(TimeoutCtxClient)),
        ("cluster: redis.asyncio RedisCluster", redis_py_cluster),
        ("cluster: lean ClusterClient (chosen)", create_store(cluster, **_options(True))),
    ]
    for _, store in candidates:
        if isinstance(store, RedisPyStore):
            await store.warm_up(keys)
        assert (await store.acquire(keys, LIMITS, 1)).allowed  # connect, load, map slots
    assert len({key_slot(key.encode()) for key in keys}) == 1
    best: dict[str, list[float]] = {name: [1e9, 1e9] for name, _ in candidates}
    for _ in range(ROUNDS):
        for name, store in candidates:
            acquire = partial(store.acquire, keys, LIMITS, 1)
            figures = best[name]
            figures[0] = min(figures[0], await _run(acquire, calls, 1))
            figures[1] = min(figures[1], await _run(acquire, calls, WORKERS))
    for _, store in candidates:
        await store.aclose()
    return [(name, best[name][0], best[name][1]) for name, _ in candidates]


def _options(cluster: bool) -> dict[str, Any]:
    return {"cluster": cluster, "timeout_s": TIMEOUT_S, "key_prefix": "gw"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    options = parser.parse_args()
    server, cluster = RedisServer(), RedisCluster()
    try:
        server.start()
        cluster.start()
        bench = _bench(server.url, cluster.url, options.calls)
        if options.loop == "uvloop":
            import uvloop

            rows = uvloop.run(bench)
        else:
            rows = asyncio.run(bench)
    finally:
        server.cleanup()
        cluster.cleanup()
    print(f"CPU per call (us), best of {ROUNDS} x {options.calls} calls, loop={options.loop}")
    print(f"{'client':48} {'sequential':>10} {f'{WORKERS} tasks':>10}")
    for name, sequential, concurrent in rows:
        print(f"{name:48} {sequential:10.1f} {concurrent:10.1f}")


if __name__ == "__main__":
    main()
