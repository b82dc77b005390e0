"""``scorestream leads`` reading crossings from a real leads topic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import Producer

from scorestream import cli
from scorestream.leads import follow_leads
from scorestream.settings import Settings
from scorestream.topics import TopicDecl


def lead(contact: str, score: float, previous: float, direction: str = "up") -> dict[str, Any]:
    return {
        "crossing_id": f"{contact}:engagement:sales_ready:1",
        "contact_id": contact,
        "model": "engagement",
        "threshold": "sales_ready",
        "direction": direction,
        "score": score,
        "previous_score": previous,
        "occurred_at": "2026-03-01T10:15:00Z",
        "rules_version": "sha256:abc",
        "top_contributors": [{"rule_id": "pricing-visit", "points": 45.0}],
    }


def publish(settings: Settings, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for value in values:
        producer.produce(settings.topic("leads.sales_ready"), value, key=b"k", partition=0)
    assert producer.flush(15) == 0


def test_follow_leads_from_the_beginning(
    kafka_settings: Settings, kafka_topics: list[TopicDecl]
) -> None:
    publish(
        kafka_settings,
        [
            json.dumps(lead("c-1", 103.5, 88.0)).encode(),
            b"{broken",
            json.dumps(lead("c-2", 79.0, 101.0, "down")).encode(),
        ],
    )
    lines: list[str] = []
    count = follow_leads(
        kafka_settings, from_beginning=True, max_leads=2, idle_timeout=20, emit=lines.append
    )
    assert count == 2
    assert lines[0] == (
        "UP    c-1  engagement/sales_ready  88.0 -> 103.5  at 2026-03-01T10:15:00Z"
        "  top: pricing-visit +45.0"
    )
    assert lines[1].startswith(
        f"?     not JSON at {kafka_settings.topic('leads.sales_ready')}[0]@1"
    )
    assert lines[2].startswith("DOWN  c-2  engagement/sales_ready  101.0 -> 79.0")
    assert len(lines) == 3


def test_follow_leads_from_the_end_stops_when_idle(
    kafka_settings: Settings, kafka_topics: list[TopicDecl]
) -> None:
    publish(kafka_settings, [json.dumps(lead("c-old", 1.0, 0.0)).encode()])
    lines: list[str] = []
    assert follow_leads(kafka_settings, idle_timeout=1.5, emit=lines.append) == 0
    assert lines == []


def test_leads_command(
    kafka_settings: Settings,
    kafka_topics: list[TopicDecl],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(kafka_settings, [json.dumps(lead("c-42", 103.5, 88.0)).encode()])
    monkeypatch.setenv("SCORESTREAM_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("SCORESTREAM_TOPIC_PREFIX", kafka_settings.topic_prefix)
    assert cli.main(["leads", "--from-beginning", "--max", "1", "--timeout", "20"]) == 0
    assert capsys.readouterr().out == (
        "UP    c-42  engagement/sales_ready  88.0 -> 103.5  at 2026-03-01T10:15:00Z"
        "  top: pricing-visit +45.0\n"
    )


def test_leads_command_without_the_topic_exits_1(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCORESTREAM_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("SCORESTREAM_TOPIC_PREFIX", kafka_settings.topic_prefix)
    assert cli.main(["leads", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert f"topic {kafka_settings.topic('leads.sales_ready')} does not exist" in err
