"""The alert rules in deploy/: valid for promtool, unit-tested, each with a runbook line.

promtool comes with Debian's ``prometheus`` package, which ``make setup``
(``scripts/system-deps``) installs; without it these tests fail rather than skip, so a
missing install step cannot pass unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts_test.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `make setup` (scripts/system-deps installs "
            "Debian's prometheus package, which ships promtool)",
            pytrace=False,
        )
    return path


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text("utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_runbook_line_a_summary_and_a_severity() -> None:
    rules = alerts()
    assert len(rules) >= 9
    for rule in rules:
        annotations = rule.get("annotations", {})
        assert annotations.get("runbook", "").strip(), f"{rule['alert']}: no runbook line"
        assert "\n" not in annotations["runbook"].strip(), f"{rule['alert']}: runbook > 1 line"
        assert annotations.get("summary"), f"{rule['alert']}: no summary"
        assert rule["labels"]["severity"] in {"page", "ticket"}


def test_every_alert_has_a_test_case_that_fires_it_and_one_that_does_not() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text("utf-8"))
    assert doc["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts no test case fires"
    assert names - quiet == set(), "alerts no test case keeps quiet"


def test_the_issue_s_alerts_are_all_there() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    wanted = {
        "ScorestreamWorkerDown": "up{",
        "ScorestreamWorkerNotReady": "scorestream_ready",
        "ScorestreamConsumerLagGrowing": "scorestream_consumer_lag_messages",
        "ScorestreamEventsDelayed": "scorestream_event_delay_seconds_bucket",
        "ScorestreamDLQRateHigh": "scorestream_dlq_total",
        "ScorestreamCheckpointsFailing": "scorestream_checkpoints_total",
        "ScorestreamCheckpointsSlow": "scorestream_checkpoint_seconds_bucket",
        "ScorestreamEventLoopStalls": "scorestream_loop_lag_seconds",
        "ScorestreamCollectorUnavailable": 'scorestream_collector_requests_total{code="503"}',
    }
    for name, metric in wanted.items():
        assert metric in exprs[name], (name, exprs.get(name))
