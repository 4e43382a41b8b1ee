"""Upstream URLs built without re-parsing.

httpx parses and validates every URL string it is given (about 15-20 us each
here), yet the proxy's target origin is known at config load and its path was
already normalised. ``UpstreamURL`` is an ``httpx.URL`` whose scheme, host,
port and raw path are set directly; anything else httpx may ask of it is
parsed lazily, once, from the same parts.
"""

from __future__ import annotations

from typing import Any

import httpx


class UpstreamURL(httpx.URL):
    __slots__ = ("_host", "_lazy", "_port", "_raw_path", "_scheme")

    def __init__(self, scheme: str, host: str, port: int, raw_path: bytes) -> None:
        # No super().__init__: parsing is exactly what this class avoids.
        self._scheme = scheme
        self._host = host
        self._port = port
        self._raw_path = raw_path
        self._lazy: Any = None

    @property
    def _uri_reference(self) -> Any:  # type: ignore[override]
        if self._lazy is None:
            host = f"[{self._host}]" if ":" in self._host else self._host
            text = f"{self._scheme}://{host}:{self._port}{self._raw_path.decode('ascii')}"
            self._lazy = httpx.URL(text)._uri_reference
        return self._lazy

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int | None:
        default = 443 if self._scheme == "https" else 80
        return None if self._port == default else self._port

    @property
    def raw_path(self) -> bytes:
        return self._raw_path
