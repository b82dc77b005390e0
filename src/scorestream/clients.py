"""Every Kafka client's settings, built in one place.

The worker's producer and consumers, the Faust app, ``simulate``, ``leads``, ``topics``
and the broker check all take their configuration from here, so security settings reach
every client and a change of defaults happens once. Secrets are passed to the clients
and never printed: :func:`redacted` is what may go to a log.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from scorestream.settings import Settings

#: librdkafka options whose values are secrets
SECRET_OPTIONS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})


def base(settings: Settings, logger: logging.Logger | None = None) -> dict[str, Any]:
    """Bootstrap servers and security, in librdkafka (confluent-kafka) spelling."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap, **settings.kafka_security()}
    if logger is not None:
        conf["logger"] = logger
    return conf


def output_producer(settings: Settings) -> dict[str, Any]:
    """The worker's producer: outputs, changelog and repartition records.

    Idempotent (no duplicates or reordering from its own retries), lz4 batches, large
    enough for changelog records of big states, and the Java client's partitioner so a
    key lands where the Java client (and our routing) puts it.
    """
    return {
        **base(settings),
        "enable.idempotence": True,
        # Measured (README, Benchmarks): 10 ms instead of 2 cut the broker's CPU by a
        # third with two workers exchanging hand-overs, for about 7 ms more median latency.
        "linger.ms": settings.producer_linger_ms,
        "compression.type": "lz4",
        "message.max.bytes": 4_194_304,
        "partitioner": "murmur2_random",
    }


def event_producer(settings: Settings) -> dict[str, Any]:
    """A producer of input events keyed as the contract says (``simulate``, tests).

    Idempotent because order matters: without it librdkafka may retry an early batch
    after later ones (seen here on freshly created topics), and a contact's events then
    sit in Kafka in another order than they were sent.
    """
    return {
        **base(settings),
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "enable.idempotence": True,
    }


def collector_producer(settings: Settings) -> dict[str, Any]:
    """The HTTP collector's producer (``scorestream collect``).

    It answers a browser only once Kafka has the events, so: ``acks=all``, idempotent
    (retries after a broker restart neither duplicate nor reorder what was accepted), the
    Java client's partitioner (a contact's events land where its state is). A delivery
    report comes at the latest after ``COLLECTOR_PRODUCE_TIMEOUT``; then the collector
    answers 503. Statistics every second tell it when a broker is reachable again.
    """
    return {
        **base(settings),
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        # Every answer waits for its acknowledgement, so a linger would add to each one;
        # requests still batch while earlier ones are in flight (bench/collector_bench.py:
        # batches of 20 went 4,500-5,600 events/s with 2 ms, 6,600-9,400 with 0).
        "linger.ms": 0,
        "message.timeout.ms": max(1, int(settings.collector_produce_timeout * 1000)),
        # librdkafka's own queue must hold at least what the collector lets in flight.
        "queue.buffering.max.messages": max(100_000, 2 * settings.collector_max_in_flight),
        "statistics.interval.ms": 1000,
    }


def reader(
    settings: Settings, group_id: str, logger: logging.Logger | None = None
) -> dict[str, Any]:
    """A consumer that never joins its group nor commits: offsets, watermarks, topic reads."""
    return {
        **base(settings, logger),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


def board_reader(
    settings: Settings, group_id: str, logger: logging.Logger | None = None
) -> dict[str, Any]:
    """The lead board's consumer of ``contacts.scores`` and ``leads.sales_ready``.

    A :func:`reader` (no group membership, no commits) that answers a fetch after at
    most 100 ms rather than librdkafka's 500, so a crossing reaches the open pages
    quickly, and that prefetches about 16 MiB (librdkafka's default is 64 MiB): the
    board reads the whole compacted topic at start and need not buffer much of it.
    """
    return {
        **reader(settings, group_id, logger),
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 16_384,
    }


def admin(settings: Settings, logger: logging.Logger | None = None) -> dict[str, Any]:
    """An AdminClient's configuration."""
    return base(settings, logger)


def faust_brokers(settings: Settings) -> list[str]:
    """Bootstrap servers as Faust URLs (aiokafka transport)."""
    return [f"kafka://{hp.strip()}" for hp in settings.bootstrap.split(",") if hp.strip()]


def faust_credentials(settings: Settings) -> Any:
    """Faust's credentials object for the configured security protocol (None: plaintext)."""
    import faust  # noqa: PLC0415 (only the worker pays for importing Faust)

    proto = settings.security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    context = None
    if proto in {"SSL", "SASL_SSL"}:
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    if proto == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        mechanism=settings.sasl_mechanism or "PLAIN",
        ssl_context=context,
    )


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A configuration fit for a log line: secrets replaced, loggers left out."""
    return {
        key: ("***" if key in SECRET_OPTIONS else value)
        for key, value in conf.items()
        if key != "logger"
    }
