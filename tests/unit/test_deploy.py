"""Deployment files agree with the code: Kafka version, ports, install steps, scripts."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scorestream import broker
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
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    ]


def test_prometheus_scrapes_the_worker_metrics() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text("utf-8"))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": [f"worker:{Settings().web_port}"]}]


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
