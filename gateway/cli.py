"""``gateway run`` and ``gateway check-config``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway.config import ConfigError, GatewayConfig, load_config, mask_url

DEFAULT_CONFIG = "config/gateway.yaml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG


def _fmt_seconds(value: float) -> str:
    if value >= 1 and float(value).is_integer():
        return f"{int(value)}s"
    return f"{value * 1000:g}ms"


def summary(config: GatewayConfig) -> str:
    """A one-screen overview of a valid config."""
    s = config.server
    lines = [
        f"{config.source}: valid",
        f"server  {s.host}:{s.port}  admin {config.admin.host}:{config.admin.port}  "
        f"max body {s.max_request_body} B  grace {_fmt_seconds(s.shutdown_grace)}",
        "store   "
        + (
            f"redis {mask_url(config.redis.url)} (on_error: {config.redis.on_error})"
            if config.redis.url
            else "in-process memory"
        ),
        f"errors  {config.errors.format}, rewriting {sorted(config.errors.rewrite_statuses)}",
        f"routes ({len(config.routes)}):",
    ]
    for r in config.routes:
        hosts = ",".join(r.hosts) or "*"
        methods = ",".join(sorted(r.methods)) if r.methods else "any"
        limits = ",".join(r.rate_limit) or "-"
        strip = " strip" if r.strip_prefix else ""
        lines.append(
            f"  {r.name:<16} {hosts} {r.path_prefix}{strip} [{methods}] -> {r.upstream}"
            f"  limit: {limits} (cost {r.cost})"
        )
    lines.append(f"upstreams ({len(config.upstreams)}):")
    for u in config.upstreams.values():
        hc = (
            f", health {u.health_check.path} every {_fmt_seconds(u.health_check.interval)}"
            if u.health_check
            else ""
        )
        lines.append(
            f"  {u.name:<16} {len(u.targets)} target(s) {u.balance}, "
            f"retries {u.retries.attempts}{hc}: " + " ".join(t.url for t in u.targets)
        )
    lines.append(f"rate-limit policies ({len(config.rate_limits)}):")
    for p in config.rate_limits.values():
        key = f"header:{p.header}" if p.key == "header" else p.key
        buckets = ", ".join(
            f"{lim.capacity} @ {lim.tokens}/{_period(lim.period)}" for lim in p.limits
        )
        lines.append(f"  {p.name:<16} key {key}: {buckets}")
    return "\n".join(lines)


def _period(seconds: int) -> str:
    return {1: "s", 60: "m", 3600: "h"}.get(seconds, f"{seconds}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="A resilient API gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="serve the gateway")
    run_p.add_argument(
        "--config", help="config file (default: $GATEWAY_CONFIG, then config/gateway.yaml)"
    )
    run_p.add_argument("--host", help="override server.host")
    run_p.add_argument("--port", type=int, help="override server.port")
    run_p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    check_p = sub.add_parser("check-config", help="validate a config file and summarise it")
    check_p.add_argument("path")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        try:
            config = load_config(args.path)
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            return 1
        print(summary(config))
        return 0

    path = _config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        problem = workers_problem(config)
        if problem:
            print(f"{path}: {problem}", file=sys.stderr)
            return 1
        from gateway.supervisor import run_workers

        return run_workers(config, path, args.workers, overrides)
    from gateway.server import run

    return run(config, path, overrides)


def workers_problem(config: GatewayConfig) -> str | None:
    """Why this config cannot run with several workers, or None."""
    limited = any(route.rate_limit for route in config.routes)
    if limited and not config.redis.url and not config.redis.allow_per_process_buckets:
        return (
            "rate limits without redis.url keep their buckets in process memory, so with "
            "--workers > 1 each worker would let the full limit through; set redis.url, or "
            "redis.allow_per_process_buckets: true to accept per-worker limits"
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
