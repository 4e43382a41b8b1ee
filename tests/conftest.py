"""Shared fixtures: real upstream servers and the gateway as a real process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Starts gateways from config dicts; every one is stopped at the end of the test."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], **kwargs: Any) -> Gateway:
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        gw = Gateway(config, workdir, **kwargs)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


# Real redis-server fixtures (a session server, flushed and restored per test; a cluster).
from tests.support.redis_server import (  # noqa: E402
    redis_cluster,
    redis_sentinel,
    redis_server,
    redis_session_server,
)

__all__ = ["redis_cluster", "redis_sentinel", "redis_server", "redis_session_server"]
