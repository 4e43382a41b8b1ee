"""Config -> the state the request path reads: compiled once per (re)load.

Everything a request needs that depends only on the config is worked out
here - route tables, header byte strings, error renderers, timeout dicts, the
upstreams' pooled clients - so the per-request path only looks things up.
Upstream clients whose config did not change survive a reload untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from gateway.breaker import CircuitBreaker
from gateway.clients import ClientResolver
from gateway.config import GatewayConfig, RouteConfig, TargetConfig, UpstreamConfig
from gateway.errors import ErrorRenderer
from gateway.health import HealthChecker, http_probe
from gateway.metrics import Metrics, RouteMetrics, UpstreamMetrics
from gateway.ratelimit import Limiter, RouteLimits, compile_policy
from gateway.retry import RetryBudget, RetryPolicy
from gateway.routing import RouteSpec, RouteTable
from gateway.transport import PoolTransport
from gateway.upstreams import Target, Upstream

# Request ids we pass on as they came: bounded, and harmless in logs and headers.
SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._~:+/=@-]{1,128}$")


def host_header(target: TargetConfig) -> bytes:
    """The ``Host`` an upstream target is sent: its host, and its port unless default."""
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != default:
        host = f"{host}:{target.port}"
    return host.encode("ascii")


@dataclass(slots=True, eq=False)
class UpstreamRuntime:
    """One upstream: its pooled transport (owned), targets, breakers and retry policy."""

    config: UpstreamConfig
    name: str
    transport: PoolTransport
    client: httpx.AsyncClient  # the full httpx API over the same pool (health checks)
    pool: Upstream
    wire: dict[Target, tuple[bytes, bytes]]  # per target: Host header, base path
    policy: RetryPolicy
    budget: RetryBudget
    extensions: dict[str, object]
    metrics: UpstreamMetrics
    checker: HealthChecker | None = None

    @classmethod
    def build(cls, config: UpstreamConfig, metrics: Metrics) -> UpstreamRuntime:
        t = config.timeouts
        timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool)
        transport = PoolTransport(max_connections=config.max_connections, timeout=timeout)
        cb = config.circuit_breaker
        targets = [
            Target(
                scheme=x.scheme,
                host=x.host,
                port=x.port,
                base_path=x.base_path,
                label=x.url,
                breaker=CircuitBreaker(
                    failure_ratio=cb.failure_ratio,
                    minimum_requests=cb.minimum_requests,
                    window=cb.window,
                    open_for=cb.open_for,
                ),
            )
            for x in config.targets
        ]
        r = config.retries
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        runtime = cls(
            config=config,
            name=config.name,
            transport=transport,
            client=client,
            pool=Upstream(
                config.name,
                targets,
                balance=config.balance,
                on_breaker_state=metrics.set_breaker_state,
                on_healthy_targets=metrics.set_healthy_targets,
            ),
            wire={
                e: (host_header(x), x.base_path.encode("ascii"))
                for e, x in zip(targets, config.targets, strict=True)
            },
            policy=RetryPolicy(
                attempts=r.attempts,
                methods=r.methods,
                on=r.on,
                backoff=r.backoff,
                max_backoff=r.max_backoff,
            ),
            budget=RetryBudget(),
            extensions={
                "timeout": {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}
            },
            metrics=metrics.for_upstream(config.name, [x.url for x in config.targets]),
        )
        hc = config.health_check
        if hc is not None:
            runtime.checker = HealthChecker(
                runtime.pool, http_probe(client, hc.path, hc.timeout), interval=hc.interval
            )
        return runtime

    def start(self) -> None:
        """Starts background work (health checks); needs the running loop."""
        if self.checker is not None:
            self.checker.start()

    async def aclose(self) -> None:
        if self.checker is not None:
            await self.checker.aclose()
        await self.client.aclose()  # closes the transport too


@dataclass(slots=True, eq=False)
class RouteRuntime:
    name: str
    config: RouteConfig
    upstream: UpstreamRuntime
    renderer: ErrorRenderer
    strip: str  # the prefix to cut before forwarding, or ""
    rewrite: frozenset[int]
    metrics: RouteMetrics
    limits: RouteLimits | None  # None: the route is not rate limited


@dataclass(slots=True, eq=False)
class Runtime:
    config: GatewayConfig
    table: RouteTable[RouteRuntime]
    routes: tuple[RouteRuntime, ...]
    upstreams: dict[str, UpstreamRuntime]
    resolver: ClientResolver
    renderer: ErrorRenderer
    request_id_header: bytes  # lower-case
    max_body: int
    max_header_bytes: int
    keep_escaped_slashes: bool
    unmatched: RouteMetrics  # the metrics of requests no route matched
    limiter: Limiter | None  # None: no Redis configured and no route rate limited
    inflight: int = 0


@dataclass(slots=True)
class Retired:
    """What a reload left unused, to be closed once the old runtime's requests are done."""

    upstreams: list[UpstreamRuntime]
    limiter: Limiter | None = None

    def __bool__(self) -> bool:
        return bool(self.upstreams) or self.limiter is not None


def _limiter(config: GatewayConfig, metrics: Metrics, previous: Runtime | None) -> Limiter | None:
    needed = bool(config.redis.url) or any(r.rate_limit for r in config.routes)
    old = previous.limiter if previous is not None else None
    mode = config.server.rate_limit_headers
    if old is not None and old.config == config.redis and old.header_mode == mode:
        return old if needed else None
    if not needed:
        return None
    return Limiter(config.redis, mode, metrics)


def build_runtime(
    config: GatewayConfig, metrics: Metrics, previous: Runtime | None = None
) -> tuple[Runtime, Retired]:
    """A runtime for ``config``, and what of ``previous`` it no longer uses."""
    old = previous.upstreams if previous is not None else {}
    upstreams: dict[str, UpstreamRuntime] = {}
    for name, up in config.upstreams.items():
        kept = old.get(name)
        upstreams[name] = (
            kept if kept is not None and kept.config == up else UpstreamRuntime.build(up, metrics)
        )
    retired = Retired([u for n, u in old.items() if upstreams.get(n) is not u])
    limiter = _limiter(config, metrics, previous)
    if previous is not None and previous.limiter is not None and previous.limiter is not limiter:
        retired.limiter = previous.limiter
    policies = {name: compile_policy(p) for name, p in config.rate_limits.items()}

    errors = config.errors
    default_renderer = ErrorRenderer(errors.format, errors.type_base)
    routes: list[RouteRuntime] = []
    specs: list[RouteSpec[RouteRuntime]] = []
    for rc in config.routes:
        renderer = (
            default_renderer
            if rc.errors_format is None
            else ErrorRenderer(rc.errors_format, errors.type_base)
        )
        route_metrics = metrics.for_route(rc.name, sorted(rc.methods or ()), rc.rate_limit)
        limits = None
        if rc.rate_limit:
            limits = RouteLimits.build(
                rc.name,
                [policies[p] for p in rc.rate_limit],
                rc.cost,
                [route_metrics.rate_limits[p] for p in rc.rate_limit],
            )
        route = RouteRuntime(
            name=rc.name,
            config=rc,
            upstream=upstreams[rc.upstream],
            renderer=renderer,
            strip=rc.path_prefix if rc.strip_prefix and rc.path_prefix != "/" else "",
            rewrite=errors.rewrite_statuses,
            metrics=route_metrics,
            limits=limits,
        )
        routes.append(route)
        specs.append(RouteSpec(rc.hosts, rc.path_prefix, rc.methods, route))
    server = config.server
    runtime = Runtime(
        config=config,
        table=RouteTable(specs),
        routes=tuple(routes),
        upstreams=upstreams,
        resolver=ClientResolver(server.trusted_proxies),
        renderer=default_renderer,
        request_id_header=server.request_id_header.lower().encode("ascii"),
        max_body=server.max_request_body,
        max_header_bytes=server.max_header_bytes,
        keep_escaped_slashes=server.escaped_slashes == "keep",
        unmatched=metrics.unmatched,
        limiter=limiter,
    )
    return runtime, retired
