"""Ops: a real Prometheus (Debian's package) scrapes the worker's /metrics.

It also loads the alert rules of ``deploy/alerts.yml`` and runs every query of the
Grafana dashboard (``deploy/grafana/dashboards/scorestream.json``) once the worker has
processed traffic: a query error, or no data where the traffic must have made some,
fails the test. ``make setup`` installs Prometheus (``scripts/system-deps``); without
it the test fails rather than skips.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WorkerProc, free_port, produce, producer, wait_processed

from scorestream.engine.timeutil import US_PER_SECOND, format_ts

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "scorestream.json"
ALERTS = ROOT / "deploy" / "alerts.yml"
#: panels that may be empty here, and why
MAY_BE_EMPTY = {
    "Collector responses": "the collector is not part of this test",
}


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    doc = json.loads(DASHBOARD.read_text("utf-8"))
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_prometheus_scrapes_the_worker_metrics(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    if PROMETHEUS is None:
        pytest.fail(
            "prometheus is not installed: run `make setup` (scripts/system-deps installs it)",
            pytrace=False,
        )
    worker = WorkerProc(
        "w", kafka_bootstrap, topic_prefix, tmp_path / "state", ROOT / "rules" / "b2b.yaml"
    )
    worker.start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: scorestream\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker.port}']}}]\n"
    )
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        worker.wait_ready()
        now = int(time.time() * US_PER_SECOND)
        events = [
            {
                "event_id": f"p{i}",
                "type": "page_view",
                "contact_id": f"c-{i % 5}",
                "occurred_at": format_ts(now + i),
                "properties": {"url": "/pricing"},
            }
            for i in range(40)
        ]
        # Rates and quantiles need a series to grow between two scrapes: a first scrape
        # before any traffic, then two rounds, each with a message for the DLQ panels.
        wait_scraped(prom_port, (tmp_path / "prometheus.log"))
        for round_events in (events[:20], events[20:]):
            produce(kafka_bootstrap, topic_prefix, round_events)
            produce_raw(kafka_bootstrap, topic_prefix + "events.page_view", b"not json")
            wait_processed(kafka_bootstrap, topic_prefix, [worker])
            time.sleep(2.5)  # two scrapes
        topic = topic_prefix + "events.page_view"
        expr = f'scorestream_events_total{{topic="{topic}",outcome="applied"}}'
        deadline = time.monotonic() + 60
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                result = query(prom_port, expr)
            except OSError:
                result = []
            if result and float(result[0]["value"][1]) == 40.0:
                break
            time.sleep(1)
        assert result and float(result[0]["value"][1]) == 40.0, (
            result,
            (tmp_path / "prometheus.log").read_text()[-2000:],
        )
        up = query(prom_port, 'up{job="scorestream"}')
        assert up and up[0]["value"][1] == "1"
        # 5 contacts x 8 pricing visits of 15 points: each crosses mql (50) and sales_ready (100)
        crossings = query(prom_port, "sum(scorestream_crossings_total)")
        assert crossings and float(crossings[0]["value"][1]) == 10.0
        ready = query(prom_port, "scorestream_ready")
        assert ready and ready[0]["value"][1] == "1"
        check_alert_rules(prom_port)
        check_dashboard_queries(prom_port)
    finally:
        prom.terminate()
        prom.wait(30)
        worker.stop()


def wait_scraped(port: int, log: Path) -> None:
    """Wait until Prometheus has scraped the worker once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            up = query(port, 'up{job="scorestream"}')
        except OSError:
            up = []
        if up and up[0]["value"][1] == "1":
            return
        time.sleep(0.5)
    raise AssertionError(f"prometheus did not scrape the worker: {log.read_text()[-2000:]}")


def produce_raw(bootstrap: str, topic: str, value: bytes) -> None:
    p = producer(bootstrap)
    p.produce(topic, value, b"bad-1")
    assert p.flush(30) == 0


def check_alert_rules(port: int) -> None:
    """Prometheus loaded every rule of deploy/alerts.yml and evaluates them without error."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as resp:
        doc = json.loads(resp.read())
    rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
    assert len(rules) >= 9
    deadline = time.monotonic() + 20
    while any(r.get("health") != "ok" for r in rules) and time.monotonic() < deadline:
        time.sleep(1)  # a rule's health is "unknown" until its first evaluation
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as resp:
            doc = json.loads(resp.read())
        rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
    assert [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"] == []
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert firing == [], f"alerts fire on a healthy worker: {firing}"


def check_dashboard_queries(port: int) -> None:
    """Every panel's query runs; each has data here unless listed in MAY_BE_EMPTY.

    The lag gauge is set every 10 s and rates need two scrapes: poll for up to 60 s.
    """
    queries = panel_queries()
    assert {title for title, _ in queries} >= set(MAY_BE_EMPTY)
    pending = list(queries)
    deadline = time.monotonic() + 60
    while True:
        missing = []
        for title, expr in pending:
            result = query(port, expr)  # asserts status "success": no query error
            if title not in MAY_BE_EMPTY and not has_a_number(result):
                missing.append((title, expr))
        if not missing or time.monotonic() > deadline:
            break
        pending = missing
        time.sleep(2)
    assert missing == [], [(title, expr, query(port, expr)) for title, expr in missing]
