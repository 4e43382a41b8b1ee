"""Parsing ``redis://``, ``rediss://`` and ``redis+sentinel://`` URLs into typed targets.

Raises ValueError with a readable message on a malformed URL, so config loading
can report it. Passwords never appear in a repr.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

_TLS_PARAMS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    """TLS settings from a ``rediss://`` URL's query string."""

    cert_reqs: str = "required"
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """A client context for these settings."""
        context = ssl.create_default_context(cafile=self.ca_certs)
        context.check_hostname = self.check_hostname and self.cert_reqs != "none"
        context.verify_mode = _CERT_REQS[self.cert_reqs]
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def redis_py_kwargs(self) -> dict[str, object]:
        """The same settings as redis-py connection keyword arguments."""
        return {
            "ssl": True,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_check_hostname": self.check_hostname and self.cert_reqs != "none",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTarget:
    """One Redis server (or a cluster's seed node) and how to log in to it."""

    host: str
    port: int = 6379
    path: str | None = None
    """A Unix socket instead of host and port."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SentinelTarget:
    """Sentinels to ask for ``service``'s master, and how to log in to that master."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [v6 address]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    if not colon:
        # redis://secret@host is a password alone, as redis-py reads it.
        return None, unquote(user) or None, hosts
    return unquote(user) or None, unquote(password) or None, hosts


def _tls(query: str) -> Tls:
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - _TLS_PARAMS
    if unknown:
        raise ValueError(f"unknown URL parameter(s): {', '.join(sorted(unknown))}")
    cert_reqs = params.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise ValueError("ssl_cert_reqs must be none, optional or required")
    check = params.get("ssl_check_hostname", "true").lower()
    if check not in ("true", "false"):
        raise ValueError("ssl_check_hostname must be true or false")
    return Tls(
        cert_reqs=cert_reqs,
        ca_certs=params.get("ssl_ca_certs"),
        certfile=params.get("ssl_certfile"),
        keyfile=params.get("ssl_keyfile"),
        check_hostname=check == "true",
    )


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` with TLS query options.

    A Unix socket: ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return _unix_target(parts.netloc, parts.path, parts.query)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
    username, password, hostport = _credentials(parts.netloc)
    host, port = _host_port(hostport, 6379)
    if parts.scheme == "redis" and parts.query:
        raise ValueError("URL parameters are only understood with rediss://")
    return RedisTarget(
        host=host,
        port=port,
        db=_db(parts.path.strip("/")),
        username=username,
        password=password,
        tls=_tls(parts.query) if parts.scheme == "rediss" else None,
    )


def _unix_target(netloc: str, path: str, query: str) -> RedisTarget:
    username, password, host = _credentials(netloc)
    if host or not path:
        raise ValueError("a unix:// URL names a socket path: unix:///path/to/redis.sock")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if set(params) - {"db"}:
        raise ValueError("a unix:// URL takes only the db parameter")
    return RedisTarget(
        host="",
        path=unquote(path),
        db=_db(params.get("db", "")),
        username=username,
        password=password,
    )


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host1:26379,host2:26379/<service>[/db]``.

    The credentials are the master's; sentinels are asked without them.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        raise ValueError(f"not a redis+sentinel URL: scheme {parts.scheme!r}")
    if parts.query:
        raise ValueError("redis+sentinel URLs take no parameters")
    username, password, hosts = _credentials(parts.netloc)
    sentinels = tuple(_host_port(item, 26379) for item in hosts.split(","))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError("a redis+sentinel URL needs the service name as its path")
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(service),
        db=_db(db),
        username=username,
        password=password,
    )
