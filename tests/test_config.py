"""Config loading: one bad-config fixture per rule, plus the valid shapes."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    GatewayConfig,
    load_config,
    mask_url,
    parse_config,
    parse_duration,
    parse_rate,
    parse_size,
)
from tests.support.gateway import ROOT

BAD = Path(__file__).parent / "fixtures" / "config" / "bad"
MINIMAL = """
upstreams:
  app: {targets: [http://127.0.0.1:8001]}
routes:
  - {name: app, path_prefix: /, upstream: app}
"""


def expected_errors(path: Path) -> list[str]:
    prefix = "# error: "
    return [
        line[len(prefix) :].replace("{file}", str(path))
        for line in path.read_text().splitlines()
        if line.startswith(prefix)
    ]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_config_fixture(path: Path) -> None:
    expected = expected_errors(path)
    assert expected, f"{path.name} declares no '# error:' line"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    for line in expected:
        assert line in info.value.errors, f"missing {line!r} in {info.value.errors}"


def test_every_error_is_reported_at_once() -> None:
    text = """
server: {port: nope, shutdown_grace: forever}
upstreams:
  app: {targets: [http://127.0.0.1:8001], balance: random}
routes:
  - {name: app, path_prefix: /, upstream: ghost, colour: blue}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml", env={})
    errors = info.value.errors
    assert len(errors) == 5, errors
    assert all(e.startswith("gw.yaml:") for e in errors)
    assert "gw.yaml:6: routes[0].colour: unknown key" in errors
    assert "gw.yaml:6: routes[0].upstream: unknown upstream 'ghost'" in errors


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "gateway.yaml", env={})
    assert [r.name for r in config.routes] == ["users", "echo", "flaky", "slow"]
    assert config.upstreams["demo"].targets[0].url == "http://127.0.0.1:8001"
    assert config.routes[1].errors_format == "envelope"
    assert config.redis.url == ""


def test_defaults_follow_the_spec() -> None:
    config = parse_config(MINIMAL, env={})
    s = config.server
    assert (s.host, s.port, s.trusted_proxies) == ("0.0.0.0", 8080, ())
    assert s.max_request_body == 10 * 1024 * 1024
    assert s.max_header_bytes == 64 * 1024
    assert (s.shutdown_grace, s.rate_limit_headers, s.escaped_slashes) == (20.0, "both", "reject")
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9100)
    r = config.redis
    assert (r.url, r.timeout, r.key_prefix, r.on_error) == ("", 0.05, "gw", "allow")
    assert config.errors.format == "problem"
    assert config.errors.rewrite_statuses == frozenset({502, 503, 504})
    up = config.upstreams["app"]
    assert up.retries.attempts == 2
    assert up.retries.on == frozenset({"connect_error", 502, 503, 504})
    assert up.circuit_breaker.minimum_requests == 20
    assert up.health_check is None
    route = config.routes[0]
    assert (route.methods, route.cost, route.rate_limit, route.strip_prefix) == (None, 1, (), False)


def test_env_interpolation_types_plain_scalars() -> None:
    text = """
server:
  host: ${HOST:-127.0.0.1}
admin:
  port: ${ADMIN_PORT:-9200}
redis:
  url: "${REDIS_URL:-}"
  cluster: ${CLUSTER:-false}
upstreams:
  app: {targets: ["http://${UP_HOST}:${UP_PORT:-8001}"]}
routes:
  - {name: app, path_prefix: /, upstream: app}
"""
    config = parse_config(
        text, env={"UP_HOST": "10.1.2.3", "ADMIN_PORT": "9300", "CLUSTER": "true"}
    )
    assert config.admin.port == 9300  # plain scalar: typed after interpolation
    assert config.redis.cluster is True
    assert config.upstreams["app"].targets[0].host == "10.1.2.3"
    assert config.redis.url == ""
    quoted = MINIMAL + 'server:\n  port: "${PORT:-1}"\n'
    with pytest.raises(ConfigError, match=r"server\.port: expected an integer, got '1'"):
        parse_config(quoted, env={})  # a quoted scalar stays a string


def test_env_value_cannot_change_document_structure() -> None:
    text = MINIMAL + "admin:\n  host: ${EVIL}\n"
    config = parse_config(text, env={"EVIL": "127.0.0.1}\nextra: {x: 1"})
    assert config.admin.host == "127.0.0.1}\nextra: {x: 1"


def test_model_is_frozen() -> None:
    config = parse_config(MINIMAL, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["x"] = config.upstreams["app"]  # type: ignore[index]


def test_routes_policies_and_targets_are_parsed() -> None:
    text = """
server: {trusted_proxies: [10.0.0.0/8, "::1"]}
upstreams:
  users:
    targets: [http://10.0.0.5:8080/base/, https://users.internal]
    balance: least_inflight
    health_check: {path: /health, interval: 2s, timeout: 500ms}
rate_limits:
  keyed:
    key: header:X-API-Key
    on_missing_key: reject
    limits: [{capacity: 20, refill: 10/s}, {capacity: 1000, refill: 1000/h}]
routes:
  - name: users
    hosts: [API.example.com, "*.example.org"]
    path_prefix: /v1/users/
    methods: [get, post]
    upstream: users
    strip_prefix: true
    rate_limit: keyed
    cost: 2
"""
    config = parse_config(text, env={})
    assert config.server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    t0, t1 = config.upstreams["users"].targets
    assert (t0.scheme, t0.host, t0.port, t0.base_path) == ("http", "10.0.0.5", 8080, "/base")
    assert (t1.scheme, t1.port, t1.base_path) == ("https", 443, "")
    policy = config.rate_limits["keyed"]
    assert (policy.key, policy.header, policy.on_missing_key) == ("header", "x-api-key", "reject")
    assert [(x.capacity, x.tokens, x.period) for x in policy.limits] == [
        (20, 10, 1),
        (1000, 1000, 3600),
    ]
    route = config.routes[0]
    assert route.hosts == ("api.example.com", "*.example.org")
    assert route.path_prefix == "/v1/users"
    assert route.methods == frozenset({"GET", "POST"})
    assert route.rate_limit == ("keyed",)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), ("100us", 1e-4)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", [5, "5", "5 sec", "-1s", "", None, "1d"])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MiB", 10 * 1024**2), ("64KiB", 65536), (512, 512), ("1KB", 1000), ("7B", 7)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/s", (10, 1)), ("100/m", (100, 60)), ("1000/h", (1000, 3600)), ("5/min", (5, 60))],
)
def test_parse_rate(text: str, rate: tuple[int, int]) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["0/s", "10/d", "ten/s", "10", 10])
def test_parse_rate_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="refill rate"):
        parse_rate(bad)


def test_secrets_are_masked_in_repr() -> None:
    assert mask_url("redis://user:hunter2@cache:6379/0") == "redis://user:***@cache:6379/0"
    text = MINIMAL + "redis: {url: 'redis://:hunter2@cache:6379'}\n"
    config = parse_config(text, env={})
    assert "hunter2" not in repr(config.redis)
    assert isinstance(config, GatewayConfig)
