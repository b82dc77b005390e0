"""``scorestream worker``: the Faust app around the :class:`~scorestream.app.processor.Processor`.

Thin on purpose. Faust (aiokafka transport) provides the consumer group, partition
assignment, the agent that feeds messages in order, timers and the web server. State is
ours: one RocksDB per partition plus the compacted ``scorestream.state-changelog``
topic, written at checkpoints rather than per event, because a Faust table write costs
a changelog record per event (see README, "Design: state and checkpoints").

A checkpoint, every ``checkpoint_interval`` seconds and on revocation and shutdown:

1. snapshot the changed contacts of every partition and the offsets processed so far;
2. produce their states to the changelog (headers: the offsets vector and the consumer
   generation) and their scores to ``contacts.scores``;
3. flush the producer — crossings, DLQ and repartition messages produced since the last
   checkpoint are acknowledged by Kafka too;
4. commit those offsets;
5. write the states to RocksDB with the changelog offset they correspond to.

The input topics are consumed with ``acks=False``: Faust never commits on its own, so the
committed offsets are always a checkpoint's, and Faust's seek-to-committed on assignment
resumes exactly after the state we recover.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from faust.sensors.monitor import Monitor
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scorestream import metrics as metrics_mod
from scorestream.app.processor import Processor, dlq_record
from scorestream.app.routing import Envelope, partition_for
from scorestream.app.store import PartitionStore
from scorestream.engine.rules import RulesError, RuleSet, load_rules
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, parse_ts
from scorestream.errors import EXIT_FAILURE, UsageError
from scorestream.settings import Settings

log = logging.getLogger("scorestream.worker")

INPUT_TOPICS = (
    "events.page_view",
    "events.email",
    "events.form",
    "events.cart",
    "events.custom",
    "contacts.profile",
)
REPARTITION = "scorestream.repartition"
CHANGELOG = "scorestream.state-changelog"
LEADS = "leads.sales_ready"
SCORES = "contacts.scores"
DLQ = "events.dlq"


#: contacts encoded between two yields to the event loop during a checkpoint
CHECKPOINT_CHUNK = 200
#: states written to RocksDB per batch at the end of a checkpoint
LOCAL_WRITE_CHUNK = 2000


class CheckpointError(RuntimeError):
    """Kafka did not acknowledge a checkpoint's records: stop rather than commit."""


@dataclass(frozen=True, slots=True)
class Topology:
    """The real topic names and the partition count they share."""

    inputs: tuple[str, ...]
    repartition: str
    changelog: str
    leads: str
    scores: str
    dlq: str
    partitions: int

    @property
    def consumed(self) -> tuple[str, ...]:
        """Every topic the agent reads."""
        return (*self.inputs, self.repartition)

    @classmethod
    def discover(cls, settings: Settings, timeout: float = 15.0) -> Topology:
        """Check that every topic exists and the co-partitioned ones agree; name what is wrong."""
        names = {
            n: settings.topic(n)
            for n in (*INPUT_TOPICS, REPARTITION, CHANGELOG, LEADS, SCORES, DLQ)
        }
        admin = AdminClient({"bootstrap.servers": settings.bootstrap, **settings.kafka_security()})
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception as exc:  # KafkaException: the broker is unreachable
            raise ConnectionError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from None
        missing = [real for real in names.values() if real not in meta.topics]
        if missing:
            raise UsageError(
                "missing topics: "
                + ", ".join(sorted(missing))
                + " (run `scorestream topics apply`)"
            )
        group = [names[n] for n in (*INPUT_TOPICS, REPARTITION, CHANGELOG)]
        counts = {t: len(meta.topics[t].partitions) for t in group}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            raise UsageError(
                "input, repartition and changelog topics must have the same partition count: "
                + detail
            )
        return cls(
            inputs=tuple(names[n] for n in INPUT_TOPICS),
            repartition=names[REPARTITION],
            changelog=names[CHANGELOG],
            leads=names[LEADS],
            scores=names[SCORES],
            dlq=names[DLQ],
            partitions=counts[names[REPARTITION]],
        )


def _faust_credentials(settings: Settings) -> Any:
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


class QuietMonitor(Monitor):
    """Faust's monitor without its per-message bookkeeping.

    Faust records timings for every message and stream event (for its own web stats,
    which we do not serve); that costs several percent of the worker's CPU. Our metrics
    are in :mod:`scorestream.metrics`. Rebalance, commit and send hooks stay as Faust has them.
    """

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        return None


class KafkaEmitter:
    """Outputs of the processor, produced with confluent-kafka (librdkafka, idempotent)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def crossing(self, crossing: Crossing) -> None:
        rt = self.rt
        rt.produce(
            rt.topology.leads, crossing.contact_id.encode(), json.dumps(crossing.to_dict()).encode()
        )
        rt.metrics.crossings.labels(crossing.model, crossing.threshold, crossing.direction).inc()

    def dlq(self, record: dict[str, Any]) -> None:
        rt = self.rt
        rt.produce(rt.topology.dlq, None, json.dumps(record).encode())
        rt.metrics.dlq.labels(record["topic"]).inc()

    def repartition(self, partition: int, key: str, envelope: Envelope) -> None:
        rt = self.rt
        rt.produce(rt.topology.repartition, key.encode(), envelope.encode(), partition=partition)


class Runtime:
    """Everything one worker process holds: settings, engine, processor, Kafka clients, app."""

    def __init__(self, settings: Settings, rules: RuleSet, topology: Topology) -> None:
        self.settings = settings
        self.topology = topology
        self.metrics = metrics_mod.create()
        self.engine = Engine(rules)
        kafka = {"bootstrap.servers": settings.bootstrap, **settings.kafka_security()}
        self.producer = Producer(
            {
                **kafka,
                "enable.idempotence": True,
                "linger.ms": 2,
                "compression.type": "lz4",
                "message.max.bytes": 4_194_304,
                "partitioner": "murmur2_random",  # Java-compatible: keys land where Java puts them
            }
        )
        self._committed_reader = Consumer(
            {**kafka, "group.id": settings.app_id, "enable.auto.commit": False}
        )
        self._kafka = kafka
        self.processor = Processor(
            self.engine,
            topology.partitions,
            topology.repartition,
            KafkaEmitter(self),
            max_bytes=settings.max_message_bytes,
            lateness=settings.lateness,
            idle_timeout=settings.idle_timeout,
        )
        self.stores: dict[int, PartitionStore] = {}
        self.state_root = Path(settings.state_dir) / settings.app_id
        self.ready = False
        self._delivery_errors: list[str] = []
        self._changelog_next: dict[int, int] = {}
        self._ckpt_lock = asyncio.Lock()
        self._outcome_counters: dict[tuple[str, str], Any] = {}
        self._since_poll = 0
        self._frozen = False
        self.app = self._build_app()

    # ------------------------------------------------------------------ Kafka output

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce without waiting; on a full local queue, serve callbacks and retry."""
        kwargs: dict[str, Any] = {"on_delivery": self._delivered}
        if partition >= 0:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            return
        if msg.topic() == self.topology.changelog:
            p = msg.partition()
            nxt = msg.offset() + 1
            if nxt > self._changelog_next.get(p, 0):
                self._changelog_next[p] = nxt

    # ------------------------------------------------------------------ processing

    def on_message(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        """Called by the agent for every message, in partition order."""
        start = time.perf_counter()
        try:
            wall = time.time()
            outcome = self.processor.handle(topic, partition, offset, value, wall)
            if outcome == "applied":
                self.metrics.event_delay.observe(wall - self.processor.last_ts / US_PER_SECOND)
        except Exception as exc:  # a bug must not stop the service: keep the message, say why
            log.exception("internal error on %s[%d]@%d", topic, partition, offset)
            self.processor.emit.dlq(
                dlq_record(topic, partition, offset, value or b"", f"internal error: {exc!r}")
            )
            outcome = "error"
        counter = self._outcome_counters.get((topic, outcome))
        if counter is None:
            counter = self._outcome_counters[(topic, outcome)] = self.metrics.events.labels(
                topic, outcome
            )
        counter.inc()
        self.metrics.processing.observe(time.perf_counter() - start)
        self._since_poll += 1
        if self._since_poll >= 256:
            self._since_poll = 0
            self.producer.poll(0)

    async def checkpoint(self) -> None:
        """Make everything processed so far durable (see the module docstring).

        Encoding the changed states is the only part that needs the event loop; it runs in
        chunks with the loop free between them, so a checkpoint does not stall processing
        (and the latency of crossings) for its whole length. Each chunk's changelog
        records carry the offsets processed when the chunk was encoded; the commit is of
        the offsets at the start, which every record includes, and the local RocksDB
        marker stays before this checkpoint's records so that a recovery reads them (and
        their offsets) again.
        """
        async with self._ckpt_lock:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        start = time.perf_counter()
        proc = self.processor
        parts = sorted(proc.parts)
        commit_at = {p: proc.vector(p) for p in parts}
        keys = {p: proc.take_dirty(p) for p in parts}
        marks = {p: self._changelog_next.get(p, 0) for p in parts}
        generation = str(self.app.consumer_generation_id).encode()
        encoded: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in parts}
        blocking = time.perf_counter() - start
        for p in parts:
            todo = keys[p]
            for i in range(0, len(todo), CHECKPOINT_CHUNK):
                chunk_start = time.perf_counter()
                headers = [("v", json.dumps(proc.vector(p)).encode()), ("g", generation)]
                for key in todo[i : i + CHECKPOINT_CHUNK]:
                    value, score = proc.encode(p, key)
                    raw_key = key.encode()
                    self.produce(self.topology.changelog, raw_key, value, p, headers)
                    if score is not None:
                        self.produce(self.topology.scores, raw_key, score)
                    encoded[p].append((raw_key, value))
                blocking += time.perf_counter() - chunk_start
                await asyncio.sleep(0)  # let messages through between chunks
        records = sum(len(v) for v in encoded.values())
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(None, self.producer.flush, 60.0)
        if remaining or self._delivery_errors:
            errors = "; ".join(self._delivery_errors[:5])
            raise CheckpointError(f"Kafka did not acknowledge {remaining} records: {errors}")
        offsets = {TP(topic, p): offset for p in parts for topic, offset in commit_at[p].items()}
        # Faust's own commit() commits acked offsets, and we ack nothing (acks=False):
        # _commit() commits exactly the offsets given.
        consumer: Any = self.app.consumer
        committed = (await consumer._commit(offsets)) if offsets else True
        if not committed:
            # A rebalance took the partitions: the changelog is ahead of the committed
            # offsets, which recovery handles; the states stay dirty for the local write.
            for p in parts:
                self.stores[p].settle(keys[p], written=False)
            self.metrics.checkpoints.labels("not_committed").inc()
            return
        for p in parts:
            store = self.stores[p]
            items = encoded[p]
            meta = {
                "changelog_offset": marks[p],
                "vector": commit_at[p],
                "generation": int(generation),
            }
            for i in range(0, max(len(items), 1), LOCAL_WRITE_CHUNK):
                write_start = time.perf_counter()
                store.write(items[i : i + LOCAL_WRITE_CHUNK], meta)
                blocking += time.perf_counter() - write_start
                await asyncio.sleep(0)
            store.settle(keys[p], written=True)
        self.metrics.checkpoint_blocking.observe(blocking)
        self.metrics.checkpoints.labels("ok").inc()
        self.metrics.checkpoint_records.inc(records)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - start)
        self.metrics.contacts_cached.set(sum(s.cached for s in self.stores.values()))

    def tick(self) -> None:
        """Timers and decay of idle contacts; the watermark gauges."""
        touched = self.processor.tick(time.time())
        if touched:
            self.metrics.timers_fired.inc(touched)
        for p, ps in self.processor.parts.items():
            self.metrics.watermark.labels(str(p)).set(ps.watermark / US_PER_SECOND)

    # ------------------------------------------------------------------ rebalancing

    async def on_revoked(self, revoked: Iterable[TP]) -> None:
        """Before partitions go: checkpoint everything, then let them go."""
        self.ready = False
        self.metrics.ready.set(0)
        async with self._ckpt_lock:
            if self.processor.parts:
                await self._checkpoint()
            for p in list(self.processor.parts):
                self.processor.release(p)
        self.metrics.partitions.set(0)

    async def on_assigned(self, assignment: Iterable[TP]) -> None:
        """After assignment, before Faust resumes fetching: recover our partitions."""
        async with self._ckpt_lock:  # never while a checkpoint is using the stores
            await self._on_assigned(assignment)

    async def _on_assigned(self, assignment: Iterable[TP]) -> None:
        consumed = set(self.topology.consumed)
        mine = {tp.partition for tp in assignment if tp.topic in consumed}
        have = {(tp.topic, tp.partition) for tp in assignment}
        split = sorted(p for p in mine if any((t, p) not in have for t in consumed))
        if split:
            # Would split a contact's events between workers: refuse rather than corrupt.
            raise RuntimeError(f"partitions {split} are not co-partitioned in this assignment")
        for p in list(self.stores):
            if p not in mine:
                self.processor.release(p)
                self.stores.pop(p).close()
        loop = asyncio.get_running_loop()
        committed = await loop.run_in_executor(None, self._committed, sorted(mine))
        for p in sorted(mine):
            start = time.perf_counter()
            store, ahead, n = await loop.run_in_executor(None, self._recover, p, committed[p])
            self.stores[p] = store
            self.processor.assign(p, store, committed[p], ahead, wall=time.time())
            self.metrics.recovery_seconds.observe(time.perf_counter() - start)
            self.metrics.recovered_records.inc(n)
            if n:
                log.info(
                    "partition %d: recovered %d changelog records (%d ahead)", p, n, len(ahead)
                )
        self.metrics.partitions.set(len(mine))
        if not self._frozen:
            # Everything alive now (modules, Faust's services, recovered states) lives as
            # long as the process: keep it out of the cyclic GC's full collections, whose
            # pauses were the tail of our latency. Once only: later cycles stay collectable.
            gc.collect()
            gc.freeze()
            self._frozen = True
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: partitions %s", sorted(mine))

    def _committed(self, partitions: list[int]) -> dict[int, dict[str, int]]:
        """Committed offsets of the consumed topics (the log start where none is committed)."""
        tps = [TopicPartition(t, p) for p in partitions for t in self.topology.consumed]
        out: dict[int, dict[str, int]] = {p: {} for p in partitions}
        if not tps:
            return out
        for tp in self._committed_reader.committed(tps, timeout=30):
            offset = tp.offset
            if offset == OFFSET_INVALID or offset < 0:
                low, _ = self._committed_reader.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=30
                )
                offset = low
            out[tp.partition][tp.topic] = offset
        return out

    def _recover(
        self, partition: int, committed: dict[str, int]
    ) -> tuple[PartitionStore, dict[str, dict[str, int]], int]:
        """Bring partition's RocksDB up to the changelog's end (runs in a thread)."""
        store = self.stores.get(partition)
        if store is None:
            store = PartitionStore(
                self.state_root / f"p{partition}",
                block_cache_mb=self.settings.rocksdb_block_cache_mb,
                cache_size=max(
                    1000, self.settings.cache_contacts // max(1, self.topology.partitions)
                ),
            )
        changelog = self.topology.changelog
        reader = Consumer(
            {
                **self._kafka,
                "group.id": f"{self.settings.app_id}-recovery",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            low, high = reader.get_watermark_offsets(
                TopicPartition(changelog, partition), timeout=30
            )
            start = max(int(store.meta().get("changelog_offset", 0)), low)
            ahead: dict[str, dict[str, int]] = {}
            if start >= high:
                self._changelog_next[partition] = max(self._changelog_next.get(partition, 0), high)
                return store, ahead, 0
            reader.assign([TopicPartition(changelog, partition, start)])
            applied = 0
            newest_generation = -1
            position = start
            # The local marker must not pass a record that is ahead of the committed
            # offsets: a crash before the next checkpoint needs to read it (and its offsets)
            # again.
            first_ahead: int | None = None
            while position < high:
                batch: list[tuple[bytes, bytes | None]] = []
                for msg in reader.consume(num_messages=5000, timeout=1.0):
                    if msg.error():
                        raise RuntimeError(f"reading {changelog}[{partition}]: {msg.error()}")
                    position = (msg.offset() or 0) + 1
                    headers = dict(msg.headers() or [])
                    generation = int(headers.get("g") or b"0")
                    if generation < newest_generation:
                        continue  # written by a worker that had already lost the partition
                    newest_generation = generation
                    key = msg.key() or b""
                    batch.append((key, msg.value()))
                    vector = json.loads(headers.get("v") or b"{}")
                    contact = key.decode("utf-8")
                    if any(off > committed.get(topic, 0) for topic, off in vector.items()):
                        ahead[contact] = vector
                        if first_ahead is None:
                            first_ahead = position - 1
                    else:
                        ahead.pop(contact, None)
                if batch:
                    marker = position if first_ahead is None else first_ahead
                    store.apply_changelog(batch, {"changelog_offset": marker})
                    applied += len(batch)
            self._changelog_next[partition] = max(self._changelog_next.get(partition, 0), position)
            if applied:
                store.drop_cache()
            return store, ahead, applied
        finally:
            reader.close()

    # ------------------------------------------------------------------ Faust app

    def _build_app(self) -> faust.App:
        s = self.settings
        (Path(s.state_dir) / "faust").mkdir(parents=True, exist_ok=True)
        brokers = [f"kafka://{hp.strip()}" for hp in s.bootstrap.split(",") if hp.strip()]
        app = faust.App(
            s.app_id,
            broker=brokers,
            broker_credentials=_faust_credentials(s),
            store="memory://",
            datadir=str(Path(s.state_dir) / "faust"),
            web_enabled=True,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            canonical_url=f"http://{s.web_host}:{s.web_port}",
            web_tables_enabled=False,
            topic_disable_leader=True,
            Monitor=QuietMonitor,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            # Not for standbys (we have no Faust tables): with 0, Faust falls back to
            # aiokafka's round-robin assignor, which does not keep partition p of every
            # topic on one worker. Faust's own assignor co-partitions them.
            table_standby_replicas=1,
            stream_wait_empty=False,
            logging_config=None,
        )
        runtime = self
        channel = app.topic(
            *self.topology.consumed,
            key_serializer="raw",
            value_serializer="raw",
            acks=False,
        )

        @app.agent(channel, concurrency=1, name="score")
        async def score(stream: Any) -> None:
            on_message = runtime.on_message
            async for event in stream.events():
                msg = event.message
                on_message(msg.topic, msg.partition, msg.offset, msg.value)

        # faust's decorators are untyped; going through Any keeps mypy strict elsewhere
        timer: Any = app.timer

        async def checkpoint() -> None:
            if runtime.ready and runtime.processor.parts:
                await runtime.checkpoint()

        timer(s.checkpoint_interval)(checkpoint)

        async def tick() -> None:
            if runtime.ready:
                runtime.tick()

        timer(s.tick_interval)(tick)

        async def lag() -> None:
            if runtime.ready:
                await asyncio.get_running_loop().run_in_executor(None, runtime.update_lag)

        timer(10.0)(lag)

        async def watch_loop() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.05)
                late = time.perf_counter() - before - 0.05
                runtime.metrics.loop_lag.observe(max(0.0, late))
                if late > 0.2:
                    log.warning("event loop stalled for %.0f ms", late * 1000)

        app.task(watch_loop)

        signals: Any = app

        async def revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            await runtime.on_revoked(revoked)

        signals.on_partitions_revoked.connect(revoked)

        async def complete(sender: Any, **kwargs: Any) -> None:
            await runtime.on_assigned(sender.consumer.assignment())

        signals.on_rebalance_complete.connect(complete)

        async def shutdown(sender: Any, **kwargs: Any) -> None:
            if runtime.processor.parts:
                await runtime.checkpoint()
            for store in runtime.stores.values():
                store.close()
            runtime.stores.clear()

        signals.on_before_shutdown.connect(shutdown)

        _add_views(app, runtime)
        return app

    def update_lag(self) -> None:
        """Consumer lag per consumed partition (end offset - next offset to process)."""
        for p, ps in list(self.processor.parts.items()):
            for topic in self.topology.consumed:
                try:
                    _, high = self._committed_reader.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=5, cached=False
                    )
                except Exception:  # a slow broker must not stop the worker
                    continue
                self.metrics.consumer_lag.labels(topic, str(p)).set(
                    max(0, high - ps.applied.get(topic, 0))
                )


def _owner_url(app: faust.App, runtime: Runtime, key: str) -> str | None:
    """The web address of the worker that owns ``key``'s partition, from the assignment."""
    partition = partition_for(key, runtime.topology.partitions)
    topic = runtime.topology.repartition
    assignor: Any = app.assignor
    for url, topics in assignor.external_topics_metadata().items():
        if partition in topics.get(topic, ()):
            return str(url)
    return None


def _add_views(app: faust.App, runtime: Runtime) -> None:
    own_url = str(app.conf.canonical_url).rstrip("/")

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            if runtime.ready:
                return self.json({"status": "ready", "partitions": sorted(runtime.processor.parts)})
            return self.json({"status": "starting"}, status=503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(runtime.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            parts = {
                str(p): {
                    "applied": ps.applied,
                    "watermark": ps.watermark,
                    "scheduled": len(ps.scheduled),
                    "ahead": len(ps.ahead),
                }
                for p, ps in runtime.processor.parts.items()
            }
            return self.json(
                {
                    "ready": runtime.ready,
                    "partitions": parts,
                    "rules_version": runtime.engine.rules.version,
                }
            )

    @app.page("/contacts/{contact_id}")
    class ContactView(View):
        async def get(self, request: Request, contact_id: str) -> Response:
            state = runtime.processor.lookup(contact_id)
            if state is None and not request.query.get("local"):
                owner = _owner_url(app, runtime, contact_id)
                if owner is None:
                    return self.json({"error": "no owner known (rebalancing?)"}, status=503)
                if owner.rstrip("/") != own_url:
                    # Another worker owns the contact: ask it (once: local=1 stops loops).
                    query = {**request.query, "local": "1"}
                    try:
                        async with app.http_client.get(
                            f"{owner.rstrip('/')}/contacts/{contact_id}", params=query
                        ) as resp:
                            return self.bytes(
                                await resp.read(),
                                content_type="application/json",
                                status=resp.status,
                            )
                    except Exception as exc:  # the owner is down or moving
                        return self.json(
                            {"error": f"owner {owner} not reachable: {exc}"}, status=503
                        )
            if state is None:
                return self.json({"error": f"unknown contact {contact_id!r}"}, status=404)
            if state.alias is not None:
                return self.json({"contact_id": contact_id, "alias_of": state.alias}, status=200)
            clock = state.clock or 0
            at = clock
            if "at" in request.query:
                try:
                    at = parse_ts(request.query["at"])
                except ValueError as exc:
                    return self.json({"error": f"at: {exc}"}, status=400)
                if at < clock:
                    return self.json(
                        {"error": "at is before the contact's last change", "clock": clock},
                        status=409,
                    )
            view = _copy(state) if at > clock else state
            if at > clock:
                runtime.engine.advance(view, at)
            doc = runtime.engine.explain(view, at)
            doc["scores"] = runtime.engine.scores(view, at)
            doc["tiers"] = runtime.engine.tiers(view)
            return self.json(doc)


def _copy(state: ContactState) -> ContactState:
    return ContactState.from_bytes(state.to_bytes())


def main(args: argparse.Namespace) -> int:
    """Run the worker until interrupted."""
    settings = Settings.load(config_file=args.config)
    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        topology = Topology.discover(settings)
    except ConnectionError as exc:
        print(f"scorestream: {exc}", flush=True)
        return EXIT_FAILURE
    runtime = Runtime(settings, rules, topology)
    log.info(
        "rules %s (%s), %d partitions, HTTP on %s:%d",
        settings.rules,
        rules.version,
        topology.partitions,
        settings.web_host,
        settings.web_port,
    )
    worker = faust.Worker(runtime.app, loglevel=settings.log_level.upper(), logfile=None)
    code = EXIT_FAILURE
    try:
        worker.execute_from_commandline()  # runs until stopped, then raises SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    # Faust has stopped (our last checkpoint ran in on_before_shutdown). Seen here: its
    # consumer thread can outlive the app and keep the interpreter from exiting, so leave
    # without waiting for non-daemon threads.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
