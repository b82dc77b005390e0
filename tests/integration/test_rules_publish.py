"""``scorestream rules publish`` against a running worker on the real broker.

An invalid plan is refused and nothing is written; a valid one reaches the running
worker, which scores events from its effective time on with it (exact scores, the
crossing's ``rules_version``, the metrics); a record on the plan topic that is not a
valid plan is refused by the worker, which keeps its plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from support import (
    ROOT,
    WorkerProc,
    crossings_by_id,
    metric_value,
    produce,
    read_topic,
    wait_processed,
)

from scorestream.engine.rules import parse_rules
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts

T0 = parse_ts("2026-03-02T08:00:00Z")
MINUTE = 60 * US_PER_SECOND
PLAN = """\
version: 1
models:
  engagement:
    thresholds:
      - {{name: hot, enter: 50, exit: 40}}
    rules:
      - id: pricing-visit
        event: page_view
        where: {{url: {{glob: "/pricing*"}}}}
        points: {points}
"""


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorestream", *args],
        check=False,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def metric(worker: WorkerProc, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(worker.url("/metrics"), timeout=10) as resp:
        return metric_value(resp.read().decode(), name, labels)


def wait_for(check: Any, what: str, worker: WorkerProc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: {worker.tail()}"
        time.sleep(0.2)


def test_a_published_plan_reaches_the_running_worker_at_its_effective_time(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    old, new, bad = tmp_path / "old.yaml", tmp_path / "new.yaml", tmp_path / "bad.yaml"
    old.write_text(PLAN.format(points=10))
    new.write_text(PLAN.format(points=25))
    bad.write_text(PLAN.format(points="lots"))
    new_version = parse_rules(new.read_bytes()).version
    env = {"SCORESTREAM_BOOTSTRAP": kafka_bootstrap, "SCORESTREAM_TOPIC_PREFIX": topic_prefix}
    rules_topic = topic_prefix + "scorestream.rules"

    worker = WorkerProc("w", kafka_bootstrap, topic_prefix, tmp_path / "state", old)
    worker.start()
    try:
        worker.wait_ready()
        # An invalid plan: refused before anything is written.
        refused = cli(env, "rules", "publish", str(bad))
        assert refused.returncode == 2, refused
        assert "bad.yaml" in refused.stdout + refused.stderr
        assert "pricing-visit" in refused.stdout + refused.stderr
        assert read_topic(kafka_bootstrap, rules_topic) == []

        at = format_ts(T0 + 60 * MINUTE)
        done = cli(env, "rules", "publish", str(new), "--at", at)
        assert done.returncode == 0, done
        assert new_version in done.stdout
        wait_for(
            lambda: (
                worker.status().get("plans_pending")
                == [{"version": new_version, "effective_at": at}]
            ),
            "the worker never read the plan",
            worker,
        )

        # Three pricing visits before the effective time, two after: 3 x 10 + 2 x 25.
        raws = [
            {
                "event_id": f"e{i}",
                "type": "page_view",
                "contact_id": "c-1",
                "occurred_at": format_ts(T0 + minute * MINUTE),
                "properties": {"url": "/pricing"},
            }
            for i, minute in enumerate((10, 30, 50, 70, 90))
        ]
        produce(kafka_bootstrap, topic_prefix, raws)
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        code, doc = worker.get(f"/contacts/c-1?at={format_ts(T0 + 100 * MINUTE)}")
        assert code == 200, doc
        assert doc["scores"] == {"engagement": 80.0}
        assert worker.status()["rules_version"] == new_version
        leads = crossings_by_id(kafka_bootstrap, topic_prefix + "leads.sales_ready")
        deadline = time.monotonic() + 20
        while not leads and time.monotonic() < deadline:
            time.sleep(0.3)
            leads = crossings_by_id(kafka_bootstrap, topic_prefix + "leads.sales_ready")
        (crossing,) = leads.values()  # 30 + 25 at 70 min
        assert crossing["rules_version"] == new_version
        assert (crossing["score"], crossing["occurred_at"]) == (55.0, format_ts(T0 + 70 * MINUTE))
        assert metric(worker, "scorestream_rules_info", f'version="{new_version}"') == 1.0
        assert metric(worker, "scorestream_rules_switches_total", 'late="false"') == 1.0
        assert "switched to plan " + new_version in worker.log_path.read_text()

        # Something on the plan topic that is not a plan: refused, the plan stays.
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(rules_topic, json.dumps({"version": "x"}).encode(), b"junk")
        assert producer.flush(10) == 0
        wait_for(
            lambda: metric(worker, "scorestream_rules_rejected_total") == 1.0,
            "the junk plan record was not refused",
            worker,
        )
        assert worker.status()["rules_version"] == new_version
    finally:
        worker.stop()
