"""The bucket store protocol every backend implements, its one error, and key naming."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol

from gateway.buckets import Decision, Limit


class StoreError(Exception):
    """The store could not decide: unreachable, slower than its timeout, or failing.

    Every backend translates its own failures into this, with ``raise ... from``.
    """


class BucketStore(Protocol):
    """Where bucket states live; chosen once, at construction, by ``create_store``."""

    backend: str
    """Metric label: ``memory``, ``redis``, ``redis_cluster`` or ``redis_sentinel``."""
    key_prefix: str

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """Take ``cost`` tokens from every bucket ``keys[i]`` (limit ``limits[i]``), or none.

        Keys must be distinct. Raises StoreError within the store's timeout.
        """
        ...

    async def ping(self) -> None:
        """Return when the backend answers within the timeout; raise StoreError otherwise."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def _key_head(prefix: str, client_key: str, policy: str) -> str:
    # blake2b: no raw header value or IP reaches Redis; braces: Redis Cluster hash tag.
    digest = blake2b(client_key.encode(), digest_size=16).hexdigest()
    return f"{prefix}:{{{digest}}}:{policy}:"


def bucket_key(prefix: str, client_key: str, policy: str, index: int) -> str:
    """``<prefix>:{<hash of client_key>}:<policy>:<index>``: one client's buckets, one slot."""
    return f"{_key_head(prefix, client_key, policy)}{index}"


def bucket_keys(prefix: str, client_key: str, policy: str, count: int) -> tuple[str, ...]:
    """``bucket_key`` for indexes ``0 .. count-1``, hashing the client key once."""
    head = _key_head(prefix, client_key, policy)
    return tuple(f"{head}{index}" for index in range(count))
