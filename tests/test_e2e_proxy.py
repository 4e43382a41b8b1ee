"""End to end: the gateway as a real process in front of a real upstream on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import LEAK, Upstream, free_port

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(up: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config: dict[str, Any] = {
        "server": {"max_request_body": "8MiB"},
        "upstreams": {
            "app": {"targets": [up.url]},
            "dead": {"targets": [dead], "retries": {"attempts": 0}},
            "slow": {
                "targets": [up.url],
                "timeouts": {"read": "300ms"},
                "retries": {"attempts": 0},
            },
        },
        "routes": [
            {"name": "api", "path_prefix": "/api", "upstream": "app"},
            {"name": "strip", "path_prefix": "/strip", "upstream": "app", "strip_prefix": True},
            {"name": "getonly", "path_prefix": "/getonly", "upstream": "app", "methods": ["GET"]},
            {"name": "private", "path_prefix": "/private", "upstream": "app"},
            {"name": "public", "path_prefix": "/public", "upstream": "app"},
            {"name": "dead", "path_prefix": "/dead", "upstream": "dead"},
            {"name": "slow", "path_prefix": "/slow", "upstream": "slow"},
        ],
    }
    gateway = Gateway(config, tmp_path_factory.mktemp("gw")).start()
    yield gateway
    assert gateway.stop() == 0


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        yield c


def echo(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def header(info: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in info["headers"] if k == name]


def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Sends bytes httpx would refuse to send; returns (status, whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_end = data.index(b"\r\n\r\n")
        length = 0
        for line in data[:head_end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < head_end + 4 + length:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


# --------------------------------------------------------------------------- forwarding


def test_path_and_query_arrive_intact(client: httpx.Client) -> None:
    r = client.get("/api/users/42/echo?b=2&a=1&a=3&q=hello%20world&e=%C3%A9")
    info = echo(r)
    assert info["method"] == "GET"
    assert info["path"] == "/api/users/42/echo"
    assert info["query"] == "b=2&a=1&a=3&q=hello%20world&e=%C3%A9"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_methods_with_bodies(client: httpx.Client, method: str) -> None:
    body = f"payload for {method}".encode() * 10
    info = echo(client.request(method, "/api/echo", content=body))
    assert info["method"] == method
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert info["body_length"] == len(body)


def test_empty_post_has_zero_length(client: httpx.Client) -> None:
    info = echo(client.post("/api/echo"))
    assert info["body_length"] == 0
    assert header(info, "content-length") == ["0"]


def test_strip_prefix(client: httpx.Client) -> None:
    assert echo(client.get("/strip/echo?x=1"))["path"] == "/echo"
    assert echo(client.get("/strip"))["path"] == "/"


def test_5mib_upload_is_byte_identical(client: httpx.Client) -> None:
    body = os.urandom(5 * MiB)
    info = echo(client.post("/api/echo", content=body))
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_5mib_chunked_upload_is_byte_identical(client: httpx.Client) -> None:
    body = os.urandom(5 * MiB)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    info = echo(client.post("/api/echo", content=chunks()))
    assert header(info, "transfer-encoding") == ["chunked"]
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_413_from_content_length_never_reaches_upstream(client: httpx.Client, up: Upstream) -> None:
    before = len(up.requests)
    r = client.post("/api/echo", content=b"x" * (9 * MiB))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "payload_too_large"
    assert len(up.requests) == before


def test_413_while_streaming_a_chunked_body(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"y" * 100_000  # 10 MB in all, over the 8 MiB limit

    r = client.post("/api/echo", content=chunks())
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


def test_streamed_response_first_chunk_arrives_before_upstream_finishes(
    client: httpx.Client, up: Upstream
) -> None:
    with client.stream("GET", "/api/stream?chunks=6&interval=0.3") as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        first = next(chunks)
        # The upstream has not finished its body when the client already holds a chunk.
        progress_at_first = up.stream_progress
        rest = b"".join(chunks)
    assert first.startswith(b"chunk-0")
    assert progress_at_first < 6
    assert (first + rest).count(b"chunk-") == 6


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_200mib_download_keeps_memory_flat(client: httpx.Client, gw: Gateway) -> None:
    assert gw.proc is not None
    pid = gw.proc.pid
    client.get("/api/bytes/1048576")  # warm the path so later growth is the download's
    rss_before = _rss_kib(pid, "VmRSS")
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", "/api/bytes/209715200?chunked=1") as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert size == 200 * MiB
    peak = _rss_kib(pid, "VmHWM")  # the process's high-water mark of resident memory
    assert peak - rss_before < 64 * 1024, f"RSS grew by {(peak - rss_before) // 1024} MiB"


def test_hop_by_hop_request_headers_are_stripped(gw: Gateway) -> None:
    head = (
        b"GET /api/echo HTTP/1.1\r\nHost: example.test\r\n"
        b"Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-End-To-End: yes\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    status, data = raw_request(gw.port, head)
    assert status == 200
    info = json.loads(data.split(b"\r\n\r\n", 1)[1])
    names = {k for k, _ in info["headers"]}
    for hop in ("x-hop-secret", "keep-alive", "te", "proxy-authorization"):
        assert hop not in names
    assert header(info, "x-end-to-end") == ["yes"]


def test_hop_by_hop_response_headers_are_stripped(client: httpx.Client) -> None:
    r = client.get("/api/headers")
    assert r.status_code == 200
    assert "x-private-hop" not in r.headers
    assert "keep-alive" not in r.headers
    assert r.headers["x-end-to-end"] == "passes"
    # The gateway's request id wins over one the upstream made up.
    assert r.headers.get_list("x-request-id") != ["upstream-made-this-up"]
    assert len(r.headers.get_list("x-request-id")) == 1


def test_forwarded_headers_from_an_untrusted_peer_are_replaced(
    client: httpx.Client, up: Upstream
) -> None:
    info = echo(
        client.get(
            "/api/echo",
            headers={
                "Host": "shop.example.com",
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
                "Forwarded": "for=6.6.6.6",
            },
        )
    )
    assert header(info, "x-forwarded-for") == ["127.0.0.1"]
    assert header(info, "x-forwarded-proto") == ["http"]
    assert header(info, "x-forwarded-host") == ["shop.example.com"]
    assert header(info, "forwarded") == []
    assert header(info, "host") == [f"127.0.0.1:{up.port}"]


def test_request_id_kept_when_sane(client: httpx.Client) -> None:
    r = client.get("/api/echo", headers={"X-Request-ID": "abc-123.DEF_456"})
    assert r.headers["x-request-id"] == "abc-123.DEF_456"
    assert header(echo(r), "x-request-id") == ["abc-123.DEF_456"]


@pytest.mark.parametrize("bad", ["", "x" * 300, "has space", "semi;colon", "<script>"])
def test_request_id_replaced_when_missing_or_insane(client: httpx.Client, bad: str) -> None:
    headers = {"X-Request-ID": bad} if bad else {}
    r = client.get("/api/echo", headers=headers)
    rid = r.headers["x-request-id"]
    assert rid != bad
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert header(echo(r), "x-request-id") == [rid]


# --------------------------------------------------------------------------- errors


def test_404_problem_json(client: httpx.Client) -> None:
    r = client.get("/nowhere/at/all", headers={"X-Request-ID": "req-404"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-request-id"] == "req-404"
    body = r.json()
    assert body == {
        "type": "https://errors.example.com/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": body["detail"],
        "instance": "/nowhere/at/all",
        "code": "not_found",
        "request_id": "req-404",
    }
    assert body["detail"]


def test_405_problem_json_with_allow(client: httpx.Client) -> None:
    r = client.post("/getonly/thing", content=b"x")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "GET, HEAD"
    body = r.json()
    assert body["code"] == "method_not_allowed"
    assert body["status"] == 405
    assert body["request_id"] == r.headers["x-request-id"]
    assert client.get("/getonly/thing").status_code == 200


def test_502_on_refused_connection(client: httpx.Client) -> None:
    r = client.get("/dead/x")
    assert r.status_code == 502
    body = r.json()
    assert body["code"] == "bad_gateway"
    assert body["reason"] == "connect_failed"
    assert body["type"] == "https://errors.example.com/bad-gateway"
    assert body["request_id"] == r.headers["x-request-id"]


def test_504_on_slow_upstream(client: httpx.Client) -> None:
    started = time.monotonic()
    r = client.get("/slow/delay/3")
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    assert r.json()["code"] == "gateway_timeout"
    assert r.json()["reason"] == "upstream_timeout"
    assert elapsed < 2.5


def test_upstream_502_body_is_rewritten_and_never_leaked(client: httpx.Client) -> None:
    r = client.get("/api/status/502")
    assert r.status_code == 502
    assert LEAK not in r.text
    assert r.json()["code"] == "bad_gateway"
    assert r.json()["reason"] == "upstream_status"


def test_other_upstream_statuses_pass_through(client: httpx.Client) -> None:
    r = client.get("/api/status/500")
    assert r.status_code == 500
    assert r.text == LEAK  # not in rewrite_statuses: the upstream's answer stands
    assert client.get("/api/status/404").status_code == 404


# --------------------------------------------------------------------------- routing


def test_prefix_matches_whole_segments_only(client: httpx.Client) -> None:
    assert client.get("/api").status_code == 200
    assert client.get("/api/x/echo").status_code == 200
    r = client.get("/apiary")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "raw",
    [b"/public/../private/echo", b"/public/%2e%2e/private/echo", b"/public/%2E%2E/private/./echo"],
)
def test_dot_segments_are_removed_before_matching(gw: Gateway, raw: bytes) -> None:
    status, data = raw_request(gw.port, b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["path"] == "/private/echo"


def test_encoded_slash_is_refused(gw: Gateway) -> None:
    status, data = raw_request(gw.port, b"GET /api/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert b'"code":"bad_request"' in data


# --------------------------------------------------------------------------- robustness


def test_non_ascii_header_is_forwarded_not_a_500(gw: Gateway) -> None:
    head = b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9 \xff\r\n\r\n"
    status, data = raw_request(gw.port, head)
    assert status == 200
    info = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert header(info, "x-name") == ["caf\xc3\xa9 \xff"]  # the same bytes, latin-1 decoded


@pytest.mark.parametrize("path", [b"/api/a%07b", b"/api/%00", b"/api/x%0d%0aInjected:%20yes"])
def test_control_characters_in_path_are_400(gw: Gateway, path: bytes) -> None:
    status, data = raw_request(gw.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert b"application/problem+json" in data


def test_head_request_gets_headers_only(client: httpx.Client) -> None:
    r = client.head("/api/bytes/1000")
    assert r.status_code == 200
    assert r.headers["content-length"] == "1000"
    assert r.content == b""
    assert client.get("/api/echo").status_code == 200  # the connection pool is still sane


def test_concurrent_requests_all_succeed(gw: Gateway) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            for _ in range(25):
                code = c.get("/api/echo").status_code
                with lock:
                    results.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 200


def test_client_disconnect_mid_stream_does_not_hurt_the_gateway(
    gw: Gateway, client: httpx.Client, up: Upstream
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /api/stream?chunks=50&interval=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"chunk-0" in s.recv(65536) or b"chunk-0" in s.recv(65536)
    # The abandoned stream stops being pulled: the gateway drops the upstream exchange.
    wait_until(lambda: up.stream_aborted, timeout=5, what="upstream stream aborted")
    assert up.stream_progress < 50
    assert client.get("/api/echo").status_code == 200
    assert "Traceback" not in gw.log()


def test_request_head_over_the_limit_is_431(gw: Gateway) -> None:
    big = b"X-Big: " + b"a" * (70 * 1024) + b"\r\n"  # over the default 64 KiB
    status, data = raw_request(gw.port, b"GET /api/echo HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status == 431
    assert b'"code":"headers_too_large"' in data
    assert b"application/problem+json" in data


def test_huge_request_head_is_refused_before_it_is_buffered(gw: Gateway) -> None:
    assert gw.proc is not None
    rss_before = _rss_kib(gw.proc.pid, "VmRSS")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(2000):  # up to 128 MiB, stopped as soon as the gateway answers
                s.sendall(b"b" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"instance":"/api/echo"' in answer
    assert _rss_kib(gw.proc.pid, "VmHWM") - rss_before < 32 * 1024


def test_expect_100_continue_upload(client: httpx.Client, gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = s.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")  # not held back with the head
        s.sendall(b"hello")
        data = b""
        while b'"body_length"' not in data:
            data += s.recv(65536)
    assert b"HTTP/1.1 200 OK" in data
    assert b'"body_length": 5' in data


def test_head_of_a_slow_stream_is_not_held_back(client: httpx.Client) -> None:
    started = time.monotonic()
    with client.stream("GET", "/api/stream?chunks=2&interval=1.5") as r:
        head_after = time.monotonic() - started
        assert r.status_code == 200
        body = r.read()
    assert head_after < 1.0  # the first chunk is sent at once, the second after 1.5 s
    assert body.count(b"chunk-") == 2
