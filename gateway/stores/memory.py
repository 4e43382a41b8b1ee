"""Buckets in this process's memory: one process only, bounded by expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway.buckets import BucketState, Decision, Limit, decide

# key -> (state, clock at which the bucket is full again, fill_us of its limit)
_Entry = tuple[BucketState, int, int]

_FULL_SWEEP_EVERY = 1024


def monotonic_us() -> int:
    """The default clock: monotonic microseconds."""
    return time.monotonic_ns() // 1000


class MemoryStore:
    """The bucket store for a single process (and the ``on_error: local`` fallback).

    A missing bucket is full, so a bucket is forgotten once it would be full again.
    Keys wait for that in one queue per refill horizon (``Limit.fill_us``), in write
    order: a key written at ``t`` is full by ``t + fill_us`` at the latest, so each
    queue's oldest entries expire first and a sweep pops from the front only.
    Every call sweeps the queues of its own limits, and every 1024th call all
    queues, so memory holds at most the keys written within each horizon.
    """

    backend = "memory"

    def __init__(self, *, clock: Callable[[], int] = monotonic_us, key_prefix: str = "gw") -> None:
        self.key_prefix = key_prefix
        self._clock = clock
        self._buckets: dict[str, _Entry] = {}
        self._queues: dict[int, OrderedDict[str, None]] = {}
        self._calls = 0

    def __len__(self) -> int:
        """Buckets held (all others are full)."""
        return len(self._buckets)

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """See ``BucketStore.acquire``; never fails."""
        return self.take(keys, limits, cost)

    def take(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """``acquire`` without the coroutine: it does no I/O."""
        now = self._clock()
        buckets = self._buckets
        entries = [buckets.get(key) for key in keys]
        decision, states = decide(
            [None if entry is None else entry[0] for entry in entries], limits, now, cost
        )
        if states is not None:
            for key, limit, state, outcome, entry in zip(
                keys, limits, states, decision.buckets, entries, strict=True
            ):
                if entry is not None:
                    del self._queues[entry[2]][key]
                if state is None:
                    buckets.pop(key, None)
                    continue
                buckets[key] = (state, now + outcome.reset_us, limit.fill_us)
                queue = self._queues.get(limit.fill_us)
                if queue is None:
                    queue = self._queues[limit.fill_us] = OrderedDict()
                queue[key] = None
        self._calls += 1
        if self._calls % _FULL_SWEEP_EVERY == 0:
            for queue in self._queues.values():
                self._sweep(queue, now)
        else:
            for limit in limits:
                if (queue := self._queues.get(limit.fill_us)) is not None:
                    self._sweep(queue, now)
        return decision

    def _sweep(self, queue: OrderedDict[str, None], now: int) -> None:
        buckets = self._buckets
        while queue:
            key = next(iter(queue))
            if buckets[key][1] > now:
                # Not full yet; everything behind it was written later and is checked later.
                return
            del buckets[key]
            queue.popitem(last=False)

    async def ping(self) -> None:
        """Memory always answers."""

    async def aclose(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()
        self._queues.clear()
