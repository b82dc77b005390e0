"""Kafka client settings are built in one place; secrets reach clients, never logs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from scorestream import clients
from scorestream.settings import Settings

SECURE = Settings(
    bootstrap="k1:9093,k2:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="scorer",
    sasl_password="s3cret",
    ssl_cafile="/etc/ca.pem",
)


def test_every_client_gets_the_security_settings() -> None:
    for conf in (
        clients.output_producer(SECURE),
        clients.event_producer(SECURE),
        clients.reader(SECURE, "g"),
        clients.admin(SECURE),
    ):
        assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.password"] == "s3cret"
        assert conf["ssl.ca.location"] == "/etc/ca.pem"


def test_producers_keep_order_and_partition_like_the_java_client() -> None:
    for conf in (clients.output_producer(SECURE), clients.event_producer(SECURE)):
        assert conf["enable.idempotence"] is True
        assert conf["partitioner"] == "murmur2_random"


def test_readers_never_commit() -> None:
    conf = clients.reader(SECURE, "offsets")
    assert conf["group.id"] == "offsets"
    assert conf["enable.auto.commit"] is False


def test_redacted_hides_secrets_and_keeps_the_rest() -> None:
    shown = clients.redacted(clients.output_producer(SECURE))
    assert shown["sasl.password"] == "***"
    assert shown["sasl.username"] == "scorer"
    assert "s3cret" not in repr(shown)


def test_faust_brokers_are_urls_of_the_bootstrap_servers() -> None:
    assert clients.faust_brokers(SECURE) == ["kafka://k1:9093", "kafka://k2:9093"]
    assert clients.faust_credentials(Settings()) is None


class FlakyOffsets:
    """A consumer whose watermark query fails with ``errors`` first, then answers."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, partition: Any, timeout: float, cached: bool) -> Any:
        self.calls += 1
        assert not cached and timeout > 0
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (3, 17)


def test_a_partition_changing_hands_is_asked_again_until_it_answers() -> None:
    consumer = FlakyOffsets([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])
    assert clients.watermarks(consumer, "p", 5) == (3, 17)
    assert consumer.calls == 3


def test_other_errors_and_the_deadline_end_the_retries() -> None:
    denied = FlakyOffsets([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException, match="authorization"):
        clients.watermarks(denied, "p", 5)
    assert denied.calls == 1

    stuck = FlakyOffsets([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    started = time.monotonic()
    with pytest.raises(KafkaException, match="Not leader"):
        clients.watermarks(stuck, "p", 0.5)
    assert 0.3 < time.monotonic() - started < 2
    assert 3 <= stuck.calls < 10


def test_a_coordinator_still_loading_is_asked_again_and_other_errors_pass_through() -> None:
    # The worker's committed-offsets query at start-up goes to the group coordinator,
    # which a broker just started may still be loading.
    answers: list[Any] = [
        KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        ["committed"],
    ]
    lefts: list[float] = []

    def committed(left: float) -> list[str]:
        lefts.append(left)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    assert clients.retrying(committed, 30) == ["committed"]
    assert len(lefts) == 3 and all(0 < left <= 30 for left in lefts)
    assert lefts[-1] < lefts[0]  # each try is given what is left of the one timeout

    def broken(left: float) -> None:
        raise ValueError("not Kafka's")

    with pytest.raises(ValueError, match="not Kafka's"):
        clients.retrying(broken, 30)
    assert not clients.transient(KafkaException("a bare string, no error code"))
