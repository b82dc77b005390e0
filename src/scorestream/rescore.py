"""``scorestream rescore``: rebuild every contact's state from the event history (bulk phase).

What exists: the **bulk rebuild** and its **report**. The retained history of the six
input topics is read once, from each partition's log start to its end offset as
snapshotted when the command starts, in large batches by a plain confluent-kafka
consumer that never joins a group nor commits. Every message goes through the worker's
own :class:`~scorestream.pipeline.processor.Processor` (the one ``scorestream score``
runs, with in-memory stores and every partition owned), with its real topic, partition
and offset, so the event-time merge orders it exactly as a single worker would; invalid
messages are received as raw bytes, as the worker receives them, and counted the same
way. The rebuilt scores and tiers are compared with the states live workers publish on
the compacted ``contacts.scores`` topic; every tier change is reported as a
crossing-like record with ``"reason": "rules_changed"``.

What does not exist yet: the **hand-over** to the live workers (stop them at a point of
the event-time order, swap their states for the rebuilt ones, go on with no event lost
or counted twice). Only ``--dry-run`` runs; without it the command exits 2 and says so.
``scorestream rules publish`` is what switches live workers to a plan from a point in
time on.

Memory: nothing waits for the whole history. The merge is told, per topic-partition,
the end offset snapshotted at start as its high-water mark, so it waits only for
partitions whose unread records Kafka still holds, and what it can release is applied
after each batch. What stays in memory is the contact states (as for ``score``) and
whatever the merge holds back while some partition is behind in event time.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal, TextIO

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from scorestream import clients
from scorestream.engine.events import InvalidEvent, decode_event
from scorestream.engine.plan import Model
from scorestream.engine.scorer import TOP_CONTRIBUTORS, Crossing, Engine, round2
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts
from scorestream.errors import EXIT_FAILURE, EXIT_OK, KafkaFailure, UsageError
from scorestream.offline import dump_line, load_rules_or_usage, score_row
from scorestream.pipeline.processor import GENERATION_MARK, Processor
from scorestream.pipeline.processor import Settings as ProcessorSettings
from scorestream.pipeline.records import MIN_TS
from scorestream.pipeline.routing import INPUT_TOPICS, RESCORE_STATES, SCORES
from scorestream.pipeline.store import ScratchStore, encode_value
from scorestream.plans import (
    ABORTED,
    DONE,
    PENDING,
    READY,
    RULES_TOPIC,
    Handover,
    deliver,
    make_plan,
)
from scorestream.settings import Settings

#: messages asked for per ``consume`` call: large, so per-call costs vanish
BATCH = 10_000
#: seconds one ``consume`` call waits for a full batch
BATCH_WAIT = 0.2
#: seconds without any message while partitions are unfinished before giving up
STALL_LIMIT = 60.0
#: seconds between two progress lines
PROGRESS_EVERY = 1.0
#: the ``reason`` of every record this command reports
REASON = "rules_changed"


# ---------------------------------------------------------------------- reading Kafka


@dataclass(slots=True)
class Span:
    """What is read of one topic-partition: from ``low`` to ``end`` (exclusive)."""

    topic: str
    partition: int
    low: int
    end: int

    @property
    def size(self) -> int:
        """Offsets in the span (records, unless compaction or markers left gaps)."""
        return max(0, self.end - self.low)


def snapshot(consumer: Consumer, topics: Sequence[str], timeout: float = 15.0) -> list[Span]:
    """Every partition of ``topics`` with its log start and its end offset now.

    A missing topic is a usage error naming it (``scorestream topics apply`` creates it).
    """
    try:
        meta = consumer.list_topics(timeout=timeout)
    except Exception as exc:  # KafkaException: the broker is unreachable
        raise KafkaFailure(f"cannot reach Kafka: {exc}") from None
    missing = [t for t in topics if t not in meta.topics or meta.topics[t].error is not None]
    if missing:
        raise UsageError(
            "missing topics: " + ", ".join(sorted(missing)) + " (run `scorestream topics apply`)"
        )
    spans: list[Span] = []
    for topic in topics:
        for partition in sorted(meta.topics[topic].partitions):
            # Fresh from the broker: the snapshot is the point the rebuild reaches.
            low, high = clients.watermarks(consumer, TopicPartition(topic, partition), timeout)
            spans.append(Span(topic, partition, low, high))
    return spans


def read_to_end(
    consumer: Consumer,
    spans: Sequence[Span],
    on_batch: Callable[[list[Message]], None],
    batch: int = BATCH,
    stall_limit: float = STALL_LIMIT,
) -> None:
    """Read every span from ``low`` to ``end``; hand each batch (offset < end only) over.

    Per topic-partition the messages come in offset order. A partition is finished when
    its consumer position reaches ``end`` (a message at ``end - 1`` was read, or what
    is left holds no records: compaction gaps, transaction markers); it is then paused,
    so live traffic written after the snapshot is not fetched for nothing.
    """
    ends = {(s.topic, s.partition): s.end for s in spans if s.end > s.low}
    if not ends:
        return
    consumer.assign([TopicPartition(s.topic, s.partition, s.low) for s in spans if s.end > s.low])
    left = dict(ends)
    quiet_since = time.monotonic()
    try:
        while left:
            messages, came = _consume(consumer, batch)
            kept: list[Message] = []
            for msg in messages:
                tp = (msg.topic() or "", msg.partition() or 0)
                end = left.get(tp)
                offset = msg.offset() or 0
                if end is None or offset >= end:
                    continue  # written after the snapshot (or a finished partition)
                kept.append(msg)
                if offset + 1 >= end:
                    _finish(consumer, left, tp)
            if kept:
                on_batch(kept)
                quiet_since = time.monotonic()
            elif not came and left:
                _finish_by_position(consumer, left)
                if left and time.monotonic() - quiet_since > stall_limit:
                    detail = ", ".join(f"{t}[{p}]" for t, p in sorted(left))
                    raise KafkaFailure(
                        f"nothing read for {stall_limit:.0f} s; unfinished: {detail}"
                    )
    finally:
        consumer.unassign()


def _consume(consumer: Consumer, batch: int) -> tuple[list[Message], int]:
    """One ``consume`` call: its messages without the partition-EOF events, and how many
    came in all; any other error is raised."""
    messages = consumer.consume(num_messages=batch, timeout=BATCH_WAIT)
    kept: list[Message] = []
    for msg in messages:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaFailure(f"reading {msg.topic()}[{msg.partition()}]: {err}")
        kept.append(msg)
    return kept, len(messages)


def _finish(consumer: Consumer, left: dict[tuple[str, int], int], tp: tuple[str, int]) -> None:
    left.pop(tp, None)
    consumer.pause([TopicPartition(tp[0], tp[1])])


def _finish_by_position(consumer: Consumer, left: dict[tuple[str, int], int]) -> None:
    """Finish partitions whose position passed the end without a record at ``end - 1``."""
    for tp in consumer.position([TopicPartition(t, p) for t, p in left]):
        key = (tp.topic, tp.partition)
        if tp.offset >= 0 and tp.offset >= left.get(key, 0):
            _finish(consumer, left, key)


# ---------------------------------------------------------------------- the rebuild


class _Tally:
    """The rebuild's emitter: historical crossings and DLQ records are counted, not sent."""

    def __init__(self) -> None:
        self.crossings = 0
        self.invalid: Counter[str] = Counter()

    def crossing(self, crossing: Crossing) -> None:
        self.crossings += 1

    def dlq(self, record: dict[str, Any]) -> None:
        self.invalid[str(record.get("error", ""))] += 1

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        raise AssertionError(f"the rebuild owns every partition (asked for {partition})")


@dataclass(slots=True)
class Rebuild:
    """What the bulk rebuild produced."""

    processor: Processor
    #: evaluation time (newest valid event time), None without any event
    at: int | None
    #: messages read (valid or not), and of those the invalid ones
    messages: int
    invalid: int
    #: crossings the replay of history caused under the plan (not sent anywhere)
    history_crossings: int
    seconds: float
    partitions: int
    spans: list[Span] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages per second over the whole read."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def rows(self) -> Iterator[tuple[ContactState, dict[str, Any]]]:
        """Per contact (sorted by id) its state and its ``score`` line at ``at``."""
        if self.at is None:
            return
        engine = self.processor.engine
        for state in self.processor.states():
            yield state, score_row(engine, state, self.at)


class Progress:
    """A line on stderr at most every ``every`` seconds: done, rate, time left."""

    def __init__(
        self,
        total: int,
        out: TextIO | None = None,
        every: float = PROGRESS_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.out = out
        self.every = every
        self.clock = clock
        self.started = clock()
        self._last = self.started

    def update(self, done: int) -> None:
        """Print a line if ``every`` seconds passed since the last one."""
        now = self.clock()
        if self.out is None or now - self._last < self.every:
            return
        self._last = now
        self.out.write(progress_line(done, self.total, now - self.started) + "\n")
        self.out.flush()


def progress_line(done: int, total: int, elapsed: float) -> str:
    """``rescore: 1,200,000 / 10,000,000 events (12%), 85,000 events/s, 1m43s left``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    share = f" ({100 * done / total:.0f}%)" if total else ""
    left = f"{_duration((total - done) / rate)} left" if rate > 0 and total > done else "-"
    return f"rescore: {done:,} / {total:,} events{share}, {rate:,.0f} events/s, {left}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rebuild(
    engine: Engine,
    settings: Settings,
    progress: TextIO | None = None,
    batch: int = BATCH,
    finish: bool = True,
) -> Rebuild:
    """Read the input topics' history to the snapshotted ends into a fresh processor.

    ``finish``: release what the merge still holds and let time reach the newest event
    (the dry run, as ``score``); without it the processor is left as it is, to read on
    (:func:`catch_up`).
    """
    real = {settings.topic(t): t for t in INPUT_TOPICS}
    consumer = Consumer(clients.reader(settings, f"{settings.app_id}-rescore-{uuid.uuid4().hex}"))
    try:
        spans = snapshot(consumer, list(real))
        counts = {len([s for s in spans if s.topic == t]) for t in real}
        if len(counts) != 1:
            detail = ", ".join(
                f"{t}={len([s for s in spans if s.topic == t])}" for t in sorted(real)
            )
            raise UsageError(f"input topics must have the same partition count: {detail}")
        partitions = counts.pop()
        high = {(s.topic, s.partition): s.end for s in spans}
        tally = _Tally()
        processor = Processor(
            engine,
            partitions,
            tally,
            # The merge waits for a topic-partition only while it is behind this end:
            # records written after the snapshot are not part of the rebuild. The
            # repartition topic is neither read nor needed (every partition is here).
            highwater=lambda topic, partition: high.get((topic, partition), 0),
            settings=ProcessorSettings(max_bytes=settings.max_message_bytes, schedule=False),
            topics=settings.topic,
        )
        for number in range(partitions):
            start = {real[s.topic]: s.low for s in spans if s.partition == number}
            processor.assign(number, ScratchStore(), start)
        feed = _Feed(processor, real, settings.max_message_bytes)
        meter = Progress(sum(s.size for s in spans), progress)

        def on_batch(messages: list[Message]) -> None:
            feed.take(messages)
            meter.update(feed.messages)

        began = time.perf_counter()
        # As in ``score``: states hold no reference cycles, the cyclic collector would
        # only rescan the growing population.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            read_to_end(consumer, spans, on_batch, batch)
            if finish:
                # Every partition is at its end: what the merge still holds is released.
                high.clear()
                processor.refresh(0.0)
                processor.run(0.0)
                if processor.merger.buffered:
                    raise KafkaFailure(
                        f"{processor.merger.buffered} records were read but not released "
                        f"(waiting for {processor.merger.blocking})"
                    )
                if feed.latest is not None:
                    processor.advance_all(feed.latest)
        finally:
            if was_enabled:
                gc.enable()
        seconds = time.perf_counter() - began
    finally:
        consumer.close()
    invalid = sum(n for (_, outcome), n in processor.counts.items() if outcome == "invalid")
    return Rebuild(
        processor,
        feed.latest,
        feed.messages,
        invalid,
        tally.crossings,
        seconds,
        partitions,
        spans,
    )


class _Feed:
    """Hands consumed messages to the processor and applies what the merge releases."""

    def __init__(self, processor: Processor, declared: dict[str, str], max_bytes: int) -> None:
        self.processor = processor
        #: real topic name -> declared name (what ``receive_event`` takes)
        self.declared = declared
        self.max_bytes = max_bytes
        self.messages = 0
        #: newest valid event time: where ``score`` evaluates, and so does the rebuild
        self.latest: int | None = None

    def take(self, messages: list[Message]) -> None:
        processor = self.processor
        receive = processor.receive
        receive_event = processor.receive_event
        max_bytes = self.max_bytes
        declared = self.declared
        latest = self.latest
        for msg in messages:
            topic = msg.topic() or ""
            partition = msg.partition() or 0
            offset = msg.offset() or 0
            value = msg.value()
            try:
                if value is None:
                    raise InvalidEvent("empty message")
                event = decode_event(value, max_bytes)
            except InvalidEvent:
                # The worker's path for raw bytes: decodes again, queues the message as
                # invalid at its place in the order, counts it and sends it to the DLQ.
                receive(topic, partition, offset, value, 0.0)
                continue
            # Decoded here (once) to know the newest event time, as ``score`` does.
            receive_event(declared[topic], partition, offset, event, value, 0.0)
            ts = event.ts
            if latest is None or ts > latest:
                latest = ts
        self.latest = latest
        self.messages += len(messages)
        # Sources that were waiting for this batch are looked at again, then everything
        # the merge can release now is applied: memory holds only what must wait.
        processor.refresh(0.0)
        processor.run(0.0)


# ---------------------------------------------------------------------- current states


@dataclass(frozen=True, slots=True)
class Current:
    """A contact's state as live workers last published it (``contacts.scores``)."""

    scores: dict[str, float]
    tiers: dict[str, str | None]
    rules_version: str | None = None


def parse_current(value: bytes) -> tuple[str, Current] | None:
    """A ``contacts.scores`` record as (contact id, state); None if it is not one."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("contact_id"), str):
        return None
    scores = doc.get("scores")
    tiers = doc.get("tiers")
    if not isinstance(scores, dict) or not isinstance(tiers, dict):
        return None
    version = doc.get("rules_version")
    return doc["contact_id"], Current(
        {str(k): float(v) for k, v in scores.items() if isinstance(v, int | float)},
        {str(k): (v if isinstance(v, str) else None) for k, v in tiers.items()},
        version if isinstance(version, str) else None,
    )


def read_current(settings: Settings) -> tuple[dict[str, Current], int]:
    """Every contact's latest record on ``contacts.scores``, and how many were unreadable.

    The topic is compacted and keyed by contact: the latest record of a key is its
    state; a tombstone removes it.
    """
    topic = settings.topic(SCORES)
    consumer = Consumer(clients.reader(settings, f"{settings.app_id}-rescore-{uuid.uuid4().hex}"))
    current: dict[str, Current] = {}
    bad = 0

    def on_batch(messages: list[Message]) -> None:
        nonlocal bad
        for msg in messages:
            value = msg.value()
            if value is None:
                key = msg.key()
                if key is not None:
                    current.pop(key.decode("utf-8", "replace"), None)
                continue
            parsed = parse_current(value)
            if parsed is None:
                bad += 1
                continue
            current[parsed[0]] = parsed[1]

    try:
        read_to_end(consumer, snapshot(consumer, [topic]), on_batch)
    finally:
        consumer.close()
    return current, bad


# ---------------------------------------------------------------------- comparison


@dataclass(frozen=True, slots=True)
class TierChange:
    """One contact's tier in one model, as published and as rebuilt."""

    contact_id: str
    model: str
    old: str | None
    new: str | None
    score: float
    previous_score: float | None
    anonymous: bool
    previous_version: str | None = None

    def direction_in(self, order: Sequence[str]) -> Literal["up", "down"]:
        """``up`` when the new tier ranks above the old one in ``order`` (lowest first).

        No tier ranks lowest; so does a tier the plan no longer has (it cannot be held).
        """
        return "up" if _rank(order, self.new) > _rank(order, self.old) else "down"


def _rank(order: Sequence[str], tier: str | None) -> int:
    if tier is None or tier not in order:
        return -1
    return list(order).index(tier)


def tier_order(model: Model) -> tuple[str, ...]:
    """A model's threshold names from the lowest ``enter`` to the highest."""
    return tuple(t.name for t in model.thresholds)


def tier_changes(
    was: Current | None, row: Mapping[str, Any], models: Sequence[str], anonymous: bool = False
) -> list[TierChange]:
    """A contact's tier changes: per model where its published and rebuilt tiers differ.

    ``row`` is the contact's ``score`` line (rebuilt). A contact without a published
    state (``was`` None), or a model its published state does not name, counts as in
    no tier: nothing was published for it.
    """
    key: str = row["contact_id"]
    tiers: Mapping[str, str | None] = row["tiers"]
    scores: Mapping[str, float] = row["scores"]
    out: list[TierChange] = []
    for model in models:
        old = was.tiers.get(model) if was is not None else None
        new = tiers.get(model)
        if old == new:
            continue
        out.append(
            TierChange(
                contact_id=key,
                model=model,
                old=old,
                new=new,
                score=scores.get(model, 0.0),
                previous_score=was.scores.get(model) if was is not None else None,
                anonymous=anonymous,
                previous_version=was.rules_version if was is not None else None,
            )
        )
    return out


def top_contributors(engine: Engine, state: ContactState, model: str, at: int) -> list[Any]:
    """The crossing's ``top_contributors`` of a model at ``at`` (as the engine ranks them)."""
    parts: dict[str, float] = {}
    for line in engine.contributions(state, at):
        if line.model == model:
            parts[line.rule_id] = parts.get(line.rule_id, 0.0) + line.points
    ranked = sorted(
        ((rule_id, round2(p)) for rule_id, p in parts.items() if round2(p) != 0.0),
        key=lambda item: (-abs(item[1]), item[0]),
    )
    return [{"rule_id": r, "points": p} for r, p in ranked[:TOP_CONTRIBUTORS]]


def rules_changed_record(
    change: TierChange,
    order: Sequence[str],
    at: int,
    rules_version: str,
    contributors: list[Any],
) -> dict[str, Any]:
    """The crossing-like record of a tier change (``leads.sales_ready`` fields and more).

    ``threshold`` is the tier entered (``up``) or left (``down``). ``crossing_id`` cannot
    carry the per-threshold count ``n`` of real crossings (the rebuilt count is not the
    one consumers saw): it ends in ``rules_changed:<plan hash prefix>`` instead, so it
    is deterministic per plan. ``previous_score`` is the published score, evaluated at
    the contact's last published change, not at ``occurred_at``; null when nothing was
    published for the contact.
    """
    direction = change.direction_in(order)
    threshold = change.new if direction == "up" else change.old
    digest = rules_version.split(":", 1)[-1][:16]
    return {
        "crossing_id": f"{change.contact_id}:{change.model}:{threshold}:{REASON}:{digest}",
        "contact_id": change.contact_id,
        "model": change.model,
        "threshold": threshold,
        "direction": direction,
        "score": change.score,
        "previous_score": change.previous_score,
        "occurred_at": format_ts(at),
        "rules_version": rules_version,
        "top_contributors": contributors,
        "anonymous": change.anonymous,
        "reason": REASON,
        "tier": change.new,
        "previous_tier": change.old,
        "previous_rules_version": change.previous_version,
    }


# ---------------------------------------------------------------------- the hand-over


@dataclass(slots=True)
class Cut:
    """Where the rebuild stopped: per partition, the first offset of each input topic
    (declared name) not included; and its event time (the watermark it reached)."""

    offsets: dict[int, dict[str, int]]
    clock: int
    messages: int
    seconds: float


def catch_up(
    processor: Processor,
    settings: Settings,
    at: int,
    grace: float,
    progress: TextIO | None = None,
    batch: int = BATCH,
) -> Cut:
    """Read on from where the bulk rebuild stopped, held at event time ``at``, until the
    wall clock is ``grace`` seconds past ``at`` and every input partition has been read
    to an end offset asked for after that; return the cut.

    Workers stop releasing anything when their wall clock reaches ``at`` (the hand-over
    freeze), so everything they applied under the plan being replaced had been written to
    Kafka by then and is inside the cut; ``grace`` covers the time a worker takes to
    notice (a few milliseconds) and the clock differences between hosts.
    """
    real = {settings.topic(t): t for t in INPUT_TOPICS}
    merger = processor.merger
    inputs = [(t, p) for (t, p) in merger.sources if t in real]
    consumer = Consumer(clients.reader(settings, f"{settings.app_id}-rescore-{uuid.uuid4().hex}"))
    # End offsets are asked for by a consumer of their own: asked through the one that is
    # fetching, each answer waited behind its fetches (about half a second apiece).
    probe = Consumer(clients.reader(settings, f"{settings.app_id}-rescore-{uuid.uuid4().hex}"))
    high: dict[tuple[str, int], int] = {}

    def ends() -> None:
        for topic, partition in inputs:
            _, end = clients.watermarks(probe, TopicPartition(topic, partition), 15)
            high[(topic, partition)] = end

    began = time.perf_counter()
    read = 0
    try:
        ends()
        # The repartition topic is not read (every partition is here): never waited for.
        merger.highwater = lambda topic, partition: high.get((topic, partition), 0)
        processor.hold(at)
        consumer.assign([TopicPartition(t, p, merger.sources[(t, p)].received) for t, p in inputs])
        feed = _Feed(processor, real, settings.max_message_bytes)
        last_line = time.monotonic()
        target: dict[tuple[str, int], int] | None = None
        while True:
            kept, _ = _consume(consumer, batch)
            if kept:
                feed.take(kept)
                read += len(kept)
            if time.time() * US_PER_SECOND < at + grace * US_PER_SECOND:
                if progress is not None and time.monotonic() - last_line >= PROGRESS_EVERY:
                    last_line = time.monotonic()
                    wait = at / US_PER_SECOND + grace - time.time()
                    progress.write(
                        f"rescore: live traffic read on: {read:,} events; hand-over in "
                        f"{max(0.0, wait):.0f} s\n"
                    )
                    progress.flush()
                continue
            if target is None:
                # The end offsets after the deadline: everything a worker applied before
                # it froze is below them. Records after them may be read too (the cut is
                # whatever is released); live traffic does not stop for the hand-over.
                ends()
                target = dict(high)
            if any(merger.sources[tp].received < end for tp, end in target.items()):
                continue
            processor.refresh(0.0)
            processor.run(0.0)
            head = merger.head()
            if not merger.blocked and (head is None or head[0] >= at):
                break
    finally:
        consumer.close()
        probe.close()
    offsets = {p: dict(part.released) for p, part in processor.parts.items()}
    newest = processor.newest
    lateness = int(processor.settings.lateness * US_PER_SECOND)
    clock = MIN_TS if newest is None else min(newest - lateness, at - 1)
    return Cut(offsets, clock, read, time.perf_counter() - began)


def write_states(
    processor: Processor, settings: Settings, generation: int, progress: TextIO | None = None
) -> dict[int, tuple[int, int]]:
    """Write every rebuilt state (aliases too) to the states topic, partition by
    partition, marked with the generation; returns each partition's offset range."""
    topic = settings.topic(RESCORE_STATES)
    engine = processor.engine
    config = {**clients.output_producer(settings), "linger.ms": 50, "batch.size": 1_000_000}
    producer = Producer(config)
    reader = Consumer(clients.reader(settings, f"{settings.app_id}-rescore-{uuid.uuid4().hex}"))
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    def end(partition: int) -> int:
        _, high = clients.watermarks(reader, TopicPartition(topic, partition), 15)
        return high

    ranges: dict[int, tuple[int, int]] = {}
    total = sum(part.store.cached for part in processor.parts.values())
    meter = Progress(total, progress)
    written = 0
    try:
        for number in sorted(processor.parts):
            start = end(number)
            for state in _states_of(processor, number):
                state.marks[GENERATION_MARK] = generation
                due = engine.next_due(state) if state.alias is None else None
                value = encode_value(state, due)
                while True:
                    try:
                        producer.produce(
                            topic,
                            value,
                            state.key.encode(),
                            partition=number,
                            on_delivery=delivered,
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                written += 1
                if written % 10_000 == 0:
                    producer.poll(0)
                    meter.update(written)
            if producer.flush(60) or failures:
                reason = failures[0] if failures else "no acknowledgement in 60 s"
                raise KafkaFailure(f"writing the rebuilt states to {topic}: {reason}")
            ranges[number] = (start, end(number))
    finally:
        reader.close()
    return ranges


def _states_of(processor: Processor, number: int) -> Iterator[ContactState]:
    states: Iterator[ContactState] = processor.parts[number].store.states()  # type: ignore[attr-defined]
    return states


class Control:
    """The rescore's side of the plan topic: its control records and the workers' reports."""

    def __init__(self, settings: Settings) -> None:
        from scorestream.app.planwatch import PlanWatcher  # noqa: PLC0415 (Kafka client)

        self.settings = settings
        self.topic = settings.topic(RULES_TOPIC)
        self.watcher = PlanWatcher(settings)
        self.producer = Producer(clients.output_producer(settings))
        self.handovers: dict[int, Handover] = {}
        self.reports: dict[int, set[int]] = {}

    def read(self, to_end: bool = False) -> None:
        """Take what the plan topic brought since the last call."""
        self.watcher.poll(to_end=to_end)
        handovers, reports = self.watcher.take_control()
        for handover, _ in handovers:
            self.handovers[handover.id] = handover
        for report in reports:
            self.reports.setdefault(report.id, set()).add(report.partition)

    def open_ones(self) -> list[Handover]:
        """Hand-overs neither done nor aborted."""
        return [h for h in self.handovers.values() if h.state in (PENDING, READY)]

    def publish(self, handover: Handover) -> None:
        """Write a control record and wait for Kafka's acknowledgement."""
        reason = deliver(self.producer, self.topic, handover.key, handover.encode())
        if reason is not None:
            raise KafkaFailure(f"publishing to {self.topic}: {reason}")

    def close(self) -> None:
        """Close the plan topic reader."""
        self.watcher.close()


def handover_command(args: argparse.Namespace, settings: Settings, rules_path: str) -> int:
    """``scorestream rescore`` without ``--dry-run``: rebuild, then hand over."""
    # The plan as the hand-over record carries it: its bytes, version and file name.
    plan, rules = make_plan(rules_path, 0, 0)
    engine = Engine(rules)
    if args.lead < 0 or args.grace < 0 or args.wait <= 0:
        raise UsageError("--in and --grace must be >= 0, --wait > 0")
    err = sys.stderr
    control = Control(settings)
    try:
        control.read(to_end=True)
        open_ones = control.open_ones()
        if open_ones and not args.force:
            ids = ", ".join(f"{h.id} ({h.state})" for h in open_ones)
            raise UsageError(
                f"another rescore hand-over is open: {ids}; wait for it, or --force to abort it"
            )
        for stale in open_ones:
            control.publish(stale.with_state(ABORTED))
        result = rebuild(engine, settings, progress=err, finish=False)
        print(
            f"rescore: rebuilt {result.messages:,} messages of history in "
            f"{result.seconds:.1f} s ({result.rate:,.0f} events/s)",
            file=err,
            flush=True,
        )
        now = int(time.time() * US_PER_SECOND)
        at = now + int(args.lead * US_PER_SECOND)
        handover = Handover(now, PENDING, at, plan.version, plan.source, plan.text, now)
        control.publish(handover)
        print(
            f"rescore {handover.id}: workers hold at {format_ts(at)}; reading live traffic "
            "until then",
            file=err,
            flush=True,
        )
        try:
            cut = catch_up(result.processor, settings, at, args.grace, progress=err)
            began = time.perf_counter()
            ranges = write_states(result.processor, settings, handover.id, progress=err)
            wrote = time.perf_counter() - began
            ready = handover.with_state(READY, ranges=ranges, cuts=cut.offsets, clock=cut.clock)
            control.publish(ready)
        except BaseException:
            control.publish(handover.with_state(ABORTED))
            print(f"rescore {handover.id}: aborted; workers go on as before", file=err)
            raise
        contacts = sum(end - start for start, end in ranges.values())
        print(
            f"rescore {handover.id}: cut after {cut.messages:,} more events; {contacts:,} "
            f"states written in {wrote:.1f} s; waiting for the workers",
            file=err,
            flush=True,
        )
        partitions = set(ranges)
        deadline = time.monotonic() + args.wait
        while True:
            control.read()
            missing = partitions - control.reports.get(handover.id, set())
            if not missing:
                break
            if time.monotonic() > deadline:
                print(
                    f"scorestream: rescore {handover.id}: partitions {sorted(missing)} did "
                    f"not report the new states within {args.wait:.0f} s; the hand-over "
                    "stays open (workers take the states when they get those partitions)",
                    file=err,
                )
                return EXIT_FAILURE
            time.sleep(0.2)
        control.publish(ready.with_state(DONE))
    except KafkaFailure as exc:
        print(f"scorestream: rescore: {exc}", file=err)
        return EXIT_FAILURE
    finally:
        control.close()
    print(
        f"rescore {handover.id}: done. {rules_path} ({rules.version}) rebuilt "
        f"{result.messages + cut.messages:,} events into {contacts:,} states; workers took "
        f"them at {format_ts(at)} and score with it from now on"
    )
    return EXIT_OK


# ---------------------------------------------------------------------- the command


@dataclass(slots=True)
class Report:
    """What the dry run found, for the summary."""

    contacts: int = 0
    without_current: int = 0
    changes: Counter[tuple[str, str | None, str | None]] = field(default_factory=Counter)
    not_rebuilt: int = 0


def compare(
    result: Rebuild,
    current: Mapping[str, Current],
    scores_out: IO[str] | None,
    changes_out: IO[str] | None,
) -> Report:
    """Walk the rebuilt contacts once: score lines, tier changes, records, counts."""
    report = Report()
    engine = result.processor.engine
    at = result.at
    models = [m.name for m in engine.rules.models]
    orders = {m.name: tier_order(m) for m in engine.rules.models}
    seen: set[str] = set()
    for state, row in result.rows():
        assert at is not None
        report.contacts += 1
        seen.add(state.key)
        if state.key not in current:
            report.without_current += 1
        if scores_out is not None:
            scores_out.write(dump_line(row) + "\n")
        for change in tier_changes(current.get(state.key), row, models, state.anonymous):
            report.changes[(change.model, change.old, change.new)] += 1
            if changes_out is not None:
                record = rules_changed_record(
                    change,
                    orders[change.model],
                    at,
                    engine.rules.version,
                    top_contributors(engine, state, change.model, at),
                )
                changes_out.write(dump_line(record) + "\n")
    report.not_rebuilt = sum(1 for key in current if key not in seen)
    return report


def summary(rules_path: str, version: str, result: Rebuild, report: Report) -> list[str]:
    """The dry run's summary lines (stdout)."""
    lines = [
        f"rescore --dry-run: {rules_path} ({version}); nothing was written to Kafka",
        f"read {result.messages:,} messages ({result.invalid:,} invalid) from "
        f"{len(result.spans)} topic-partitions in {result.seconds:.1f} s: "
        f"{result.rate:,.0f} events/s",
        f"rebuilt {report.contacts:,} contacts, evaluated at "
        f"{format_ts(result.at) if result.at is not None else '-'} (the newest event time); "
        f"{report.without_current:,} without a published state, {report.not_rebuilt:,} "
        "published states not rebuilt (identified anonymous ids, or history no longer "
        "retained)",
        f"tier changes ({REASON}): {sum(report.changes.values()):,}",
    ]
    if report.changes:
        rows = sorted(report.changes.items(), key=lambda kv: (kv[0][0], -kv[1], str(kv[0])))
        width = max(len(m) for (m, _, _), _ in rows)
        lines.append(f"  {'model':<{width}}  {'from -> to':<32}{'contacts':>10}")
        for (model, old, new), n in rows:
            move = f"{old or '(none)'} -> {new or '(none)'}"
            lines.append(f"  {model:<{width}}  {move:<32}{n:>10,}")
    return lines


def rescore_command(args: argparse.Namespace) -> int:
    """``scorestream rescore [--rules PATH] --dry-run [--out FILE] [--scores FILE]``."""
    settings = Settings.load(config_file=args.config)
    rules_path: str = args.rules or settings.rules
    if not args.dry_run:
        return handover_command(args, settings, rules_path)
    rules = load_rules_or_usage(rules_path)
    engine = Engine(rules)
    try:
        current, bad = read_current(settings)
        result = rebuild(engine, settings, progress=sys.stderr)
    except KafkaFailure as exc:
        print(f"scorestream: rescore: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if bad:
        print(
            f"scorestream: {bad} unreadable records on {settings.topic(SCORES)} ignored",
            file=sys.stderr,
        )
    try:
        with _maybe_open(args.scores) as scores_out, _maybe_open(args.out) as changes_out:
            report = compare(result, current, scores_out, changes_out)
    except OSError as exc:
        print(f"scorestream: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    for line in summary(rules_path, rules.version, result, report):
        print(line)
    return EXIT_OK


class _maybe_open:  # noqa: N801 (used like open())
    """``open(path, "w")`` when a path is given, else a context that yields None."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.handle: IO[str] | None = None

    def __enter__(self) -> IO[str] | None:
        if self.path:
            self.handle = open(self.path, "w", encoding="utf-8")
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
