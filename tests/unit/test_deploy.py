"""Deployment files agree with the code: Kafka version, ports, install steps, scripts."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scorestream import broker, metrics
from scorestream.collector import metrics as collector_metrics
from scorestream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return data


def test_compose_runs_the_same_kafka_version_as_the_local_broker() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{broker.KAFKA_VERSION}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # a KRaft cluster id is 16 bytes, base64url without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def test_compose_wires_topics_worker_and_prometheus() -> None:
    services = compose()["services"]
    assert services["topics"]["command"] == ["topics", "apply"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("topics", "worker"):
        assert services[name]["environment"]["SCORESTREAM_BOOTSTRAP"] == "kafka:9092"
    port = Settings().web_port
    assert f"{port}:{port}" in services["worker"]["ports"]
    assert services["prometheus"]["volumes"] == [
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro",
    ]


def test_prometheus_scrapes_the_worker_and_the_collector() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text("utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"scorestream", "collector"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    worker, collector = jobs["scorestream"], jobs["collector"]
    assert worker["static_configs"] == [{"targets": [f"worker:{Settings().web_port}"]}]
    port = Settings().collector_port
    assert collector["static_configs"] == [{"targets": [f"collector:{port}"]}]
    assert f"{port}:{port}" in compose()["services"]["collector"]["ports"]


def test_the_image_installs_like_the_makefile_and_runs_the_worker() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert "$(BIN)/pip install --quiet --upgrade pip" in makefile
    assert "pip install --quiet --upgrade pip" in dockerfile
    assert re.search(r"^FROM python:3\.11-slim AS builder$", dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11-slim AS runtime$", dockerfile, re.M)
    assert 'ENTRYPOINT ["scorestream"]' in dockerfile
    assert 'CMD ["worker"]' in dockerfile
    assert f"EXPOSE {Settings().web_port}" in dockerfile
    assert f"http://127.0.0.1:{Settings().web_port}/healthz" in dockerfile
    assert "SCORESTREAM_WEB_HOST=0.0.0.0" in dockerfile
    assert re.search(r"^USER scorestream$", dockerfile, re.M)


@pytest.mark.parametrize("script", [".ci/run", "scripts/demo"])
def test_scripts_are_executable_strict_bash(script: str) -> None:
    path = ROOT / script
    assert os.access(path, os.X_OK)
    text = path.read_text("utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert 'cd "$(dirname "${BASH_SOURCE[0]}")/.."' in text
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_ci_runs_make_test_between_broker_start_and_a_stop_trap() -> None:
    text = (ROOT / ".ci" / "run").read_text("utf-8")
    lines = [line.strip() for line in text.splitlines()]
    assert "make test" in lines
    assert lines.index("trap finish EXIT") < lines.index(".venv/bin/scorestream broker start")
    assert lines.index(".venv/bin/scorestream broker start") < lines.index("make test")
    assert ".venv/bin/scorestream broker stop || rc=1" in lines


# ---------------------------------------------------------------- alerts, dashboard, board

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "scorestream.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return data


def exported_series() -> set[str]:
    """Every series name the worker's and the collector's metrics can export."""
    names: set[str] = set()
    families = [
        *metrics.create().registry.collect(),
        *collector_metrics.create().registry.collect(),
    ]
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(scorestream_[a-z_]+)\b", expr))


def test_prometheus_loads_the_alert_rules_mounted_beside_its_config() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text("utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_alerts_and_panels_query_only_metrics_the_worker_exports() -> None:
    """A renamed metric must not leave an alert or a panel silently empty."""
    exported = exported_series()
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text("utf-8"))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - exported == set()
    assert {"scorestream_events_total", "scorestream_crossings_total"} <= used


def test_the_dashboard_covers_the_issue_s_topics_with_plain_promql() -> None:
    panels = dashboard()["panels"]
    assert dashboard()["uid"] == "scorestream"
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "lag", "delay", "crossings per threshold", "dlq", "checkpoint"):
        assert topic in titles, topic
    assert "recovery" in titles
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # No Grafana macros: the integration test runs every expr as it stands.
            assert "$" not in target["expr"], (panel["title"], target["expr"])


def test_grafana_is_provisioned_with_the_datasource_and_dashboard_the_panels_name() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "scorestream.yml").read_text("utf-8"))
    (prov,) = provider["providers"]
    assert mounts["./deploy/grafana/dashboards"] == prov["options"]["path"]
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text("utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose()["services"]["prometheus"]["ports"]
    for panel in dashboard()["panels"]:
        for ref in (panel["datasource"], *(t["datasource"] for t in panel["targets"])):
            assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]


def test_compose_runs_the_board_and_requires_the_api_token() -> None:
    services = compose()["services"]
    board = services["board"]
    assert board["command"] == ["board"]
    env = board["environment"]
    assert env["SCORESTREAM_BOARD_HOST"] == "0.0.0.0"
    assert env["SCORESTREAM_BOARD_WORKER_URL"] == f"http://worker:{Settings().web_port}"
    port = Settings().board_port
    assert f"{port}:{port}" in board["ports"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(board["healthcheck"]["test"])
    # Both listen beyond loopback in containers: compose refuses to start without a token.
    for name in ("worker", "board"):
        token = services[name]["environment"]["SCORESTREAM_API_TOKEN"]
        assert token.startswith("${SCORESTREAM_API_TOKEN:?"), name


def test_setup_installs_what_the_prometheus_and_browser_tests_need() -> None:
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert "./scripts/system-deps" in makefile
    deps = (ROOT / "scripts" / "system-deps").read_text("utf-8")
    for package in ("prometheus", "chromium", "chromium-driver"):
        assert f"missing+=({package})" in deps, package
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    assert '"selenium>=' in pyproject


def test_compose_runs_the_collector_with_the_example_sites_file() -> None:
    from scorestream.collector.keys import load_sites  # noqa: PLC0415

    collector = compose()["services"]["collector"]
    assert collector["command"] == ["collect"]
    env = collector["environment"]
    assert env["SCORESTREAM_BOOTSTRAP"] == "kafka:9092"
    assert env["SCORESTREAM_COLLECTOR_HOST"] == "0.0.0.0"
    assert "SCORESTREAM_API_TOKEN" not in env  # it only writes events
    port = Settings().collector_port
    assert f"{port}:{port}" in collector["ports"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(collector["healthcheck"]["test"])
    assert collector["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    mounts = dict(v.rsplit(":", 2)[:2] for v in collector["volumes"])
    assert mounts["./deploy/sites.example.yaml"] == env["SCORESTREAM_COLLECTOR_SITES"]
    sites = load_sites(ROOT / "deploy" / "sites.example.yaml")  # valid as shipped
    assert sites.by_key
