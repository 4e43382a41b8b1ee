"""Static checks of Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine runs here, so the files are parsed and checked against what the gateway
actually reads: config/gateway.yaml's ports and ``${VAR}`` names, the Prometheus config,
the paths in the repository. The HEALTHCHECK one-liner is compiled and run against a real
HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, load_config
from tests.support.gateway import ROOT
from tests.support.prometheus_server import promtool
from tests.support.upstream import Upstream, free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GATEWAY_YAML = ROOT / "config" / "gateway.yaml"

SERVICES = {"gateway", "redis", "prometheus", "upstream"}
BUILD_TOOLS = {
    "gcc",
    "g++",
    "cc",
    "clang",
    "make",
    "build-essential",
    "build-base",
    "libc6-dev",
    "musl-dev",
    "python3-dev",
}
ROOT_USERS = {"root", "0"}


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    line: int  # where the instruction starts
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined as Docker joins them


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments and blank lines dropped (inside continuations
    too, as Docker does), a trailing backslash joining the next line."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        keyword, _, args = "".join(parts).strip().partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    if parts:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return out


def split_stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    for i, ins in enumerate(instructions):
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        end = next(
            (j for j in range(i + 1, len(instructions)) if instructions[j].keyword == "FROM"),
            len(instructions),
        )
        stages.append(Stage(words[0], name, tuple(instructions[i + 1 : end])))
    return stages


def exec_form(ins: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction (fails the test for the shell form)."""
    assert ins.args.startswith("["), f"line {ins.line}: {ins.keyword} should use the exec form"
    value = json.loads(ins.args)
    assert isinstance(value, list), f"line {ins.line}: not a JSON array"
    assert all(isinstance(v, str) for v in value)
    return value


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        words = shlex.split(ins.args)
        if "=" in words[0]:
            for word in words:
                key, _, value = word.partition("=")
                env[key] = value
        else:  # legacy `ENV KEY value with spaces`
            env[words[0]] = " ".join(words[1:])
    return env


def copy_args(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY's ``--flag=value`` options, its sources and its destination."""
    words = exec_form(ins) if ins.args.startswith("[") else shlex.split(ins.args)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"line {ins.line}: COPY needs a source and a destination"
    return flags, paths[:-1], paths[-1]


def healthcheck_command(stage: Stage) -> list[str]:
    ins = stage.last("HEALTHCHECK")
    _, found, command = ins.args.partition("CMD ")
    assert found, f"line {ins.line}: HEALTHCHECK without CMD"
    return exec_form(Instruction(ins.line, "CMD", command.strip()))


def python_code(command: list[str]) -> str:
    """The program of ``python -c CODE`` (fails for anything else)."""
    assert command[:2] in (["python", "-c"], ["python3", "-c"]), command
    assert len(command) == 3, command
    return command[2]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# --------------------------------------------------------------------------- .dockerignore


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern syntax (moby/patternmatcher) as a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch) or (ch if ch in "[]-!^" else re.escape(ch))
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line, in order; the last matching rule wins."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((not negated, _glob_regex(cleaned)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``path`` (relative to the context) is left out of the build context; a
    pattern matching one of its parent directories leaves it out too."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for excludes, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = excludes
    return result


# --------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class Port:
    host_ip: str | None
    published: int | None
    target: int


def parse_port(spec: object) -> Port:
    """A ``ports:`` entry, short (``[IP:]HOST:CONTAINER``) or long (mapping) syntax."""
    if isinstance(spec, dict):
        published = spec.get("published")
        return Port(spec.get("host_ip"), int(published) if published else None, spec["target"])
    # An unquoted 9100:9100 is a YAML 1.1 base-60 integer: compose wants strings here.
    assert isinstance(spec, str), f"quote the port mapping {spec!r}"
    fields = spec.split("/")[0].rsplit(":", 2)
    if len(fields) == 1:
        return Port(None, None, int(fields[0]))
    if len(fields) == 2:
        return Port(None, int(fields[0]), int(fields[1]))
    return Port(fields[0].strip("[]") or None, int(fields[1]), int(fields[2]))


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    bind: bool


def parse_volume(spec: object) -> Mount:
    if isinstance(spec, dict):
        return Mount(
            spec.get("source", ""),
            spec["target"],
            bool(spec.get("read_only")),
            spec.get("type") == "bind",
        )
    assert isinstance(spec, str), spec
    fields = spec.split(":")
    mode = fields[2].split(",") if len(fields) > 2 else []
    source = fields[0]
    return Mount(source, fields[1], "ro" in mode, source.startswith((".", "/", "~")))


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def compose_config(services: dict[str, dict[str, Any]]) -> GatewayConfig:
    """config/gateway.yaml as the gateway container reads it: only the compose environment."""
    return load_config(GATEWAY_YAML, env=environment(services["gateway"]))


def ports(service: Mapping[str, Any]) -> dict[int, Port]:
    """Published ports by container port."""
    return {p.target: p for p in map(parse_port, service.get("ports", []))}


# --------------------------------------------------------------------------- parser self-checks


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    text = "# syntax note\nFROM a AS b\nRUN one \\\n    # dropped\n    && two\n\nUSER 1\n"
    assert parse_dockerfile(text) == [
        Instruction(2, "FROM", "a AS b"),
        Instruction(3, "RUN", "one     && two"),
        Instruction(7, "USER", "1"),
    ]
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("RUN x \\\n")


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = dockerignore_rules("tests\n**/__pycache__\n*.md\n!README.md\n")
    assert ignored("tests/test_x.py", rules)
    assert ignored("gateway/stores/__pycache__/redis.cpython-311.pyc", rules)
    assert ignored("NOTES.md", rules)
    assert not ignored("README.md", rules)
    assert not ignored("gateway/README.md", rules)  # `*` stays within one path segment
    assert not ignored("gateway/tests.py", rules)


# --------------------------------------------------------------------------- Dockerfile checks


def test_dockerfile_is_multi_stage_on_one_pinned_base(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2, "the Dockerfile should build in one stage and run in another"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python", f"{stage.base}: use the official Python image"
        assert tag not in ("", "latest"), f"{stage.base}: pin the base image by tag"
        assert "slim" in tag, f"{stage.base}: use a slim variant"
        version = tuple(int(x) for x in tag.split("-")[0].split(".")[:2])
        assert version >= minimum, f"{stage.base}: pyproject.toml requires Python {requires}"
    # The venv's interpreter is a symlink into the base image it was built on.
    for ins in final.all("COPY"):
        flags, _, _ = copy_args(ins)
        if "from" in flags:
            source = next(s for s in stages if s.name == flags["from"])
            assert source.base == final.base, f"line {ins.line}: copied from another base image"


def test_final_stage_runs_as_a_fixed_non_root_user(final: Stage) -> None:
    user, _, group = final.last("USER").args.partition(":")
    assert user not in ROOT_USERS, "the gateway must not run as root"
    assert group not in ROOT_USERS, "the gateway must not run with the root group"
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
    assert user.isdigit(), f"USER {user}: use a fixed numeric uid"
    assert not group or group.isdigit(), f"USER group {group}: use a fixed numeric gid"


def test_final_stage_installs_no_build_tools_and_no_packages(final: Stage) -> None:
    for ins in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", ins.args))
        assert not words & BUILD_TOOLS, f"line {ins.line}: build tools in the runtime stage"
        assert "pip" not in ins.args, f"line {ins.line}: install in the build stage, copy the venv"


def test_build_stage_installs_the_package_without_extras(stages: list[Stage]) -> None:
    installs = [
        ins
        for stage in stages[:-1]
        for ins in stage.all("RUN")
        if re.search(r"\bpip install\b", ins.args)
    ]
    assert installs, "no `pip install` in the build stage"
    for ins in installs:
        assert "[" not in ins.args, f"line {ins.line}: runtime dependencies only, no extras"
        assert " -e " not in f" {ins.args} ", f"line {ins.line}: not an editable install"
        assert ins.args.split()[-1] == ".", f"line {ins.line}: install the package itself"


def test_copy_sources_exist_and_are_in_the_build_context(stages: list[Stage]) -> None:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    names = [s.name for s in stages]
    shipped = (".py", ".lua", ".typed", ".toml", ".md", ".yaml", ".yml")
    for n, stage in enumerate(stages):
        for ins in stage.all("COPY"):
            flags, sources, _ = copy_args(ins)
            if "from" in flags:
                assert flags["from"] in names[:n], f"line {ins.line}: unknown stage"
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"line {ins.line}: COPY source {source} does not exist"
                files = [path] if path.is_file() else list(path.rglob("*"))
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and file.suffix in shipped:
                        assert not ignored(rel, rules), f"{rel} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "gateway/__pycache__/app.cpython-311.pyc",
        "gateway/app.pyc",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        ".hypothesis/examples/x",
        "tests/test_x.py",
        "benchmarks/results/run.json",
        "tmp/x",
    ):
        assert ignored(path, rules), f"{path} should be left out of the build context"


def test_ports_exposed_match_the_config(final: Stage, compose_config: GatewayConfig) -> None:
    exposed = {int(p.split("/")[0]) for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert {compose_config.server.port, compose_config.admin.port} <= exposed
    assert {8080, 9100} <= exposed


def test_entrypoint_runs_the_gateway(final: Stage) -> None:
    assert exec_form(final.last("ENTRYPOINT")) == ["gateway"]
    assert exec_form(final.last("CMD")) == ["run"]
    assert final.last("STOPSIGNAL").args == "SIGTERM"


def test_environment_and_baked_config(final: Stage) -> None:
    env = env_of(final)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    config_path = env.get("GATEWAY_CONFIG")
    assert config_path == "/etc/gateway/gateway.yaml"
    copied = {dest: sources for _, sources, dest in map(copy_args, final.all("COPY"))}
    assert copied.get(config_path) == ["config/gateway.yaml"], "bake the example config in"


def test_healthcheck_probes_the_admin_healthz(final: Stage) -> None:
    code = python_code(healthcheck_command(final))
    compile(code, "HEALTHCHECK", "exec")
    assert "/healthz" in code
    assert "127.0.0.1" in code
    assert "'9100'" in code, "the check's default port must be admin.port's default"


def run_probe(code: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, timeout=30
    )
    return result.returncode


def test_healthcheck_fails_unless_healthz_answers_200(final: Stage, upstream: Upstream) -> None:
    code = python_code(healthcheck_command(final))
    # A proxy in the environment must not capture the container's loopback check.
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    assert run_probe(code, ADMIN_PORT=str(upstream.port), **proxy) == 0
    upstream.health_status = 503
    assert run_probe(code, ADMIN_PORT=str(upstream.port)) != 0
    assert run_probe(code, ADMIN_PORT=str(free_port())) != 0


# --------------------------------------------------------------------------- compose checks


def test_compose_has_the_four_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_gateway_waits_for_a_healthy_redis(services: dict[str, dict[str, Any]]) -> None:
    depends = services["gateway"]["depends_on"]
    assert isinstance(depends, dict), "use the long depends_on syntax with conditions"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["upstream"]["condition"] in ("service_started", "service_healthy")
    check = services["redis"]["healthcheck"]["test"]
    assert check[0] in ("CMD", "CMD-SHELL")
    assert check[-2:] == ["redis-cli", "ping"] or check[-1] == "redis-cli ping"


def test_redis_is_the_official_image_without_persistence(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "volumes" not in redis
    assert "--appendonly" in redis["command"]


def test_published_ports_match_the_config(
    services: dict[str, dict[str, Any]], compose_config: GatewayConfig
) -> None:
    published = ports(services["gateway"])
    proxy, admin = compose_config.server.port, compose_config.admin.port
    assert (proxy, admin) == (8080, 9100), "the compose environment changed the defaults"
    assert set(published) == {proxy, admin}
    assert published[proxy].published == proxy
    assert published[admin].published == admin
    # Admin endpoints (reload, metrics) are for operators: never on the host's public side.
    assert published[admin].host_ip == "127.0.0.1"
    prometheus = ports(services["prometheus"])
    assert prometheus[9090].host_ip == "127.0.0.1"


def test_gateway_listens_on_all_interfaces_in_its_container(
    compose_config: GatewayConfig,
) -> None:
    # Published ports reach the container's eth0, not its loopback.
    assert compose_config.server.host == "0.0.0.0"
    assert compose_config.admin.host == "0.0.0.0"


def test_every_bind_mount_exists(services: dict[str, dict[str, Any]]) -> None:
    mounts = [
        (name, parse_volume(v)) for name, svc in services.items() for v in svc.get("volumes", [])
    ]
    assert mounts
    for name, mount in mounts:
        if mount.bind:
            assert (ROOT / mount.source).exists(), f"{name}: {mount.source} is not in the repo"
            assert mount.read_only, f"{name}: mount {mount.source} read-only"


def test_gateway_config_is_mounted_where_the_image_reads_it(
    services: dict[str, dict[str, Any]], final: Stage
) -> None:
    mounts = [parse_volume(v) for v in services["gateway"]["volumes"]]
    targets = {m.target: m for m in mounts}
    config_path = env_of(final)["GATEWAY_CONFIG"]
    assert config_path in targets, f"mount config/gateway.yaml at {config_path}"
    assert (ROOT / targets[config_path].source).resolve() == GATEWAY_YAML


def test_gateway_environment_is_read_by_the_config(services: dict[str, dict[str, Any]]) -> None:
    read = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", GATEWAY_YAML.read_text()))
    env = environment(services["gateway"])
    assert env
    unread = set(env) - read
    assert not unread, f"config/gateway.yaml reads no ${{...}} for {sorted(unread)}"


def test_config_points_at_the_compose_services(
    services: dict[str, dict[str, Any]], compose_config: GatewayConfig
) -> None:
    assert compose_config.redis.url.startswith("redis://redis:6379")
    [target] = compose_config.upstreams["demo"].targets
    assert target.host in services
    entrypoint = services[target.host]["entrypoint"]
    assert entrypoint[entrypoint.index("--port") + 1] == str(target.port)


def test_upstream_runs_the_demo_from_the_gateway_image(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway, upstream = services["gateway"], services["upstream"]
    assert upstream["image"] == gateway["image"]
    assert upstream.get("build", gateway["build"]) == gateway["build"]
    entrypoint = upstream["entrypoint"]
    assert entrypoint[:3] == ["python", "-m", "gateway.demo"]
    assert entrypoint[entrypoint.index("--host") + 1] == "0.0.0.0"
    port = entrypoint[entrypoint.index("--port") + 1]
    # The image's HEALTHCHECK probes the gateway's admin port: the demo needs its own.
    test = upstream["healthcheck"]["test"]
    assert test[0] == "CMD"
    code = python_code(test[1:])
    compile(code, "upstream healthcheck", "exec")
    assert f"127.0.0.1:{port}/healthz" in code


def test_prometheus_scrapes_the_gateway_with_the_shipped_rules(
    services: dict[str, dict[str, Any]], compose_config: GatewayConfig
) -> None:
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    [mount] = [parse_volume(v) for v in prom["volumes"]]
    config_dir = ROOT / mount.source
    assert f"--config.file={mount.target}/prometheus.yml" in prom["command"]
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    rule_files = config["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        # Relative paths resolve against the config file's directory, in the container too.
        assert not rule_file.startswith("/"), f"{rule_file}: keep it relative to the mount"
        assert (config_dir / rule_file).is_file(), f"{rule_file} is not in {mount.source}"
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"gateway:{compose_config.admin.port}" in targets
    assert all(t.split(":")[0] in services for t in targets)
    result = promtool("check", "config", config_dir / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_validates_under_the_compose_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    try:
        config = load_config(GATEWAY_YAML, env=environment(services["gateway"]))
    except ConfigError as exc:
        pytest.fail("config/gateway.yaml under the compose environment:\n" + str(exc))
    assert config.redis.url, "compose runs Redis: the gateway should use it"
