"""Kafka client settings are built in one place; secrets reach clients, never logs."""

from __future__ import annotations

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
