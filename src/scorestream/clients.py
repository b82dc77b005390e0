"""Every Kafka client's settings, built in one place.

The worker's producer and consumers, the Faust app, ``simulate``, ``leads``, ``topics``
and the broker check all take their configuration from here, so security settings reach
every client and a change of defaults happens once. Secrets are passed to the clients
and never printed: :func:`redacted` is what may go to a log.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

from scorestream.settings import Settings

#: librdkafka options whose values are secrets
SECRET_OPTIONS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})
#: pause before asking again after a transient Kafka error (s)
RETRY_PAUSE = 0.1

T = TypeVar("T")


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


def _transient_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError  # noqa: PLC0415 (slow import, not every command needs it)

    return frozenset(
        {
            KafkaError.NOT_LEADER_FOR_PARTITION,
            KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError.NOT_COORDINATOR,
            KafkaError._TRANSPORT,  # librdkafka: the connection broke
        }
    )


def transient(exc: BaseException) -> bool:
    """True for a ``KafkaException`` that asking again can cure (a partition or the
    group coordinator changing hands, a broken connection)."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    if not hasattr(error, "code"):
        return False
    # confluent-kafka marks these calls' errors retriable only sometimes: the codes a
    # partition changing hands gives are named as well.
    return bool(error.retriable()) or error.code() in _transient_codes()


def retrying(call: Callable[[float], T], timeout: float) -> T:
    """``call(seconds_left)``, asked again on transient Kafka errors until ``timeout``.

    Why: a topic created moments before can answer "Not leader for partition" although
    the metadata already names a leader (the broker is still taking it over). A worker,
    board or rescore started right after ``topics apply`` must not give up on that;
    other errors, and the last one at the deadline, are raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            if not transient(exc) or time.monotonic() + RETRY_PAUSE >= deadline:
                raise
            time.sleep(RETRY_PAUSE)


def watermarks(
    consumer: Any, partition: Any, timeout: float, *, cached: bool = False
) -> tuple[int, int]:
    """A partition's (low, high) offsets through a confluent-kafka ``consumer``, asked
    again on transient errors for up to ``timeout`` seconds (see :func:`retrying`)."""

    def ask(left: float) -> tuple[int, int]:
        low, high = consumer.get_watermark_offsets(partition, timeout=left, cached=cached)
        return int(low), int(high)

    return retrying(ask, timeout)
