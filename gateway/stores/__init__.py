"""Where token buckets live: one protocol, chosen once by ``create_store``.

============================  ================  ==================  =================
``redis.url``                 store             connections         backend label
============================  ================  ==================  =================
empty / None                  ``MemoryStore``   none                ``memory``
``redis://``, ``rediss://``   ``RedisStore``    ``RespClient``      ``redis``
same, with ``cluster: true``  ``ClusterStore``  ``ClusterClient``   ``redis_cluster``
``redis+sentinel://``         ``RedisStore``    ``SentinelClient``  ``redis_sentinel``
============================  ================  ==================  =================

Every Redis variant talks through the lean RESP client (``resp.py``): one
pipelined connection per server, no hidden retries, a hard per-call deadline.
"""

from __future__ import annotations

from gateway.stores.base import BucketStore, StoreError, bucket_key, bucket_keys
from gateway.stores.cluster import ClusterClient
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import ClusterStore, RedisStore
from gateway.stores.resp import RespClient
from gateway.stores.script import LOAD
from gateway.stores.sentinel import SentinelClient
from gateway.stores.urls import parse_redis_url, parse_sentinel_url

__all__ = [
    "BucketStore",
    "ClusterStore",
    "MemoryStore",
    "RedisStore",
    "StoreError",
    "bucket_key",
    "bucket_keys",
    "create_store",
]


def create_store(
    url: str | None, *, cluster: bool, timeout_s: float, key_prefix: str
) -> BucketStore:
    """The store for ``redis.url`` (None or empty: in process memory).

    No I/O happens here: connections open on first use. Raises ValueError for a
    malformed URL or an impossible combination, so config loading can report it.
    """
    if timeout_s <= 0:
        raise ValueError("the Redis timeout must be positive")
    if not url:
        if cluster:
            raise ValueError("cluster: true needs a Redis URL")
        return MemoryStore(key_prefix=key_prefix)
    if url.startswith("redis+sentinel:"):
        if cluster:
            raise ValueError("cluster: true cannot be used with a redis+sentinel URL")
        sentinel = SentinelClient(parse_sentinel_url(url), timeout_s=timeout_s, setup=(LOAD,))
        return RedisStore(
            sentinel, backend="redis_sentinel", timeout_s=timeout_s, key_prefix=key_prefix
        )
    target = parse_redis_url(url)
    if cluster:
        nodes = ClusterClient(target, timeout_s=timeout_s, setup=(LOAD,))
        return ClusterStore(nodes, timeout_s=timeout_s, key_prefix=key_prefix)
    server = RespClient(target, timeout_s=timeout_s, setup=(LOAD,))
    return RedisStore(server, backend="redis", timeout_s=timeout_s, key_prefix=key_prefix)
