"""``scorestream collect`` against the real broker: what it acknowledges is in Kafka,
keyed and partitioned like the input contract; bad input is answered and never written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_support import KEY, CollectorProc, events_in, site, write_sites
from support import PARTITIONS, ROOT

from scorestream.engine.events import decode_event
from scorestream.pipeline.routing import partition_for
from scorestream.settings import Settings
from scorestream.topics import TopicDecl

ORIGIN = "http://shop.example:8000"


@pytest.fixture
def collector(
    kafka_settings: Settings, kafka_topics: list[TopicDecl], tmp_path: Path
) -> Iterator[CollectorProc]:
    sites = write_sites(tmp_path / "sites.yaml", [site([ORIGIN])])
    proc = CollectorProc(
        kafka_settings.bootstrap, kafka_settings.topic_prefix, sites, tmp_path / "collector.log"
    ).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.tail()


def ev(i: int, kind: str = "page_view", **over: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"url": f"/p/{i}"} if kind == "page_view" else {}
    return {
        "event_id": f"e-{i}",
        "type": kind,
        "anonymous_id": f"anon-{i % 7}",
        "occurred_at": "2026-03-01T10:15:00Z",
        "properties": props,
        **over,
    }


def test_acknowledged_events_are_in_kafka_keyed_and_partitioned_like_the_contract(
    collector: CollectorProc, kafka_settings: Settings
) -> None:
    batch = [ev(i) for i in range(20)]
    batch.append(ev(100, "identify", contact_id="c-100"))
    batch.append(ev(101, "form_submit", properties={"form_id": "contact"}, contact_id="c-100"))
    batch.append({"type": "app_download", "contact_id": "c-7"})  # id and time filled
    status, body, _ = collector.post(batch, headers={"Origin": ORIGIN})
    assert status == 200, body
    assert body["accepted"] == 23
    filled_id = body["results"][22]["event_id"]

    seen: dict[str, tuple[str, bytes | None, int, dict[str, Any]]] = {}
    for topic in ("events.page_view", "contacts.profile", "events.form", "events.custom"):
        for key, value, part in events_in(kafka_settings.bootstrap, kafka_settings.topic(topic)):
            assert value["event_id"] not in seen, "an event written twice"
            seen[value["event_id"]] = (topic, key, part, value)
    assert set(seen) == {f"e-{i}" for i in range(20)} | {"e-100", "e-101", filled_id}
    for _topic, key, part, value in seen.values():
        expected_key = value.get("contact_id") or value["anonymous_id"]
        assert key == expected_key.encode()
        # the Java client's murmur2 partitioner: where the worker keeps the contact
        assert part == partition_for(expected_key, PARTITIONS)
        assert "received_at" in value and "client_address" not in value
        decode_event(json.dumps(value))  # what the worker reads is a valid event
    assert seen["e-100"][0] == "contacts.profile"
    assert seen["e-101"][0] == "events.form"
    assert seen[filled_id][0] == "events.custom"
    assert seen[filled_id][3]["occurred_at"] == seen[filled_id][3]["received_at"]
    assert collector.metric("scorestream_collector_accepted_total", 'site="test"') == 23
    assert collector.metric("scorestream_collector_produce_seconds_count") == 1


def test_bad_input_is_answered_per_event_and_never_written(
    collector: CollectorProc, kafka_settings: Settings
) -> None:
    batch = [ev(1), ev(2, properties={}), ev(3, occurred_at="2026-03-01 10:15"), 42, ev(4)]
    status, body, _ = collector.post(batch)
    assert status == 400
    assert [r["status"] for r in body["results"]] == ["ok", "invalid", "invalid", "invalid", "ok"]
    assert body["results"][1]["error"] == "properties.url: required"
    assert "RFC 3339" in body["results"][2]["error"]

    assert collector.post(b"not json")[0] == 400
    assert collector.post([ev(i) for i in range(501)])[0] == 413
    assert collector.post(b"[" + b" " * 1_000_001 + b"]")[0] == 413
    assert collector.post(ev(9), key="wk_wrong_key_0000")[0] == 401
    assert collector.post(ev(9), headers={"Origin": "https://evil.example"})[0] == 403

    values = events_in(kafka_settings.bootstrap, kafka_settings.topic("events.page_view"))
    assert sorted(v["event_id"] for _, v, _ in values) == ["e-1", "e-4"]
    assert collector.metric("scorestream_collector_rejected_total", 'reason="invalid"') == 3
    assert collector.metric("scorestream_collector_requests_total", 'code="413"') == 2


def test_collect_exits_2_on_missing_topics(kafka_settings: Settings, tmp_path: Path) -> None:
    sites = write_sites(tmp_path / "sites.yaml", [site([ORIGIN])])
    env = {
        "SCORESTREAM_BOOTSTRAP": kafka_settings.bootstrap,
        "SCORESTREAM_TOPIC_PREFIX": kafka_settings.topic_prefix,  # no topics with it
        "SCORESTREAM_COLLECTOR_SITES": str(sites),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "scorestream", "collect"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"missing input topics on {kafka_settings.bootstrap}" in done.stderr
    assert "topics apply" in done.stderr


def test_the_key_is_required_even_without_a_browser(collector: CollectorProc) -> None:
    status, body, _ = collector.post(ev(1), key="")
    assert status == 401 and body == {"error": "unknown or missing write key"}
    assert KEY not in json.dumps(body)
