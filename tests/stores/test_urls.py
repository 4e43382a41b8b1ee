"""Redis URLs and the store factory: what each URL builds, and which are refused."""

from __future__ import annotations

import ssl

import pytest

from gateway.stores import ClusterStore, MemoryStore, RedisStore, bucket_key, create_store
from gateway.stores.base import bucket_keys
from gateway.stores.urls import RedisTarget, Tls, parse_redis_url, parse_sentinel_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", RedisTarget(host="localhost")),
        ("redis://10.0.0.5:6380/2", RedisTarget(host="10.0.0.5", port=6380, db=2)),
        ("redis://:pw@h", RedisTarget(host="h", password="pw")),
        ("redis://pw@h", RedisTarget(host="h", password="pw")),
        (
            "redis://user:p%40ss@h:1/0",
            RedisTarget(host="h", port=1, username="user", password="p@ss"),
        ),
        ("redis://[::1]:7000", RedisTarget(host="::1", port=7000)),
        ("rediss://h", RedisTarget(host="h", tls=Tls())),
        ("unix:///run/redis.sock", RedisTarget(host="", path="/run/redis.sock")),
        (
            "unix://:pw@/run/redis.sock?db=4",
            RedisTarget(host="", path="/run/redis.sock", db=4, password="pw"),
        ),
        (
            "rediss://h?ssl_cert_reqs=none&ssl_check_hostname=false",
            RedisTarget(host="h", tls=Tls(cert_reqs="none", check_hostname=False)),
        ),
    ],
)
def test_redis_urls(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "redis://",
        "redis://h:0",
        "redis://h:port",
        "redis://h/db",
        "redis://h?ssl_cert_reqs=none",  # TLS options without TLS
        "rediss://h?timeout=1",
        "rediss://h?ssl_cert_reqs=maybe",
        "unix://",
        "unix:///s.sock?db=x",
        "unix:///s.sock?timeout=1",
    ],
)
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_redis_url(url)


def test_sentinel_urls() -> None:
    target = parse_sentinel_url("redis+sentinel://u:pw@s1:26379,s2,[::1]:5000/mymaster/3")
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 5000))
    assert (target.service, target.db, target.username, target.password) == (
        "mymaster",
        3,
        "u",
        "pw",
    )
    for bad in ("redis+sentinel://s1:26379", "redis+sentinel://s1/svc/x", "redis://s1/svc"):
        with pytest.raises(ValueError, match=r"."):
            parse_sentinel_url(bad)


def test_passwords_stay_out_of_reprs() -> None:
    assert "s3cret" not in repr(parse_redis_url("redis://u:s3cret@h"))
    assert "s3cret" not in repr(parse_sentinel_url("redis+sentinel://u:s3cret@h/svc"))


def test_tls_contexts() -> None:
    assert Tls().context().verify_mode == ssl.CERT_REQUIRED
    loose = Tls(cert_reqs="none", check_hostname=True).context()
    assert loose.verify_mode == ssl.CERT_NONE
    assert not loose.check_hostname


def test_create_store_picks_the_backend() -> None:
    options = {"timeout_s": 0.05, "key_prefix": "gw"}
    assert isinstance(create_store(None, cluster=False, **options), MemoryStore)  # type: ignore[arg-type]
    assert isinstance(create_store("", cluster=False, **options), MemoryStore)  # type: ignore[arg-type]
    single = create_store("redis://h", cluster=False, **options)  # type: ignore[arg-type]
    assert isinstance(single, RedisStore)
    assert single.backend == "redis"
    sentinel = create_store("redis+sentinel://h/svc", cluster=False, **options)  # type: ignore[arg-type]
    assert isinstance(sentinel, RedisStore)
    assert sentinel.backend == "redis_sentinel"
    cluster = create_store("redis://h", cluster=True, **options)  # type: ignore[arg-type]
    assert isinstance(cluster, ClusterStore)
    assert cluster.backend == "redis_cluster"
    assert cluster.key_prefix == "gw"


@pytest.mark.parametrize(
    ("url", "cluster", "timeout_s"),
    [
        (None, True, 0.05),
        ("redis+sentinel://h/svc", True, 0.05),
        ("redis://h/1", True, 0.05),  # a cluster has database 0 only
        ("redis://h", False, 0),
        ("unix:///tmp/redis.sock", True, 0.05),
        ("memcached://h", False, 0.05),
    ],
)
def test_create_store_refuses(url: str | None, cluster: bool, timeout_s: float) -> None:
    with pytest.raises(ValueError, match=r"."):
        create_store(url, cluster=cluster, timeout_s=timeout_s, key_prefix="gw")


def test_bucket_keys_hash_and_tag_the_client() -> None:
    key = bucket_key("gw", "X-Api-Key: secret-123", "per_key", 1)
    assert "secret" not in key
    prefix, tag, policy, index = key.split(":")
    assert (prefix, policy, index) == ("gw", "per_key", "1")
    assert tag.startswith("{")
    assert tag.endswith("}")
    assert len(tag) == 34
    assert bucket_keys("gw", "X-Api-Key: secret-123", "per_key", 2)[1] == key
    assert bucket_key("gw", "other", "per_key", 1) != key
