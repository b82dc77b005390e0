"""The worker's per-partition logic around the engine, free of Faust and Kafka clients.

The Faust agent hands every consumed message to :meth:`Processor.handle`; a periodic
task calls :meth:`Processor.tick` (timers and decay of idle contacts) and
:meth:`Processor.snapshot` (checkpoints). Outputs leave through an :class:`Emitter`.

Exactly-once state, at-least-once outputs:

* each partition remembers, per input topic, the next offset its state includes
  (``applied``); a redelivered message below it is skipped;
* after a recovery, contacts whose changelog record is newer than the committed offsets
  (a checkpoint that wrote its changelog but died before committing) are listed in
  ``ahead`` with the offsets their state already includes, so their redelivered events
  are skipped too;
* outputs are produced as they happen and flushed before offsets are committed, and a
  crossing has a deterministic id, so a replay re-sends the same crossings.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scorestream.app.routing import Envelope, partition_for
from scorestream.app.store import PartitionStore, encode_value
from scorestream.engine.events import AnyEvent, Identify, InvalidEvent, decode_event
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts

#: Leave room under the DLQ topic's max.message.bytes (4 MiB) for the JSON around a payload.
DLQ_PAYLOAD_LIMIT = 2_900_000


class Emitter(Protocol):
    """Where the processor's outputs go (Kafka in the worker, lists in tests)."""

    def crossing(self, crossing: Crossing) -> None:
        """A threshold crossing for ``leads.sales_ready``."""

    def dlq(self, record: dict[str, Any]) -> None:
        """An invalid input for ``events.dlq``."""

    def repartition(self, partition: int, key: str, envelope: Envelope) -> None:
        """Work for another partition (or this one) on the repartition topic."""


@dataclass(slots=True)
class PartitionState:
    """What the processor keeps for one assigned partition."""

    partition: int
    store: PartitionStore
    applied: dict[str, int] = field(default_factory=dict)
    ahead: dict[str, dict[str, int]] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)
    max_event_ts: int | None = None
    last_event_wall: float = 0.0
    watermark: int = 0


@dataclass(slots=True)
class Snapshot:
    """A partition's changes since the previous checkpoint."""

    partition: int
    states: list[tuple[str, bytes]]
    scores: list[tuple[str, bytes]]
    vector: dict[str, int]


class Processor:
    """Routes messages of the assigned partitions to the engine and their outputs out."""

    def __init__(
        self,
        engine: Engine,
        partitions: int,
        repartition_topic: str,
        emitter: Emitter,
        max_bytes: int = 1_000_000,
        lateness: float = 5.0,
        idle_timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.n = partitions
        self.repartition_topic = repartition_topic
        self.emit = emitter
        self.max_bytes = max_bytes
        self.lateness_us = int(lateness * US_PER_SECOND)
        self.idle_timeout = idle_timeout
        self.parts: dict[int, PartitionState] = {}
        #: event time of the last event applied (for the event-delay metric)
        self.last_ts = 0

    # ------------------------------------------------------------------ assignment

    def assign(
        self,
        partition: int,
        store: PartitionStore,
        committed: dict[str, int],
        ahead: dict[str, dict[str, int]] | None = None,
        wall: float = 0.0,
    ) -> PartitionState:
        """Take ownership of a recovered partition; rebuild its timer index.

        ``wall`` starts the idle clock: a partition is not treated as idle (its watermark
        does not jump to wall time) until ``idle_timeout`` after assignment.
        """
        ps = PartitionState(
            partition, store, applied=dict(committed), ahead=dict(ahead or {}), last_event_wall=wall
        )
        for key, due in store.dues():
            ps.scheduled[key] = due
            ps.heap.append((due, key))
        heapq.heapify(ps.heap)
        self.parts[partition] = ps
        return ps

    def release(self, partition: int) -> PartitionState | None:
        """Give up a partition (after its last checkpoint)."""
        return self.parts.pop(partition, None)

    # ------------------------------------------------------------------ messages

    def handle(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        wall: float,
    ) -> str:
        """Process one consumed message; return what happened (a metrics label)."""
        ps = self.parts.get(partition)
        if ps is None:
            return "unassigned"
        if offset < ps.applied.get(topic, 0):
            return "replayed"  # already in the state (redelivery after a failed commit)
        ps.applied[topic] = offset + 1
        if topic == self.repartition_topic:
            return self._internal(ps, topic, offset, value or b"", wall)
        if value is None:
            self._dlq(topic, partition, offset, b"", "empty message (no value)")
            return "invalid"
        try:
            event = decode_event(value, self.max_bytes)
        except InvalidEvent as exc:
            self._dlq(topic, partition, offset, value, exc.reason)
            return "invalid"
        key = event.key
        home = partition_for(key, self.n)
        if home != partition:
            self.emit.repartition(home, key, Envelope("event", key, payload=value))
            return "forwarded"
        return self._event(ps, topic, offset, event, key, value, wall)

    def _internal(
        self, ps: PartitionState, topic: str, offset: int, value: bytes, wall: float
    ) -> str:
        try:
            env = Envelope.decode(value)
        except ValueError as exc:
            self._dlq(topic, ps.partition, offset, value, str(exc))
            return "invalid"
        if env.kind == "event":
            try:
                event = decode_event(env.payload, max(self.max_bytes, len(env.payload)))
            except InvalidEvent as exc:  # cannot happen for our own envelopes; never crash
                self._dlq(topic, ps.partition, offset, env.payload, exc.reason)
                return "invalid"
            return self._event(ps, topic, offset, event, env.to, env.payload, wall)
        if self._is_ahead(ps, env.to if env.kind == "merge_state" else env.anon, topic, offset):
            return "replayed"
        if env.kind == "merge_request":
            self._hand_over(ps, env)
        else:
            self._merge_in(ps, env)
        return "internal"

    def _is_ahead(self, ps: PartitionState, key: str, topic: str, offset: int) -> bool:
        ahead = ps.ahead.get(key)
        return ahead is not None and offset < ahead.get(topic, 0)

    def _event(
        self,
        ps: PartitionState,
        topic: str,
        offset: int,
        event: AnyEvent,
        key: str,
        raw: bytes,
        wall: float,
    ) -> str:
        if self._is_ahead(ps, key, topic, offset):
            return "replayed"
        store = ps.store
        state = store.get(key)
        if state is not None and state.alias is not None:
            # An identified anonymous id: the event belongs to its contact.
            target = state.alias
            self.emit.repartition(
                partition_for(target, self.n), target, Envelope("event", target, payload=raw)
            )
            return "forwarded"
        if state is None:
            state = self.engine.new_state(key, anonymous=event.contact_id is None)
        outcome = self.engine.apply(state, event)
        if outcome.status == "duplicate":
            return "duplicate"
        ps.last_event_wall = wall
        self.last_ts = event.ts
        if ps.max_event_ts is None or event.ts > ps.max_event_ts:
            ps.max_event_ts = event.ts
        self._changed(ps, state, outcome.crossings)
        if isinstance(event, Identify):
            self._identify(ps, state, event)
        return "applied"

    # ------------------------------------------------------------------ identity

    def _identify(self, ps: PartitionState, contact: ContactState, event: Identify) -> None:
        anon = event.anonymous_id
        assert anon is not None
        if anon == contact.key:
            return
        home = partition_for(anon, self.n)
        request = Envelope(
            "merge_request", contact.key, anon=anon, at=event.ts, merge_id=event.event_id
        )
        if home == ps.partition:
            self._hand_over(ps, request)  # same partition: merge now, as offline does
        else:
            self.emit.repartition(home, anon, request)

    def _hand_over(self, ps: PartitionState, req: Envelope) -> None:
        """In the anonymous id's partition: give its state to the contact, leave an alias."""
        store = ps.store
        other = store.get(req.anon)
        stub = self.engine.new_state(req.anon, anonymous=True)
        stub.alias = req.to
        if other is None:
            self._changed(ps, stub, [])
            return
        if other.alias is not None:
            if other.alias != req.to:  # identified again: later events go to the new contact
                other.alias = req.to
                self._changed(ps, other, [])
            return
        stub.clock = other.clock
        self._changed(ps, stub, [])
        merge = Envelope(
            "merge_state",
            req.to,
            anon=req.anon,
            at=req.at,
            merge_id=req.merge_id,
            payload=other.to_bytes(),
        )
        home = partition_for(req.to, self.n)
        if home == ps.partition:
            self._merge_in(ps, merge)
        else:
            self.emit.repartition(home, req.to, merge)

    def _merge_in(self, ps: PartitionState, env: Envelope) -> None:
        """In the contact's partition: merge the anonymous state in."""
        store = ps.store
        contact = store.get(env.to)
        if contact is not None and contact.alias is not None:
            target = contact.alias
            self.emit.repartition(
                partition_for(target, self.n),
                target,
                Envelope(
                    "merge_state",
                    target,
                    anon=env.anon,
                    at=env.at,
                    merge_id=env.merge_id,
                    payload=env.payload,
                ),
            )
            return
        if contact is None:
            contact = self.engine.new_state(env.to)
        other = ContactState.from_bytes(env.payload)
        crossings = self.engine.merge(contact, other, env.at, env.merge_id)
        self._changed(ps, contact, crossings)

    # ------------------------------------------------------------------ time

    def watermark(self, ps: PartitionState, wall: float) -> int:
        """Event time up to which idle contacts of this partition are advanced.

        It follows the newest event time seen (minus the allowed lateness), never ahead
        of the wall clock; when the partition has been idle for ``idle_timeout`` seconds
        it follows the wall clock, so idle contacts still decay and time out.
        """
        wall_us = int(wall * US_PER_SECOND)
        if self.idle_timeout > 0 and (wall - ps.last_event_wall) >= self.idle_timeout:
            candidate = wall_us - self.lateness_us
        elif ps.max_event_ts is None:
            return ps.watermark  # nothing seen yet, and not idle long enough to trust the wall
        else:
            candidate = min(ps.max_event_ts, wall_us) - self.lateness_us
        ps.watermark = max(ps.watermark, candidate)
        return ps.watermark

    def tick(self, wall: float) -> int:
        """Fire what is due in every partition up to its watermark; return contacts touched."""
        touched = 0
        for ps in list(self.parts.values()):
            wm = self.watermark(ps, wall)
            heap = ps.heap
            while heap and heap[0][0] <= wm:
                due, key = heapq.heappop(heap)
                if ps.scheduled.get(key) != due:
                    continue  # stale entry: rescheduled since
                del ps.scheduled[key]
                state = ps.store.get(key)
                if state is None or state.alias is not None:
                    continue
                crossings = self.engine.advance(state, wm)
                touched += 1
                self._changed(ps, state, crossings)
            if len(heap) > 2 * len(ps.scheduled) + 1024:
                ps.heap = [(d, k) for k, d in ps.scheduled.items()]
                heapq.heapify(ps.heap)
        return touched

    # ------------------------------------------------------------------ state

    def _changed(
        self, ps: PartitionState, state: ContactState, crossings: Iterable[Crossing]
    ) -> None:
        ps.store.put(state)
        for crossing in crossings:
            self.emit.crossing(crossing)
        due = self.engine.next_due(state) if state.alias is None else None
        key = state.key
        if due is None:
            ps.scheduled.pop(key, None)
        elif ps.scheduled.get(key) != due:
            ps.scheduled[key] = due
            heapq.heappush(ps.heap, (due, key))

    def take_dirty(self, partition: int) -> list[str]:
        """Keys changed since the last call (they are no longer marked dirty)."""
        return [state.key for state in self.parts[partition].store.take_dirty()]

    def encode(self, partition: int, key: str) -> tuple[bytes, bytes | None]:
        """A contact's changelog value and its ``contacts.scores`` record (None for aliases)."""
        ps = self.parts[partition]
        state = ps.store.get(key)
        assert state is not None, key
        value = encode_value(state, ps.scheduled.get(key))
        score = None
        if state.alias is None and state.clock is not None:
            score = json.dumps(self.score_record(state)).encode()
        return value, score

    def vector(self, partition: int) -> dict[str, int]:
        """Per consumed topic, the next offset this partition's state includes."""
        return dict(self.parts[partition].applied)

    def snapshot(self, partition: int) -> Snapshot:
        """The partition's dirty states (changelog values), score records and offsets, at once."""
        states: list[tuple[str, bytes]] = []
        scores: list[tuple[str, bytes]] = []
        for key in self.take_dirty(partition):
            value, score = self.encode(partition, key)
            states.append((key, value))
            if score is not None:
                scores.append((key, score))
        return Snapshot(partition, states, scores, self.vector(partition))

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
        """The state of a contact if this worker owns its partition."""
        ps = self.parts.get(partition_for(key, self.n))
        if ps is None:
            return None
        return ps.store.get(key)

    # ------------------------------------------------------------------ DLQ

    def _dlq(self, topic: str, partition: int, offset: int, payload: bytes, reason: str) -> None:
        self.emit.dlq(dlq_record(topic, partition, offset, payload, reason))


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
