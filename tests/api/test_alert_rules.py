"""The Prometheus alerting rules in deploy/prometheus/: well formed, about metrics the API really exposes, and,
with promtool (``make promtool``, part of ``make setup``), checked by ``promtool check rules`` and their unit tests
(``promtool test rules``: each alert fires on the series that should fire it, after its ``for``)."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.environment import require

RULES_DIR = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "orderflow-alerts.yaml"
RULE_TESTS = RULES_DIR / "orderflow-alerts.test.yaml"
PROMTOOL = pathlib.Path(__file__).resolve().parents[2] / ".local" / "bin" / "promtool"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
METRIC = re.compile(r"\b(orderflow_[a-z_]+)\b")


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _promtool() -> str | None:
    return str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")


def test_every_alert_is_well_formed_and_documented():
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and len(names) >= 6
    # The kinds of alert the issue asks for: lag growing, freshness, dead-letter rate, a dependency down.
    assert {"OrderflowConsumerLagGrowing", "OrderflowPresenceStale", "OrderflowDeadLetterRateHigh",
            "OrderflowDependencyDown", "OrderflowPipelineFailing"} <= set(names)
    documented = (RULES_DIR.parents[1] / "docs" / "observability.md").read_text()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip() and DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["alert"] in documented, f"{rule['alert']} is not in docs/observability.md"


def test_the_rules_use_only_metrics_the_api_exposes(anonymous):
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)", anonymous.get("/metrics").text, re.M))
    names = {name for name, _ in exposed} | {f"{name}_total" for name, kind in exposed if kind == "counter"}
    used = {name for rule in _rules() for name in METRIC.findall(rule["expr"])}
    assert used and used <= names, used - names


@pytest.mark.needs_stack  # promtool, from make setup
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    promtool = _promtool()
    require(promtool is not None, "promtool is not installed (make promtool, part of make setup, builds it)")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60,
                            cwd=RULES_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr
