"""Pure route matching: host, then the longest path prefix on whole segments, then method.

The table is compiled once per config. A lookup walks the request path's
segment prefixes from the longest (``/a/b/c``, ``/a/b``, ``/a``, ``/``) with one
dict probe each, so ``/api`` matches ``/api`` and ``/api/x`` but never
``/apiary``. Host groups are tried from the most specific: exact host names,
then ``*.suffix`` wildcards (longest suffix first), then routes without hosts.

The most specific path prefix governs methods: when it has routes but none
allows the method, the answer is 405 with ``Allow`` - a shorter prefix is not
tried, so locking ``/api/admin`` to POST cannot be bypassed through ``/api``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RouteSpec(Generic[R]):
    """What matching needs of one route, and the payload handed back on a match."""

    hosts: tuple[str, ...]
    path_prefix: str
    methods: frozenset[str] | None  # None: every method
    payload: R


@dataclass(frozen=True, slots=True)
class Match(Generic[R]):
    route: R | None  # None: no match
    allowed: tuple[str, ...] = ()  # non-empty: the path matched but the method did not (405)


# Each entry carries its ready-made Match, so a hit allocates nothing.
_Entry = tuple[frozenset[str] | None, Match[R]]
_Group = dict[str, list[_Entry[R]]]


class RouteTable(Generic[R]):
    """Compiled routes; ``match`` is the only per-request entry point."""

    __slots__ = ("_exact", "_miss", "_plain", "_wildcards")

    def __init__(self, specs: Iterable[RouteSpec[R]]) -> None:
        self._exact: dict[str, _Group[R]] = {}
        wildcards: dict[str, _Group[R]] = {}
        self._plain: _Group[R] = {}
        for spec in specs:
            methods = spec.methods
            if methods is not None and "GET" in methods:
                methods = methods | {"HEAD"}  # HEAD is GET without a body
            entry: _Entry[R] = (methods, Match(spec.payload))
            if not spec.hosts:
                self._plain.setdefault(spec.path_prefix, []).append(entry)
            for host in spec.hosts:
                if host.startswith("*."):
                    group = wildcards.setdefault(host[1:], {})  # keep the leading dot
                else:
                    group = self._exact.setdefault(host, {})
                group.setdefault(spec.path_prefix, []).append(entry)
        # Longest suffix first: *.api.example.com beats *.example.com.
        self._wildcards = sorted(wildcards.items(), key=lambda kv: -len(kv[0]))
        self._miss: Match[R] = Match(None)

    def match(self, host: str, path: str, method: str) -> Match[R]:
        """``host`` lower-case without port; ``path`` normalised; ``method`` upper-case."""
        if self._exact or self._wildcards:
            group = self._exact.get(host)
            if group is not None:
                found = _match_group(group, path, method)
                if found is not None:
                    return found
            for suffix, group in self._wildcards:
                if host.endswith(suffix):
                    found = _match_group(group, path, method)
                    if found is not None:
                        return found
        found = _match_group(self._plain, path, method)
        return self._miss if found is None else found


def _match_group(group: _Group[R], path: str, method: str) -> Match[R] | None:
    p = path
    while True:
        entries = group.get(p)
        if entries is not None:
            for methods, hit in entries:
                if methods is None or method in methods:
                    return hit
            allowed: set[str] = set()
            for methods, _ in entries:
                allowed |= methods or set()
            return Match(None, tuple(sorted(allowed)))
        if p == "/":
            return None
        cut = p.rfind("/")
        p = p[:cut] if cut > 0 else "/"


def host_without_port(host: bytes) -> str:
    """The lower-case host name of a ``Host`` header value, without its port."""
    if host.startswith(b"["):  # IPv6 literal
        end = host.find(b"]")
        return host[: end + 1].decode("latin-1").lower() if end > 0 else ""
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.decode("latin-1").lower()
