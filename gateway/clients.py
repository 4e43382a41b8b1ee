"""Who the client is: the socket peer, or - behind trusted proxies - what they say.

Only a peer inside ``server.trusted_proxies`` is believed about forwarding
headers. Then the client is the rightmost ``X-Forwarded-For`` address that is
not itself a trusted proxy (RFC 7239 ``Forwarded`` when there is no
``X-Forwarded-For``). A client talking to the gateway directly cannot choose
its own address, so it cannot choose its own rate-limit key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gateway.config import Network

_CACHE_LIMIT = 4096


class ClientResolver:
    """Trust decisions for one config; peer-trust answers are cached per address."""

    __slots__ = ("_cache", "_networks", "enabled")

    def __init__(self, trusted: Sequence[Network]) -> None:
        self._networks = tuple(trusted)
        self.enabled = bool(self._networks)
        self._cache: dict[str, bool] = {}

    def is_trusted(self, address: str) -> bool:
        if not self.enabled:
            return False
        hit = self._cache.get(address)
        if hit is None:
            hit = _in_networks(address, self._networks)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()  # addresses are client-chosen; keep the cache bounded
            self._cache[address] = hit
        return hit

    def client_ip(self, peer: str, xff: bytes | None, forwarded: bytes | None) -> str:
        """The client address for a request from ``peer`` with these header values."""
        if not self.enabled or not self.is_trusted(peer):
            return peer
        if xff:
            hops = [h.strip() for h in xff.decode("latin-1").split(",")]
        elif forwarded:
            hops = forwarded_for(forwarded)
        else:
            return peer
        for hop in reversed(hops):
            if not hop:
                continue
            address = _plain_address(hop)
            if address is None:
                return peer  # garbage where an address must be: believe nobody
            if not self.is_trusted(address):
                return address
        # Every hop is a trusted proxy: the leftmost is as close to the client as we get.
        first = _plain_address(hops[0]) if hops and hops[0] else None
        return first or peer


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def _plain_address(hop: str) -> str | None:
    """An IP address from an X-Forwarded-For or Forwarded hop, without port or brackets."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        end = hop.find("]")
        hop = hop[1:end] if end > 0 else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]  # IPv4 with a port
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def forwarded_for(value: bytes) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.decode("latin-1").split(","):
        found = ""
        for pair in element.split(";"):
            name, _, v = pair.strip().partition("=")
            if name.lower() == "for":
                found = v.strip()
        out.append(found)
    return out
