"""token_bucket.lua decides exactly as gateway/buckets.py, on a real Redis.

Redis' clock cannot be injected, but the script reports the time it used: for
each call the test reads the stored states first, then checks the script's
decision and the states it left against ``decide`` at that same time.
"""

from __future__ import annotations

import random

import redis

from gateway.buckets import BucketState, Limit, decide
from gateway.stores import create_store
from gateway.stores.script import state_from_value
from tests.support.redis_server import RedisServer

LIMITS = [
    Limit.per(3, 3, 1),  # thirds of a second: tokens complete between microseconds
    Limit.per(5, 7, 1),
    Limit.per(2, 1000, 1),  # fast enough for real time to matter between calls
    Limit.per(4, 1_000_000, 1),  # one unit per token
    Limit.per(7, 999_983, 1),  # a prime refill
    Limit.per(10, 1, 60),
    Limit.per(1_250_000, 1, 3600),  # close to the exactness bound
]


def _state(client: redis.Redis, key: str) -> BucketState | None:
    value = client.get(key)
    if value is None:
        return None
    assert isinstance(value, bytes)
    return state_from_value(value)


async def test_the_script_decides_like_buckets_py(redis_server: RedisServer) -> None:
    rng = random.Random(20240607)
    client = redis_server.client()
    store = create_store(redis_server.url, cluster=False, timeout_s=1, key_prefix="gw")
    keys = [f"gw:{{diff}}:p:{n}" for n in range(4)]
    # Each key mostly keeps its limit; now and then a "reload" gives it another.
    assigned = {key: rng.choice(LIMITS) for key in keys}
    seen = {"allowed": 0, "denied": 0, "stored": 0, "rescaled": 0}
    try:
        for _ in range(600):
            chosen = rng.sample(keys, rng.randint(1, len(keys)))
            changed = rng.choice(chosen)
            # Reload a key's limit only if its key cannot expire while the test reads it:
            # the script would then see a full bucket under the new limit, not the old state.
            if rng.random() < 0.05 and client.pttl(changed) not in range(-1, 200):
                assigned[changed] = rng.choice(LIMITS)
                seen["rescaled"] += 1
            limits = [assigned[key] for key in chosen]
            cost = rng.choice([0, 1, 1, 1, 2, 3, 9, -1])
            before = [_state(client, key) for key in chosen]
            decision = await store.acquire(chosen, limits, cost)
            expected, states = decide(before, limits, decision.now_us, cost)
            assert decision == expected
            after = [_state(client, key) for key in chosen]
            left = states if states is not None else before
            for key, outcome, state, expected_state in zip(
                chosen, decision.buckets, after, left, strict=True
            ):
                # A key a few ms from full may expire before the test reads it.
                assert state == expected_state or (state is None and outcome.reset_us < 50_000)
                if state is not None and states is not None:
                    # The key lives until its bucket is full again, rounded up to the ms.
                    ttl = client.pttl(key)
                    assert ttl <= -(-outcome.reset_us // 1000)
                    assert ttl > 0 or outcome.reset_us < 50_000  # else: gone already
            seen["allowed" if decision.allowed else "denied"] += 1
            seen["stored"] += sum(state is not None for state in after)
    finally:
        await store.aclose()
    assert min(seen.values()) > 10, seen  # the walk really covered each case
