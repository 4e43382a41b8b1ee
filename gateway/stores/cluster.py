"""Routing calls by hash slot over Redis Cluster, one lean connection per master.

The slot table comes from ``CLUSTER SLOTS``, asked of any known node (the seed
first), on first use and again after a ``MOVED`` reply or a failed node. A
``MOVED`` call is sent on to the named node and an ``ASK`` call re-sent there
after ``ASKING`` (a slot being migrated): a redirect, not a retry, and within
the call's one deadline. A node that fails is not retried: the call fails, the
table is refreshed in the background, and the next call goes wherever the
cluster now says.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import hiredis

from gateway.stores.base import StoreError
from gateway.stores.resp import RespClient, encode_command, forget_exception
from gateway.stores.urls import RedisTarget

SLOTS = 16384
_CLUSTER_SLOTS = encode_command("CLUSTER", "SLOTS")
_ASKING = encode_command("ASKING")


class ClusterClient:
    """Calls on the master serving a hash slot."""

    def __init__(
        self, seed: RedisTarget, *, timeout_s: float, setup: tuple[bytes, ...] = ()
    ) -> None:
        if seed.db:
            raise ValueError("Redis Cluster has only database 0")
        if seed.path is not None:
            raise ValueError("Redis Cluster nodes are reached over TCP, not a Unix socket")
        self.timeout_s = timeout_s
        self._seed = seed
        self._setup = setup
        self._nodes: dict[tuple[str, int], RespClient] = {}
        self._slots: list[RespClient | None] = [None] * SLOTS
        self._refreshing: asyncio.Task[None] | None = None

    def node(self, host: str, port: int) -> RespClient:
        """The client of one node, created on first use."""
        client = self._nodes.get((host, port))
        if client is None:
            target = replace(self._seed, host=host, port=port)
            client = RespClient(target, timeout_s=self.timeout_s, setup=self._setup)
            self._nodes[(host, port)] = client
        return client

    async def call(self, payload: bytes, slot: int, deadline: float | None = None) -> Any:
        """Send one command to the master of ``slot``; return its reply (errors as values)."""
        client = self._slots[slot]
        if client is None:
            if deadline is None:
                deadline = self._seed_client().deadline()
            await self._refresh(deadline)
            client = self._slots[slot]
            if client is None:
                raise StoreError(f"no Redis Cluster node serves slot {slot}")
        try:
            reply = await client.call(payload, deadline)
        except StoreError:
            self._refresh_soon()  # the node may be gone, or replaced by a failover
            raise
        if isinstance(reply, hiredis.ReplyError):
            return await self._redirected(reply, payload, slot, deadline)
        return reply

    async def _redirected(
        self, reply: hiredis.ReplyError, payload: bytes, slot: int, deadline: float | None
    ) -> Any:
        kind, _, where = str(reply).partition(" ")
        if kind not in ("MOVED", "ASK"):
            return reply
        host, _, port = where.rpartition(" ")[2].rpartition(":")
        target = self.node(host or self._seed.host, int(port))
        if kind == "ASK":  # this one call goes there, the slot stays where it is
            return await target.call(_ASKING + payload, deadline, replies=2)
        self._slots[slot] = target
        self._refresh_soon()  # one MOVED usually means more slots moved
        return await target.call(payload, deadline)

    def _seed_client(self) -> RespClient:
        return self.node(self._seed.host, self._seed.port)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            loop = asyncio.get_running_loop()
            self._refreshing = loop.create_task(self._load_slots(loop.time() + self.timeout_s))
            self._refreshing.add_done_callback(forget_exception)

    async def _refresh(self, deadline: float) -> None:
        self._refresh_soon()
        assert self._refreshing is not None
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(self._refreshing)
        except TimeoutError as exc:
            raise StoreError("Redis Cluster did not list its slots in time") from exc

    async def _load_slots(self, deadline: float) -> None:
        """Ask known nodes, seed first, for the slot table; the first answer wins."""
        seed = self._seed_client()
        candidates = [seed, *(c for c in self._nodes.values() if c is not seed)]
        errors: list[str] = []
        for client in candidates:
            try:
                reply = await client.call(_CLUSTER_SLOTS, deadline)
            except StoreError as exc:
                errors.append(str(exc))
                continue
            try:
                self._install(reply, client.target.host)
            except (TypeError, ValueError, IndexError, AttributeError):
                errors.append(f"{client.where} answered CLUSTER SLOTS with {reply!r:.200}")
                continue
            return
        raise StoreError(f"no Redis Cluster node listed its slots: {'; '.join(errors)}")

    def _install(self, ranges: list[Any], asked_host: str) -> None:
        slots: list[RespClient | None] = [None] * SLOTS
        for start, end, master, *_replicas in ranges:
            host = master[0].decode()
            if host in ("", "?"):  # the node does not know its address: the one we asked
                host = asked_host
            client = self.node(host, int(master[1]))
            slots[start : end + 1] = [client] * (end - start + 1)
        self._slots = slots
        serving = {id(client) for client in slots}
        seed = (self._seed.host, self._seed.port)
        for address, client in list(self._nodes.items()):
            if id(client) not in serving and address != seed:
                client.close()  # a node that left, or a master that became a replica
                del self._nodes[address]

    async def ping(self, deadline: float | None = None) -> None:
        """Raise StoreError unless every master answers PING."""
        if deadline is None:
            deadline = self._seed_client().deadline()
        if all(client is None for client in self._slots):
            await self._refresh(deadline)
        masters = {id(c): c for c in self._slots if c is not None}.values()
        await asyncio.gather(*(client.ping(deadline) for client in masters))

    async def aclose(self) -> None:
        """Close every node's connection."""
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in self._nodes.values():
            client.close()
