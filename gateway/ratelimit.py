"""Applying a route's rate-limit policies: keys, the store call, failure modes, headers.

Per route, everything static is compiled at config load (``RouteLimits``): the
limits of every bucket of every policy, their names, the ``RateLimit-Policy``
value. Per request, ``Limiter.check`` works out each policy's client key,
takes ``cost`` tokens from all buckets at once (one store call: one Redis
round trip) and renders the headers; a denial raises ``RateLimited``.

When the store fails (Redis down or slower than ``redis.timeout``) the limiter
stops asking it for a cool-down, so requests do not each pay the timeout; the
first request after the cool-down is the single probe that brings it back.
Meanwhile ``on_error`` decides: ``allow`` (no headers), ``deny`` (503
``rate_limiter_unavailable``) or ``local`` (the same policies from in-process
buckets).

Header semantics (SPEC section 4): the legacy ``X-RateLimit-*`` describe the
most restrictive bucket (fewest whole tokens left, then the longest time to
full). In the IETF ``RateLimit`` field, ``t`` is the seconds until the bucket
is full again - or, for a bucket that lacks the request's cost, the seconds
until it has it, so ``Retry-After`` (the largest such wait) is never earlier
than any ``t`` a client was shown.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.buckets import Decision, Limit
from gateway.config import PolicyConfig, RedisConfig
from gateway.errors import RateLimited, RateLimiterUnavailable, Unauthorized
from gateway.metrics import Metrics, RateLimitMetrics
from gateway.stores import BucketStore, MemoryStore, StoreError, bucket_keys, create_store

log = logging.getLogger("gateway.ratelimit")

Headers = list[tuple[bytes, bytes]]
HeaderMode = Literal["legacy", "ietf", "both"]

COOLDOWN = 1.0  # seconds without asking a failed store before one probe
_MAX_KEY_BYTES = 4096  # longer header keys are refused, not hashed
_KEY_CACHE = 8192  # clients whose bucket keys are remembered per route


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    key: str  # client_ip | header | route | global
    header: bytes | None
    reject_missing: bool
    limits: tuple[Limit, ...]
    bucket_names: tuple[str, ...]  # "per_client-0", ...


def compile_policy(config: PolicyConfig) -> CompiledPolicy:
    limits = tuple(Limit.per(x.capacity, x.tokens, x.period) for x in config.limits)
    return CompiledPolicy(
        name=config.name,
        key=config.key,
        header=config.header.encode("latin-1") if config.header else None,
        reject_missing=config.on_missing_key == "reject",
        limits=limits,
        bucket_names=tuple(f"{config.name}-{i}" for i in range(len(limits))),
    )


def window_seconds(limit: Limit) -> int:
    """The ``w`` of a bucket: seconds for an empty bucket to fill."""
    return max(1, math.ceil(limit.fill_us / 1_000_000))


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """A route's policies, compiled once per config."""

    route: str
    policies: tuple[CompiledPolicy, ...]
    cost: int
    limits: tuple[Limit, ...]  # every bucket, in order
    names: tuple[str, ...]
    policy_of_bucket: tuple[int, ...]  # index into policies, per bucket
    policy_header: bytes  # the RateLimit-Policy value
    metrics: tuple[RateLimitMetrics, ...]  # per policy
    capacities: tuple[bytes, ...]  # per bucket, for X-RateLimit-Limit
    item_prefixes: tuple[bytes, ...]  # per bucket: '"<name>";r=' of the RateLimit item
    # (policy, client) -> bucket keys: hashing a client key once per client, not per request.
    key_cache: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        route: str,
        policies: Sequence[CompiledPolicy],
        cost: int,
        metrics: Sequence[RateLimitMetrics],
    ) -> RouteLimits:
        limits: list[Limit] = []
        names: list[str] = []
        owner: list[int] = []
        for i, policy in enumerate(policies):
            limits += policy.limits
            names += policy.bucket_names
            owner += [i] * len(policy.limits)
        items = [
            f'"{name}";q={limit.capacity};w={window_seconds(limit)}'
            for name, limit in zip(names, limits, strict=True)
        ]
        return cls(
            route=route,
            policies=tuple(policies),
            cost=cost,
            limits=tuple(limits),
            names=tuple(names),
            policy_of_bucket=tuple(owner),
            policy_header=", ".join(items).encode("ascii"),
            metrics=tuple(metrics),
            capacities=tuple(b"%d" % limit.capacity for limit in limits),
            item_prefixes=tuple(f'"{name}";r='.encode("ascii") for name in names),
        )

    def keys(
        self, prefix: str, client_ip: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> Sequence[str]:
        """Every bucket's storage key for this request; raises ``Unauthorized``."""
        keys: list[str] = []
        cache = self.key_cache
        for policy in self.policies:
            kind = policy.key
            if kind == "client_ip":
                client = "ip:" + client_ip
            elif kind == "header":
                value = _header(headers, policy.header)
                if value is None or not value.strip() or len(value) > _MAX_KEY_BYTES:
                    if policy.reject_missing:
                        raise Unauthorized(
                            f"This route is limited per {policy.header!r} header, which is missing."
                            if value is None or not value.strip()
                            else "The rate-limit key header is too long.",
                            headers=[(b"www-authenticate", b"ApiKey")],
                        )
                    client = "ip:" + client_ip  # never one bucket shared by every keyless client
                else:
                    client = "h:" + value.decode("latin-1")
            elif kind == "route":
                client = "route:" + self.route
            else:
                client = "global"
            hit = cache.get((policy.name, client))
            if hit is None:
                if len(cache) >= _KEY_CACHE:
                    cache.clear()  # client keys are client-chosen: stay bounded
                hit = cache[(policy.name, client)] = bucket_keys(
                    prefix, client, policy.name, len(policy.limits)
                )
            if len(self.policies) == 1:
                return hit
            keys += hit
        return keys


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes | None) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _ceil_s(us: int) -> int:
    return -(-us // 1_000_000)


def render_headers(
    limits: RouteLimits, decision: Decision, epoch_now: float, mode: HeaderMode
) -> tuple[Headers, int]:
    """The rate-limit headers for a decision, and Retry-After seconds (0 if allowed)."""
    cost = limits.cost
    buckets = decision.buckets
    retry_after = 0
    if not decision.allowed:
        retry_after = max(1, _ceil_s(max(b.wait_us for b in buckets)))
    headers: Headers = []
    if mode != "ietf":
        # The most restrictive bucket: fewest whole tokens left, then longest to full.
        i = 0
        if len(buckets) > 1:
            best = buckets[0]
            for j, b in enumerate(buckets):
                if b.remaining < best.remaining or (
                    b.remaining == best.remaining and b.reset_us > best.reset_us
                ):
                    i, best = j, b
        b = buckets[i]
        headers += (
            (b"x-ratelimit-limit", limits.capacities[i]),
            (b"x-ratelimit-remaining", b"%d" % b.remaining),
            (b"x-ratelimit-reset", b"%d" % -(-(epoch_now * 1_000_000 + b.reset_us) // 1_000_000)),
        )
    if mode != "legacy":
        items = [
            b"%s%d;t=%d"
            % (
                prefix,
                b.remaining,
                _ceil_s(b.wait_us if b.remaining < cost and b.wait_us > 0 else b.reset_us),
            )
            for prefix, b in zip(limits.item_prefixes, buckets, strict=True)
        ]
        headers += (
            (b"ratelimit-policy", limits.policy_header),
            (b"ratelimit", b", ".join(items)),
        )
    return headers, retry_after


class Limiter:
    """The store, its failure mode and the cool-down; one per store configuration."""

    def __init__(
        self,
        config: RedisConfig,
        header_mode: HeaderMode,
        metrics: Metrics,
        store: BucketStore | None = None,
    ) -> None:
        self.config = config
        self.header_mode = header_mode
        self.store = store or create_store(
            config.url or None,
            cluster=config.cluster,
            timeout_s=config.timeout,
            key_prefix=config.key_prefix,
        )
        self.prefix = config.key_prefix
        self.remote = self.store.backend != "memory"
        self.local = (
            MemoryStore(key_prefix=config.key_prefix) if config.on_error == "local" else None
        )
        self.metrics = metrics.for_backend(self.store.backend)  # the store names its backend
        self.metrics.up.set(1)
        self.down_until = 0.0  # monotonic time until which the store is not asked
        self.probing = False
        self.healthy = True

    async def check(
        self, limits: RouteLimits, client_ip: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Headers, str]:
        """Takes the request's tokens: the headers to add and the decision for the log.

        Raises ``RateLimited`` (429), ``RateLimiterUnavailable`` (503, ``deny``) or
        ``Unauthorized`` (401, a missing key header with ``on_missing_key: reject``).
        """
        keys = limits.keys(self.prefix, client_ip, headers)
        decision, degraded = await self._acquire(keys, limits.limits, limits.cost)
        if decision is None:  # the store failed and on_error is allow: fail open
            for m in limits.metrics:
                m.degraded.inc()
            return [], "degraded"
        epoch = decision.now_us / 1_000_000 if self.remote and not degraded else time.time()
        out, retry_after = render_headers(limits, decision, epoch, self.header_mode)
        if decision.allowed:
            for m in limits.metrics:
                (m.degraded if degraded else m.allowed).inc()
            return out, "degraded" if degraded else "allowed"
        violated: list[str] = []
        policies: set[int] = set()
        for i, bucket in enumerate(decision.buckets):
            if bucket.remaining < limits.cost:
                violated.append(limits.names[i])
                policies.add(limits.policy_of_bucket[i])
        for i in policies:
            m = limits.metrics[i]
            (m.degraded if degraded else m.limited).inc()
        out.append((b"retry-after", str(retry_after).encode("ascii")))
        raise RateLimited(headers=out, extra={"violated_policies": violated})

    async def _acquire(
        self, keys: Sequence[str], limits: tuple[Limit, ...], cost: int
    ) -> tuple[Decision | None, bool]:
        """The decision (None: fail open) and whether it came from the fallback."""
        now = time.monotonic()
        if now < self.down_until or self.probing:
            return await self._fallback(keys, limits, cost, now)
        probe = not self.healthy
        if probe:
            self.probing = True  # one request probes; the others keep to the fallback
        started = time.perf_counter()
        try:
            decision = await self.store.acquire(keys, limits, cost)
        except StoreError as exc:
            self._failed(exc, now)
            return await self._fallback(keys, limits, cost, now)
        finally:
            if probe:
                self.probing = False
        self.metrics.seconds.observe(time.perf_counter() - started)
        if not self.healthy:
            self.healthy = True
            self.metrics.up.set(1)
            log.warning("rate-limit store %s answers again", self.store.backend)
        return decision, False

    def _failed(self, exc: StoreError, now: float) -> None:
        self.down_until = now + COOLDOWN
        if self.healthy:
            log.error(
                "rate-limit store %s failed (%s); on_error=%s for the next %.0fs",
                self.store.backend,
                exc,
                self.config.on_error,
                COOLDOWN,
            )
        self.healthy = False
        self.metrics.up.set(0)

    async def _fallback(
        self, keys: Sequence[str], limits: tuple[Limit, ...], cost: int, now: float
    ) -> tuple[Decision | None, bool]:
        mode = self.config.on_error
        if mode == "allow":
            return None, True
        if mode == "deny":
            wait = max(1, math.ceil(self.down_until - now))
            raise RateLimiterUnavailable(
                headers=[(b"retry-after", str(wait).encode("ascii"))], reason="store_unavailable"
            )
        assert self.local is not None
        return self.local.take(keys, limits, cost), True

    async def ready(self) -> bool:
        """Whether the store answers now (for /readyz)."""
        if not self.remote:
            return True
        try:
            await self.store.ping()
        except StoreError:
            return False
        return True

    async def aclose(self) -> None:
        await self.store.aclose()
