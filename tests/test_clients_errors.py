"""Client identity behind trusted proxies, and the uniform error bodies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.clients import ClientResolver, forwarded_for
from gateway.errors import (
    BadGateway,
    ErrorRenderer,
    GatewayTimeout,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    error_for_status,
)

LB = ClientResolver([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")])


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert LB.client_ip("203.0.113.9", b"1.2.3.4", b"for=5.6.7.8") == "203.0.113.9"
    assert ClientResolver([]).client_ip("203.0.113.9", b"1.2.3.4", None) == "203.0.113.9"


def test_rightmost_untrusted_hop_is_the_client() -> None:
    # The client put 6.6.6.6 in front; the LB appended what it saw.
    assert LB.client_ip("10.0.0.2", b"6.6.6.6, 198.51.100.7, 10.0.0.9", None) == "198.51.100.7"


def test_forwarded_used_without_x_forwarded_for() -> None:
    value = b'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.0.0.3'
    assert LB.client_ip("10.1.1.1", None, value) == "2001:db8::7"
    assert forwarded_for(b"for=192.0.2.60;proto=http;by=203.0.113.43") == ["192.0.2.60"]


def test_all_hops_trusted_gives_leftmost_and_garbage_gives_peer() -> None:
    assert LB.client_ip("10.0.0.2", b"10.0.0.5, 10.0.0.9", None) == "10.0.0.5"
    assert LB.client_ip("10.0.0.2", b"not-an-ip", None) == "10.0.0.2"
    assert LB.client_ip("10.0.0.2", b"198.51.100.7:5555", None) == "198.51.100.7"


def test_trust_cache_is_bounded() -> None:
    r = ClientResolver([ipaddress.ip_network("10.0.0.0/8")])
    for i in range(5000):
        r.is_trusted(f"192.0.{i // 256}.{i % 256}")
    assert len(r._cache) <= 4096


@pytest.mark.parametrize(
    ("err", "status", "code", "title"),
    [
        (NotFound(), 404, "not_found", "Not Found"),
        (
            RateLimited(extra={"violated_policies": ["p-0"]}),
            429,
            "rate_limit_exceeded",
            "Too Many Requests",
        ),
        (BadGateway(reason="connect_failed"), 502, "bad_gateway", "Bad Gateway"),
        (
            ServiceUnavailable(reason="circuit_open"),
            503,
            "service_unavailable",
            "Service Unavailable",
        ),
        (GatewayTimeout(reason="upstream_timeout"), 504, "gateway_timeout", "Gateway Timeout"),
    ],
)
def test_problem_format(err: object, status: int, code: str, title: str) -> None:
    renderer = ErrorRenderer("problem", "https://errors.example.com/")
    assert renderer.content_type == b"application/problem+json"
    body = renderer.body(err, "/v1/x", "rid-1")  # type: ignore[arg-type]
    assert body["type"] == "https://errors.example.com/" + code.replace("_", "-")
    assert (body["title"], body["status"], body["code"]) == (title, status, code)
    assert (body["instance"], body["request_id"]) == ("/v1/x", "rid-1")
    assert isinstance(body["detail"], str)
    assert body["detail"]


def test_envelope_and_stripe_formats() -> None:
    err = RateLimited(extra={"violated_policies": ["per_client-0"]})
    env = ErrorRenderer("envelope", "https://e/").body(err, "/p", "r")
    assert env == {
        "error": {
            "code": "rate_limit_exceeded",
            "message": err.detail,
            "details": [],
            "request_id": "r",
            "violated_policies": ["per_client-0"],
        }
    }
    stripe = ErrorRenderer("stripe", "https://e/").body(BadGateway(), "/p", "r")
    assert stripe["error"]["type"] == "api_error"
    assert stripe["error"]["doc_url"] == "https://e/bad-gateway"
    assert stripe["error"]["param"] is None
    assert ErrorRenderer("stripe", "x/").body(err, "/", "r")["error"]["type"] == "rate_limit_error"
    assert ErrorRenderer("stripe", "x/").body(NotFound(), "/", "r")["error"]["type"] == (
        "invalid_request_error"
    )
    assert ErrorRenderer("envelope", "x").content_type == b"application/json"


def test_rewritten_statuses_keep_spec_codes() -> None:
    assert (error_for_status(502).status, error_for_status(502).code) == (502, "bad_gateway")
    assert error_for_status(503).code == "service_unavailable"
    assert error_for_status(504).code == "gateway_timeout"
    odd = error_for_status(507)
    assert (odd.status, odd.code, odd.reason) == (507, "internal_error", "upstream_status")
