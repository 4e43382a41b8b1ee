"""Calls on the master of a Sentinel-monitored service, over the lean client.

The master's address is asked of the sentinels (in order, the last one that
answered first) on first use and again after the master failed a call or
answered ``READONLY`` (it was demoted by a failover). Sentinels are asked
without credentials; the URL's are the master's.
"""

from __future__ import annotations

from typing import Any

import hiredis

from gateway.stores.base import StoreError
from gateway.stores.resp import PING, RespClient, encode_command
from gateway.stores.urls import RedisTarget, SentinelTarget


class SentinelClient:
    """Calls on whichever server the sentinels name as ``service``'s master."""

    def __init__(
        self, target: SentinelTarget, *, timeout_s: float, setup: tuple[bytes, ...] = ()
    ) -> None:
        self.timeout_s = timeout_s
        self._target = target
        self._setup = setup
        self._ask = encode_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.service)
        self._sentinels = [
            RespClient(RedisTarget(host=host, port=port), timeout_s=timeout_s)
            for host, port in target.sentinels
        ]
        self._master: RespClient | None = None
        self._resolved = False

    async def call(self, payload: bytes, deadline: float | None = None) -> Any:
        """Send one command to the master; return its reply (errors as values)."""
        master = self._master
        if master is None or not self._resolved:
            if deadline is None:
                deadline = self._sentinels[0].deadline()
            master = await self._resolve(deadline)
        try:
            reply = await master.call(payload, deadline)
        except StoreError:
            self._resolved = False  # ask the sentinels again next time
            raise
        if isinstance(reply, hiredis.ReplyError) and "READONLY" in str(reply):
            self._resolved = False
            raise StoreError(f"the Redis master was demoted: {reply}") from reply
        return reply

    async def _resolve(self, deadline: float) -> RespClient:
        errors: list[str] = []
        for sentinel in list(self._sentinels):
            try:
                reply = await sentinel.call(self._ask, deadline)
            except StoreError as exc:
                errors.append(str(exc))
                continue
            if not isinstance(reply, list) or len(reply) != 2:
                errors.append(f"{sentinel.where} knows no master")
                continue
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)  # ask the one that answered first next time
            host, port = reply[0].decode(), int(reply[1])
            master = self._master
            if master is None or (master.target.host, master.target.port) != (host, port):
                if master is not None:
                    master.close()
                target = RedisTarget(
                    host=host,
                    port=port,
                    db=self._target.db,
                    username=self._target.username,
                    password=self._target.password,
                )
                master = self._master = RespClient(
                    target, timeout_s=self.timeout_s, setup=self._setup
                )
            self._resolved = True
            return master
        raise StoreError(f"no sentinel named a master for {self._target.service}: {errors}")

    async def ping(self, deadline: float | None = None) -> None:
        """Raise StoreError unless the master answers PING."""
        reply = await self.call(PING, deadline)
        if reply != b"PONG":
            raise StoreError(f"unexpected PING reply from the Redis master: {reply!r:.100}")

    async def aclose(self) -> None:
        """Close the master's and the sentinels' connections."""
        for client in [*self._sentinels, *([self._master] if self._master else [])]:
            client.close()
