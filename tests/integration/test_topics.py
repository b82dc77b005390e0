"""``topics apply`` against a real broker, and a JSON event through a declared topic."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition, murmur2
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from jsonschema import Draft202012Validator

from scorestream import cli
from scorestream.settings import Settings
from scorestream.topics import MANUAL, TopicDecl, apply, load_declarations

ROOT = Path(__file__).resolve().parents[2]
TOPICS_DIR = ROOT / "topics"


def admin(settings: Settings) -> AdminClient:
    # Keep the client referenced until its futures are done: a client that is garbage
    # collected fails them with _DESTROY ("Broker handle destroyed for termination").
    return AdminClient({"bootstrap.servers": settings.bootstrap})


def describe(settings: Settings, name: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, name)
    client = admin(settings)
    entries = client.describe_configs([resource])[resource].result(timeout=15)
    return {key: entry.value for key, entry in entries.items()}


def partition_counts(settings: Settings) -> dict[str, int]:
    metadata = admin(settings).list_topics(timeout=15)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if name.startswith(settings.topic_prefix)
    }


def create(settings: Settings, name: str, partitions: int, config: dict[str, str]) -> None:
    topic = NewTopic(settings.topic(name), partitions, 1, config=config)
    client = admin(settings)
    client.create_topics([topic])[settings.topic(name)].result(timeout=30)


def test_apply_creates_every_declared_topic_as_declared(kafka_settings: Settings) -> None:
    decls = load_declarations(TOPICS_DIR)
    lines = apply(decls, kafka_settings)
    p = kafka_settings.topic_prefix
    assert lines == [
        f"created {p}{d.name} ({d.partitions} partitions, replication 1)" for d in decls
    ]
    counts = partition_counts(kafka_settings)
    assert counts == {f"{p}{d.name}": d.partitions for d in decls}
    assert counts[f"{p}events.dlq"] == 3
    assert counts[f"{p}events.page_view"] == 6
    metadata = admin(kafka_settings).list_topics(timeout=15)
    for d in decls:
        replicas = {len(x.replicas) for x in metadata.topics[f"{p}{d.name}"].partitions.values()}
        assert replicas == {1}, d.name
    dlq = describe(kafka_settings, f"{p}events.dlq")
    assert dlq["max.message.bytes"] == "4194304"
    assert dlq["retention.ms"] == "2592000000"
    assert dlq["cleanup.policy"] == "delete"
    assert describe(kafka_settings, f"{p}contacts.scores")["cleanup.policy"] == "compact"
    changelog = describe(kafka_settings, f"{p}scorestream.state-changelog")
    assert (changelog["cleanup.policy"], changelog["min.compaction.lag.ms"]) == ("compact", "60000")
    assert describe(kafka_settings, f"{p}events.email")["retention.ms"] == "604800000"
    for d in decls:
        actual = describe(kafka_settings, f"{p}{d.name}")
        assert {k: actual[k] for k in d.configs} == d.configs, d.name


def test_a_second_apply_changes_nothing(
    kafka_settings: Settings, kafka_topics: list[TopicDecl]
) -> None:
    before = {d.name: describe(kafka_settings, kafka_settings.topic(d.name)) for d in kafka_topics}
    lines = apply(kafka_topics, kafka_settings)
    assert lines == [f"ok {kafka_settings.topic(d.name)}" for d in kafka_topics]
    after = {d.name: describe(kafka_settings, kafka_settings.topic(d.name)) for d in kafka_topics}
    assert after == before


def test_dry_run_creates_nothing(kafka_settings: Settings) -> None:
    decls = load_declarations(TOPICS_DIR)
    lines = apply(decls, kafka_settings, dry_run=True)
    assert (
        lines[0]
        == f"would create {kafka_settings.topic('contacts.profile')} (6 partitions, replication 1)"
    )
    assert len(lines) == len(decls)
    assert all(line.startswith("would create ") for line in lines)
    assert partition_counts(kafka_settings) == {}


def test_config_drift_is_fixed(kafka_settings: Settings, kafka_topics: list[TopicDecl]) -> None:
    email = kafka_settings.topic("events.email")
    scores = kafka_settings.topic("contacts.scores")
    client = admin(kafka_settings)
    drift = [
        ConfigResource(
            ResourceType.TOPIC,
            email,
            incremental_configs=[
                ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
            ],
        ),
        ConfigResource(
            ResourceType.TOPIC,
            scores,
            incremental_configs=[
                ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
            ],
        ),
    ]
    for future in client.incremental_alter_configs(drift).values():
        future.result(timeout=15)
    # Brokers apply a committed config change a moment later: wait until it shows.
    deadline = time.monotonic() + 15
    while describe(kafka_settings, scores)["cleanup.policy"] != "delete":
        assert time.monotonic() < deadline, "the manual config change never showed"
        time.sleep(0.1)
    assert describe(kafka_settings, email)["retention.ms"] == "1000"

    dry = apply(kafka_topics, kafka_settings, dry_run=True)
    assert f"would alter {email}: retention.ms 1000 -> 604800000" in dry
    assert describe(kafka_settings, email)["retention.ms"] == "1000"

    lines = apply(kafka_topics, kafka_settings)
    assert f"altered {email}: retention.ms 1000 -> 604800000" in lines
    assert f"altered {scores}: cleanup.policy delete -> compact" in lines
    assert sum(line.startswith("ok ") for line in lines) == len(kafka_topics) - 2
    assert describe(kafka_settings, email)["retention.ms"] == "604800000"
    assert describe(kafka_settings, scores)["cleanup.policy"] == "compact"
    assert all(line.startswith("ok ") for line in apply(kafka_topics, kafka_settings))


def test_partition_differences(kafka_settings: Settings) -> None:
    """Output topics grow; the co-partitioned group and shrinking need a person."""
    create(kafka_settings, "leads.sales_ready", 2, {"retention.ms": "2592000000"})
    create(kafka_settings, "events.form", 3, {"retention.ms": "604800000"})
    create(kafka_settings, "events.dlq", 5, {})
    decls = load_declarations(TOPICS_DIR)
    leads = kafka_settings.topic("leads.sales_ready")
    form = kafka_settings.topic("events.form")
    dlq = kafka_settings.topic("events.dlq")

    lines = apply(decls, kafka_settings)
    assert f"altered {leads}: partitions 2 -> 6" in lines
    assert (
        f"{MANUAL} {form}: 3 partitions, 6 declared; it is co-partitioned with the input and "
        "internal topics and adding partitions would move keys: recreate the group of topics "
        "or migrate by hand"
    ) in lines
    assert (
        f"altered {dlq}: retention.ms 604800000 -> 2592000000, max.message.bytes 1048588 -> 4194304"
    ) in lines
    assert any(line.startswith(f"{MANUAL} {dlq}: 5 partitions, 3 declared;") for line in lines)
    counts = partition_counts(kafka_settings)
    assert (counts[leads], counts[form], counts[dlq]) == (6, 3, 5)

    again = apply(decls, kafka_settings)
    assert f"ok {leads}" in again
    assert [line for line in again if line.startswith(MANUAL)] == [
        line for line in lines if line.startswith(MANUAL)
    ]


def test_topics_apply_command(
    kafka_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SCORESTREAM_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("SCORESTREAM_TOPIC_PREFIX", kafka_settings.topic_prefix)
    monkeypatch.setenv("SCORESTREAM_TOPICS_DIR", str(TOPICS_DIR))
    p = kafka_settings.topic_prefix
    assert cli.main(["topics", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"would create {p}events.dlq (3 partitions, replication 1)" in out
    assert cli.main(["topics", "apply"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(load_declarations(TOPICS_DIR))  # one "created" line each
    assert f"created {p}events.dlq (3 partitions, replication 1)" in out
    assert cli.main(["topics", "apply"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ok {p}{d.name}" for d in load_declarations(TOPICS_DIR)
    ]
    create(replace(kafka_settings, topic_prefix=f"{p}x-"), "events.email", 2, {})
    monkeypatch.setenv("SCORESTREAM_TOPIC_PREFIX", f"{p}x-")
    assert cli.main(["topics", "apply"]) == 1
    assert "1 difference(s) need manual action" in capsys.readouterr().err


def test_a_json_event_round_trips_through_its_topic(
    kafka_settings: Settings, kafka_topics: list[TopicDecl]
) -> None:
    topic = kafka_settings.topic("events.page_view")
    event: dict[str, Any] = {
        "event_id": f"e-{uuid.uuid4().hex}",
        "type": "page_view",
        "contact_id": "c-42",
        "occurred_at": "2026-03-01T10:15:00Z",
        "properties": {"url": "https://example.com/pricing", "title": "Prix — €"},
    }
    decl = {d.name: d for d in kafka_topics}["events.page_view"]
    schema_path = decl.schema_path(TOPICS_DIR)
    assert schema_path is not None
    Draft202012Validator(json.loads(schema_path.read_text("utf-8"))).validate(event)

    # Java clients and aiokafka (Faust) place keys with murmur2; librdkafka's default
    # partitioner is CRC32-based, so producers of co-partitioned topics must ask for it.
    producer = Producer(
        {"bootstrap.servers": kafka_settings.bootstrap, "partitioner": "murmur2_random"}
    )
    delivered: list[Any] = []
    producer.produce(
        topic,
        json.dumps(event).encode("utf-8"),
        key=b"c-42",
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    assert producer.flush(15) == 0
    ((err, msg),) = delivered
    assert err is None
    expected = murmur2(b"c-42", decl.partitions)
    assert msg.partition() == expected
    assert (aiokafka_murmur2(b"c-42") & 0x7FFFFFFF) % decl.partitions == expected

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_settings.bootstrap,
            "group.id": f"{kafka_settings.topic_prefix}roundtrip",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, expected, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        got = None
        while got is None and time.monotonic() < deadline:
            got = consumer.poll(0.5)
        assert got is not None, "no message within 20 s"
        assert got.error() is None
        assert got.key() == b"c-42"
        assert json.loads(got.value()) == event
        assert got.offset() == 0
    finally:
        consumer.close()
