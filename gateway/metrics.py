"""The gateway's Prometheus metrics (SPEC section 6) on an injected registry.

Everything whose labels are known at config load is bound once, so the request path is a few
attribute lookups and ``inc()``/``observe()`` calls, never ``labels(...)``::

    metrics = Metrics(registry)
    route = metrics.for_route("users", ["GET", "POST"])      # at config load
    upstream = metrics.for_upstream("users", targets)        # at config load

    # per request
    metrics.in_flight.inc()
    per_method = route.methods[method]
    ...
    per_method.duration.observe(elapsed)
    per_method.requests[status].inc()
    upstream.responses[upstream_status].inc()
    metrics.in_flight.dec()

Status-code children are created on first use and cached (codes are bounded). Non-standard
HTTP methods share the ``_OTHER`` label value (as OpenTelemetry's HTTP conventions do), so a
client cannot grow the label set.

Multiprocess mode (``gateway run --workers N``): prometheus_client picks its value class when
it is imported, from ``PROMETHEUS_MULTIPROC_DIR``. So:

1. the parent calls :func:`prepare_multiprocess_dir` before it starts any worker; it creates
   the directory fresh and puts it into ``os.environ``, which spawned workers inherit (uvicorn
   spawns its workers, so they import prometheus_client anew). A forked worker only works if
   the variable was set before the parent imported prometheus_client;
2. each worker builds ``Metrics(CollectorRegistry())`` as usual; the constructor raises if
   the variable is set but this process's prometheus_client was imported before it was (its
   counts would never reach the directory);
3. ``/metrics`` answers ``render(None)``, which sums every worker's files; it works in any
   process, the parent included;
4. the parent calls :func:`mark_process_dead` with a worker's pid when that worker exits, so
   its ``live*`` gauges stop counting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway.errors import FAILURE_KINDS, FailureKind

__all__ = [
    "BACKEND_BUCKETS",
    "FAILURE_KINDS",
    "MULTIPROC_ENV",
    "NO_ROUTE",
    "OTHER_METHOD",
    "REQUEST_BUCKETS",
    "BackendMetrics",
    "FailureKind",
    "MethodMetrics",
    "Metrics",
    "RateLimitMetrics",
    "RouteMetrics",
    "UpstreamMetrics",
    "mark_process_dead",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "remove_multiprocess_dir",
    "render",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# The route label of requests that matched no route (404), so they are still counted.
NO_ROUTE: Final = "_unmatched"
OTHER_METHOD: Final = "_OTHER"
STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

# Client-visible latency: 1 ms (a cached 404) to 30 s (the default upstream read timeout).
REQUEST_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# One rate-limit round trip: 100 us (local Redis) to 100 ms (twice the default timeout).
BACKEND_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


K = TypeVar("K")
V = TypeVar("V")


class _Lazy(dict[K, V]):
    """A dict that creates a missing value with ``make(key)`` and keeps it."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[K], V]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: K) -> V:
        value = self[key] = self._make(key)
        return value


class MethodMetrics:
    """Children for one (route, method): ``requests[status]`` and ``duration``."""

    __slots__ = ("duration", "requests")

    def __init__(self, metrics: Metrics, route: str, method: str) -> None:
        self.duration: Histogram = metrics.request_duration.labels(route, method)
        requests = metrics.requests_total
        self.requests: dict[int, Counter] = _Lazy(
            lambda code: requests.labels(route, method, str(code))
        )


class _Methods(_Lazy[str, MethodMetrics]):
    """Per-method children; an unknown method maps to ``_OTHER`` without being stored."""

    __slots__ = ("_other",)

    def __init__(self, make: Callable[[str], MethodMetrics]) -> None:
        super().__init__(make)
        self._other: MethodMetrics | None = None

    def __missing__(self, key: str) -> MethodMetrics:
        if key in STANDARD_METHODS:
            return super().__missing__(key)
        if self._other is None:
            self._other = self._make(OTHER_METHOD)
        return self._other


class RateLimitMetrics:
    """Decision counters for one (route, policy)."""

    __slots__ = ("allowed", "degraded", "limited")

    def __init__(self, metrics: Metrics, route: str, policy: str) -> None:
        decisions = metrics.rate_limit_decisions
        self.allowed: Counter = decisions.labels(route, policy, "allowed")
        self.limited: Counter = decisions.labels(route, policy, "limited")
        self.degraded: Counter = decisions.labels(route, policy, "degraded")


class RouteMetrics:
    """Children for one route, bound at config load.

    ``methods[method]`` gives the per-method children; ``errors[(code, source)]`` the error
    counter (``code`` from SPEC section 5, ``source`` ``gateway`` or ``upstream``);
    ``rate_limits[policy]`` the decision counters of each policy of the route.
    """

    __slots__ = ("errors", "methods", "name", "rate_limits")

    def __init__(
        self, metrics: Metrics, name: str, methods: Iterable[str], policies: Iterable[str]
    ) -> None:
        self.name = name
        by_method = _Methods(lambda method: MethodMetrics(metrics, name, method))
        for method in methods:  # the route's own methods (bounded by config) are bound now
            by_method[method] = MethodMetrics(metrics, name, method)
        self.methods: Mapping[str, MethodMetrics] = by_method
        errors = metrics.errors_total
        self.errors: dict[tuple[str, str], Counter] = _Lazy(
            lambda key: errors.labels(name, key[0], key[1])
        )
        self.rate_limits: Mapping[str, RateLimitMetrics] = {
            policy: RateLimitMetrics(metrics, name, policy) for policy in policies
        }


class UpstreamMetrics:
    """Children for one upstream: ``responses[status]``, ``failures[kind]``, ``retries``,
    ``healthy_targets`` and ``breakers[target]`` (set to a ``BreakerState`` value).

    Creating it sets ``healthy_targets`` to the number of targets (again on a reload)."""

    __slots__ = ("breakers", "failures", "healthy_targets", "name", "responses", "retries")

    def __init__(self, metrics: Metrics, name: str, targets: Sequence[str]) -> None:
        self.name = name
        responses = metrics.upstream_responses
        self.responses: dict[int, Counter] = _Lazy(lambda code: responses.labels(name, str(code)))
        # Bound now so every kind is exported at 0: a counter first seen at 1 loses that
        # first increment in rate() and increase().
        self.failures: Mapping[FailureKind, Counter] = {
            kind: metrics.upstream_failures.labels(name, kind) for kind in FAILURE_KINDS
        }
        self.retries: Counter = metrics.upstream_retries.labels(name)
        self.healthy_targets: Gauge = metrics.healthy_targets.labels(name)
        # Targets count as healthy until a check says otherwise; starting at 0 would make a
        # fresh worker trip the no-healthy-targets alert under the `min` aggregation.
        self.healthy_targets.set(len(targets))
        # Created closed (0), like every new child.
        self.breakers: Mapping[str, Gauge] = {
            target: metrics.breaker_state.labels(name, target) for target in targets
        }


class BackendMetrics:
    """Children for one rate-limit backend (``redis`` or ``memory``)."""

    __slots__ = ("seconds", "up")

    def __init__(self, metrics: Metrics, backend: str) -> None:
        self.seconds: Histogram = metrics.rate_limit_backend_seconds.labels(backend)
        self.up: Gauge = metrics.rate_limit_backend_up.labels(backend)


class Metrics:
    """Every metric of SPEC section 6, registered on ``registry``.

    The collectors are public for rare paths; the request path uses the children from
    :meth:`for_route`, :meth:`for_upstream` and :meth:`for_backend`, bound at config load.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        path = multiprocess_dir()
        if path is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                f"{MULTIPROC_ENV}={path} was set after prometheus_client was imported in this"
                " process, so its metrics would never reach the shared directory; call"
                " prepare_multiprocess_dir() in the parent before starting workers"
            )
        # `<name>_created` series double the counter and histogram series in single-process
        # mode only (multiprocess mode has none); no rule or dashboard uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]

        self.requests_total = Counter(
            "gateway_requests_total",
            "Requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to the end of the response, by route and method.",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.errors_total = Counter(
            "gateway_errors_total",
            "Uniform error bodies sent, by route, error code and source (gateway, upstream).",
            ["route", "code", "source"],
            registry=registry,
        )
        self.upstream_responses = Counter(
            "gateway_upstream_responses_total",
            "Responses received from upstreams, by status code.",
            ["upstream", "code"],
            registry=registry,
        )
        self.upstream_failures = Counter(
            "gateway_upstream_failures_total",
            "Upstream attempts that got no response, by kind.",
            ["upstream", "kind"],
            registry=registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries_total",
            "Retried upstream attempts.",
            ["upstream"],
            registry=registry,
        )
        # Gauge aggregation across workers. `live*` modes drop a worker's value once the
        # parent marks it dead, so a crashed worker cannot pin an alert.
        self.breaker_state = Gauge(
            "gateway_circuit_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            ["upstream", "target"],
            registry=registry,
            # Each worker has its own breaker; the worst one decides what clients see.
            multiprocess_mode="livemax",
        )
        self.healthy_targets = Gauge(
            "gateway_upstream_healthy_targets",
            "Targets of the upstream currently considered healthy.",
            ["upstream"],
            registry=registry,
            # A worker that sees no healthy target fails its requests: show the worst one.
            multiprocess_mode="livemin",
        )
        self.rate_limit_decisions = Counter(
            "gateway_rate_limit_decisions_total",
            "Rate-limit decisions by route and policy: allowed, limited, degraded.",
            ["route", "policy", "decision"],
            registry=registry,
        )
        self.rate_limit_backend_seconds = Histogram(
            "gateway_rate_limit_backend_seconds",
            "Duration of one rate-limit backend call.",
            ["backend"],
            buckets=BACKEND_BUCKETS,
            registry=registry,
        )
        self.rate_limit_backend_up = Gauge(
            "gateway_rate_limit_backend_up",
            "1 when the rate-limit backend answers, 0 while it is failing.",
            ["backend"],
            registry=registry,
            # Down as soon as one worker cannot reach it (that worker degrades its decisions).
            multiprocess_mode="livemin",
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled right now.",
            registry=registry,
            # Requests in flight across live workers; a dead worker's requests are gone.
            multiprocess_mode="livesum",
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads by result (success, failure).",
            ["result"],
            registry=registry,
        )
        # Bound at start so both series exist at 0 before the first reload.
        self.reload_success: Counter = self.config_reloads.labels("success")
        self.reload_failure: Counter = self.config_reloads.labels("failure")
        self.unmatched = self.for_route(NO_ROUTE, ())

    def for_route(
        self, route: str, methods: Iterable[str], policies: Iterable[str] = ()
    ) -> RouteMetrics:
        """Children for ``route``; ``methods`` (and ``policies``) are bound now, other
        methods on first use."""
        return RouteMetrics(self, route, methods, policies)

    def for_upstream(self, upstream: str, targets: Sequence[str]) -> UpstreamMetrics:
        """Children for ``upstream`` and its targets (breakers closed, all targets healthy)."""
        return UpstreamMetrics(self, upstream, targets)

    def for_backend(self, backend: str) -> BackendMetrics:
        """Children for a rate-limit backend (``redis``, ``memory``)."""
        return BackendMetrics(self, backend)

    # Shaped like upstreams.Upstream's on_breaker_state / on_healthy_targets hooks; state
    # changes are rare, so looking the child up here costs nothing that matters.
    def set_breaker_state(self, upstream: str, target: str, state: int) -> None:
        """Record a target's breaker state (a ``BreakerState``: 0, 1 or 2)."""
        self.breaker_state.labels(upstream, target).set(state)

    def set_healthy_targets(self, upstream: str, count: int) -> None:
        """Record how many targets of ``upstream`` are in rotation."""
        self.healthy_targets.labels(upstream).set(count)


def multiprocess_dir() -> Path | None:
    """The shared metrics directory when multiprocess mode is on, else None."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def prepare_multiprocess_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Create an empty metrics directory and export it as ``PROMETHEUS_MULTIPROC_DIR``.

    Call it in the parent before any worker starts: values left from an earlier run would be
    summed into the new one. Without ``path`` a private temporary directory is made. An
    existing directory loses its ``*.db`` files (and nothing else, in case it was shared).
    """
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    else:
        directory = Path(path)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for db in directory.glob("*.db"):
            db.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def remove_multiprocess_dir(directory: Path) -> None:
    """Remove a directory made by :func:`prepare_multiprocess_dir` (parent, at exit)."""
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == str(directory):
        del os.environ[MULTIPROC_ENV]


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Forget the ``live*`` gauges of an exited worker (parent, when it reaps one)."""
    directory = Path(path) if path is not None else multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def render(
    registry: CollectorRegistry | None, path: str | os.PathLike[str] | None = None
) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type.

    With a registry, its metrics. With None, the sum over every worker's files in ``path``
    (default: ``PROMETHEUS_MULTIPROC_DIR``), read afresh on each call.
    """
    if registry is None:
        directory = Path(path) if path is not None else multiprocess_dir()
        if directory is None:
            raise RuntimeError(f"render(None) needs {MULTIPROC_ENV} or a path")
        # A fresh registry each time: metrics registered on a registry that also holds the
        # MultiProcessCollector would be exported twice.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    # The 0.0.4 text format: what prometheus_client's generate_latest writes, and what every
    # Prometheus version reads.
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
