"""Pure builders of the configuration files the benchmark candidates run with."""

import json
from pathlib import Path
from typing import Any

import yaml

# A fixed ~200-byte document: no quote, backslash or '$', so nginx can `return` it verbatim.
UPSTREAM_BODY = json.dumps(
    {
        "id": 4711,
        "name": "benchmark-item",
        "status": "active",
        "tags": ["alpha", "beta", "gamma"],
        "owner": {"id": 42, "login": "bench"},
        "description": "A fixed JSON document served by the upstream for throughput tests.",
        "ok": True,
    },
    separators=(",", ":"),
)


def _nginx_common(prefix: Path) -> str:
    """Directives every benchmark nginx needs to run unprivileged paths from ``prefix``."""
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout 65s;
    keepalive_requests 10000000;
"""


def nginx_upstream_conf(*, prefix: Path, port: int, body: str = UPSTREAM_BODY) -> str:
    """nginx answering ``body`` as ``application/json`` with 200 for any path."""
    if any(char in body for char in "'\\$"):
        raise ValueError("the body must not contain ', \\ or $ (nginx string syntax)")
    return (
        _nginx_common(prefix)
        + f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    )


def nginx_proxy_conf(*, prefix: Path, port: int, upstream_port: int) -> str:
    """nginx as a keep-alive reverse proxy to the upstream on ``upstream_port``."""
    return (
        _nginx_common(prefix)
        + f"""\
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )


def gateway_config(
    *,
    port: int,
    admin_port: int,
    upstream_url: str,
    rate_limited: bool = False,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """The gateway's YAML document (SPEC section 3) as a mapping.

    ``rate_limited`` adds a policy that never denies but is checked on every request;
    ``redis_url`` keeps its buckets in Redis instead of process memory.
    """
    route: dict[str, Any] = {"name": "bench", "path_prefix": "/", "upstream": "bench"}
    document: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
    }
    if redis_url is not None:
        document["redis"] = {"url": redis_url}
    document["upstreams"] = {"bench": {"targets": [upstream_url]}}
    if rate_limited:
        route["rate_limit"] = "bench"
        document["rate_limits"] = {
            "bench": {
                "key": "client_ip",
                "limits": [{"capacity": 100_000_000, "refill": "100000000/s"}],
            }
        }
    document["routes"] = [route]
    return document


def gateway_yaml(document: dict[str, Any]) -> str:
    """Render a gateway config mapping as YAML, keys in the order given."""
    return yaml.safe_dump(document, sort_keys=False)
