"""The worker's Kafka edges around the pipeline: outputs, commits, reads.

* :class:`Outputs` — the one producer (confluent-kafka, idempotent): crossings, DLQ and
  repartition records as the processor emits them, changelog and score records at
  checkpoints. It is the processor's :class:`~scorestream.pipeline.processor.Emitter`
  and the checkpoint's :class:`~scorestream.pipeline.checkpoint.Producer`.
* :class:`FaustCommitter` — commits exactly the offsets a checkpoint gives, through
  Faust's consumer (the group member).
* :class:`Offsets` — committed offsets, watermarks and changelog reads with a consumer
  that never joins the group.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from scorestream import clients
from scorestream import metrics as metrics_mod
from scorestream.engine.scorer import Crossing
from scorestream.errors import KafkaFailure, UsageError
from scorestream.pipeline.checkpoint import GENERATION_HEADER, CheckpointError, RawRecord
from scorestream.pipeline.routing import (
    CHANGELOG,
    DLQ,
    INPUT_TOPICS,
    LEADS,
    REPARTITION,
    SCORES,
)
from scorestream.settings import Settings

#: seconds a checkpoint waits for Kafka to acknowledge its records
FLUSH_TIMEOUT = 60.0
#: seconds each wait for a barrier blocks in librdkafka before it looks again
SERVE_WAIT = 0.05
#: least seconds between two serves of the producer's delivery callbacks by ``poll``:
#: each ``Producer.poll`` gives up the GIL and must win it back from the consumer's
#: thread (up to a switch interval, 5 ms, when that thread is busy), and the worker
#: called it after every batch and every pump (py-spy at 1,000 events/s: 7.7 % of the
#: main thread's samples in that call). The callbacks only record acknowledged
#: changelog offsets and errors, both read after ``flush``, which serves them all.
POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Topology:
    """The real topic names and the partition count the co-partitioned ones share."""

    prefix: str
    partitions: int

    def real(self, name: str) -> str:
        """The real name of a declared topic."""
        return self.prefix + name

    def declared(self, real: str) -> str:
        """The declared name of a real topic (the prefix taken off)."""
        return real[len(self.prefix) :]

    @property
    def consumed(self) -> tuple[str, ...]:
        """Every topic the worker reads (real names)."""
        return tuple(self.real(t) for t in (*INPUT_TOPICS, REPARTITION))

    @classmethod
    def discover(cls, settings: Settings, timeout: float = 15.0) -> Topology:
        """Check that every topic exists and the co-partitioned ones agree; name what is wrong."""
        names = [settings.topic(n) for n in (*INPUT_TOPICS, REPARTITION, CHANGELOG)]
        outputs = [settings.topic(n) for n in (LEADS, SCORES, DLQ)]
        admin = AdminClient(clients.admin(settings))
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception as exc:  # KafkaException: the broker is unreachable
            raise KafkaFailure(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from None
        missing = [t for t in (*names, *outputs) if t not in meta.topics]
        if missing:
            raise UsageError(
                "missing topics: "
                + ", ".join(sorted(missing))
                + " (run `scorestream topics apply`)"
            )
        counts = {t: len(meta.topics[t].partitions) for t in names}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            raise UsageError(
                "input, repartition and changelog topics must have the same partition count: "
                + detail
            )
        return cls(prefix=settings.topic_prefix, partitions=counts[names[0]])


class Outputs:
    """The worker's producer, as the processor's emitter and the checkpoint's producer."""

    def __init__(
        self, settings: Settings, topology: Topology, metrics: metrics_mod.Metrics
    ) -> None:
        self.topology = topology
        self.metrics = metrics
        self.producer = Producer(clients.output_producer(settings))
        self._leads = topology.real(LEADS)
        self._dlq = topology.real(DLQ)
        self._repartition = topology.real(REPARTITION)
        self._changelog = topology.real(CHANGELOG)
        self._errors: list[str] = []
        self._changelog_next: dict[int, int] = {}
        # Barriers (see the checkpoint): records are counted per epoch; a barrier closes
        # the current epoch. Each delivery callback is bound to its record's epoch.
        # Callbacks run in whichever thread polls (the event loop's, or the one waiting
        # in settle), so the acknowledged counts are guarded by a lock.
        self._lock = threading.Lock()
        self._epoch = 0
        self._in_epoch = 0  # records produced in the open epoch (event loop only)
        self._sent: dict[int, int] = {}  # closed epoch -> records produced in it
        self._acked: dict[int, int] = {}  # epoch -> records acknowledged (or failed)
        self._settled_below = 0  # every epoch below it is fully acknowledged
        self._on_delivery = partial(self._delivered, 0)
        self._since_poll = 0
        self._polled_at = 0.0
        self._crossing_counters: dict[tuple[str, str, str], Any] = {}

    # -- emitter

    def crossing(self, crossing: Crossing) -> None:
        """A threshold crossing to ``leads.sales_ready``, keyed by contact."""
        self.produce(
            self._leads, crossing.contact_id.encode(), json.dumps(crossing.to_dict()).encode()
        )
        labels = (crossing.model, crossing.threshold, crossing.direction)
        counter = self._crossing_counters.get(labels)
        if counter is None:
            # labels() takes a lock and checks its arguments on every call: once per
            # combination is enough (a plan has a handful).
            counter = self._crossing_counters[labels] = self.metrics.crossings.labels(*labels)
        counter.inc()

    def dlq(self, record: dict[str, Any]) -> None:
        """An invalid input to ``events.dlq``."""
        self.produce(self._dlq, None, json.dumps(record).encode())
        self.metrics.dlq.labels(record["topic"]).inc()

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        """Work for a partition another worker owns."""
        self.produce(self._repartition, key.encode(), value, partition)

    # -- producer

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce without waiting; on a full local queue, serve callbacks and retry."""
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if partition >= 0:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        self._in_epoch += 1
        self._since_poll += 1
        if self._since_poll >= 256:
            self._since_poll = 0
            producer.poll(0)

    def _delivered(self, epoch: int, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            self._acked[epoch] = self._acked.get(epoch, 0) + 1
            if err is not None:
                self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
                return
            if msg.topic() == self._changelog:
                p = msg.partition()
                nxt = msg.offset() + 1
                if nxt > self._changelog_next.get(p, 0):
                    self._changelog_next[p] = nxt

    # -- barriers (the checkpoint's producer)

    def barrier(self) -> int:
        """A token for every record produced so far: the open epoch closes."""
        epoch = self._epoch
        with self._lock:
            self._sent[epoch] = self._in_epoch
        self._in_epoch = 0
        self._epoch = epoch + 1
        self._on_delivery = partial(self._delivered, epoch + 1)
        return epoch + 1

    def settled(self, token: int) -> bool:
        """Whether every record before ``token`` is acknowledged (or failed: see
        :meth:`settle`). Never waits; callbacks are served by the event loop's polls."""
        with self._lock:
            below = self._settled_below
            sent, acked = self._sent, self._acked
            while below < token and acked.get(below, 0) >= sent[below]:
                del sent[below]
                acked.pop(below, None)
                below += 1
            self._settled_below = below
            return below >= token

    def _raise_errors(self, remaining: int) -> None:
        with self._lock:
            errors = list(self._errors)
            self._errors.clear()
        if remaining or errors:
            raise CheckpointError(
                f"Kafka did not acknowledge {remaining} records: {'; '.join(errors[:5])}"
            )

    def _serve(self, token: int, timeout: float) -> int:
        """Serve delivery callbacks until ``token`` settles; records still unacknowledged
        (in a worker thread: the wait gives up the GIL in librdkafka)."""
        deadline = time.monotonic() + timeout
        while not self.settled(token):
            if time.monotonic() >= deadline:
                with self._lock:
                    return sum(
                        self._sent[e] - self._acked.get(e, 0)
                        for e in range(self._settled_below, token)
                    )
            # flush, not poll: while it runs librdkafka sends at once instead of after
            # linger.ms, and serves callbacks; it returns when the queue is empty or
            # after SERVE_WAIT (the event loop goes on producing meanwhile). Longer
            # waits wake this thread, and take the GIL from the event loop, less often.
            self.producer.flush(SERVE_WAIT)
        return 0

    async def settle(self, token: int) -> None:
        """Wait until every record before ``token`` is acknowledged; raise
        CheckpointError if any failed or they take longer than ``FLUSH_TIMEOUT``."""
        remaining = 0
        if not self.settled(token):
            loop = asyncio.get_running_loop()
            remaining = await loop.run_in_executor(None, self._serve, token, FLUSH_TIMEOUT)
        self._raise_errors(remaining)

    async def flush(self) -> None:
        """Wait until Kafka has every record produced so far."""
        await self.settle(self.barrier())

    def poll(self) -> None:
        """Serve delivery callbacks, unless that was done less than ``POLL_INTERVAL``
        seconds ago."""
        now = time.monotonic()
        if now - self._polled_at >= POLL_INTERVAL:
            self._polled_at = now
            self.producer.poll(0)

    def changelog_end(self, partition: int) -> int:
        """Next changelog offset after our acknowledged records of a partition."""
        return self._changelog_next.get(partition, 0)

    def saw_changelog_end(self, partition: int, offset: int) -> None:
        """Recovery read the changelog up to ``offset``."""
        if offset > self._changelog_next.get(partition, 0):
            self._changelog_next[partition] = offset


class FaustCommitter:
    """Commits through Faust's consumer exactly the offsets given (real topic names)."""

    def __init__(self, app: Any, topology: Topology) -> None:
        self.app = app
        self.topology = topology

    async def commit(self, offsets: Mapping[int, Mapping[str, int]]) -> bool:
        """Commit; False if the group took the partitions meanwhile."""
        from faust.types import TP  # noqa: PLC0415

        real = self.topology.real
        tps = {TP(real(t), p): off for p, per in offsets.items() for t, off in per.items()}
        if not tps:
            return True
        # Faust's own commit() commits acknowledged offsets, and we acknowledge nothing
        # (acks=False): _commit() commits exactly the offsets given.
        consumer: Any = self.app.consumer
        return bool(await consumer._commit(tps))

    def generation(self) -> int:
        """The consumer group generation of the current assignment."""
        return int(self.app.consumer_generation_id or 0)


class Offsets:
    """Committed offsets, watermarks and changelog reads (a consumer outside the group)."""

    def __init__(self, settings: Settings, topology: Topology) -> None:
        self.settings = settings
        self.topology = topology
        self.consumer = Consumer(clients.reader(settings, settings.app_id))

    def committed(self, partitions: list[int]) -> dict[int, dict[str, int]]:
        """Per partition, the committed offset of each consumed topic (declared names);
        the log start where nothing is committed."""
        topo = self.topology
        tps = [TopicPartition(t, p) for p in partitions for t in topo.consumed]
        out: dict[int, dict[str, int]] = {p: {} for p in partitions}
        if not tps:
            return out
        # Asked again on transient errors: a worker started right after `topics apply`
        # can meet partitions whose leader is still being elected, and must not exit.
        found = clients.retrying(lambda left: self.consumer.committed(tps, timeout=left), 30)
        for tp in found:
            offset = tp.offset
            if offset == OFFSET_INVALID or offset < 0:
                offset, _ = clients.watermarks(
                    self.consumer, TopicPartition(tp.topic, tp.partition), 30
                )
            out[tp.partition][topo.declared(tp.topic)] = offset
        return out

    def end(self, topic: str, partition: int) -> int:
        """The high watermark of a topic-partition (real name), fresh from the broker."""
        _, high = clients.watermarks(self.consumer, TopicPartition(topic, partition), 10)
        return high

    def changelog(self, partition: int, start: int) -> tuple[Iterator[RawRecord], int]:
        """The changelog records of a partition from ``start`` (or the log start) to its end."""
        return self.read_range(self.topology.real(CHANGELOG), partition, start, None)

    def read_range(
        self, topic: str, partition: int, start: int, end: int | None
    ) -> tuple[Iterator[RawRecord], int]:
        """Records of a topic-partition (real name) from ``start`` (or the log start) to
        ``end`` (None: its end now); returns them lazily and the offset read up to."""
        reader = Consumer(clients.reader(self.settings, f"{self.settings.app_id}-recovery"))
        low, high = clients.watermarks(reader, TopicPartition(topic, partition), 30)
        if end is not None:
            high = min(high, end)
        first = max(start, low)
        if first >= high:
            reader.close()
            return iter(()), high

        def records() -> Iterator[RawRecord]:
            try:
                reader.assign([TopicPartition(topic, partition, first)])
                position = first
                empty = 0
                while position < high:
                    # consume() returns once it has num_messages or at the timeout: asking
                    # for no more than are left, and waiting briefly, keeps the end of a
                    # partition (and gaps left by compaction) from costing a second each.
                    want = max(1, min(5000, high - position))
                    batch = reader.consume(num_messages=want, timeout=0.1)
                    empty = 0 if batch else empty + 1
                    if empty >= 600:
                        raise KafkaFailure(
                            f"reading {topic}[{partition}]: nothing after offset {position} "
                            f"for 60 s, end is {high}"
                        )
                    # Lean on purpose: recovery reads every record of the partition.
                    for msg in batch:
                        if msg.error():
                            raise KafkaFailure(f"reading {topic}[{partition}]: {msg.error()}")
                        offset = msg.offset() or 0
                        if offset >= high:
                            return
                        generation = 0
                        for header in msg.headers() or ():
                            if header[0] == GENERATION_HEADER:
                                generation = int(header[1] or b"0")
                        yield offset, msg.key() or b"", msg.value(), generation
                    if batch:
                        position = (batch[-1].offset() or 0) + 1
            finally:
                reader.close()

        return records(), high

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()
