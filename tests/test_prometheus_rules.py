"""config/prometheus and config/grafana: promtool checks, unit tests, and a live Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics, render
from tests.support.exporter_stub import touch_every_metric
from tests.support.prometheus_server import PrometheusServer, promtool

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "gateway.rules.yml"
ALERTS = PROMETHEUS_DIR / "gateway.alerts.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = ROOT / "config" / "grafana" / "gateway-dashboard.json"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


RECORDED = [rule["record"] for rule in rules(RULES)]
ALERT_NAMES = [rule["alert"] for rule in rules(ALERTS)]


def check(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_check_rules() -> None:
    output = check(promtool("check", "rules", RULES, ALERTS))
    assert f"SUCCESS: {len(RECORDED)} rules found" in output
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    assert len(RULE_TESTS) >= 2
    check(promtool("test", "rules", *RULE_TESTS))


def test_unit_tests_cover_every_rule_and_alert() -> None:
    tested_exprs: list[str] = []
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            tested_exprs += [test["expr"] for test in case.get("promql_expr_test", [])]
            for test in case.get("alert_rule_test", []):
                (firing if test["exp_alerts"] else silent).add(test["alertname"])
    untested = [name for name in RECORDED if not any(name in e for e in tested_exprs)]
    assert untested == []
    assert firing == set(ALERT_NAMES)
    assert silent == set(ALERT_NAMES)


def test_promtool_check_config_on_a_copy(tmp_path: Path) -> None:
    for name in ("prometheus.yml", RULES.name, ALERTS.name):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    output = check(promtool("check", "config", tmp_path / "prometheus.yml"))
    assert "SUCCESS: 2 rule files found" in output
    config = load(tmp_path / "prometheus.yml")
    assert config["rule_files"] == [RULES.name, ALERTS.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "gateway"
    assert job["static_configs"] == [{"targets": ["gateway:9100"]}]


# --- every name a rule, an alert or a panel reads exists ------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def referenced_series(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (no functions, labels, keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, ${route})
    names = set()
    for match in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_referenced_series_finds_names_and_nothing_else() -> None:
    expr = """
      (route:a:rate5m or route:b:rate5m * 0) / (route:b:rate5m > 0)
        and on (route) sum by (route, le) (rate(gateway_request_total{code=~"5..", x="a b"}[5m]))
        unless histogram_quantile(0.99, foo_bucket offset 1m) > 1e3 == bool $threshold
    """
    assert referenced_series(expr) == {
        "route:a:rate5m",
        "route:b:rate5m",
        "gateway_request_total",
        "foo_bucket",
    }


@pytest.fixture(scope="module")
def known_series() -> set[str]:
    """Every sample name the gateway exports, and every recorded name."""
    registry = CollectorRegistry()
    touch_every_metric(Metrics(registry))
    body = render(registry)[0].decode()
    exported = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    return exported | set(RECORDED)


def test_rules_read_only_known_series(known_series: set[str]) -> None:
    for rule in rules(RULES) + rules(ALERTS):
        name = rule.get("record") or rule["alert"]
        assert referenced_series(rule["expr"]) <= known_series, name


def test_recording_rules_read_only_earlier_records() -> None:
    # Rules of one group run in order; reading a later record would lag one interval.
    seen: set[str] = set()
    for group in load(RULES)["groups"]:
        for rule in group["rules"]:
            assert referenced_series(rule["expr"]) & set(RECORDED) <= seen, rule["record"]
            seen.add(rule["record"])
        seen.clear()  # another group's records would be read one evaluation late


def dashboard_panels(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "targets" in node:
            yield node
        for child in node.get("panels", []):
            yield from dashboard_panels(child)


def test_dashboard_reads_only_known_series(known_series: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels(dashboard))
    assert len(panels) >= 8
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            names = referenced_series(target["expr"])
            assert names, target["expr"]
            assert names <= known_series, panel["title"]
            used |= names
    # The dashboard is built on the recording rules, not on raw series.
    assert {
        "route:gateway_requests:rate1m",
        "route:gateway_requests_5xx:ratio_rate5m",
        "upstream:gateway_upstream_responses_5xx:ratio_rate5m",
        "route:gateway_errors_upstream:ratio_rate5m",
        "route:gateway_requests_429:ratio_rate5m",
        "route:gateway_request_duration_seconds:p99_rate5m",
    } <= used


# --- the shipped rules on a real Prometheus ---------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[str]:
    """The stub exporter: users answers 3 x 200 + 1 x 502 per tick, orders only 200s, idle
    nothing. Yields its address."""
    script = {
        "tick": 0.05,
        "requests": [
            ["users", "GET", 200, 3],
            ["users", "GET", 502, 1],
            ["orders", "POST", 201, 2],
            ["idle", "GET", 200, 0],
        ],
    }
    with subprocess.Popen(
        [sys.executable, "-m", "tests.support.exporter_stub", json.dumps(script)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            yield f"127.0.0.1:{int(process.stdout.readline())}"
        finally:
            process.stdin.close()  # the stub exits when its stdin closes
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def test_shipped_5xx_ratio_rule_on_a_real_prometheus(exporter: str) -> None:
    # The shipped rule files as they are: [5m] windows only need two scrapes, 1 s apart.
    with PrometheusServer([exporter], rule_files=[RULES, ALERTS]) as prometheus:
        prometheus.wait_scraped()
        users = prometheus.wait_for_value(
            'route:gateway_requests_5xx:ratio_rate5m{route="users"}', lambda v: True
        )
        assert users == pytest.approx(0.25, rel=1e-9)
        orders = prometheus.wait_for_value(
            'route:gateway_requests_5xx:ratio_rate5m{route="orders"}', lambda v: True
        )
        assert orders == 0
        # idle has a flat counter: a rate of 0, and no ratio rather than NaN.
        assert prometheus.query('route:gateway_requests:rate5m{route="idle"}') == 0
        assert prometheus.query('route:gateway_requests_5xx:ratio_rate5m{route="idle"}') is None
        assert prometheus.query("count(route:gateway_requests_5xx:ratio_rate5m)") == 2
