"""What flows through the pipeline: records, their merge keys, and repartition envelopes.

Every record has a **merge key** ``(ts, rank, origin partition, origin offset, hop)``:
its event time, the tie rank of the topic it was first published to, the Kafka position
it originates from, and how many hops it is away from it (an identify is hop 0, the
hand-over request it causes hop 1, the anonymous state sent back hop 2; a forwarded event
keeps its origin and counts one hop). The keys are content, not arrival: wherever and
whenever a record travels, it sorts in the same place, which is what lets the live worker
and ``scorestream score`` apply a contact's events in the same order.

Every record also names its **stream** — ``"sender:origin partition:origin rank"`` — and
its **position** in it (the origin offset); the hop count is part of the stream for
records other than events. A contact state remembers, per stream, the
last position it applied, so a redelivered or replayed record is recognised whatever
path it took (exactly-once state, see :mod:`scorestream.pipeline.processor`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import msgpack

from scorestream.engine.events import AnyEvent
from scorestream.engine.state import ContactState

#: merge key of records that carry no event time (invalid input): they go first
MIN_TS: Final = -(1 << 62)

EVENT: Final = 0  # a valid input event, to be scored for ``to``
INVALID: Final = 1  # an input message that is not a valid event (to the DLQ)
REQUEST: Final = 2  # identify seen: the anonymous id's partition must hand over its state
STATE: Final = 3  # the anonymous state (or nothing) for the contact
CLOCK: Final = 4  # a remote partition's newest event time (repartition topic only)

#: (occurred_at µs, topic rank, origin partition, origin offset, hop). Typed as a
#: variable-length tuple on purpose: compiled, a fixed-length tuple of ints is unboxed
#: into C values on every read and boxed again (new tuple, new ints) on every store,
#: which cost more than the merge's own work; a ``tuple[int, ...]`` stays one object.
Key = tuple[int, ...]


@lru_cache(maxsize=65_536)
def stream_id(sender: int, origin_partition: int, origin_rank: int, hop: int = 0) -> str:
    """The stream a record belongs to (per contact, positions increase along it).

    A forwarded event keeps its hop, so it shares the stream of the event itself: a
    contact that merged an anonymous state recognises that state's events if they come
    again. An identity hand-over's answer (hop 2) is a stream of its own.
    """
    if hop:
        return f"{sender}:{origin_partition}:{origin_rank}/{hop}"
    return f"{sender}:{origin_partition}:{origin_rank}"


class Record:
    """One unit of work for a partition, released by the merge in key order."""

    __slots__ = (
        "anchor",
        "anon",
        "at",
        "event",
        "frontier",
        "key",
        "kind",
        "merge_id",
        "offset",
        "part",
        "payload",
        "raw",
        "reason",
        "sender",
        "state",
        "stream_",
        "to",
        "topic",
    )

    def __init__(
        self,
        kind: int,
        key: Key,
        to: str,
        sender: int,
        *,
        event: AnyEvent | None = None,
        raw: bytes = b"",
        topic: str = "",
        offset: int = -1,
        anchor: tuple[int, str, int] | None = None,
        anon: str = "",
        at: int = 0,
        merge_id: str = "",
        payload: bytes | None = None,
        state: ContactState | None = None,
        reason: str = "",
        stream: str = "",
        frontier: Key | None = None,
    ) -> None:
        self.kind = kind
        self.key = key
        #: the state this record is for (event key, anonymous id of a request, contact)
        self.to = to
        #: the partition that released the record's cause (own partition for input)
        self.sender = sender
        self.event = event
        #: the original message bytes (events, invalid input)
        self.raw = raw
        #: where it was read from Kafka, if it was (topic without prefix, offset)
        self.topic = topic
        self.offset = offset
        #: the Kafka record whose release started the in-memory chain that produced this
        #: record: (partition, topic, offset); its offset may not be committed while the
        #: record waits
        self.anchor = anchor
        self.anon = anon
        self.at = at
        self.merge_id = merge_id
        #: STATE: the anonymous state's bytes (None, and no ``state``: nothing to merge)
        self.payload = payload
        #: STATE passed in memory: the handed-over state itself, which its partition keeps
        #: unchanged (see ``Processor._hand_over``); encoded only if the record leaves
        #: the worker (:func:`encode_envelope`)
        self.state = state
        self.reason = reason
        #: the stream, when the creator knows it (input events: their source's); else it
        #: is derived on each use, since a record's sender may change until it is sent
        self.stream_ = stream
        #: the partition whose queue holds the record (set when it is queued)
        self.part = -1
        #: a frontier marker (CLOCK): the sending worker's frontier (a key no record it
        #: sends later comes before in the order of the whole stream; its consumer group
        #: generation is in ``at``, see ``Merger.front``); None for other records
        self.frontier = frontier

    @property
    def stream(self) -> str:
        """The record's stream (see the module docstring)."""
        if self.stream_:
            return self.stream_
        key = self.key
        return stream_id(self.sender, key[2], key[1], key[4])

    @property
    def position(self) -> int:
        """The record's position in its stream: the origin offset."""
        return self.key[3]

    def __repr__(self) -> str:
        return f"Record(kind={self.kind}, key={self.key}, to={self.to!r}, sender={self.sender})"


class EnvelopeError(ValueError):
    """Bytes on the repartition topic that are not an envelope of ours."""


_MAGIC = b"E1"


def encode_envelope(record: Record) -> bytes:
    """A record as a repartition-topic message (MessagePack after a 2-byte magic)."""
    key = record.key
    doc: list[Any] = [
        record.kind,
        record.to,
        record.sender,
        list(key),
        record.raw if record.kind == EVENT else b"",
        record.anon,
        record.at,
        record.merge_id,
        record.payload if record.state is None else record.state.handed_bytes(),
    ]
    return _MAGIC + bytes(msgpack.packb(doc, use_bin_type=True))


def clock_envelope(sender: int, newest: int) -> bytes:
    """A remote partition's newest event time, so idle workers can agree on stream time."""
    return _MAGIC + bytes(
        msgpack.packb([CLOCK, "", sender, [newest, 0, sender, 0, 0], b"", "", 0, "", None])
    )


def front_envelope(sender: int, frontier: Key, generation: int) -> bytes:
    """A frontier marker: partition ``sender``'s worker sends nothing more that comes
    before ``frontier``. A clock message without a time, the generation in ``at`` and
    the frontier in the payload: the envelope keeps its nine fields, so workers from
    before markers read it (and take no time from it) instead of refusing it."""
    frontier_bytes = bytes(msgpack.packb(list(frontier)))
    return _MAGIC + bytes(
        msgpack.packb(
            [CLOCK, "", sender, [MIN_TS, 0, sender, 0, 0], b"", "", generation, "", frontier_bytes]
        )
    )


def decode_envelope(data: bytes) -> Record:
    """Inverse of :func:`encode_envelope` (events are decoded by the caller)."""
    if data[:2] != _MAGIC:
        raise EnvelopeError("not a repartition envelope (bad magic)")
    try:
        kind, to, sender, key, raw, anon, at, merge_id, payload = msgpack.unpackb(
            data[2:], raw=False
        )
        if kind not in (EVENT, REQUEST, STATE, CLOCK) or len(key) != 5:
            raise EnvelopeError(f"not a repartition envelope (kind {kind!r})")
        frontier: Key | None = None
        if kind == CLOCK and payload is not None:
            front = msgpack.unpackb(payload)
            if len(front) != 5:
                raise EnvelopeError("not a repartition envelope (frontier)")
            frontier = tuple([int(x) for x in front])
        return Record(
            int(kind),
            (int(key[0]), int(key[1]), int(key[2]), int(key[3]), int(key[4])),
            str(to),
            int(sender),
            raw=bytes(raw),
            anon=str(anon),
            at=int(at),
            merge_id=str(merge_id),
            payload=None if payload is None else bytes(payload),
            frontier=frontier,
        )
    except EnvelopeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise EnvelopeError(f"not a repartition envelope: {exc}") from None
