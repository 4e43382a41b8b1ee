"""Config -> the state the request path reads: compiled once per (re)load.

Everything a request needs that depends only on the config is worked out
here - route tables, header byte strings, error renderers, timeout dicts, the
upstreams' pooled clients - so the per-request path only looks things up.
Upstream clients whose config did not change survive a reload untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

from gateway.clients import ClientResolver
from gateway.config import GatewayConfig, RouteConfig, Target, UpstreamConfig
from gateway.errors import ErrorRenderer
from gateway.routing import RouteSpec, RouteTable
from gateway.transport import PoolTransport

# Request ids we pass on as they came: bounded, and harmless in logs and headers.
SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._~:+/=@-]{1,128}$")


@dataclass(slots=True, eq=False)
class TargetRuntime:
    target: Target
    host_header: bytes  # the Host an upstream target is sent

    @classmethod
    def build(cls, target: Target) -> TargetRuntime:
        default = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != default:
            host = f"{host}:{target.port}"
        return cls(target=target, host_header=host.encode("ascii"))


@dataclass(slots=True, eq=False)
class UpstreamRuntime:
    """One upstream: its pooled transport (owned) and its targets."""

    config: UpstreamConfig
    transport: PoolTransport
    client: httpx.AsyncClient  # the full httpx API over the same pool (health checks)
    targets: tuple[TargetRuntime, ...]
    timeouts: dict[str, float]
    extensions: dict[str, object]
    _next: int = 0

    @classmethod
    def build(cls, config: UpstreamConfig) -> UpstreamRuntime:
        t = config.timeouts
        timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool)
        transport = PoolTransport(max_connections=config.max_connections, timeout=timeout)
        timeouts = {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}
        return cls(
            config=config,
            transport=transport,
            client=httpx.AsyncClient(transport=transport, timeout=timeout),
            targets=tuple(TargetRuntime.build(x) for x in config.targets),
            timeouts=timeouts,
            extensions={"timeout": timeouts},
        )

    def pick(self) -> TargetRuntime:
        i = self._next
        self._next = (i + 1) % len(self.targets)
        return self.targets[i]

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the transport too


@dataclass(slots=True, eq=False)
class RouteRuntime:
    name: str
    config: RouteConfig
    upstream: UpstreamRuntime
    renderer: ErrorRenderer
    strip: str  # the prefix to cut before forwarding, or ""
    rewrite: frozenset[int]


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
    inflight: int = 0
    retired: bool = field(default=False)


def build_runtime(
    config: GatewayConfig, previous: Runtime | None = None
) -> tuple[Runtime, list[UpstreamRuntime]]:
    """A runtime for ``config`` and the upstreams of ``previous`` it no longer uses."""
    old = previous.upstreams if previous is not None else {}
    upstreams: dict[str, UpstreamRuntime] = {}
    for name, up in config.upstreams.items():
        kept = old.get(name)
        upstreams[name] = (
            kept if kept is not None and kept.config == up else UpstreamRuntime.build(up)
        )
    dropped = [u for n, u in old.items() if upstreams.get(n) is not u]

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
        route = RouteRuntime(
            name=rc.name,
            config=rc,
            upstream=upstreams[rc.upstream],
            renderer=renderer,
            strip=rc.path_prefix if rc.strip_prefix and rc.path_prefix != "/" else "",
            rewrite=errors.rewrite_statuses,
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
    )
    return runtime, dropped
