"""Buckets in Redis: one server, a Sentinel-managed master, or a Cluster.

One round trip per request: ``EVALSHA`` of ``token_bucket.lua`` with every
bucket of the request, over the lean RESP client. The script is loaded on each
new connection; should a server lose it anyway (``SCRIPT FLUSH``), the call
falls back to ``EVAL``, which caches it again, within the same deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
from redis.crc import key_slot

from gateway.buckets import BucketOutcome, Decision, Limit
from gateway.stores.base import StoreError
from gateway.stores.cluster import ClusterClient
from gateway.stores.script import SCRIPT, SHA, decision_from_reply, is_noscript, limit_arg


class _Connector(Protocol):
    async def ping(self, deadline: float | None = None) -> None: ...
    async def aclose(self) -> None: ...


class _ServerClient(_Connector, Protocol):
    async def call(self, payload: bytes, deadline: float | None = None) -> Any: ...


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _Plan:
    """The fixed parts of the script call for one tuple of limits, encoded once."""

    __slots__ = ("count", "eval_head", "evalsha_head", "tail")

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        count = len(limits)
        argc = 3 + count + 1 + count  # EVALSHA sha numkeys, keys, cost, limits
        nkeys = _bulk(b"%d" % count)
        self.count = count
        self.evalsha_head = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (argc, _bulk(SHA.encode()), nkeys)
        self.eval_head = b"*%d\r\n$4\r\nEVAL\r\n%s%s" % (argc, _bulk(SCRIPT), nkeys)
        self.tail = b"".join(_bulk(limit_arg(limit)) for limit in limits)


_COSTS = {cost: _bulk(b"%d" % cost) for cost in range(-16, 65)}


class _ScriptStore:
    """Encoding, the NOSCRIPT fallback and error handling, whatever routes the call."""

    backend: str

    def __init__(self, client: _Connector, *, timeout_s: float, key_prefix: str) -> None:
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self._connector = client
        self._plans: dict[tuple[Limit, ...], _Plan] = {}

    async def _run(
        self, keys: Sequence[str], limits: Sequence[Limit], cost: int, slot: int
    ) -> Decision:
        limits = limits if isinstance(limits, tuple) else tuple(limits)
        plan = self._plans.get(limits)
        if plan is None:
            plan = self._plans[limits] = _Plan(limits)
        if len(keys) != plan.count:
            raise ValueError("one key per limit")
        encoded_cost = _COSTS.get(cost) or _bulk(b"%d" % cost)
        body = b"".join([*map(_bulk, map(str.encode, keys)), encoded_cost, plan.tail])
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        reply = await self._send(plan.evalsha_head + body, slot, deadline)
        if isinstance(reply, hiredis.ReplyError):
            if is_noscript(reply):
                reply = await self._send(plan.eval_head + body, slot, deadline)
            if isinstance(reply, hiredis.ReplyError):
                raise StoreError(f"Redis refused the token-bucket script: {reply}") from reply
        return decision_from_reply(reply, plan.count)

    async def _send(self, payload: bytes, slot: int, deadline: float) -> Any:
        raise NotImplementedError

    async def ping(self) -> None:
        """Raise StoreError unless Redis answers PING within the timeout."""
        await self._connector.ping()

    async def aclose(self) -> None:
        """Close every connection."""
        await self._connector.aclose()


class RedisStore(_ScriptStore):
    """The bucket store on one Redis server: plain (``redis``) or found by Sentinel."""

    def __init__(
        self, client: _ServerClient, *, backend: str, timeout_s: float, key_prefix: str
    ) -> None:
        super().__init__(client, timeout_s=timeout_s, key_prefix=key_prefix)
        self.backend = backend
        self._client = client

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """See ``BucketStore.acquire``."""
        return await self._run(keys, limits, cost, 0)

    async def _send(self, payload: bytes, slot: int, deadline: float) -> Any:
        return await self._client.call(payload, deadline)


class ClusterStore(_ScriptStore):
    """The bucket store on Redis Cluster.

    One client's keys share a hash tag, hence a slot, and are decided by one
    atomic script call. Keys spanning several slots (a route whose policies are
    keyed differently) cannot be atomic in one script: each slot's buckets are
    decided by their own call, concurrently, and when any slot denies (or fails),
    the slots that were debited are refunded (the script with a negative cost).
    In that window other requests may see those tokens missing, so a multi-slot
    request can only make the limiter stricter, never admit more than the
    buckets allow.
    """

    backend = "redis_cluster"

    def __init__(self, client: ClusterClient, *, timeout_s: float, key_prefix: str) -> None:
        super().__init__(client, timeout_s=timeout_s, key_prefix=key_prefix)
        self._cluster = client

    async def _send(self, payload: bytes, slot: int, deadline: float) -> Any:
        return await self._cluster.call(payload, slot, deadline)

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """See ``BucketStore.acquire`` and the class docstring for keys in several slots."""
        slots: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(index)
        if len(slots) == 1:
            return await self._run(keys, limits, cost, next(iter(slots)))
        groups = list(slots.items())
        results = await asyncio.gather(
            *(self._group(keys, limits, cost, slot, group) for slot, group in groups),
            return_exceptions=True,
        )
        decisions = [r for r in results if isinstance(r, Decision)]
        allowed = len(decisions) == len(groups) and all(d.allowed for d in decisions)
        if not allowed and cost:
            # Undo the debits of a request that, as a whole, was denied or failed.
            debited = [n for n, r in enumerate(results) if isinstance(r, Decision) and r.allowed]
            refunds = await asyncio.gather(
                *(self._group(keys, limits, -cost, *groups[n]) for n in debited)
            )
            for n, refund in zip(debited, refunds, strict=True):
                results[n] = refund
        outcomes: dict[int, BucketOutcome] = {}
        for (_, group), result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                raise StoreError(f"Redis Cluster failed a slot: {result}") from result
            outcomes.update(zip(group, result.buckets, strict=True))
        now_us = decisions[0].now_us
        return Decision(allowed, now_us, tuple(outcomes[i] for i in range(len(keys))))

    async def _group(
        self, keys: Sequence[str], limits: Sequence[Limit], cost: int, slot: int, group: list[int]
    ) -> Decision:
        return await self._run(
            [keys[i] for i in group], tuple(limits[i] for i in group), cost, slot
        )
