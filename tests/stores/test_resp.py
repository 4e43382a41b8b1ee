"""The lean RESP client: login, TLS, no hidden retries, no reply ever reaching the wrong caller."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buckets import Limit
from gateway.stores import StoreError, bucket_keys, create_store
from gateway.stores.script import state_from_value
from tests.stores.conftest import unique_client
from tests.support.net import HOST
from tests.support.redis_server import RedisServer
from tests.support.upstream import free_port

HOURLY = Limit.per(10, 1, 3600)


@pytest.fixture
def secured_server() -> Iterator[RedisServer]:
    """A server with a default-user password and an ACL user ``gw``."""
    server = RedisServer("--requirepass", "s3cret", "--user", "gw", "on", ">pw", "~*", "+@all")
    server.start()
    yield server
    server.cleanup()


async def test_username_password_and_database_from_the_url(secured_server: RedisServer) -> None:
    keys = bucket_keys("gw", unique_client(), "p", 1)
    for url in (
        f"redis://gw:pw@{HOST}:{secured_server.port}/3",
        f"redis://:s3cret@{HOST}:{secured_server.port}/3",
    ):
        store = create_store(url, cluster=False, timeout_s=1, key_prefix="gw")
        try:
            await store.ping()
            assert (await store.acquire(keys, [HOURLY], 1)).allowed
        finally:
            await store.aclose()
    assert secured_server.client(username="gw", password="pw").dbsize() == 0
    client = secured_server.client(username="gw", password="pw", db=3)
    value = client.get(keys[0])
    assert isinstance(value, bytes)
    assert state_from_value(value).level // HOURLY.unit == 8  # both stores took one


@pytest.mark.parametrize("credentials", ["gw:wrong@", ":wrong@", ""])
async def test_refused_login_is_a_store_error(
    secured_server: RedisServer, credentials: str
) -> None:
    url = f"redis://{credentials}{HOST}:{secured_server.port}"
    store = create_store(url, cluster=False, timeout_s=1, key_prefix="gw")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"WRONGPASS|NOAUTH"):
            await store.acquire(bucket_keys("gw", "x", "p", 1), [HOURLY], 1)
        assert time.monotonic() - started < 0.5
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", f"/CN={HOST}"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", f"subjectAltName=IP:{HOST}", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def tls_server(tls_files: tuple[Path, Path]) -> Iterator[tuple[RedisServer, int]]:
    cert, key = tls_files
    tls_port = free_port()
    server = RedisServer(
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    )
    server.start()
    yield server, tls_port
    server.cleanup()


async def test_rediss_verifies_the_server(
    tls_server: tuple[RedisServer, int], tls_files: tuple[Path, Path]
) -> None:
    _, tls_port = tls_server
    cert, _ = tls_files
    keys = bucket_keys("gw", unique_client(), "p", 1)
    trusted = f"rediss://{HOST}:{tls_port}?ssl_ca_certs={cert}"
    unverified = f"rediss://{HOST}:{tls_port}?ssl_cert_reqs=none"
    for url, remaining in ((trusted, 9), (unverified, 8)):
        store = create_store(url, cluster=False, timeout_s=1, key_prefix="gw")
        try:
            decision = await store.acquire(keys, [HOURLY], 1)
            assert decision.buckets[0].remaining == remaining
        finally:
            await store.aclose()
    untrusted = create_store(
        f"rediss://{HOST}:{tls_port}", cluster=False, timeout_s=1, key_prefix="gw"
    )
    try:
        with pytest.raises(StoreError) as caught:
            await untrusted.acquire(keys, [HOURLY], 1)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)
    finally:
        await untrusted.aclose()


class FakeRedis:
    """A TCP server on 127.0.0.1 that counts connections and answers as told."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer  # None: read forever, answer nothing; b"": close at once
        self.accepted = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        if self.answer == b"":
            writer.close()
            return
        while await reader.read(65536):
            if self.answer is not None:
                writer.write(self.answer)

    async def __aenter__(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "fails_within"),
    [(b"", 0.3), (None, 0.6), (b"this is not RESP\r\n", 0.3)],
    ids=["closes", "silent", "garbage"],
)
async def test_each_call_tries_one_connection_and_fails_in_time(
    answer: bytes | None, fails_within: float
) -> None:
    async with FakeRedis(answer) as fake:
        store = create_store(
            f"redis://{HOST}:{fake.port}", cluster=False, timeout_s=0.3, key_prefix="gw"
        )
        try:
            for attempt in (1, 2):
                started = time.monotonic()
                with pytest.raises(StoreError):
                    await store.acquire(bucket_keys("gw", "x", "p", 1), [HOURLY], 1)
                assert time.monotonic() - started < fails_within
                assert fake.accepted == attempt  # no retry inside a call; a new try per call
        finally:
            await store.aclose()


async def test_cancelled_callers_do_not_shift_replies(redis_server: RedisServer) -> None:
    store = create_store(redis_server.url, cluster=False, timeout_s=1, key_prefix="gw")
    limit = Limit.per(1000, 1, 3600)
    try:
        keys = [bucket_keys("gw", unique_client(), "p", 1) for _ in range(20)]
        for n, k in enumerate(keys):  # a distinct remaining count per key tells replies apart
            assert (await store.acquire(k, [limit], n + 1)).allowed
        tasks = [asyncio.ensure_future(store.acquire(k, [limit], 0)) for k in keys]
        await asyncio.sleep(0)  # sent, not answered
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for n, result in enumerate(results):
            if n % 2 == 0:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert not isinstance(result, BaseException)
                assert result.buckets[0].remaining == 1000 - (n + 1)
        after = await store.acquire(keys[4], [limit], 0)
        assert after.buckets[0].remaining == 1000 - 5
    finally:
        await store.aclose()


async def test_a_call_after_a_timeout_gets_its_own_reply(redis_server: RedisServer) -> None:
    store = create_store(redis_server.url, cluster=False, timeout_s=0.2, key_prefix="gw")
    limit = Limit.per(1000, 1, 3600)
    first, second = (bucket_keys("gw", unique_client(), "p", 1) for _ in range(2))
    try:
        assert (await store.acquire(second, [limit], 7)).allowed
        redis_server.pause()
        with pytest.raises(StoreError, match="did not answer"):
            await store.acquire(first, [limit], 1)
        redis_server.resume()
        deadline = time.monotonic() + 5
        while True:
            try:
                decision = await store.acquire(second, [limit], 0)
                break
            except StoreError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        assert decision.buckets[0].remaining == 1000 - 7  # not the late reply for `first`
    finally:
        await store.aclose()


async def test_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    server.start()
    try:
        store = create_store(
            f"unix://{socket_path}?db=2", cluster=False, timeout_s=1, key_prefix="gw"
        )
        try:
            keys = bucket_keys("gw", unique_client(), "p", 1)
            assert (await store.acquire(keys, [HOURLY], 1)).allowed
            await store.ping()
        finally:
            await store.aclose()
        assert server.client(db=2).exists(keys[0]) == 1
    finally:
        server.cleanup()
