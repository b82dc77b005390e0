"""Per-contact engine state: compact, bounded, and losslessly serialisable to bytes.

What a contact holds, and the bounds that keep it small however long it lives
(see :class:`Bounds`; the README repeats them):

* per model: one number per rule for decayed or undecayed points (``half_life`` points
  are kept as amounts at a reference time ``t0``, so a million old events are still one
  float per rule); for ``expire_after``, one entry per distinct award time that has not
  expired yet, coarsened beyond ``Bounds.buckets``;
* the attributes from ``profile_update`` and the attribute points they earn;
* which thresholds the contact is in, and how many crossings each has had (the
  sequence number in ``crossing_id``);
* the last ``Bounds.seen_ids`` event ids (as 64-bit hashes) for dedupe;
* the last ``Bounds.ledger`` changes, for explanations;
* pending ``unless`` timers (at most ``Bounds.timers``) and limit bookkeeping.

Serialisation: ``b"S2"``, a 4-byte length, a MessagePack document, then the dedupe hashes
as packed 8-byte integers. MessagePack keeps floats as IEEE doubles and integers exactly,
so ``from_bytes(to_bytes(s))`` is the same state and gives the same future results. (A
state MessagePack cannot hold — an attribute integer beyond 64 bits — is written as
JSON after ``b"S1"``.) MessagePack rather than JSON: measured 1.8x faster to write, 2.3x
faster to read and 20% smaller on simulated B2B contacts.

A document of more than ``COMPRESS_FROM`` bytes is LZ4-compressed (block format with its
size, through cramjam, which the Kafka client's codecs already bring) when that makes
it smaller, after ``b"S3"``: the ledger repeats model and rule ids and event id
prefixes. Measured on simulated B2B contacts: 1,368 -> 871 bytes a contact on average,
3,898 -> 2,144 after 100 events, for about 4.5 us to write and 2.6 us to read (the dedupe
hashes, random by design, stay as they are). Every format stays readable.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from sys import intern
from typing import Any, Final

import cramjam
import msgpack

MAGIC = b"S2"  # MessagePack body
MAGIC_JSON = b"S1"  # JSON body (fallback for values MessagePack cannot hold)
MAGIC_LZ4 = b"S3"  # LZ4-compressed MessagePack body
#: documents up to this size are not worth compressing
COMPRESS_FROM = 200
#: ModelState.guess before it is computed (derived data: never serialised)
UNKNOWN: Any = object()
_LEN = struct.Struct(">I")
_ID = struct.Struct(">Q")


def _name(value: Any) -> Any:
    """A name shared by many states, interned; anything else as it is."""
    return intern(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Bounds:
    """Upper bounds on what one contact's state holds."""

    #: most recent distinct event ids remembered for dedupe
    seen_ids: int = 512
    #: most recent ledger entries kept for explanations
    ledger: int = 50
    #: pending ``unless`` timers per contact; further ones are not started (and counted)
    timers: int = 256
    #: live ``expire_after`` entries per model; beyond, the two closest in time merge
    buckets: int = 256


def id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (dedupe memory stores these, not the strings)."""
    return int.from_bytes(id_digest(event_id), "big")


def id_digest(event_id: str) -> bytes:
    """:func:`id_hash` as the 8 bytes the dedupe memory holds (big-endian)."""
    # A copy of an empty hash object, not ``blake2b(data, digest_size=8)``: parsing that
    # keyword argument cost more than hashing a short id (0.6 against 1.0 µs an event).
    h = _BLAKE2B_8.copy()
    h.update(event_id.encode())
    digest: bytes = h.digest()
    return digest


_BLAKE2B_8: Final[Any] = hashlib.blake2b(digest_size=8)


class ModelState:
    """One model's part of a contact."""

    __slots__ = ("attr", "buckets", "counts", "guess", "inside", "pts", "t0")

    def __init__(self) -> None:
        #: half_life: reference time of ``pts``; otherwise unused
        self.t0: int = 0
        #: rule id -> points (half_life: amount at t0; none: plain sum)
        self.pts: dict[str, float] = {}
        #: expire_after: (award time, {rule id: points}), sorted by time
        self.buckets: list[tuple[int, dict[str, float]]] = []
        #: attribute rule id -> points, for the rules the current attributes match
        self.attr: dict[str, float] = {}
        #: names of thresholds the contact is in
        self.inside: list[str] = []
        #: threshold name -> crossings so far (both directions)
        self.counts: dict[str, int] = {}
        #: cached analytic instant of the next decay crossing (None: none; UNKNOWN: stale)
        self.guess: Any = UNKNOWN

    def dump(self) -> list[Any]:
        """JSON-ready form."""
        return [self.t0, self.pts, self.buckets, self.attr, self.inside, self.counts]

    @classmethod
    def load(cls, raw: list[Any]) -> ModelState:
        """Inverse of :meth:`dump`."""
        ms = cls()
        ms.t0, pts, buckets, attr, inside, counts = raw
        # Rule and threshold names come from a small vocabulary: one shared string each
        # rather than a copy per cached contact.
        ms.pts = {intern(k): v for k, v in pts.items()}
        ms.buckets = [(t, {intern(k): v for k, v in parts.items()}) for t, parts in buckets]
        ms.attr = {intern(k): v for k, v in attr.items()}
        ms.inside = [intern(name) for name in inside]
        ms.counts = {intern(k): v for k, v in counts.items()}
        return ms


class ContactState:
    """Everything the engine knows about one contact (or anonymous visitor)."""

    __slots__ = (
        "_seen",
        "alias",
        "anonymous",
        "attrs",
        "clock",
        "handed",
        "key",
        "ledger",
        "limits",
        "marks",
        "models",
        "rules_version",
        "timers",
    )

    def __init__(self, key: str, anonymous: bool = False) -> None:
        self.key = key
        #: True while every event of this profile named only an anonymous id
        self.anonymous = anonymous
        #: latest event time this state has been advanced to (µs), None when new
        self.clock: int | None = None
        #: set once an anonymous profile has been merged into a contact
        self.alias: str | None = None
        self.attrs: dict[str, Any] = {}
        self.models: dict[str, ModelState] = {}
        #: dedupe memory: 64-bit id hashes, oldest first, packed big-endian (8 bytes each)
        self._seen = bytearray()
        #: (event_id, model, rule_id, points, time µs), oldest first
        self.ledger: list[tuple[Any, ...]] = []
        #: pending unless timers: (due, model, rule_id, match_values, start, event_id, points)
        self.timers: list[tuple[Any, ...]] = []
        #: "model/rule" -> award times (windowed limit) or award count (limit ever)
        self.limits: dict[str, Any] = {}
        #: version of the rules the attribute points were computed with
        self.rules_version: str = ""
        #: the caller's bookkeeping of what this state includes: per input stream, the
        #: last position applied (the pipeline's exactly-once marks). The engine never
        #: reads them; a merge keeps the larger position of each stream.
        self.marks: dict[str, int] = {}
        #: id of the identify whose hand-over took this anonymous state (then ``alias``
        #: names the contact and the state stays as it was handed over)
        self.handed: str | None = None

    # -- dedupe

    # Packed bytes rather than a set of ints: a set costs about 50 bytes a hash (the int
    # object and the slot), 25 KB for a contact at the 512 bound, and a worker caches
    # many contacts; a search of at most 4 KB of bytes (C memmem) is well under a
    # microsecond here.

    def has_seen(self, h: int) -> bool:
        """Whether an event id hash is in the dedupe memory."""
        return self.has_seen_digest(_ID.pack(h))

    def has_seen_digest(self, digest: bytes) -> bool:
        """:meth:`has_seen` for the hash's 8 bytes (:func:`id_digest`)."""
        seen = self._seen
        at = seen.find(digest)
        while at >= 0:
            if at % 8 == 0:
                return True
            at = seen.find(digest, at + 1)  # straddles two hashes: look on
        return False

    def remember(self, h: int, bound: int) -> None:
        """Add an id hash, forgetting the oldest beyond ``bound``."""
        self.remember_digest(_ID.pack(h), bound)

    def remember_digest(self, digest: bytes, bound: int) -> None:
        """:meth:`remember` for the hash's 8 bytes (:func:`id_digest`)."""
        seen = self._seen
        seen += digest
        excess = len(seen) // 8 - bound
        if excess > 0:
            del seen[: excess * 8]

    @property
    def seen(self) -> list[int]:
        """The remembered id hashes, oldest first."""
        return [h for (h,) in _ID.iter_unpack(self._seen)]

    # -- serialisation

    def to_bytes(self) -> bytes:
        """Lossless, compact bytes (see the module docstring for the layout)."""
        return self._encode(self.alias, self.handed)

    def handed_bytes(self) -> bytes:
        """The bytes of this state as an identity hand-over sent it: :meth:`to_bytes`
        without the alias and the hand-over mark, which were set after it was sent."""
        return self._encode(None, None)

    def _encode(self, alias: str | None, handed: str | None) -> bytes:
        doc = [
            self.key,
            self.anonymous,
            self.clock,
            alias,
            self.attrs,
            {name: ms.dump() for name, ms in self.models.items()},
            self.ledger,
            self.timers,
            self.limits,
            self.rules_version,
            self.marks,
            handed,
        ]
        try:
            magic, body = MAGIC, bytes(msgpack.packb(doc))
        except (OverflowError, TypeError, ValueError):
            # e.g. an attribute holding an integer beyond 64 bits: JSON carries any size
            magic = MAGIC_JSON
            body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        if magic == MAGIC and len(body) > COMPRESS_FROM:
            packed = bytes(cramjam.lz4.compress_block(body))
            if len(packed) < len(body):
                magic, body = MAGIC_LZ4, packed
        return magic + _LEN.pack(len(body)) + body + self._seen

    @classmethod
    def from_bytes(cls, data: bytes) -> ContactState:
        """Inverse of :meth:`to_bytes`; raises ValueError on anything else."""
        magic = data[:2]
        if magic not in (MAGIC, MAGIC_LZ4, MAGIC_JSON):
            raise ValueError("not a scorestream contact state (bad magic)")
        (size,) = _LEN.unpack_from(data, 2)
        body = data[6 : 6 + size]
        if magic == MAGIC_LZ4:
            try:
                body = bytes(cramjam.lz4.decompress_block(body))
            except cramjam.DecompressionError as exc:
                raise ValueError(f"not a scorestream contact state ({exc})") from None
            magic = MAGIC
        doc = msgpack.unpackb(body) if magic == MAGIC else json.loads(body)
        state = cls(doc[0], doc[1])
        state.clock = doc[2]
        state.alias = doc[3]
        state.attrs = doc[4]
        state.models = {intern(name): ModelState.load(raw) for name, raw in doc[5].items()}
        # Entries come back as lists; tuples keep them out of the cyclic GC's way. Model
        # and rule names are interned (see ModelState.load).
        state.ledger = [(e[0], _name(e[1]), _name(e[2]), *e[3:]) for e in doc[6]]
        state.timers = [(x[0], _name(x[1]), _name(x[2]), tuple(x[3]), *x[4:]) for x in doc[7]]
        state.limits = {intern(k): v for k, v in doc[8].items()}
        state.rules_version = intern(doc[9])
        if len(doc) > 10:  # states written before marks existed have none
            state.marks = {intern(k): v for k, v in doc[10].items()}
            state.handed = doc[11]
        seen = bytearray(data[6 + size :])
        if len(seen) % 8:
            raise ValueError("not a scorestream contact state (dedupe memory cut short)")
        state._seen = seen
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContactState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ContactState(key={self.key!r}, clock={self.clock}, models={list(self.models)})"
