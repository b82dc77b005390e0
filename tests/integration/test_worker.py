"""The live worker against the real broker: parity with `scorestream score`, crashes,
rebalancing, bad input and idle decay."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    ROOT,
    WorkerProc,
    crossings_by_id,
    heartbeats,
    offline,
    processed,
    produce,
    read_topic,
    rounds,
    wait_processed,
)

from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.simulate import Traffic

B2B = ROOT / "rules" / "b2b.yaml"
EVENT_TIME_ONLY = {"SCORESTREAM_LATENESS": "0", "SCORESTREAM_IDLE_TIMEOUT": "0"}


def simulated(n: int, people: int, seed: int, start: str, step_s: float) -> list[dict[str, Any]]:
    traffic = Traffic(people, seed, parse_ts(start), 1.0 / step_s)
    out = []
    for ev in traffic:
        out.append(ev)
        if len(out) >= n:
            return out
    return out


def page_views(n: int, people: int, seed: int, start: str, step_s: float) -> list[dict[str, Any]]:
    """Only page views: one topic, so each contact's order is Kafka's partition order."""
    rng = random.Random(seed)
    urls = ["/", "/blog/a", "/blog/b", "/pricing", "/pricing/team", "/about", "/careers"]
    t0 = parse_ts(start)
    return [
        {
            "event_id": f"pv-{seed}-{i}",
            "type": "page_view",
            "contact_id": f"c-{rng.randrange(people):04d}",
            "occurred_at": format_ts(t0 + int(i * step_s * US_PER_SECOND)),
            "properties": {"url": rng.choice(urls)},
        }
        for i in range(n)
    ]


def assert_same_as_offline(
    workers: list[WorkerProc],
    bootstrap: str,
    prefix: str,
    raws: list[dict[str, Any]],
    at: int,
    rules: Path = B2B,
) -> dict[str, dict[str, Any]]:
    """Crossings on the leads topic and scores from the HTTP API equal the offline run's."""
    run = offline(rules, raws, at)
    expected = {c.crossing_id: c.to_dict() for c in run.crossings}
    live = crossings_by_id(bootstrap, prefix + "leads.sales_ready")
    assert sorted(live) == sorted(expected)
    assert live == expected
    api = workers[0]
    for row in run.report():
        code, doc = api.get(f"/contacts/{row['contact_id']}?at={format_ts(at)}")
        assert code == 200, (row, doc)
        assert (doc["scores"], doc["tiers"]) == (row["scores"], row["tiers"]), row["contact_id"]
    return live


def test_the_worker_gives_the_same_scores_and_crossings_as_score(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws = simulated(500, people=40, seed=7, start="2026-03-01T08:00:00Z", step_s=600)
    end = parse_ts(raws[-1]["occurred_at"]) + 3600 * US_PER_SECOND
    worker = WorkerProc(
        "w", kafka_bootstrap, topic_prefix, tmp_path / "state", B2B, EVENT_TIME_ONLY
    )
    worker.start()
    try:
        worker.wait_ready()
        batches = rounds(raws)
        assert len(batches) < len(raws) / 2  # rounds do group events
        for batch in batches:
            produce(kafka_bootstrap, topic_prefix, batch)
            wait_processed(kafka_bootstrap, topic_prefix, [worker])
        produce(kafka_bootstrap, topic_prefix, heartbeats(end))
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.0)  # a few ticks: every partition's clock is now `end`
        live = assert_same_as_offline(
            [worker], kafka_bootstrap, topic_prefix, raws + heartbeats(end), end
        )
        assert any(c["threshold"] == "sales_ready" for c in live.values())
        assert any(c["direction"] == "down" for c in live.values())
    finally:
        worker.stop()
