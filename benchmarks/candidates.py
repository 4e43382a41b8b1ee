"""The benchmark's candidates and the commands that start them."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.configs import gateway_config, gateway_yaml, nginx_proxy_conf, nginx_upstream_conf
from benchmarks.servers import ServerSpec, free_port

UPSTREAM = "upstream"
NGINX_PROXY = "nginx-proxy"
AIOHTTP_PROXY = "aiohttp-proxy"
NAIVE_PROXY = "naive-proxy"
GATEWAY = "gateway"
GATEWAY_RATELIMITED = "gateway-ratelimited"
GATEWAY_RATELIMITED_MEMORY = "gateway-ratelimited-memory"

ALL = (
    UPSTREAM,
    NGINX_PROXY,
    AIOHTTP_PROXY,
    NAIVE_PROXY,
    GATEWAY,
    GATEWAY_RATELIMITED,
    GATEWAY_RATELIMITED_MEMORY,
)
REFERENCE = AIOHTTP_PROXY  # every ratio is rps / this candidate's rps
USES_REDIS = frozenset({GATEWAY_RATELIMITED})
PROFILED = (GATEWAY, GATEWAY_RATELIMITED)
BENCH_PATH = "/bench/x"

# The gateway must read only the config file we generate.
_SCRUBBED_ENV = ("GATEWAY_CONFIG", "REDIS_URL")


def select(only: Sequence[str], skip: Sequence[str]) -> list[str]:
    """The candidates to benchmark, in ``ALL`` order; unknown names raise ``ValueError``."""
    unknown = sorted(set(only).union(skip) - set(ALL))
    if unknown:
        raise ValueError(f"unknown candidate(s): {', '.join(unknown)}; known: {', '.join(ALL)}")
    return [name for name in ALL if (not only or name in only) and name not in skip]


@dataclass(frozen=True)
class Workspace:
    """Where configs go and which programs start the candidates."""

    repo: Path  # working directory of the Python candidates
    conf_dir: Path  # generated config files, kept beside the results
    scratch: Path  # nginx prefixes and Redis' directory, removed after the run
    python: str
    nginx: str = "/usr/sbin/nginx"
    redis_server: str = "/usr/bin/redis-server"


def _nginx_spec(ws: Workspace, name: str, port: int, conf: str, prefix: Path) -> ServerSpec:
    conf_path = ws.conf_dir / f"{name}.nginx.conf"
    conf_path.write_text(conf)
    argv = (ws.nginx, "-p", str(prefix), "-c", str(conf_path), "-e", "stderr")
    return ServerSpec(name, (*argv, "-g", "daemon off;"), port)


def upstream_spec(ws: Workspace, port: int) -> ServerSpec:
    """nginx serving the fixed JSON body on ``port``."""
    prefix = ws.scratch / UPSTREAM
    prefix.mkdir(parents=True, exist_ok=True)
    return _nginx_spec(ws, UPSTREAM, port, nginx_upstream_conf(prefix=prefix, port=port), prefix)


def redis_spec(ws: Workspace, port: int) -> ServerSpec:
    """A private, non-persistent redis-server on ``port``."""
    directory = ws.scratch / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    argv: tuple[str, ...] = (ws.redis_server, "--port", str(port), "--bind", "127.0.0.1")
    argv += ("--save", "", "--appendonly", "no", "--dir", str(directory))
    return ServerSpec("redis", argv, port, probe_path=None)


def proxy_spec(
    ws: Workspace, name: str, port: int, upstream_port: int, redis_port: int | None
) -> ServerSpec:
    """The command for every candidate but the upstream itself."""
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    if name == NGINX_PROXY:
        prefix = ws.scratch / name
        prefix.mkdir(parents=True, exist_ok=True)
        conf = nginx_proxy_conf(prefix=prefix, port=port, upstream_port=upstream_port)
        return _nginx_spec(ws, name, port, conf, prefix)
    if name in (AIOHTTP_PROXY, NAIVE_PROXY):
        module = "benchmarks.aiohttp_proxy" if name == AIOHTTP_PROXY else "benchmarks.naive_proxy"
        args = ["-m", module, "--port", str(port), "--upstream", upstream_url]
        return ServerSpec(name, (ws.python, *args), port, cwd=ws.repo)
    if name in (GATEWAY, GATEWAY_RATELIMITED, GATEWAY_RATELIMITED_MEMORY):
        redis_url = None
        if name in USES_REDIS:
            if redis_port is None:
                raise ValueError(f"{name} needs a Redis port")
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        document = gateway_config(
            port=port,
            admin_port=free_port(),
            upstream_url=upstream_url,
            rate_limited=name != GATEWAY,
            redis_url=redis_url,
        )
        config_path = ws.conf_dir / f"{name}.yaml"
        config_path.write_text(gateway_yaml(document))
        args = ["-m", "gateway", "run", "--config", str(config_path), "--host", "127.0.0.1"]
        args += ["--port", str(port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        return ServerSpec(name, (ws.python, *args), port, env=env, cwd=ws.repo)
    raise ValueError(f"unknown candidate {name!r}")
