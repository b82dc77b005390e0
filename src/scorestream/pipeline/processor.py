"""The one processor: input messages in, engine calls in event-time order, outputs out.

The live worker and ``scorestream score`` both run this class — the worker over the
partitions Kafka assigns it, with RocksDB stores; the offline command over every
partition of a file, with in-memory stores — so routing, identity, dedupe and timers
exist once and the two give the same results on the same input.

**Order.** Messages are queued per topic-partition and released by the
:class:`~scorestream.pipeline.merge.Merger` in merge-key order (event time, then topic
tie rank, then origin position) across every partition the processor owns. Work that
crosses partitions — an ``identify`` asks the anonymous id's partition for its state,
which answers with it; events of an identified or misrouted id go to their contact — is
a record too: delivered in memory to a partition the processor owns, or through the
repartition topic to one it does not, and released at its own merge key. While a
hand-over is awaited from another worker, only the identified contact waits: its later
records are **parked** and applied, in order, when the answer is (the rest of the
stream goes on); the release as a whole waits only at a plan switch.

**Exactly-once state.** A contact state remembers, per stream of records, the last
position it applied (``ContactState.marks``); a record at or below that position is a
redelivery or a replay and changes nothing — whichever path it took and whatever was
committed. What a record causes in other partitions (a hand-over request, its answer, a
forward) is sent again on a replay and is idempotent where it lands, so a crash between
any two steps neither loses nor double counts. Offsets are committed only up to what
the states include, and never past a record whose in-memory consequences are still
waiting to be applied (:meth:`Processor.commit_offsets`).

**Outputs** (crossings, DLQ, repartition) leave through an :class:`Emitter` as they
happen: at-least-once, with deterministic ids and content, so a replay re-sends the
same crossing.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from scorestream.engine.events import AnyEvent, Identify, InvalidEvent, decode_event, event_to_dict
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts
from scorestream.pipeline.merge import HighWater, Merger, Queue, Source
from scorestream.pipeline.records import (
    CLOCK,
    EVENT,
    INVALID,
    MIN_TS,
    REQUEST,
    STATE,
    EnvelopeError,
    Key,
    Record,
    clock_envelope,
    decode_envelope,
    encode_envelope,
    front_envelope,
    stream_id,
)
from scorestream.pipeline.routing import INPUT_TOPICS, REPARTITION, partition_for
from scorestream.pipeline.store import ScratchStore, StateStore, encode_value

#: the mark a rescore's rebuilt state carries: the generation (rescore id) it comes from
GENERATION_MARK = "gen"
#: Leave room under the DLQ topic's max.message.bytes (4 MiB) for the JSON around a payload.
DLQ_PAYLOAD_LIMIT = 2_900_000
#: how the DLQ reason of a record that hit a fault of ours begins
INTERNAL_ERROR = "internal error: "
_RANK = {topic: rank for rank, topic in enumerate(INPUT_TOPICS)}


class Emitter(Protocol):
    """Where the processor's outputs go (Kafka in the worker, lists offline and in tests)."""

    def crossing(self, crossing: Crossing) -> None:
        """A threshold crossing for ``leads.sales_ready``."""

    def dlq(self, record: dict[str, Any]) -> None:
        """An invalid input for ``events.dlq``."""

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        """A record for a partition this processor does not own."""


@dataclass(slots=True)
class Partition:
    """What the processor keeps for one owned partition."""

    number: int
    store: StateStore
    #: per input topic (unprefixed), the next offset not yet released
    released: dict[str, int] = field(default_factory=dict)
    #: timer index: (due, contact) entries; ``scheduled`` says which are current
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)
    #: newest event time applied here
    newest: int | None = None
    #: a :class:`ScratchStore`'s own dict of states (offline runs), read and written
    #: directly on the per-event path: a call into the interpreted store per event cost
    #: more than the dict operation it wraps. None for every other store.
    scratch: dict[str, ContactState] | None = None


@dataclass(slots=True)
class Awaited:
    """An identity hand-over a contact waits for (its answer comes from another worker)."""

    token: str
    #: the answer's merge key: the contact's records past it wait until it is applied
    key: Key
    deadline: float
    #: the identify's origin: not committed past while the answer is awaited, so that
    #: a restart asks again (and waits again) instead of applying what follows first
    anchor: tuple[int, str, int] | None


@dataclass(slots=True)
class Settings:
    """The processor's knobs (see the README's settings table)."""

    max_bytes: int = 1_000_000
    #: seconds of event time that timers and decay stay behind the newest event
    lateness: float = 5.0
    #: seconds without anything to apply after which the stream counts as quiet
    idle_timeout: float = 2.0
    #: a quiet stream whose newest event is at most this old follows the wall clock
    live_horizon: float = 3600.0
    #: seconds an emptied, caught-up input is waited for (Kafka Streams' max.task.idle)
    merge_idle: float = 0.0
    #: seconds to wait for an identity hand-over from a partition on another worker
    identify_wait: float = 30.0
    #: keep the index of contacts with something due, for :meth:`Processor.tick` (an
    #: offline run advances every contact once at the end instead)
    schedule: bool = True
    #: seconds between frontier markers sent to the partitions other workers own, while
    #: the frontier moves (:meth:`Processor.send_fronts`); 0: none, and repartition
    #: inputs behind their end block as before. The worker sets 0.05 with
    #: SCORESTREAM_MERGE_FRONTIERS (off by default: no faster on this machine, README)
    front_interval: float = 0.0


class Processor:
    """Routes messages of the owned partitions to the engine, in event-time order."""

    def __init__(
        self,
        engine: Engine,
        partitions: int,
        emitter: Emitter,
        highwater: HighWater,
        settings: Settings | None = None,
        topics: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.n = partitions
        self.emit = emitter
        self.settings = s = settings or Settings()
        self.merger = Merger(highwater, idle=s.merge_idle, expect_wait=s.identify_wait)
        self.parts: dict[int, Partition] = {}
        #: unprefixed topic name -> name as the highwater function knows it
        self.real = topics or (lambda name: name)
        self._lateness_us = int(s.lateness * US_PER_SECOND)
        self._schedule = s.schedule
        self._max_bytes = s.max_bytes
        #: real topic name -> declared name
        self._declared = {self.real(t): t for t in (*INPUT_TOPICS, REPARTITION)}
        #: newest event time applied by this processor, and reported by other workers
        self.newest: int | None = None
        self.remote_newest: int | None = None
        #: event time up to which idle contacts have been advanced
        self.watermark = MIN_TS
        #: when records were last released, or the worker last (re)joined (see :meth:`quiet`)
        self._active_at = 0.0
        self._clock_sent: int | None = None
        #: (topic, outcome) -> count since the last :meth:`take_counts`
        self.counts: dict[tuple[str, str], int] = {}
        #: events released with an event time older than their partition's newest (a
        #: parked event is judged when the merge releases it: see :meth:`_route`)
        self.late = 0
        #: > 0 while parked records are applied after their hand-over (:meth:`_answered`)
        self._unparking = 0
        #: event time of the last event applied
        self.last_ts = 0
        #: event times of the events applied since the last :meth:`take_applied_times`
        #: (the worker's event-delay histogram); None when nobody asks (offline)
        self._applied_times: list[int] | None = [] if s.schedule else None
        #: plans to switch to, (effective_at µs, engine), in time order (scorestream.plans)
        self._plans: list[tuple[int, Engine]] = []
        #: (version, effective_at, late) of every switch since the last take_switches()
        self.switches: list[tuple[str, int, bool]] = []
        #: effective time of the plan in effect (MIN_TS: the worker's own file)
        self._engine_at = MIN_TS
        #: contact -> hand-overs it awaits from other workers (smallest answer key first)
        self._awaiting: dict[str, list[Awaited]] = {}
        #: contact -> its records released past an awaited answer, in release order, each
        #: with the key it comes after (``Merger.last`` when it was released)
        self._parked: dict[str, list[tuple[Record, Key]]] = {}
        #: records parked now
        self.parked = 0
        #: parked records that may send records when applied (see _may_send): id ->
        #: the key each comes after, and those keys in a heap (entries of records no
        #: longer parked are dropped when they reach the top); part of the frontier
        self._sending: dict[int, Key] = {}
        self._sending_keys: list[tuple[Key, int]] = []
        #: the key the record being applied comes after in the order of the whole
        #: stream (Merger.last when it was released)
        self._cause: Key = _MIN_KEY
        #: the consumer group generation of this worker's assignment (the worker sets it
        #: before assigning; sent with frontier markers, see Merger.front)
        self.generation = 0
        #: the frontier last sent as markers, and when
        self._front_sent: Key | None = None
        self._front_at = 0.0

    # ------------------------------------------------------------------ plans

    def schedule_plan(self, effective_at: int, engine: Engine) -> None:
        """Score events from event time ``effective_at`` on with ``engine``.

        The switch happens before the first record the merge releases at or after that
        time, so at the same point of the event-time order in every partition, however
        far behind the processor is. If events past that time were already applied (the
        plan was learnt late), it happens now and is marked late.
        """
        version = engine.rules.version
        if any(at == effective_at and e.rules.version == version for at, e in self._plans):
            return
        self._plans.append((effective_at, engine))
        self._plans.sort(key=lambda p: p[0])
        self._set_barrier()
        if self.newest is not None and self.newest >= effective_at:
            self._switch(self.newest, late=True)

    def take_switches(self) -> list[tuple[str, int, bool]]:
        """(version, effective_at, late) of the plan switches since the last call."""
        switches, self.switches = self.switches, []
        return switches

    def pending_plans(self) -> list[tuple[int, str]]:
        """(effective_at, version) of the plans scheduled and not yet in effect."""
        return [(at, e.rules.version) for at, e in self._plans]

    def _switch(self, t: int, late: bool) -> None:
        """Take the latest scheduled plan that is in effect at ``t``."""
        plans = self._plans
        engine: Engine | None = None
        at = 0
        while plans and plans[0][0] <= t:
            at, engine = plans.pop(0)
        self._set_barrier()
        if engine is None or engine.rules.version == self.engine.rules.version:
            return
        # States computed under the old plan catch up when next touched (Engine._sync_rules);
        # timers already scheduled fire then, under this plan.
        self.engine = engine
        self._engine_at = at
        self.switches.append((engine.rules.version, at, late))

    def rebase(self, engine: Engine, at: int) -> None:
        """A rescore's plan, which scores the whole history: plans scheduled for before
        ``at`` are superseded by it, later ones still take effect at their time."""
        self._plans = [(t, e) for t, e in self._plans if t > at]
        self._set_barrier()
        if self._engine_at > at:
            return  # a plan published for after the hand-over is already in effect
        self._engine_at = at
        if engine.rules.version != self.engine.rules.version:
            self.engine = engine
            self.switches.append((engine.rules.version, at, False))

    def _set_barrier(self) -> None:
        # A contact's parked records are applied with the engine in effect when their
        # answer comes: no plan may take effect while a hand-over before it is awaited.
        plans = self._plans
        self.merger.barrier = (plans[0][0], -1, -1, -1, -1) if plans else None

    # ------------------------------------------------------------------ rescore hand-over

    def hold(self, at: int | None) -> None:
        """Release nothing that happened at or after event time ``at`` (None: release all).

        A rescore hand-over holds workers at its point in event time, so that nothing
        past it is scored under the plan being replaced while the rebuilt states come.
        """
        self.merger.hold = None if at is None else (at, -1, -1, -1, -1)

    @property
    def holding(self) -> int | None:
        """The event time the processor is held at, if any."""
        hold = self.merger.hold
        return None if hold is None else hold[0]

    def install(
        self,
        number: int,
        states: Iterable[ContactState],
        cut: dict[str, int],
        cuts: dict[int, dict[str, int]],
        generation: int,
        clock: int,
    ) -> list[tuple[ContactState | None, ContactState]]:
        """Take a rescore's rebuilt states for partition ``number``; go on from its cut.

        ``states`` were rebuilt under the processor's (new) engine from the input
        topics' history up to ``cuts`` (per partition, unprefixed input topic -> first
        offset not included); ``cut`` is this partition's. Afterwards:

        * every rebuilt state replaces the stored one, unless the stored one already
          comes from this generation (a hand-over done before a restart, perhaps with
          later events applied since);
        * a stored state the rebuild does not have, but which applied a record from
          past the cut (a contact that first appeared after it), starts again empty, so
          that what it applied is applied again under the new plan; other states the
          rebuild does not have (history no longer retained) stay as they are;
        * the partition's inputs are read again from the cut: what this processor
          applied past it, on the states just replaced, is applied again on the rebuilt
          ones, and whatever they already include is recognised by their marks;
        * time (the watermark) goes back to the rebuild's, so timers fire in the same
          place of the event order as in the rebuild.

        Returns (previous state or None, rebuilt state) for every state replaced.
        """
        part = self.parts[number]
        store = part.store
        engine = self.engine
        # What waited for a hand-over in this partition is in the rebuild or read again.
        self._forget({number})
        replaced: list[tuple[ContactState | None, ContactState]] = []
        seen: set[str] = set()
        for state in states:
            key = state.key
            seen.add(key)
            old = store.get(key)
            if old is not None and old.marks.get(GENERATION_MARK, -1) >= generation:
                continue
            state.marks[GENERATION_MARK] = generation
            replaced.append((old, state))
            self._changed(part, state, ())
        for key in store.keys():  # noqa: SIM118 (a store, not a dict)
            if key in seen:
                continue
            old = store.get(key)
            if old is None or old.marks.get(GENERATION_MARK, -1) >= generation:
                continue
            if _past_cut(old.marks, cuts):
                fresh = engine.new_state(key, anonymous=old.anonymous)
                fresh.marks[GENERATION_MARK] = generation
                self._changed(part, fresh, ())
        for topic in INPUT_TOPICS:
            offset = cut.get(topic, part.released.get(topic, 0))
            part.released[topic] = offset
            source = self.merger.sources.get((self.real(topic), number))
            if source is not None:
                self.merger.rewind(source, offset)
        self.watermark = min(self.watermark, clock)
        return replaced

    # ------------------------------------------------------------------ assignment

    def assign(self, number: int, store: StateStore, committed: dict[str, int]) -> Partition:
        """Own a partition from its committed offsets (unprefixed topic -> next offset)."""
        part = Partition(number, store)
        if isinstance(store, ScratchStore):
            part.scratch = store.held()
        for topic in INPUT_TOPICS:
            part.released[topic] = committed.get(topic, 0)
        for key, due in store.dues():
            part.scheduled[key] = due
            part.heap.append((due, key))
        heapq.heapify(part.heap)
        self.parts[number] = part
        self.merger.add_partition(
            number,
            [(self.real(t), t) for t in INPUT_TOPICS],
            (self.real(REPARTITION), REPARTITION),
            committed,
        )
        self._remote()
        # Records other partitions already sent here in memory wait in the merger; a
        # (re)assigned partition starts with empty peer queues: the senders' offsets
        # were held, so replays re-create whatever was lost.
        return part

    def revoke(self, numbers: Iterable[int]) -> None:
        """Give up partitions (after their last checkpoint).

        Records waiting in their peer queues are dropped: those from a partition that
        stays are sent on through the repartition topic (the new owner applies them);
        those read from Kafka or sent by a partition that goes too are re-created by the
        new owner's replay, since their offsets were not committed.
        """
        going = set(numbers)
        self._forget(going)
        for number in going:
            if self.parts.pop(number, None) is None:
                continue
            for record in self.merger.remove_partition(number):
                if record.topic or record.sender in going or record.sender not in self.parts:
                    continue
                self.emit.repartition(number, record.to, encode_envelope(record))
        self._remote()

    def set_generation(self, generation: int) -> None:
        """The consumer group generation of the assignment (the worker calls this before
        assigning partitions in a new one): what other workers sent in an older one
        promises nothing (see Merger.front)."""
        self.generation = generation
        self._remote()

    def _remote(self) -> None:
        self._front_sent = None  # the receivers forget what was sent before: send again
        # The newest event time too: a worker that (re)joined holds other workers' newest
        # in memory only, and may have committed past their last clock record before it
        # died; without a new one its time stops at its own partitions' newest event, and
        # decay and timers due after it never happen (a CI run of test_processes: 7
        # "down" crossings missing after a kill -9). Safe only with :meth:`joined`.
        self._clock_sent = None
        self.merger.set_generation(
            self.generation, [p for p in range(self.n) if p not in self.parts]
        )

    def joined(self, now: float) -> None:
        """The worker has its new assignment and starts fetching at ``now``.

        It counts as activity for :meth:`quiet`: a worker that just (re)joined has read
        nothing yet, and the newest time other workers tell it must not move its contacts
        before it has had ``idle_timeout`` to fetch. Without this a worker restarting
        after kill -9, which had released nothing since it started, counted as quiet as
        soon as its first fetch found its inputs at their (momentary) ends, and could
        take the other worker's newest time past events still on their way. (The clock
        re-sent after every rebalance without this, 994eaea: two-worker live soaks with
        kill -9 gave 149 - 2,964 differing crossings.)
        """
        self._active_at = max(self._active_at, now)

    def _forget(self, numbers: set[int]) -> None:
        """Drop the hand-overs awaited and records parked in these partitions (their
        offsets were not committed past them: a replay re-creates them)."""
        n = self.n
        for key in [k for k in self._awaiting if partition_for(k, n) in numbers]:
            for waited in self._awaiting.pop(key):
                self.merger.fulfil(waited.token)
        for key in list(self._parked):
            records = self._parked[key]
            kept = [(r, after) for r, after in records if r.part not in numbers]
            for record, _ in records:
                if record.part in numbers:
                    self._sending.pop(id(record), None)
            self.parked -= len(records) - len(kept)
            if kept:
                self._parked[key] = kept
            else:
                del self._parked[key]

    # ------------------------------------------------------------------ input

    def source(self, topic: str, partition: int) -> Source | None:
        """The merge source of a consumed topic-partition (real name)."""
        return self.merger.sources.get((topic, partition))

    def receive(
        self, real_topic: str, partition: int, offset: int, value: bytes | None, now: float
    ) -> Source | None:
        """Queue one consumed message (its topic's real name) for release in event order.

        Returns the message's source (None if this processor does not own it).
        """
        merger = self.merger
        source = merger.sources.get((real_topic, partition))
        if source is None:
            self._count(self._declared.get(real_topic, real_topic), "unassigned")
            return None
        topic = source.name
        if not merger.in_order(source, offset):
            self._count(topic, "replayed")
            return source
        if topic == REPARTITION:
            self._receive_envelope(source, partition, offset, value or b"", now)
            return source
        rank = source.rank
        anchor = (partition, topic, offset)
        if value is not None:
            try:
                event = decode_event(value, self._max_bytes)
            except InvalidEvent as exc:
                reason = exc.reason
            else:
                self._queue_event(source, offset, event, value, now)
                return source
        else:
            reason = "empty message (no value)"
        record = Record(
            INVALID,
            (MIN_TS, rank, partition, offset, 0),
            "",
            partition,
            raw=value or b"",
            topic=topic,
            offset=offset,
            anchor=anchor,
            reason=reason,
        )
        merger.push(source.queue, record)  # type: ignore[arg-type]
        merger.arrived(source, offset, now)
        return source

    def receive_event(
        self, topic: str, partition: int, offset: int, event: AnyEvent, raw: bytes, now: float
    ) -> None:
        """Queue an already decoded event (offline: the file was validated while routing).

        Unlike :meth:`receive`, nothing checks that ``offset`` follows the last one of
        its topic-partition: the caller must give each topic-partition's events in
        offset order, each once (the offline feed and ``rescore`` read them that way). An
        empty ``raw`` is allowed; an internal error then reports the event as JSON.
        """
        self._queue_event(
            self.merger.sources[(self.real(topic), partition)], offset, event, raw, now
        )

    def _queue_event(
        self, source: Source, offset: int, event: AnyEvent, raw: bytes, now: float
    ) -> None:
        partition = source.partition
        topic = source.name
        record = Record(
            EVENT,
            (event.ts, source.rank, partition, offset, 0),
            event.key,
            partition,
            event=event,
            raw=raw,
            topic=topic,
            offset=offset,
            anchor=(partition, topic, offset),
            stream=source.stream,
        )
        self.merger.push(source.queue, record)  # type: ignore[arg-type]
        self.merger.arrived(source, offset, now)

    def _receive_envelope(
        self, source: Source, partition: int, offset: int, value: bytes, now: float
    ) -> None:
        merger = self.merger
        try:
            record = decode_envelope(value)
            if record.kind == EVENT:
                limit = max(self.settings.max_bytes, len(record.raw))
                record.event = decode_event(record.raw, limit)
        except (EnvelopeError, InvalidEvent) as exc:
            # Not ours, or damaged: keep it, say why, never stop.
            reason = exc.reason if isinstance(exc, InvalidEvent) else str(exc)
            self._dlq(REPARTITION, partition, offset, value, reason)
            self._count(REPARTITION, "invalid")
            merger.arrived(source, offset, now)
            return
        if record.kind == CLOCK:
            if record.frontier is not None:  # a frontier marker (send_fronts)
                merger.front(source, record.sender, record.at, record.frontier)
                self._count(REPARTITION, "clock")
                merger.arrived(source, offset, now)
                return
            newest = record.key[0]
            if self.remote_newest is None or newest > self.remote_newest:
                self.remote_newest = newest
            self._count(REPARTITION, "clock")
            merger.arrived(source, offset, now)
            return
        record.topic = REPARTITION
        record.offset = offset
        record.anchor = (partition, REPARTITION, offset)
        if record.kind == STATE:
            merger.fulfil(_token(record.merge_id, record.to))
        merger.insert(merger.peer(partition, record.sender, kafka=True), record)
        merger.arrived(source, offset, now)

    # ------------------------------------------------------------------ release

    def run(self, now: float, limit: int = 0) -> int:
        """Apply what the merge releases (at most ``limit`` records if > 0); return how many."""
        merger = self.merger
        if self._awaiting:
            self._expire(now)
        if not merger.buffered:
            return 0
        pop = merger.pop
        apply = self._apply
        done = 0
        while merger.buffered:
            record = pop(now)
            if record is None:
                break
            apply(record, now)
            done += 1
            if done == limit:
                break
        if done:
            self._active_at = now
        return done

    def refresh(self, now: float) -> None:
        """Look again at what the merge waits for (high-water marks, expected records)."""
        self.merger.refresh(now)

    def _apply(self, record: Record, now: float) -> None:
        if self._plans and record.key[0] >= self._plans[0][0]:
            self._switch(record.key[0], late=False)
        topic = record.topic
        if topic and topic != REPARTITION:
            # An input message: released in offset order, so this is the next offset.
            self.parts[record.part].released[topic] = record.offset + 1
        if self._awaiting:
            self._route(record, self.merger.last, now)
        else:
            self._cause = self.merger.last
            self._dispatch(record, now)

    def _route(self, record: Record, after: Key, now: float) -> None:
        """Apply a record, or park it if its state awaits a hand-over it comes after.

        ``after`` is the largest key released from the record's queue up to it: with
        the answer there, the merge would have released the answer first if that key
        is beyond the answer's (a late record behind a later one in its queue comes
        after that one, so after the answer too).
        """
        kind = record.kind
        if kind != INVALID:
            target = record.anon if kind == REQUEST else record.to
            waits = self._awaiting.get(target)
            if waits is not None and after > waits[0].key:
                parked = self._parked.get(target)
                if kind == EVENT and not self._unparking:  # (parked again: judged once)
                    self._count_late(record, parked)
                if parked is None:
                    self._parked[target] = [(record, after)]
                else:
                    parked.append((record, after))
                self.parked += 1
                if self._may_send(record):
                    self._sending[id(record)] = after
                    heapq.heappush(self._sending_keys, (after, id(record)))
                return
        self._cause = after
        self._dispatch(record, now)
        if kind == STATE and self._awaiting:
            self._answered(record.to, _token(record.merge_id, record.to), now)

    def _answered(self, target: str, token: str, now: float) -> None:
        """A hand-over ``target`` awaited was applied (or given up): go on with its records."""
        waits = self._awaiting.get(target)
        if waits is None:
            return
        left = [w for w in waits if w.token != token]
        if len(left) == len(waits):
            return
        if left:
            self._awaiting[target] = left
        else:
            del self._awaiting[target]
        records = self._parked.pop(target, None)
        if records is None:
            return
        self.parked -= len(records)
        sending = self._sending
        self._unparking += 1
        try:
            for record, after in records:  # in release order; each may be parked again
                sending.pop(id(record), None)
                self._route(record, after, now)
        finally:
            self._unparking -= 1

    def _count_late(self, record: Record, parked: list[tuple[Record, Key]] | None) -> None:
        """Count a parked event as late if it was late when the merge released it.

        Applied after its hand-over, it comes after newer events of other contacts of
        its partition by design, not because it reached Kafka late; counted then, every
        event a contact identified across workers had waiting showed as late (all 14 of
        one contact's in a traced two-worker soak). Judged instead against its
        partition's newest event and the events parked before it for the same contact.
        """
        event = record.event
        part = self.parts.get(record.part)
        if event is None or part is None:
            return
        newest = part.newest
        for other, _ in parked or ():
            if other.event is not None and (newest is None or other.event.ts > newest):
                newest = other.event.ts
        if newest is not None and event.ts < newest:
            self.late += 1

    def _may_send(self, record: Record) -> bool:
        """Whether applying a parked record may send records to other partitions: all but
        the events of a contact id in its own partition (no hand-over, no forward)."""
        if record.kind != EVENT:
            return True
        event = record.event
        if event is None or type(event) is Identify or event.contact_id is None:
            return True
        if partition_for(record.to, self.n) != record.part:
            return True
        part = self.parts.get(record.part)
        state = part.store.get(record.to) if part is not None else None
        return state is not None and state.alias is not None

    def _expire(self, now: float) -> None:
        """Give up hand-overs awaited for ``identify_wait``: apply what waited for them."""
        for target, waits in list(self._awaiting.items()):
            for waited in waits:
                if waited.deadline <= now:
                    self._answered(target, waited.token, now)

    def _dispatch(self, record: Record, now: float) -> None:
        kind = record.kind
        part = self.parts[record.part]
        try:
            if kind == EVENT:
                outcome = self._event(part, record, now)
            elif kind == INVALID:
                self._dlq(record.topic, part.number, record.offset, record.raw, record.reason)
                outcome = "invalid"
            elif kind == REQUEST:
                self._hand_over(part, record, now)
                outcome = "internal"
            else:
                self._merge_in(part, record, now)
                outcome = "internal"
        except Exception as exc:  # a bug must not stop the service: keep the message, say why
            self._dlq(
                record.topic or REPARTITION,
                part.number,
                record.offset,
                record.raw or _error_payload(record),
                INTERNAL_ERROR + repr(exc),
            )
            outcome = "error"
        self._count(record.topic or REPARTITION, outcome)

    # ------------------------------------------------------------------ events

    def _event(self, part: Partition, record: Record, now: float) -> str:
        event = record.event
        assert event is not None
        key = record.to
        home = partition_for(key, self.n)
        if home != part.number:
            # A producer with another partitioner (or no key): send it where it lives.
            self._send(part, home, _forward(record, key, part.number), now)
            return "forwarded"
        scratch = part.scratch
        state = scratch.get(key) if scratch is not None else part.store.get(key)
        if state is not None:
            stream = record.stream
            if record.position <= state.marks.get(stream, -1):
                # Already in this state: a replay. (An identified anonymous state keeps the
                # marks it was handed over with, so what it counted is not sent on again.)
                if type(event) is Identify and state.alias is None:
                    self._identify(part, state, event, record, now)  # its hand-over again
                return "replayed"
            if state.alias is not None:
                # An identified anonymous id: the event is its contact's.
                target = state.alias
                self._send(
                    part, partition_for(target, self.n), _forward(record, target, part.number), now
                )
                return "forwarded"
        else:
            state = self.engine.new_state(key, anonymous=event.contact_id is None)
            stream = record.stream
        ts = event.ts
        if part.newest is not None and ts < part.newest and not self._unparking:
            self.late += 1
        outcome = self.engine.apply(state, event)
        if outcome.status == "duplicate":
            return "duplicate"
        state.marks[stream] = record.position
        if part.newest is None or ts > part.newest:
            part.newest = ts
            if self.newest is None or ts > self.newest:
                self.newest = ts
        self.last_ts = ts
        if self._applied_times is not None:
            self._applied_times.append(ts)
        self._changed(part, state, outcome.crossings)
        if type(event) is Identify:  # not isinstance: see Engine.apply
            self._identify(part, state, event, record, now)
        return "applied"

    # ------------------------------------------------------------------ identity

    def _identify(
        self, part: Partition, contact: ContactState, event: Identify, cause: Record, now: float
    ) -> None:
        anon = event.anonymous_id
        assert anon is not None
        if anon == contact.key:
            return
        request = Record(
            REQUEST,
            _next_hop(cause.key),
            contact.key,
            part.number,
            anon=anon,
            at=event.ts,
            merge_id=event.event_id,
            anchor=cause.anchor,
        )
        dest = partition_for(anon, self.n)
        key = cause.key
        answer = stream_id(dest, key[2], key[1], key[4] + 2)
        # On a replay whose answer this contact already merged, nothing is awaited.
        merged = contact.marks.get(answer, -1) >= key[3]
        self._send(part, dest, request, now, expect=not merged)

    def _hand_over(self, part: Partition, request: Record, now: float) -> None:
        """In the anonymous id's partition: give its state to the contact, leave an alias.

        Idempotent: a repeated request (a replay) gets the same answer, because the
        handed-over state stays as it was, marked with the identify that took it.
        """
        anon = request.anon
        contact = request.to
        engine = self.engine
        store = part.store
        state = store.get(anon)
        # The state itself goes with the answer, not its bytes: it stays as handed over
        # here (an alias is never advanced, scored or merged into), and the merge only
        # reads it (``Engine.merge`` copies what it keeps). Encoding and decoding it for
        # the answer cost about 5 % of `scorestream score`; it is encoded only if the
        # answer goes to another worker (``encode_envelope``).
        given: ContactState | None = None
        if state is None:
            state = engine.new_state(anon, anonymous=True)
            state.alias = contact
            self._changed(part, state, ())
        elif state.alias is None:
            # Timers and expiry due before the identify happen first, as they would have
            # if time had passed for this visitor (the worker's sweep may already have).
            crossings = engine.advance(state, request.at - 1) if state.clock is not None else []
            given = state
            state.alias = contact
            state.handed = request.merge_id
            self._changed(part, state, crossings)
        elif state.handed == request.merge_id:
            given = state  # a repeated request: the same state, the same bytes
        elif state.alias != contact:
            state.alias = contact  # identified again: later events go to the new contact
            self._changed(part, state, ())
        answer = Record(
            STATE,
            _next_hop(request.key),
            contact,
            part.number,
            anon=anon,
            at=request.at,
            merge_id=request.merge_id,
            state=given,
            anchor=request.anchor,
        )
        self._send(part, partition_for(contact, self.n), answer, now)

    def _merge_in(self, part: Partition, record: Record, now: float) -> None:
        """In the contact's partition: merge the anonymous state in (or note there is none)."""
        store = part.store
        contact = store.get(record.to)
        stream = record.stream
        if contact is not None and record.position <= contact.marks.get(stream, -1):
            return
        if contact is not None and contact.alias is not None:
            target = contact.alias  # the contact was itself merged into another one
            moved = _forward(record, target, part.number)
            self._send(part, partition_for(target, self.n), moved, now)
            return
        given = record.state
        if given is None and record.payload is None:
            if contact is not None:
                contact.marks[stream] = record.position
                part.store.put(contact)
            return
        if contact is None:
            contact = self.engine.new_state(record.to)
        if given is not None:
            other = given
        else:
            assert record.payload is not None
            other = ContactState.from_bytes(record.payload)
        crossings = self.engine.merge(contact, other, record.at, record.merge_id)
        contact.marks[stream] = record.position
        self._changed(part, contact, crossings)

    def _send(
        self, part: Partition, dest: int, record: Record, now: float, expect: bool = True
    ) -> None:
        record.sender = part.number
        if dest in self.parts:
            self.merger.push(self.merger.peer(dest, part.number), record)
            return
        self.emit.repartition(dest, _routing_key(record), encode_envelope(record))
        if record.kind == REQUEST and expect:
            # Its answer comes back through Kafka: the contact's records past its key wait.
            token = _token(record.merge_id, record.to)
            key = _next_hop(record.key)
            self.merger.expect(token, key, now)
            waited = Awaited(token, key, now + self.settings.identify_wait, record.anchor)
            waits = self._awaiting.get(record.to)
            if waits is None:
                self._awaiting[record.to] = [waited]
            elif all(w.token != token for w in waits):
                waits.append(waited)
                waits.sort(key=_awaited_key)

    def _frontier(self) -> Key:
        """A key every record this worker sends from now on follows in the order of the
        whole stream (what ``Merger.front`` relies on), the smallest of: ``_cause``,
        which the record being applied comes after; the input floor
        (``Merger.input_floor``), which every record an input queue releases later
        comes after, whether it is in Kafka yet or not; and the key each parked record
        that may send was released after. (The newest key released alone, without the
        floor, was no bound live: an input read to its end got records older than it,
        and what they sent reached other workers below a frontier already sent. Parked
        events of a contact id send nothing: the identify's contact usually has such
        events parked, and counting them held the frontier at the oldest hand-over
        awaited, one round trip between the workers behind, which let almost nothing
        pass.)"""
        frontier = self._cause
        floor = self.merger.input_floor()
        if floor is None:
            return _MIN_KEY
        frontier = min(frontier, floor)
        heap = self._sending_keys
        sending = self._sending
        while heap and sending.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        if heap and heap[0][0] < frontier:
            frontier = heap[0][0]
        return frontier

    # ------------------------------------------------------------------ time

    def quiet(self, now: float) -> bool:
        """Nothing to apply, nothing awaited, nothing released and no (re)join for
        ``idle_timeout`` seconds."""
        merger = self.merger
        return (
            merger.buffered == 0
            and not merger.blocked
            and merger.expected == 0
            and now - self._active_at >= self.settings.idle_timeout
        )

    def advance_watermark(self, now: float) -> int:
        """Event time up to which idle contacts may be advanced now (monotone).

        While records flow it follows the newest event applied, ``lateness`` behind, and
        stays before the next record to release; when the stream has been quiet for
        ``idle_timeout`` it reaches the newest event time of every partition (this
        worker's and what other workers report) — where ``scorestream score`` evaluates
        — and, if that is less than ``live_horizon`` old, follows the wall clock
        ``lateness`` behind, so quiet contacts still decay and time out.
        """
        s = self.settings
        wm = self.watermark
        if self.newest is None and self.remote_newest is None:
            return wm
        if self.quiet(now):
            newest = max(x for x in (self.newest, self.remote_newest) if x is not None)
            candidate = newest
            wall_us = int(now * US_PER_SECOND)
            if wall_us - newest <= int(s.live_horizon * US_PER_SECOND):
                candidate = max(candidate, wall_us - self._lateness_us)
        elif self.newest is not None and not self.merger.blocked:
            candidate = self.newest - self._lateness_us
            head = self.merger.head()
            if head is not None:
                candidate = min(candidate, head[0] - 1)
            gate = self.merger.gate()
            if gate is not None:
                candidate = min(candidate, gate[0] - 1)
        else:
            return wm
        hold = self.merger.hold
        if hold is not None:
            # Held for a hand-over: nothing at or past the hold happens under this plan.
            candidate = min(candidate, hold[0] - 1)
        if candidate > wm:
            self.watermark = wm = candidate
        return wm

    def tick(self, now: float) -> int:
        """Fire what is due in every partition up to the watermark; return contacts touched."""
        wm = self.advance_watermark(now)
        if self._plans and wm >= self._plans[0][0]:
            self._switch(wm, late=False)
        touched = 0
        engine = self.engine
        for part in list(self.parts.values()):
            heap = part.heap
            while heap and heap[0][0] <= wm:
                due, key = heapq.heappop(heap)
                if part.scheduled.get(key) != due:
                    continue  # stale entry: rescheduled since
                del part.scheduled[key]
                state = part.store.get(key)
                if state is None or state.alias is not None:
                    continue
                crossings = engine.advance(state, wm)
                touched += 1
                self._changed(part, state, crossings)
            if len(heap) > 2 * len(part.scheduled) + 1024:
                part.heap = [(d, k) for k, d in part.scheduled.items()]
                heapq.heapify(part.heap)
        return touched

    def clock_due(self, now: float) -> int | None:
        """The newest event time to tell other workers, when quiet and it changed."""
        if self.newest is None or not self.quiet(now) or self.newest == self._clock_sent:
            return None
        return self.newest

    def send_clock(self, newest: int) -> None:
        """Tell every partition this processor does not own the newest event time here.

        Marked as told only when it went somewhere: a worker owning every partition (the
        others down) tells no one, and must tell those that come back.
        """
        dests = [dest for dest in range(self.n) if dest not in self.parts]
        for dest in dests:
            self.emit.repartition(dest, "", clock_envelope(-1, newest))
        if dests:
            self._clock_sent = newest

    def send_fronts(self, now: float) -> int:
        """Tell every partition this processor does not own, for each partition it owns,
        the frontier (see :meth:`_frontier`), at most every ``front_interval`` seconds
        and only when it moved; return how many markers were sent.

        A receiver knows how far another worker has got only from these markers, and
        waits for a partition it has no marker from (Merger.front). Markers go out per
        owned partition to each other one: 9 every 50 ms for two workers sharing six
        partitions.
        """
        interval = self.settings.front_interval
        if interval <= 0 or now - self._front_at < interval:
            return 0
        self._front_at = now
        remote = self.merger.remote
        if not remote or not self.parts:
            return 0  # (checked first: the frontier walks every input's queue)
        frontier = self._frontier()
        if frontier == self._front_sent or frontier <= _MIN_KEY:
            return 0  # (nothing released yet promises nothing)
        self._front_sent = frontier
        sent = 0
        for number in self.parts:
            marker = front_envelope(number, frontier, self.generation)
            for dest in remote:
                self.emit.repartition(dest, "", marker)
                sent += 1
        return sent

    def advance_all(self, at: int) -> None:
        """Let time pass to ``at`` for every contact (offline: the evaluation time)."""
        for part in self.parts.values():
            for state in list(_states(part.store)):
                if state.alias is None:
                    self._changed(part, state, self.engine.advance(state, at))

    # ------------------------------------------------------------------ state

    def _changed(self, part: Partition, state: ContactState, crossings: Iterable[Crossing]) -> None:
        scratch = part.scratch
        if scratch is not None:
            scratch[state.key] = state  # what ScratchStore.put does
        else:
            part.store.put(state)
        emit = self.emit.crossing
        for crossing in crossings:
            emit(crossing)
        if not self._schedule:
            return
        due = self.engine.next_due(state) if state.alias is None else None
        key = state.key
        if due is None:
            part.scheduled.pop(key, None)
        elif part.scheduled.get(key) != due:
            part.scheduled[key] = due
            heapq.heappush(part.heap, (due, key))

    def take_dirty(self, partition: int) -> list[str]:
        """Keys changed since the last call (they are no longer marked dirty)."""
        return [state.key for state in self.parts[partition].store.take_dirty()]

    def encode(self, partition: int, key: str) -> tuple[bytes, bytes | None]:
        """A contact's changelog value and its ``contacts.scores`` record (None for aliases)."""
        part = self.parts[partition]
        state = part.store.get(key)
        assert state is not None, key
        value = encode_value(state, part.scheduled.get(key))
        score = None
        if state.alias is None and state.clock is not None:
            score = json.dumps(self.score_record(state)).encode()
        return value, score

    def commit_offsets(self) -> dict[int, dict[str, int]]:
        """Per owned partition, the offsets (unprefixed topics) its states fully include.

        Input topics: the next offset not yet released. The repartition topic: the oldest
        message read from it that still waits in a peer queue. Both are held back to the
        origin of any record that was delivered in memory and still waits: if the worker
        died now, replaying from there re-creates it.
        """
        out: dict[int, dict[str, int]] = {}
        merger = self.merger
        for number, part in self.parts.items():
            offsets = dict(part.released)
            rep = merger.sources.get((self.real(REPARTITION), number))
            offsets[REPARTITION] = rep.received if rep is not None else 0
            out[number] = offsets
        anchors: list[tuple[int, str, int] | None] = []
        for queue in merger.peers.values():
            anchors.extend(record.anchor for record in queue.items)
        for records in self._parked.values():
            anchors.extend(record.anchor for record, _ in records)
        for waits in self._awaiting.values():
            anchors.extend(waited.anchor for waited in waits)
        for anchor in anchors:
            if anchor is None:
                continue
            number, topic, offset = anchor
            held = out.get(number)
            if held is not None and offset < held.get(topic, offset + 1):
                held[topic] = offset
        return out

    @property
    def awaiting(self) -> int:
        """Contacts waiting for a hand-over from another worker."""
        return len(self._awaiting)

    def score_record(self, state: ContactState) -> dict[str, Any]:
        """The ``contacts.scores`` message of a contact (scores at its own clock)."""
        engine = self.engine
        at = state.clock or 0
        return {
            "contact_id": state.key,
            "scores": engine.scores(state, at),
            "tiers": engine.tiers(state),
            "updated_at": format_ts(at),
            "rules_version": engine.rules.version,
            "anonymous": state.anonymous,
        }

    def lookup(self, key: str) -> ContactState | None:
        """The state of a contact if this processor owns its partition."""
        part = self.parts.get(partition_for(key, self.n))
        if part is None:
            return None
        return part.store.get(key)

    def resolve(self, key: str) -> ContactState | None:
        """The state an id stands for now: an identified anonymous id gives its contact."""
        state = self.lookup(key)
        hops = 0
        while state is not None and state.alias is not None and hops < 64:
            state = self.lookup(state.alias)
            hops += 1
        return state

    def states(self) -> Iterator[ContactState]:
        """Every contact state (not aliases) of every owned partition, sorted by id."""
        found = [s for part in self.parts.values() for s in _states(part.store)]
        found.sort(key=lambda s: s.key)
        return (s for s in found if s.alias is None)

    def take_applied_times(self) -> list[int]:
        """Event times of the events applied since the last call (oldest first)."""
        times = self._applied_times
        if not times:
            return []
        self._applied_times = []
        return times

    def take_counts(self) -> dict[tuple[str, str], int]:
        """Message outcomes counted since the last call."""
        counts, self.counts = self.counts, {}
        return counts

    # ------------------------------------------------------------------ DLQ

    def _count(self, topic: str, outcome: str) -> None:
        key = (topic, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _dlq(self, topic: str, partition: int, offset: int, payload: bytes, reason: str) -> None:
        self.emit.dlq(dlq_record(self.real(topic), partition, offset, payload, reason))


def dlq_record(
    topic: str, partition: int, offset: int, payload: bytes, reason: str
) -> dict[str, Any]:
    """The ``events.dlq`` message: the reason and the original bytes (base64 if not UTF-8)."""
    record: dict[str, Any] = {
        "error": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }
    body = payload
    if len(body) > DLQ_PAYLOAD_LIMIT:
        record["truncated"] = True
        record["payload_bytes"] = len(body)
        body = body[:DLQ_PAYLOAD_LIMIT]
    try:
        record["payload"] = body.decode("utf-8")
        record["encoding"] = "utf-8"
    except UnicodeDecodeError:
        record["payload"] = base64.b64encode(body).decode("ascii")
        record["encoding"] = "base64"
    return record


#: below every record's key (a frontier that promises nothing)
_MIN_KEY: Key = (MIN_TS - 1, 0, 0, 0, 0)


def _next_hop(key: Key) -> Key:
    return (key[0], key[1], key[2], key[3], key[4] + 1)


def _awaited_key(waited: Awaited) -> Key:
    return waited.key


def _token(merge_id: str, contact: str) -> str:
    return f"{merge_id}\x00{contact}"


def _routing_key(record: Record) -> str:
    return record.anon if record.kind == REQUEST else record.to


def _error_payload(record: Record) -> bytes:
    """What the DLQ keeps of a record that hit an internal error and has no bytes of its
    own (offline runs do not keep input lines): the event as JSON, else its envelope."""
    if record.kind == EVENT and record.event is not None:
        return json.dumps(event_to_dict(record.event), ensure_ascii=False).encode()
    return encode_envelope(record)


def _forward(record: Record, to: str, sender: int) -> Record:
    """The same work, for another state: it keeps its merge key and origin."""
    return Record(
        record.kind,
        record.key,
        to,
        sender,
        event=record.event,
        raw=record.raw,
        anchor=record.anchor,
        anon=record.anon,
        at=record.at,
        merge_id=record.merge_id,
        payload=record.payload,
        state=record.state,
    )


def _past_cut(marks: dict[str, int], cuts: dict[int, dict[str, int]]) -> bool:
    """Whether marks include a record from past a rebuild's cut (see :meth:`Processor.install`)."""
    for stream, position in marks.items():
        if stream == GENERATION_MARK:
            continue
        parts = stream.split("/", 1)[0].split(":")
        if len(parts) != 3:
            continue
        cut = cuts.get(int(parts[1]))
        if cut is None:
            continue
        rank = int(parts[2])
        topic = INPUT_TOPICS[rank] if 0 <= rank < len(INPUT_TOPICS) else None
        if topic is not None and position >= cut.get(topic, 1 << 62):
            return True
    return False


def _states(store: StateStore) -> Iterator[ContactState]:
    states = getattr(store, "states", None)
    if states is None:
        raise TypeError(f"{type(store).__name__} cannot list its states")
    result: Iterator[ContactState] = states()
    return result


__all__ = [
    "GENERATION_MARK",
    "Awaited",
    "Emitter",
    "Partition",
    "Processor",
    "Queue",
    "Settings",
    "dlq_record",
    "stream_id",
]
