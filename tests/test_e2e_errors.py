"""Every error format end to end: exact shape and content type for each status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import LEAK, Upstream, free_port

TYPE_BASE = "https://errors.test/e/"
TITLES = {
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
CODES = {
    404: "not_found",
    413: "payload_too_large",
    429: "rate_limit_exceeded",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["problem", "envelope", "stripe"])
def gw(
    request: pytest.FixtureRequest, up: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "server": {"max_request_body": "1KiB"},
        "errors": {"format": request.param, "type_base": TYPE_BASE},
        "upstreams": {
            "app": {"targets": [up.url], "retries": {"attempts": 0}},
            "dead": {"targets": [f"http://127.0.0.1:{free_port()}"], "retries": {"attempts": 0}},
            "slow": {
                "targets": [up.url],
                "timeouts": {"read": "200ms"},
                "retries": {"attempts": 0},
            },
        },
        "rate_limits": {"once": {"limits": [{"capacity": 1, "refill": "1/h"}]}},
        "routes": [
            {"name": "app", "path_prefix": "/app", "upstream": "app"},
            {"name": "dead", "path_prefix": "/dead", "upstream": "dead"},
            {"name": "slow", "path_prefix": "/slow", "upstream": "slow"},
            {"name": "once", "path_prefix": "/once", "upstream": "app", "rate_limit": "once"},
        ],
    }
    gateway = Gateway(config, tmp_path_factory.mktemp(f"gw-{request.param}")).start()
    yield gateway
    gateway.stop()


def fmt(gw: Gateway) -> str:
    value: str = gw.config["errors"]["format"]
    return value


def call(gw: Gateway, status: int) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        if status == 404:
            return c.get("/missing/route")
        if status == 413:
            return c.post("/app/echo", content=b"x" * 2048)
        if status == 429:
            c.get("/once/echo")
            return c.get("/once/echo")
        if status == 502:
            return c.get("/dead/x")
        if status == 503:
            return c.get("/app/status/503?retry_after=42")
        return c.get("/slow/delay/2")


def expected_body(gw: Gateway, status: int, r: httpx.Response, path: str) -> dict[str, Any]:
    code = CODES[status]
    rid = r.headers["x-request-id"]
    detail = r.json()
    f = fmt(gw)
    extra: dict[str, Any] = {}
    inner = detail if f == "problem" else detail["error"]
    if "reason" in inner:
        extra["reason"] = inner["reason"]
    if status == 429:
        extra["violated_policies"] = ["once-0"]
    message = inner["detail"] if f == "problem" else inner["message"]
    if f == "problem":
        return {
            "type": TYPE_BASE + code.replace("_", "-"),
            "title": TITLES[status],
            "status": status,
            "detail": message,
            "instance": path,
            "code": code,
            "request_id": rid,
            **extra,
        }
    if f == "envelope":
        return {
            "error": {"code": code, "message": message, "details": [], "request_id": rid, **extra}
        }
    kind = (
        "rate_limit_error"
        if status == 429
        else "invalid_request_error"
        if status < 500
        else "api_error"
    )
    return {
        "error": {
            "type": kind,
            "code": code,
            "message": message,
            "param": None,
            "doc_url": TYPE_BASE + code.replace("_", "-"),
            "request_id": rid,
            **extra,
        }
    }


PATHS = {
    404: "/missing/route",
    413: "/app/echo",
    429: "/once/echo",
    502: "/dead/x",
    503: "/app/status/503",
    504: "/slow/delay/2",
}


@pytest.mark.parametrize("status", sorted(CODES))
def test_error_shape(gw: Gateway, status: int) -> None:
    r = call(gw, status)
    assert r.status_code == status
    content_type = "application/problem+json" if fmt(gw) == "problem" else "application/json"
    assert r.headers["content-type"] == content_type
    body = r.json()
    assert body == expected_body(gw, status, r, PATHS[status])
    message = body["detail"] if fmt(gw) == "problem" else body["error"]["message"]
    assert isinstance(message, str)
    assert message
    assert LEAK not in r.text


def test_rewritten_upstream_error_keeps_retry_after(gw: Gateway) -> None:
    r = call(gw, 503)
    assert r.headers["retry-after"] == "42"
    assert LEAK not in r.text


def test_gateway_reasons_tell_failures_apart(gw: Gateway) -> None:
    def reason(r: httpx.Response) -> str:
        body = r.json()
        value: str = (body if fmt(gw) == "problem" else body["error"])["reason"]
        return value

    assert reason(call(gw, 502)) == "connect_failed"
    assert reason(call(gw, 504)) == "upstream_timeout"
    assert reason(call(gw, 503)) == "upstream_status"


def test_head_error_has_no_body(gw: Gateway) -> None:
    r = httpx.head(gw.url + "/missing/route", timeout=10)
    assert r.status_code == 404
    assert r.content == b""
    assert int(r.headers["content-length"]) > 0


def test_upstream_500_and_404_pass_through(gw: Gateway) -> None:
    for status in (500, 404):
        r = httpx.get(f"{gw.url}/app/status/{status}", timeout=10)
        assert r.status_code == status
        assert r.text == LEAK  # not rewritten: the upstream's own answer
