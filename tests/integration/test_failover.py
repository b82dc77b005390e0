"""Failover: the partitions of a worker killed with -9 are processed again quickly.

With the defaults (session timeout 10 s, heartbeat 3 s) the group notices a dead member
after at most the session timeout; then a rebalance and the recovery of the moved
partitions. The README states the figure this test measures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from support import ROOT, WorkerProc, processed, produce

from scorestream.engine.timeutil import format_ts, parse_ts
from scorestream.pipeline.routing import partition_for

B2B = ROOT / "rules" / "b2b.yaml"
#: the issue's promise with the default settings
FAILOVER_LIMIT = 15.0


def views(keys: list[str], tag: str) -> list[dict[str, Any]]:
    at = format_ts(parse_ts("2026-03-01T10:00:00Z"))
    return [
        {
            "event_id": f"{tag}-{k}",
            "type": "page_view",
            "contact_id": k,
            "occurred_at": at,
            "properties": {"url": "/pricing"},
        }
        for k in keys
    ]


def test_the_partitions_of_a_killed_worker_are_processed_again_within_15_s(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    keys = {}
    i = 0
    while len(keys) < 6:
        keys.setdefault(partition_for(f"k-{i}", 6), f"k-{i}")
        i += 1
    a = WorkerProc("a", kafka_bootstrap, topic_prefix, tmp_path / "a", B2B)
    b = WorkerProc("b", kafka_bootstrap, topic_prefix, tmp_path / "b", B2B)
    a.start()
    b.start()
    try:
        a.wait_ready()
        b.wait_ready()
        deadline = time.monotonic() + 60
        while not (a.status()["partitions"] and b.status()["partitions"]):
            assert time.monotonic() < deadline, "the partitions were not shared"
            time.sleep(0.1)
        b_parts = sorted(int(p) for p in b.status()["partitions"])
        b.kill9()
        killed = time.monotonic()
        produce(kafka_bootstrap, topic_prefix, views([keys[p] for p in b_parts], "after"))
        topic = topic_prefix + "events.page_view"
        while True:
            done = processed([a])
            if all(done.get((topic, p), 0) >= 1 for p in b_parts):
                break
            assert time.monotonic() - killed < 60, a.tail()
            time.sleep(0.1)
        failover = time.monotonic() - killed
        print(f"failover after kill -9: {failover:.1f} s for partitions {b_parts}")
        assert failover < FAILOVER_LIMIT
    finally:
        b.stop()
        a.stop()
