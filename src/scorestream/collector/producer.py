"""The collector's ``acks=all`` producer, bridged to asyncio.

confluent-kafka reports deliveries from ``poll()``; a thread polls and wakes the event
loop once per request (not once per event) when the last event of that request has its
delivery report. A request learns, per event, whether Kafka acknowledged it.

"Kafka cannot take writes" is known without waiting: librdkafka reports when every
broker is down, and its statistics (every second) say when one is up again; until
then the collector answers 503 at once. While a broker is up, a delivery report comes
at the latest after ``message.timeout.ms``. The events Kafka has not acknowledged yet are
counted; the collector admits no more than its bound (503 beyond it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

_log = logging.getLogger(__name__)
# librdkafka logs every refused connection while a broker restarts: expected, and the
# collector reports the state itself (gauge, log line on each change).
_kafka_log = logging.getLogger("scorestream.collector.librdkafka")
_kafka_log.addHandler(logging.NullHandler())
_kafka_log.propagate = False

#: errors that say the event itself can never be written (retrying cannot help)
PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one record: acknowledged, or an error (permanent or not)."""

    ok: bool
    error: str = ""
    permanent: bool = False


OK = Outcome(True)


class Sender(Protocol):
    """What the HTTP layer needs from Kafka (the real bridge, or a test double)."""

    @property
    def writable(self) -> bool:
        """False while no broker can take writes."""

    @property
    def in_flight(self) -> int:
        """Records produced and not yet reported."""

    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[Outcome]:
        """Produce ``(topic, key, value)`` records; return each one's outcome."""


class _Pending:
    """The delivery reports of one request, gathered on the polling thread."""

    __slots__ = ("bridge", "done", "expected", "future", "lock", "loop", "outcomes")

    def __init__(self, bridge: KafkaBridge, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.bridge = bridge
        self.outcomes: list[Outcome | None] = [None] * size
        self.expected = -1  # set once every record was handed to librdkafka
        self.done = 0
        self.lock = threading.Lock()
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def report(self, index: int, err: KafkaError | None, _msg: Message) -> None:
        """librdkafka's delivery callback (polling thread)."""
        if err is None:
            self.outcomes[index] = OK
            self.bridge.saw_delivery()
        else:
            self.outcomes[index] = Outcome(False, err.str(), err.code() in PERMANENT)
        with self.lock:
            self.done += 1
            finished = self.done == self.expected
        if finished:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def sealed(self, produced: int) -> None:
        """Every record was handed over (``produced`` of them to librdkafka)."""
        with self.lock:
            self.expected = produced
            finished = self.done == produced
        if finished:
            _resolve(self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class KafkaBridge:
    """An idempotent ``acks=all`` producer whose deliveries resolve asyncio futures."""

    def __init__(self, conf: dict[str, Any], *, max_in_flight: int, timeout: float) -> None:
        self._conf = {
            **conf,
            "error_cb": self._on_error,
            "stats_cb": self._on_stats,
            "logger": _kafka_log,
        }
        self._max_in_flight = max_in_flight
        # librdkafka reports within message.timeout.ms; this only guards against a bug.
        self._guard = timeout + 30.0
        self._producer = Producer(self._conf)
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._down = False
        self._fatal = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="collector-poll", daemon=True)
        self.state_changes = 0

    # -- state -------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """False while every broker is down (or the producer must be replaced)."""
        return not self._down and not self._fatal

    @property
    def in_flight(self) -> int:
        """Records produced and not yet reported."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The bound on :attr:`in_flight`."""
        return self._max_in_flight

    def _set_down(self, down: bool, why: str) -> None:
        if down != self._down:
            self._down = down
            self.state_changes += 1
            if down:
                _log.warning("collector: Kafka cannot take writes (%s): answering 503", why)
            else:
                _log.warning("collector: Kafka takes writes again (%s)", why)

    def saw_delivery(self) -> None:
        """A record was acknowledged: a broker is up."""
        if self._down:
            self._set_down(False, "a delivery was acknowledged")

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            _log.error("collector: fatal producer error, replacing the producer: %s", err)
            self._fatal = True
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_down(True, err.str())

    def _on_stats(self, raw: str) -> None:
        if not self._down:
            return
        try:
            brokers = json.loads(raw).get("brokers", {})
        except ValueError:
            return
        # Bootstrap entries have nodeid -1; a learned broker that is UP can take writes.
        if any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values()):
            self._set_down(False, "a broker is up")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the polling thread."""
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            producer.poll(0.05)
            if self._fatal:
                self._replace(producer)

    def _replace(self, old: Producer) -> None:
        # After a fatal error librdkafka fails every queued record with it; report them
        # (each request answers 503), then go on with a new producer.
        deadline = time.monotonic() + 10.0
        while len(old) > 0 and time.monotonic() < deadline:
            old.poll(0.05)
        old.purge()
        old.poll(0)
        self._producer = Producer(self._conf)
        self._fatal = False
        _log.warning("collector: new producer in place")

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout`` s), stop polling; return what is left."""
        left = int(self._producer.flush(timeout))
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        return left

    # -- sending -----------------------------------------------------------------------

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._in_flight += delta

    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[Outcome]:
        """Produce the records; wait until each has its delivery report."""
        pending = _Pending(self, len(records), asyncio.get_running_loop())
        producer = self._producer
        produced = 0
        self._count(len(records))
        try:
            for i, (topic, key, value) in enumerate(records):
                try:
                    producer.produce(topic, value, key, on_delivery=partial(pending.report, i))
                    produced += 1
                except BufferError:
                    pending.outcomes[i] = Outcome(False, "the producer's queue is full")
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    code = err.code() if isinstance(err, KafkaError) else None
                    pending.outcomes[i] = Outcome(False, str(exc), code in PERMANENT)
            pending.sealed(produced)
            try:
                await asyncio.wait_for(asyncio.shield(pending.future), self._guard)
            except TimeoutError:
                _log.error("collector: no delivery report within %.0f s", self._guard)
        finally:
            self._count(-len(records))
        return [
            o if o is not None else Outcome(False, "no delivery report") for o in pending.outcomes
        ]
