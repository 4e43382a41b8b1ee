"""Pure route matching and path normalisation."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.paths import normalize_path, remove_dot_segments
from gateway.routing import RouteSpec, RouteTable, host_without_port


def table(*specs: tuple[tuple[str, ...], str, frozenset[str] | None, str]) -> RouteTable[str]:
    return RouteTable(RouteSpec(h, p, m, name) for h, p, m, name in specs)


def test_longest_prefix_on_whole_segments() -> None:
    t = table(((), "/api", None, "api"), ((), "/api/v2", None, "v2"), ((), "/", None, "root"))
    assert t.match("h", "/api", "GET").route == "api"
    assert t.match("h", "/api/", "GET").route == "api"
    assert t.match("h", "/api/x", "GET").route == "api"
    assert t.match("h", "/api/v2/users", "GET").route == "v2"
    assert t.match("h", "/api/v20", "GET").route == "api"
    assert t.match("h", "/apiary", "GET").route == "root"


def test_no_match_is_a_miss() -> None:
    t = table(((), "/api", None, "api"))
    m = t.match("h", "/apiary", "GET")
    assert m.route is None
    assert m.allowed == ()


def test_host_beats_prefix_length() -> None:
    t = table(
        ((), "/v1/users", None, "generic"),
        (("api.example.com",), "/", None, "api-host"),
        (("*.example.com",), "/v1", None, "wild"),
        (("*.eu.example.com",), "/v1", None, "wild-eu"),
    )
    assert t.match("api.example.com", "/v1/users/1", "GET").route == "api-host"
    assert t.match("shop.example.com", "/v1/users/1", "GET").route == "wild"
    assert t.match("shop.eu.example.com", "/v1/x", "GET").route == "wild-eu"
    assert t.match("shop.example.com", "/v2", "GET").route is None
    assert t.match("other.org", "/v1/users/1", "GET").route == "generic"


def test_host_group_without_matching_prefix_falls_back() -> None:
    t = table((("a.example",), "/only", None, "a"), ((), "/", None, "any"))
    assert t.match("a.example", "/elsewhere", "GET").route == "any"


def test_method_mismatch_is_405_with_allow() -> None:
    t = table(((), "/admin", frozenset({"POST"}), "admin"), ((), "/", None, "root"))
    m = t.match("h", "/admin/users", "GET")
    assert m.route is None
    assert m.allowed == ("POST",)  # the shorter "/" route is not a way around it


def test_same_prefix_split_by_method_and_head_with_get() -> None:
    t = table(
        ((), "/r", frozenset({"GET"}), "read"), ((), "/r", frozenset({"POST", "PUT"}), "write")
    )
    assert t.match("h", "/r/1", "GET").route == "read"
    assert t.match("h", "/r/1", "HEAD").route == "read"
    assert t.match("h", "/r/1", "PUT").route == "write"
    assert t.match("h", "/r/1", "DELETE").allowed == ("GET", "HEAD", "POST", "PUT")


def test_match_hits_allocate_nothing_new() -> None:
    t = table(((), "/api", None, "api"))
    assert t.match("h", "/api/a", "GET") is t.match("h", "/api/b", "POST")


@pytest.mark.parametrize(
    ("raw", "host"),
    [(b"Example.COM:8080", "example.com"), (b"[::1]:8080", "[::1]"), (b"h", "h"), (b"", "")],
)
def test_host_without_port(raw: bytes, host: str) -> None:
    assert host_without_port(raw) == host


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/a/b?c", "/a/b%3Fc"),  # raw_path never holds the query; a '?' here is data
        (b"/public/../private", "/private"),
        (b"/public/%2e%2e/private", "/private"),
        (b"/public/%2E%2e/./private/", "/private/"),
        (b"/a/b/..", "/a/"),
        (b"/a/.", "/a/"),
        (b"/../../etc/passwd", "/etc/passwd"),
        (b"/%7Euser/%41", "/~user/A"),
        (b"/x%2bY%3d", "/x%2BY%3D"),
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b"/a b", "/a%20b"),
        (b"/.well-known/acme", "/.well-known/acme"),
        (b"/a/.hidden/..x", "/a/.hidden/..x"),
    ],
)
def test_normalize_path(raw: bytes, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%2Fb",
        b"/a%2fb",
        b"/a%5Cb",
        b"/a\\b",
        b"/a%07",
        b"/%00",
        b"/a\x01",
        b"/%zz",
        b"/%4",
        b"*",
        b"a/b",
    ],
)
def test_normalize_path_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


def test_escaped_slashes_kept_when_configured() -> None:
    assert normalize_path(b"/a%2fb/%5c", keep_escaped_slashes=True) == "/a%2Fb/%5C"
    with pytest.raises(BadRequest):
        normalize_path(b"/a%00", keep_escaped_slashes=True)


def test_remove_dot_segments_rfc3986_examples() -> None:
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"
