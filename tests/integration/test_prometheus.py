"""Ops: a real Prometheus (Debian's package) scrapes the worker's /metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WorkerProc, free_port, produce, wait_processed

from scorestream.engine.timeutil import US_PER_SECOND, format_ts

PROMETHEUS = shutil.which("prometheus")


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (.ci/run installs it)")
def test_prometheus_scrapes_the_worker_metrics(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    worker = WorkerProc(
        "w", kafka_bootstrap, topic_prefix, tmp_path / "state", ROOT / "rules" / "b2b.yaml"
    )
    worker.start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
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
        produce(kafka_bootstrap, topic_prefix, events)
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
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
    finally:
        prom.terminate()
        prom.wait(30)
        worker.stop()
