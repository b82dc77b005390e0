"""The worker producer's barriers: a checkpoint waits only for what was produced before.

The producer is replaced by a fake that keeps each record's delivery callback, so the
test decides when and in which order Kafka acknowledges (librdkafka acknowledges
partitions independently, so out of produce order).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scorestream import metrics as metrics_mod
from scorestream.app import kafka as kafka_mod
from scorestream.app.kafka import Outputs, Topology
from scorestream.pipeline.checkpoint import CheckpointError
from scorestream.settings import Settings


class Msg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Queues records with their callbacks; ``ack`` delivers chosen ones."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, Any]] = []  # topic, partition, on_delivery
        self.acked: set[int] = set()
        self.on_flush: list[int] = []  # indexes acknowledged by the next flush call

    def produce(self, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None:
        self.records.append((topic, kwargs.get("partition", 0), kwargs["on_delivery"]))

    def ack(self, *indexes: int, error: Any = None) -> None:
        for i in indexes:
            topic, partition, callback = self.records[i]
            self.acked.add(i)
            callback(error, Msg(topic, partition, i))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        self.ack(*self.on_flush)
        self.on_flush = []
        return len(self.records) - len(self.acked)


@pytest.fixture
def outputs() -> Outputs:
    settings = Settings(bootstrap="127.0.0.1:1", topic_prefix="t-")
    out = Outputs(settings, Topology("t-", 6), metrics_mod.create(CollectorRegistry()))
    out.producer = FakeProducer()  # type: ignore[assignment]
    return out


def fake(out: Outputs) -> FakeProducer:
    producer = out.producer
    assert isinstance(producer, FakeProducer)
    return producer


def test_a_barrier_waits_only_for_records_before_it(outputs: Outputs) -> None:
    producer = fake(outputs)
    for _ in range(3):
        outputs.produce("a", None, b"x")
    first = outputs.barrier()
    outputs.produce("b", None, b"y")
    second = outputs.barrier()
    assert not outputs.settled(first)
    producer.ack(3)  # the later record first
    assert not outputs.settled(first) and not outputs.settled(second)
    producer.ack(0, 2)
    assert not outputs.settled(first)
    producer.ack(1)
    assert outputs.settled(first) and outputs.settled(second)
    # records produced after a barrier never hold it back
    outputs.produce("c", None, b"z")
    assert outputs.settled(second)
    third = outputs.barrier()
    assert not outputs.settled(third)


def test_settle_serves_callbacks_until_the_barrier(outputs: Outputs) -> None:
    producer = fake(outputs)
    outputs.produce("a", None, b"x")
    token = outputs.barrier()
    outputs.produce("a", None, b"later")
    producer.on_flush = [0]  # Kafka acknowledges the first record during the wait
    asyncio.run(outputs.settle(token))
    assert producer.acked == {0}  # the later record was not waited for


def test_a_failed_record_fails_the_settle(outputs: Outputs) -> None:
    producer = fake(outputs)
    outputs.produce("a", None, b"x")
    token = outputs.barrier()
    producer.ack(0, error="MSG_TIMED_OUT")
    with pytest.raises(CheckpointError, match="MSG_TIMED_OUT"):
        asyncio.run(outputs.settle(token))


def test_settle_gives_up_after_the_timeout(
    outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_mod, "FLUSH_TIMEOUT", 0.05)
    outputs.produce("a", None, b"x")
    outputs.produce("a", None, b"y")
    with pytest.raises(CheckpointError, match="did not acknowledge 2 records"):
        asyncio.run(outputs.flush())


def test_changelog_offsets_come_from_acknowledgements(outputs: Outputs) -> None:
    producer = fake(outputs)
    outputs.produce("t-scorestream.state-changelog", b"k", b"v", 2)
    outputs.produce("t-scorestream.state-changelog", b"k", b"v", 2)
    producer.ack(1)
    assert outputs.changelog_end(2) == 2
    producer.ack(0)
    assert outputs.changelog_end(2) == 2  # an earlier acknowledgement does not go back
