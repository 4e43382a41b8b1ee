"""YAML -> a frozen, typed configuration model, validated once at load.

Loading happens in two passes, as envoy's ratelimit does: the YAML is composed
into nodes (keeping line numbers and interpolating ``${VAR}`` /
``${VAR:-default}`` inside scalars, so an environment value can never change
the document's structure), then every section is checked against its known
keys and converted into dataclasses. Every problem is collected, each as
``FILE:LINE: key.path: message``, so an operator sees all of them at once.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from gateway.buckets import limit_error
from gateway.errors import ERROR_FORMATS, ErrorFormat

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Path_ = tuple[str | int, ...]
T = TypeVar("T")

HeaderMode = Literal["legacy", "ietf", "both"]
OnError = Literal["allow", "deny", "local"]
KeyKind = Literal["client_ip", "header", "route", "global"]
Balance = Literal["round_robin", "least_inflight"]

RETRY_KINDS = frozenset({"connect_error", "timeout", "protocol_error"})
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    trusted_proxies: tuple[Network, ...] = ()
    request_id_header: str = "X-Request-ID"
    max_request_body: int = 10 * 1024 * 1024
    shutdown_grace: float = 20.0
    rate_limit_headers: HeaderMode = "both"
    max_header_bytes: int = 64 * 1024
    escaped_slashes: Literal["reject", "keep"] = "reject"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = ""
    cluster: bool = False
    timeout: float = 0.05
    key_prefix: str = "gw"
    on_error: OnError = "allow"
    # Each worker would keep its own buckets; refused with --workers > 1 unless set.
    allow_per_process_buckets: bool = False

    def __repr__(self) -> str:
        return f"RedisConfig(url={mask_url(self.url)!r}, cluster={self.cluster})"


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    format: ErrorFormat = "problem"
    type_base: str = "https://errors.example.com/"
    rewrite_statuses: frozenset[int] = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 2.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 2.0


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 2
    methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
    on: frozenset[str | int] = frozenset({"connect_error", 502, 503, 504})
    backoff: float = 0.05
    max_backoff: float = 1.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_ratio: float = 0.5
    minimum_requests: int = 20
    window: float = 10.0
    open_for: float = 30.0


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One upstream target URL, split once at load."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without a trailing slash


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    targets: tuple[TargetConfig, ...]
    balance: Balance = "round_robin"
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health_check: HealthCheckConfig | None = None
    max_connections: int = 512


@dataclass(frozen=True, slots=True)
class LimitConfig:
    capacity: int
    tokens: int  # refill: `tokens` every `period` seconds
    period: int


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str
    key: KeyKind
    header: str | None  # for key: header:<Name>, lower-cased
    on_missing_key: Literal["client_ip", "reject"]
    limits: tuple[LimitConfig, ...]


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    path_prefix: str
    upstream: str
    hosts: tuple[str, ...] = ()
    methods: frozenset[str] | None = None
    strip_prefix: bool = False
    rate_limit: tuple[str, ...] = ()
    cost: int = 1
    errors_format: ErrorFormat | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig
    admin: AdminConfig
    redis: RedisConfig
    errors: ErrorsConfig
    logging: LoggingConfig
    upstreams: Mapping[str, UpstreamConfig]
    rate_limits: Mapping[str, PolicyConfig]
    routes: tuple[RouteConfig, ...]
    source: str = "<string>"


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` holds every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and reprs."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


# --------------------------------------------------------------------------- values

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)\s*$")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_PERIODS |= {"h": 3600, "hour": 3600}


def parse_duration(value: object) -> float:
    """``250ms``, ``2s``, ``5m``, ``1h`` -> seconds. A bare number is refused (unit unclear)."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 250ms, 2s, 5m or 1h, got {value!r}")


def parse_size(value: object) -> int:
    """``10MiB``, ``64KiB``, ``512`` (bytes) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError(f"expected a size such as 512, 64KiB or 10MiB, got {value!r}")


def parse_rate(value: object) -> tuple[int, int]:
    """``10/s``, ``100/m``, ``1000/h`` -> (tokens, period seconds)."""
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m and int(m.group(1)) > 0:
            return int(m.group(1)), _RATE_PERIODS[m.group(2)]
    raise ValueError(f"expected a refill rate such as 10/s, 100/m or 1000/h, got {value!r}")


# --------------------------------------------------------------------------- YAML

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans.

    YAML 1.1 also reads on/off/yes/no as booleans, which would turn the
    ``retries.on`` key into ``True``.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _interpolate(text: str, env: Mapping[str, str], missing: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    return _VAR_RE.sub(sub, text)


class _Doc:
    """Plain Python values of a YAML document plus the line of every key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.errors: list[str] = []

    def line(self, path: Path_) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path_, message: str) -> None:
        where = f"{_fmt_path(path)}: " if path else ""
        self.errors.append(f"{self.source}:{self.line(path)}: {where}{message}")


def _fmt_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _compose(text: str, doc: _Doc, env: Mapping[str, str]) -> object:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        doc.errors.append(f"{doc.source}:{line}: invalid YAML: {problem}")
        return None
    finally:
        loader.dispose()
    if node is None:
        return {}
    return _to_python(loader, node, (), doc, env)


def _to_python(
    loader: _Loader, node: yaml.Node, path: Path_, doc: _Doc, env: Mapping[str, str]
) -> object:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            sub = (*path, key)
            doc.lines[sub] = key_node.start_mark.line + 1
            if key in out:
                doc.error(sub, "duplicate key")
                continue
            out[key] = _to_python(loader, value_node, sub, doc, env)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = (*path, i)
            doc.lines[sub] = item.start_mark.line + 1
            items.append(_to_python(loader, item, sub, doc, env))
        return items
    assert isinstance(node, yaml.ScalarNode)
    if isinstance(node.value, str) and "${" in node.value:
        missing: list[str] = []
        value = _interpolate(node.value, env, missing)
        for name in missing:
            doc.error(path, f"environment variable {name} is not set (use ${{{name}:-default}})")
        if node.style is None:
            # A plain scalar takes the type its interpolated text implies (a port, a bool).
            tag = loader.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
            node = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark)
        else:
            return value
    return loader.construct_object(node)


# --------------------------------------------------------------------------- reading


class _Section:
    """Reads one mapping: known keys only, typed getters that record errors."""

    def __init__(self, doc: _Doc, value: object, path: Path_, known: set[str]) -> None:
        self.doc = doc
        self.path = path
        self.ok = isinstance(value, dict)
        self.data: dict[str, object] = cast(dict[str, object], value) if self.ok else {}
        if value is None:
            self.ok = True
        elif not self.ok:
            doc.error(path, f"must be a mapping, got {type(value).__name__}")
        for key in self.data:
            if key not in known:
                hint = _suggest(key, known)
                doc.error(
                    (*path, key), "unknown key" + (f" (did you mean {hint}?)" if hint else "")
                )

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def get(self, key: str, default: T, conv: Callable[[object], T]) -> T:
        if key not in self.data:
            return default
        try:
            return conv(self.data[key])
        except (ValueError, TypeError) as exc:
            self.doc.error((*self.path, key), str(exc))
            return default


def _suggest(key: str, known: set[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[object], int]:
    def conv(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi}, got {value}")
        return value

    return conv


def _float_range(lo: float, hi: float) -> Callable[[object], float]:
    def conv(value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if not lo <= value <= hi or math.isnan(value):
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return float(value)

    return conv


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _str(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[object], Any]:
    def conv(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return conv


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


def _nonneg_duration(value: object) -> float:
    return parse_duration(value)


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise ValueError(f"expected an HTTP header name, got {value!r}")
    return value


def _port(value: object) -> int:
    return _int(0, 65535)(value)


def _host(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a host name or address, got {value!r}")
    return value


def _list(doc: _Doc, value: object, path: Path_) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        doc.error(path, f"expected a list, got {type(value).__name__}")
        return []
    return cast(list[object], value)


# --------------------------------------------------------------------------- sections


def _server(doc: _Doc, value: object) -> ServerConfig:
    known = set(ServerConfig.__dataclass_fields__)
    s = _Section(doc, value, ("server",), known)
    d = ServerConfig()
    proxies: list[Network] = []
    for i, item in enumerate(_list(doc, s.raw("trusted_proxies"), ("server", "trusted_proxies"))):
        try:
            proxies.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            doc.error(("server", "trusted_proxies", i), f"expected a CIDR, got {item!r}")
    max_body = s.get("max_request_body", d.max_request_body, parse_size)
    max_head = s.get("max_header_bytes", d.max_header_bytes, parse_size)
    if max_head < 1024 and s.has("max_header_bytes"):
        doc.error(("server", "max_header_bytes"), "must be at least 1KiB")
    return ServerConfig(
        host=s.get("host", d.host, _host),
        port=s.get("port", d.port, _port),
        trusted_proxies=tuple(proxies),
        request_id_header=s.get("request_id_header", d.request_id_header, _header_name),
        max_request_body=max_body,
        shutdown_grace=s.get("shutdown_grace", d.shutdown_grace, _nonneg_duration),
        rate_limit_headers=s.get(
            "rate_limit_headers", d.rate_limit_headers, _choice("legacy", "ietf", "both")
        ),
        max_header_bytes=max_head,
        escaped_slashes=s.get("escaped_slashes", d.escaped_slashes, _choice("reject", "keep")),
    )


def _admin(doc: _Doc, value: object) -> AdminConfig:
    s = _Section(doc, value, ("admin",), {"host", "port"})
    d = AdminConfig()
    return AdminConfig(host=s.get("host", d.host, _host), port=s.get("port", d.port, _port))


def _redis(doc: _Doc, value: object) -> RedisConfig:
    known = set(RedisConfig.__dataclass_fields__)
    s = _Section(doc, value, ("redis",), known)
    d = RedisConfig()
    url = s.get("url", d.url, _str).strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss", "redis+sentinel", "unix"):
        doc.error(
            ("redis", "url"),
            f"expected a redis://, rediss:// or redis+sentinel:// URL, got {mask_url(url)!r}",
        )
    prefix = s.get("key_prefix", d.key_prefix, _str)
    if not re.match(r"^[A-Za-z0-9_.:-]*$", prefix):
        doc.error(("redis", "key_prefix"), "may hold only letters, digits and _ . : -")
    timeout = s.get("timeout", d.timeout, _positive_duration)
    return RedisConfig(
        url=url,
        cluster=s.get("cluster", d.cluster, _bool),
        timeout=timeout,
        key_prefix=prefix,
        on_error=s.get("on_error", d.on_error, _choice("allow", "deny", "local")),
        allow_per_process_buckets=s.get(
            "allow_per_process_buckets", d.allow_per_process_buckets, _bool
        ),
    )


def _errors(doc: _Doc, value: object) -> ErrorsConfig:
    s = _Section(doc, value, ("errors",), {"format", "type_base", "rewrite_statuses"})
    d = ErrorsConfig()
    statuses: set[int] = set()
    if s.has("rewrite_statuses"):
        path: Path_ = ("errors", "rewrite_statuses")
        for i, item in enumerate(_list(doc, s.raw("rewrite_statuses"), path)):
            if isinstance(item, int) and not isinstance(item, bool) and 400 <= item <= 599:
                statuses.add(item)
            else:
                doc.error((*path, i), f"expected an HTTP status from 400 to 599, got {item!r}")
    else:
        statuses = set(d.rewrite_statuses)
    return ErrorsConfig(
        format=s.get("format", d.format, _choice(*ERROR_FORMATS)),
        type_base=s.get("type_base", d.type_base, _str),
        rewrite_statuses=frozenset(statuses),
    )


def _logging(doc: _Doc, value: object) -> LoggingConfig:
    s = _Section(doc, value, ("logging",), {"level", "access_log"})
    d = LoggingConfig()
    return LoggingConfig(
        level=s.get("level", d.level, _choice("debug", "info", "warning", "error")),
        access_log=s.get("access_log", d.access_log, _bool),
    )


def _target(doc: _Doc, value: object, path: Path_) -> TargetConfig | None:
    if not isinstance(value, str):
        doc.error(path, f"expected a URL such as http://10.0.0.5:8080, got {value!r}")
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        doc.error(path, f"invalid URL {value!r}: {exc}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        doc.error(path, f"expected an http:// or https:// URL with a host, got {value!r}")
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        doc.error(path, "a target URL may not carry a query, fragment or credentials")
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return TargetConfig(
        url=value,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        base_path=parts.path.rstrip("/"),
    )


def _methods(doc: _Doc, value: object, path: Path_) -> frozenset[str]:
    out: set[str] = set()
    for i, item in enumerate(_list(doc, value, path)):
        if isinstance(item, str) and _TOKEN_RE.match(item):
            out.add(item.upper())
        else:
            doc.error((*path, i), f"expected an HTTP method, got {item!r}")
    return frozenset(out)


def _upstream(doc: _Doc, name: str, value: object) -> UpstreamConfig | None:
    path: Path_ = ("upstreams", name)
    known = {"targets", "balance", "timeouts", "retries", "circuit_breaker", "health_check"}
    s = _Section(doc, value, path, known | {"max_connections"})
    if not _NAME_RE.match(name):
        doc.error(path, "an upstream name may hold only letters, digits and _ . -")
    targets = []
    raw_targets = _list(doc, s.raw("targets"), (*path, "targets"))
    if not raw_targets and s.ok:
        doc.error((*path, "targets"), "at least one target is required")
    for i, item in enumerate(raw_targets):
        t = _target(doc, item, (*path, "targets", i))
        if t is not None:
            targets.append(t)

    dt = Timeouts()
    ts = _Section(doc, s.raw("timeouts"), (*path, "timeouts"), {"connect", "read", "write", "pool"})
    timeouts = Timeouts(
        connect=ts.get("connect", dt.connect, _positive_duration),
        read=ts.get("read", dt.read, _positive_duration),
        write=ts.get("write", dt.write, _positive_duration),
        pool=ts.get("pool", dt.pool, _positive_duration),
    )

    dr = RetryConfig()
    rpath = (*path, "retries")
    rs = _Section(
        doc, s.raw("retries"), rpath, {"attempts", "methods", "on", "backoff", "max_backoff"}
    )
    on: set[str | int] = set()
    if rs.has("on"):
        for i, item in enumerate(_list(doc, rs.raw("on"), (*rpath, "on"))):
            if item in RETRY_KINDS or (isinstance(item, int) and 500 <= item <= 599):
                on.add(item)
            else:
                kinds = ", ".join(sorted(RETRY_KINDS))
                doc.error(
                    (*rpath, "on", i), f"expected one of {kinds} or a 5xx status, got {item!r}"
                )
    else:
        on = set(dr.on)
    retries = RetryConfig(
        attempts=rs.get("attempts", dr.attempts, _int(0, 10)),
        methods=_methods(doc, rs.raw("methods"), (*rpath, "methods"))
        if rs.has("methods")
        else dr.methods,
        on=frozenset(on),
        backoff=rs.get("backoff", dr.backoff, _nonneg_duration),
        max_backoff=rs.get("max_backoff", dr.max_backoff, _nonneg_duration),
    )
    if retries.max_backoff < retries.backoff:
        doc.error((*rpath, "max_backoff"), "must not be shorter than backoff")

    db = BreakerConfig()
    bs = _Section(
        doc,
        s.raw("circuit_breaker"),
        (*path, "circuit_breaker"),
        {"failure_ratio", "minimum_requests", "window", "open_for"},
    )
    breaker = BreakerConfig(
        failure_ratio=bs.get("failure_ratio", db.failure_ratio, _float_range(0.01, 1.0)),
        minimum_requests=bs.get("minimum_requests", db.minimum_requests, _int(1)),
        window=bs.get("window", db.window, _positive_duration),
        open_for=bs.get("open_for", db.open_for, _positive_duration),
    )

    health: HealthCheckConfig | None = None
    if s.has("health_check") and s.raw("health_check") is not None:
        hpath = (*path, "health_check")
        hs = _Section(doc, s.raw("health_check"), hpath, {"path", "interval", "timeout"})
        dh = HealthCheckConfig()
        hc_path = hs.get("path", dh.path, _str)
        if not hc_path.startswith("/"):
            doc.error((*hpath, "path"), "must start with /")
        health = HealthCheckConfig(
            path=hc_path,
            interval=hs.get("interval", dh.interval, _positive_duration),
            timeout=hs.get("timeout", dh.timeout, _positive_duration),
        )
        if health.timeout > health.interval:
            doc.error((*hpath, "timeout"), "must not be longer than interval")
    return UpstreamConfig(
        name=name,
        targets=tuple(targets),
        balance=s.get("balance", "round_robin", _choice("round_robin", "least_inflight")),
        timeouts=timeouts,
        retries=retries,
        circuit_breaker=breaker,
        health_check=health,
        max_connections=s.get("max_connections", 512, _int(1, 100_000)),
    )


def _policy(doc: _Doc, name: str, value: object) -> PolicyConfig | None:
    path: Path_ = ("rate_limits", name)
    s = _Section(doc, value, path, {"key", "on_missing_key", "limits"})
    if not _NAME_RE.match(name):
        doc.error(path, "a policy name may hold only letters, digits and _ . -")
    key_raw = s.get("key", "client_ip", _str)
    header: str | None = None
    kind: KeyKind = "client_ip"
    if key_raw.startswith("header:"):
        kind = "header"
        header = key_raw[len("header:") :].strip()
        if not _TOKEN_RE.match(header):
            doc.error((*path, "key"), f"expected header:<Name>, got {key_raw!r}")
        header = header.lower()
    elif key_raw in ("client_ip", "route", "global"):
        kind = cast(KeyKind, key_raw)
    else:
        doc.error(
            (*path, "key"), f"expected client_ip, header:<Name>, route or global, got {key_raw!r}"
        )
    on_missing: Literal["client_ip", "reject"] = s.get(
        "on_missing_key", "client_ip", _choice("client_ip", "reject")
    )
    limits: list[LimitConfig] = []
    raw_limits = _list(doc, s.raw("limits"), (*path, "limits"))
    if not raw_limits and s.ok:
        doc.error((*path, "limits"), "at least one limit is required")
    for i, item in enumerate(raw_limits):
        lpath = (*path, "limits", i)
        ls = _Section(doc, item, lpath, {"capacity", "refill"})
        if not ls.has("capacity") or not ls.has("refill"):
            if ls.ok and isinstance(item, dict):
                doc.error(lpath, "a limit needs capacity and refill")
            continue
        capacity = ls.get("capacity", 0, _int(1, 10**12))
        tokens, period = ls.get("refill", (0, 1), parse_rate)
        if capacity and tokens:
            limit = LimitConfig(capacity=capacity, tokens=tokens, period=period)
            problem = _limit_problem(limit)
            if problem:
                doc.error(lpath, problem)
            limits.append(limit)
    return PolicyConfig(
        name=name,
        key=kind,
        header=header,
        on_missing_key=on_missing,
        limits=tuple(limits),
    )


def _limit_problem(limit: LimitConfig) -> str | None:
    """A limit whose exact integer arithmetic would not fit Redis' Lua numbers."""
    return limit_error(limit.capacity, limit.tokens, limit.period)


def _route(doc: _Doc, index: int, value: object) -> RouteConfig | None:
    path: Path_ = ("routes", index)
    known = {
        "name",
        "hosts",
        "path_prefix",
        "methods",
        "upstream",
        "strip_prefix",
        "rate_limit",
        "cost",
        "errors",
    }
    s = _Section(doc, value, path, known)
    if not s.ok or value is None:
        if value is None:
            doc.error(path, "must be a mapping")
        return None
    name = s.get("name", "", _str)
    if not name:
        doc.error((*path, "name"), "a route needs a name")
    elif not _NAME_RE.match(name):
        doc.error((*path, "name"), "a route name may hold only letters, digits and _ . -")
    prefix = s.get("path_prefix", "", _str)
    if not prefix.startswith("/"):
        doc.error((*path, "path_prefix"), f"must start with /, got {prefix!r}")
    elif "%" in prefix or "/./" in prefix + "/" or "/../" in prefix + "/" or "?" in prefix:
        doc.error((*path, "path_prefix"), "must be a plain, normalised path")
    if len(prefix) > 1:
        prefix = prefix.rstrip("/") or "/"
    upstream = s.get("upstream", "", _str)
    if not upstream:
        doc.error((*path, "upstream"), "a route needs an upstream")
    hosts: list[str] = []
    for i, item in enumerate(_list(doc, s.raw("hosts"), (*path, "hosts"))):
        if isinstance(item, str) and re.match(r"^(\*\.)?[A-Za-z0-9.-]+$", item):
            hosts.append(item.lower())
        else:
            doc.error((*path, "hosts", i), f"expected a host name (or *.suffix), got {item!r}")
    methods = _methods(doc, s.raw("methods"), (*path, "methods")) if s.has("methods") else None
    if methods is not None and not methods:
        doc.error((*path, "methods"), "must not be empty (leave it out to allow every method)")
    policies: tuple[str, ...] = ()
    raw_rl = s.raw("rate_limit")
    if isinstance(raw_rl, str):
        policies = (raw_rl,)
    elif isinstance(raw_rl, list) and all(isinstance(p, str) for p in raw_rl):
        policies = tuple(cast(list[str], raw_rl))
    elif raw_rl is not None:
        doc.error((*path, "rate_limit"), "expected a policy name or a list of names")
    fmt: ErrorFormat | None = None
    if s.has("errors"):
        es = _Section(doc, s.raw("errors"), (*path, "errors"), {"format"})
        fmt = es.get("format", None, _choice(*ERROR_FORMATS))
    return RouteConfig(
        name=name,
        path_prefix=prefix,
        upstream=upstream,
        hosts=tuple(hosts),
        methods=methods,
        strip_prefix=s.get("strip_prefix", False, _bool),
        rate_limit=policies,
        cost=s.get("cost", 1, _int(1, 10**9)),
        errors_format=fmt,
    )


def _named(doc: _Doc, value: object, section: str) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        doc.error((section,), "must be a mapping of names")
        return {}
    return cast(dict[str, object], value)


TOP_LEVEL = {"server", "admin", "redis", "errors", "logging", "upstreams", "rate_limits", "routes"}


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Parses and validates a configuration document; raises ``ConfigError``."""
    doc = _Doc(source)
    data = _compose(text, doc, os.environ if env is None else env)
    if doc.errors:
        raise ConfigError(doc.errors)
    top = _Section(doc, data, (), TOP_LEVEL)
    if not top.ok:
        raise ConfigError(doc.errors)
    server = _server(doc, top.raw("server"))
    admin = _admin(doc, top.raw("admin"))
    redis_cfg = _redis(doc, top.raw("redis"))
    errors = _errors(doc, top.raw("errors"))
    logging_cfg = _logging(doc, top.raw("logging"))
    upstreams: dict[str, UpstreamConfig] = {}
    for name, value in _named(doc, top.raw("upstreams"), "upstreams").items():
        up = _upstream(doc, name, value)
        if up is not None:
            upstreams[name] = up
    policies: dict[str, PolicyConfig] = {}
    for name, value in _named(doc, top.raw("rate_limits"), "rate_limits").items():
        pol = _policy(doc, name, value)
        if pol is not None:
            policies[name] = pol
    routes: list[RouteConfig] = []
    raw_routes = _list(doc, top.raw("routes"), ("routes",))
    if not raw_routes and not doc.errors:
        doc.error(("routes",), "at least one route is required")
    for i, item in enumerate(raw_routes):
        route = _route(doc, i, item)
        if route is not None:
            routes.append(route)
    _cross_check(doc, routes, upstreams, policies, server, admin)
    if doc.errors:
        raise ConfigError(doc.errors)
    return GatewayConfig(
        server=server,
        admin=admin,
        redis=redis_cfg,
        errors=errors,
        logging=logging_cfg,
        upstreams=MappingProxyType(upstreams),
        rate_limits=MappingProxyType(policies),
        routes=tuple(routes),
        source=source,
    )


def _cross_check(
    doc: _Doc,
    routes: list[RouteConfig],
    upstreams: dict[str, UpstreamConfig],
    policies: dict[str, PolicyConfig],
    server: ServerConfig,
    admin: AdminConfig,
) -> None:
    seen: dict[str, int] = {}
    for i, route in enumerate(routes):
        path: Path_ = ("routes", i)
        if route.name in seen:
            doc.error(
                (*path, "name"),
                f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])",
            )
        seen.setdefault(route.name, i)
        if route.upstream and route.upstream not in upstreams:
            doc.error((*path, "upstream"), f"unknown upstream {route.upstream!r}")
        for name in route.rate_limit:
            policy = policies.get(name)
            if policy is None:
                doc.error((*path, "rate_limit"), f"unknown rate-limit policy {name!r}")
                continue
            for j, limit in enumerate(policy.limits):
                if route.cost > limit.capacity:
                    doc.error(
                        (*path, "cost"),
                        f"cost {route.cost} exceeds capacity {limit.capacity} of "
                        f"rate_limits.{name}.limits[{j}]: every request would be refused",
                    )
    if server.port and server.port == admin.port and server.host == admin.host:
        doc.error(("admin", "port"), "the admin port must differ from the server port")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Reads and validates the file at ``path``; raises ``ConfigError``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}:1: cannot read the file: {exc}"]) from exc
    return parse_config(text, source, env)
