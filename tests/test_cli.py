"""The command line: `gateway check-config` and `python -m gateway` as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.gateway import ROOT

BAD = Path(__file__).parent / "fixtures" / "config" / "bad"


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_valid_file_exits_0_with_summary() -> None:
    result = gateway("check-config", "config/gateway.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "config/gateway.yaml: valid" in out
    assert "routes (4):" in out
    assert "users" in out
    assert "per_client" in out
    assert "demo" in out
    assert len(out.splitlines()) < 40  # one screen


def test_check_config_unknown_key_names_file_and_line() -> None:
    path = BAD / "unknown_route_key.yaml"
    result = gateway("check-config", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{path}:8: routes[0].timeoutz: unknown key"


def test_check_config_unknown_upstream_names_it() -> None:
    path = BAD / "unknown_upstream.yaml"
    result = gateway("check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:6: routes[0].upstream: unknown upstream 'userz'" in result.stderr


def test_check_config_missing_file() -> None:
    result = gateway("check-config", "does/not/exist.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith("does/not/exist.yaml:1: cannot read the file")


def test_run_refuses_an_invalid_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("routes: []\nbogus: 1\n")
    result = gateway("run", "--config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: bogus: unknown key" in result.stderr


def test_help_lists_both_commands() -> None:
    result = gateway("--help")
    assert result.returncode == 0
    assert "run" in result.stdout
    assert "check-config" in result.stdout
