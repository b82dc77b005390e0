"""Per-partition contact state: what a store must do, and the in-memory store.

A stored value is ``due (8 bytes, big-endian, -1 = nothing due)`` followed by the
engine's state bytes — the very value that goes to the changelog topic, so recovery
writes changelog records verbatim and the timer index can be rebuilt by reading only the
first 8 bytes of each value. A metadata entry records the changelog offset up to which
the store is current, so a restart reads only the changelog tail.

Beside the values, a store keeps a **due index**: contact -> due time, for the contacts
with something due only, written in the same atomic batch as their values. Taking a
partition rebuilds the processor's timer heap from it, so that costs the contacts with
something due, not a scan of every value (which was most of a rebalance's cost on a large
partition).

Stores keep the states in use as objects (a cache) and mark changed ones dirty; a
checkpoint takes the dirty ones (:meth:`StateStore.take_dirty`), writes them to the
changelog and, once Kafka has them and the offsets are committed, to the store
(:meth:`StateStore.write`). The RocksDB store (:mod:`scorestream.app.rocks`) and the
in-memory store (:class:`MemoryStore`, offline runs and tests) share that logic in
:class:`CachedStore` and differ only in where bytes live.
"""

from __future__ import annotations

import json
import struct
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from scorestream.engine.state import ContactState

_DUE = struct.Struct(">q")
NO_DUE = -1
_NO_DUE_BYTES = _DUE.pack(NO_DUE)
META_KEY = b"\x00scorestream-meta"


def encode_value(state: ContactState, due: int | None) -> bytes:
    """The stored and changelogged form of a state."""
    return _DUE.pack(NO_DUE if due is None else due) + state.to_bytes()


def decode_value(value: bytes) -> ContactState:
    """Inverse of :func:`encode_value` (the due prefix is skipped)."""
    return ContactState.from_bytes(value[_DUE.size :])


def due_of(value: bytes) -> int | None:
    """The due time stored in front of a value."""
    (due,) = _DUE.unpack_from(value, 0)
    return None if due == NO_DUE else int(due)


class StateStore(Protocol):
    """What the processor, checkpoints and recovery need from a partition's store."""

    def get(self, key: str) -> ContactState | None:
        """The state of ``key``; None if unknown."""

    def put(self, state: ContactState) -> None:
        """Record a changed state (written at the next checkpoint)."""

    def take_dirty(self) -> list[ContactState]:
        """States changed since the last call, in key order; they become pending."""

    def settle(self, keys: list[str], written: bool) -> None:
        """End of a checkpoint: pending states were written, or are dirty again."""

    def write(self, items: list[tuple[bytes, bytes]], meta: dict[str, Any]) -> None:
        """Write checkpointed values and the metadata atomically."""

    def apply_changelog(
        self, records: list[tuple[bytes, bytes | None]], meta: dict[str, Any]
    ) -> None:
        """Recovery: write changelog records (None = tombstone) and the metadata.

        May be kept from disk until :meth:`sync` (the changelog has them all anyway).
        """

    def sync(self) -> None:
        """Make what recovery wrote durable (called when a recovery ends)."""

    def meta(self) -> dict[str, Any]:
        """What the last write recorded; empty for a new store."""

    def dues(self) -> Iterator[tuple[str, int]]:
        """(contact, due) for every stored contact with something due."""

    def keys(self) -> list[str]:
        """Every key held, stored or cached (states and aliases), sorted."""

    def drop_cache(self) -> None:
        """Forget cached states (the stored bytes changed underneath)."""

    @property
    def cached(self) -> int:
        """How many states are held as objects."""

    def close(self) -> None:
        """Release resources (the data stays)."""


class CachedStore(ABC):
    """States as objects over a byte store: cache, dirty set, pending set."""

    def __init__(self, cache_size: int) -> None:
        #: every state held as an object (its order does not matter: eviction follows
        #: ``_clean``)
        self._cache: dict[str, ContactState] = {}
        self.cache_size = cache_size
        self.dirty: set[str] = set()
        #: keys being checkpointed: taken from ``dirty``, not yet written
        self.pending: set[str] = set()
        #: cached keys that may leave memory (neither dirty nor pending), least recently
        #: used first: eviction takes them from the front without scanning the cache,
        #: which may hold many more dirty states than its size (a rescore's hand-over)
        self._clean: OrderedDict[str, None] = OrderedDict()

    # -- bytes (the subclass's storage)

    @abstractmethod
    def _load(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _write(
        self,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        due_puts: list[tuple[bytes, bytes]],
        due_deletes: list[bytes],
        logged: bool = True,
    ) -> None:
        """Apply puts and deletes of values and of the due index, atomically.

        ``logged=False`` (recovery) may skip the write-ahead log: such writes are
        durable only after :meth:`sync`.
        """

    @abstractmethod
    def _items(self) -> Iterator[tuple[bytes, bytes]]: ...

    @abstractmethod
    def _due_items(self) -> Iterator[tuple[bytes, bytes]]:
        """The due index: (key, 8-byte due) for the contacts with something due."""

    def _put_all(
        self, puts: list[tuple[bytes, bytes]], deletes: list[bytes], logged: bool = True
    ) -> None:
        """Write values and keep the due index in step, in one atomic write."""
        due_puts: list[tuple[bytes, bytes]] = []
        due_deletes = list(deletes)
        size = _DUE.size
        for key, value in puts:
            if key == META_KEY:
                continue
            prefix = value[:size]
            if prefix == _NO_DUE_BYTES:
                due_deletes.append(key)
            else:
                due_puts.append((key, prefix))
        self._write(puts, deletes, due_puts, due_deletes, logged)

    # -- state access

    def get(self, key: str) -> ContactState | None:
        """The state of ``key``, from the cache or the byte store; None if unknown."""
        state = self._cache.get(key)
        if state is not None:
            clean = self._clean
            if key in clean:
                clean.move_to_end(key)
            return state
        raw = self._load(key.encode("utf-8"))
        if raw is None:
            return None
        state = decode_value(raw)
        self._cache[key] = state
        clean = self._clean
        clean[key] = None
        clean.move_to_end(key)  # just read: the most recently used of the clean ones
        self._trim()
        return state

    def put(self, state: ContactState) -> None:
        """Record a changed state; it is written at the next checkpoint."""
        key = state.key
        dirty = self.dirty
        if key not in dirty:
            # A dirty state is never in ``_clean``: the usual put (a state changed again
            # before a checkpoint) touches one set and one dict.
            self._clean.pop(key, None)
            dirty.add(key)
        cache = self._cache
        cache[key] = state
        if len(cache) > self.cache_size:
            self._trim()

    def _trim(self) -> None:
        """Evict least recently used clean states; dirty ones stay until written."""
        cache = self._cache
        clean = self._clean
        while len(cache) > self.cache_size and clean:
            old, _ = clean.popitem(last=False)
            if old not in self.dirty and old not in self.pending:
                cache.pop(old, None)

    def take_dirty(self) -> list[ContactState]:
        """The states changed since the last call, in key order (now pending)."""
        keys = sorted(self.dirty)
        self.dirty = set()
        self.pending.update(keys)
        return [self._cache[k] for k in keys]

    def settle(self, keys: list[str], written: bool) -> None:
        """End of a checkpoint: written states may leave memory; others are dirty again."""
        self.pending.difference_update(keys)
        if not written:
            self.dirty.update(keys)
            return
        cache, dirty, clean = self._cache, self.dirty, self._clean
        for key in keys:
            if key in cache and key not in dirty:
                clean[key] = None
        self._trim()

    @property
    def cached(self) -> int:
        """How many states are in memory."""
        return len(self._cache)

    def drop_cache(self) -> None:
        """Forget cached states (after the stored bytes changed, e.g. recovery)."""
        self._cache.clear()
        self._clean.clear()
        self.dirty.clear()
        self.pending.clear()

    # -- persistence

    def write(self, items: list[tuple[bytes, bytes]], meta: dict[str, Any]) -> None:
        """Write checkpointed values and the metadata in one atomic batch."""
        self._put_all([*items, (META_KEY, json.dumps(meta).encode())], [])

    def apply_changelog(
        self, records: list[tuple[bytes, bytes | None]], meta: dict[str, Any]
    ) -> None:
        """Recovery: write changelog records (None = tombstone) and the metadata atomically.

        The latest record of a key wins, as in the topic after compaction.
        """
        # A write batch here applies all deletes before all puts, so a key must appear
        # once: keep its latest record (a put then a tombstone, or a due time then none,
        # would otherwise come out the wrong way round).
        latest = dict(records)
        puts = [(k, v) for k, v in latest.items() if v is not None]
        deletes = [k for k, v in latest.items() if v is None]
        puts.append((META_KEY, json.dumps(meta).encode()))
        self._put_all(puts, deletes, logged=False)

    @abstractmethod
    def sync(self) -> None:
        """Make what recovery wrote durable."""

    def meta(self) -> dict[str, Any]:
        """What the last write recorded (changelog offset, ...); empty for a new store."""
        raw = self._load(META_KEY)
        if raw is None:
            return {}
        value: dict[str, Any] = json.loads(raw)
        return value

    def keys(self) -> list[str]:
        """Every key held, stored or cached (states and aliases), sorted."""
        found = set(self._cache)
        for key, _ in self._items():
            if key != META_KEY:
                found.add(key.decode("utf-8"))
        return sorted(found)

    def get_raw(self, key: bytes) -> bytes | None:
        """The stored value of a key (tests, recovery checks)."""
        return self._load(key)

    def dues(self) -> Iterator[tuple[str, int]]:
        """(contact, due) for every stored contact with something due (timer index rebuild)."""
        unpack = _DUE.unpack_from
        for key, value in self._due_items():
            yield key.decode("utf-8"), unpack(value, 0)[0]

    @abstractmethod
    def close(self) -> None:
        """Release what the byte store holds open (the data stays)."""


class MemoryStore(CachedStore):
    """A store whose bytes live in a dict: offline runs, tests, and nothing durable."""

    def __init__(self, cache_size: int = 1 << 62) -> None:
        super().__init__(cache_size)
        self._data: dict[bytes, bytes] = {}
        self._dues: dict[bytes, bytes] = {}

    def _load(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def sync(self) -> None:
        """Nothing to do: the bytes live in memory."""

    def _write(
        self,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        due_puts: list[tuple[bytes, bytes]],
        due_deletes: list[bytes],
        logged: bool = True,
    ) -> None:
        for key in deletes:
            self._data.pop(key, None)
        self._data.update(puts)
        for key in due_deletes:
            self._dues.pop(key, None)
        self._dues.update(due_puts)

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))

    def _due_items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted(self._dues.items()))

    def close(self) -> None:
        """Nothing is held open."""

    def states(self) -> Iterator[ContactState]:
        """Every state, cached or stored, in key order (offline reports)."""
        keys = set(self._cache)
        keys.update(k.decode("utf-8") for k in self._data if k != META_KEY)
        for key in sorted(keys):
            state = self.get(key)
            if state is not None:
                yield state


class ScratchStore(MemoryStore):
    """A memory store for a run that never checkpoints (``scorestream score``).

    States stay objects in a dict; nothing is marked dirty, nothing is evicted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._states: dict[str, ContactState] = {}

    def get(self, key: str) -> ContactState | None:
        """The state of ``key``; None if unknown."""
        return self._states.get(key)

    def put(self, state: ContactState) -> None:
        """Keep the state (there is no checkpoint to mark it for)."""
        self._states[state.key] = state

    def held(self) -> dict[str, ContactState]:
        """The dict of states itself (key -> state), which the processor reads and writes
        directly: :meth:`get` and :meth:`put` are exactly its ``get`` and item set."""
        return self._states

    def take_dirty(self) -> list[ContactState]:
        """Nothing is ever dirty here."""
        return []

    @property
    def cached(self) -> int:
        """Every state is held."""
        return len(self._states)

    def keys(self) -> list[str]:
        """Every key held, sorted."""
        return sorted(self._states)

    def states(self) -> Iterator[ContactState]:
        """Every state, in key order."""
        for key in sorted(self._states):
            yield self._states[key]
