"""Per-partition contact state: an in-memory cache over RocksDB (rocksdict).

RocksDB holds, per contact, ``due (8 bytes, big-endian, -1 = nothing due)`` followed by
the engine's state bytes — the very value that goes to the changelog topic, so recovery
writes changelog records verbatim and the timer index can be rebuilt by reading only the
first 8 bytes of each value. A metadata key records the changelog offset up to which the
local database is current, so a restart reads only the changelog tail.

Writes reach RocksDB only at checkpoints, after the changelog records are acknowledged
by Kafka and the input offsets committed: the local database is never ahead of Kafka.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rocksdict

from scorestream.engine.state import ContactState

_DUE = struct.Struct(">q")
NO_DUE = -1
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


def _options(block_cache_mb: int) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_max_open_files(256)
    # Faust's defaults (2 GiB block cache, 3 x 64 MB write buffers) are per partition;
    # far too much for a worker that owns many partitions.
    opts.set_write_buffer_size(16 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(block_cache_mb * 1024 * 1024))
    table.set_bloom_filter(10, True)
    opts.set_block_based_table_factory(table)
    return opts


class PartitionStore:
    """Contact states of one partition: cache, dirty set, RocksDB."""

    def __init__(self, path: Path, block_cache_mb: int = 64, cache_size: int = 100_000) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(str(path), options=_options(block_cache_mb))
        self._cache: OrderedDict[str, ContactState] = OrderedDict()
        self.cache_size = cache_size
        self.dirty: set[str] = set()
        #: keys being checkpointed: taken from ``dirty``, not yet written to RocksDB
        self.pending: set[str] = set()

    # -- state access (event loop)

    def get(self, key: str) -> ContactState | None:
        """The state of ``key``, from the cache or RocksDB; None if unknown."""
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        raw = self._db.get(key.encode("utf-8"))
        if raw is None:
            return None
        state = decode_value(raw)
        self._remember(key, state)
        return state

    def put(self, state: ContactState) -> None:
        """Record a changed state; it is written at the next checkpoint."""
        self._remember(state.key, state)
        self.dirty.add(state.key)

    def _remember(self, key: str, state: ContactState) -> None:
        cache = self._cache
        cache[key] = state
        cache.move_to_end(key)
        if len(cache) > self.cache_size:
            # Evict least recently used clean states; dirty ones stay until written.
            for old in list(cache.keys())[: len(cache) - self.cache_size]:
                if old not in self.dirty and old not in self.pending:
                    del cache[old]

    def take_dirty(self) -> list[ContactState]:
        """The states changed since the last call, in key order.

        They stop being dirty and become pending: kept in memory until :meth:`settle`
        says whether they reached RocksDB.
        """
        keys = sorted(self.dirty)
        self.dirty = set()
        self.pending.update(keys)
        return [self._cache[k] for k in keys]

    def settle(self, keys: list[str], written: bool) -> None:
        """End of a checkpoint: written states may leave memory; others are dirty again."""
        self.pending.difference_update(keys)
        if not written:
            self.dirty.update(keys)

    @property
    def cached(self) -> int:
        """How many states are in memory."""
        return len(self._cache)

    def drop_cache(self) -> None:
        """Forget cached states (after the database changed underneath, e.g. recovery)."""
        self._cache.clear()
        self.dirty.clear()
        self.pending.clear()

    # -- persistence

    def write(self, items: list[tuple[bytes, bytes]], meta: dict[str, Any]) -> None:
        """Write checkpointed values and the metadata in one atomic batch."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        batch.put(META_KEY, json.dumps(meta).encode())
        self._db.write(batch)

    def apply_changelog(
        self, records: list[tuple[bytes, bytes | None]], meta: dict[str, Any]
    ) -> None:
        """Recovery: write changelog records (None = tombstone) and the metadata atomically."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(META_KEY, json.dumps(meta).encode())
        self._db.write(batch)

    def meta(self) -> dict[str, Any]:
        """What the last write recorded (changelog offset, ...); empty for a new store."""
        raw = self._db.get(META_KEY)
        if raw is None:
            return {}
        value: dict[str, Any] = json.loads(raw)
        return value

    def get_raw(self, key: bytes) -> bytes | None:
        """The stored value of a key (tests, recovery checks)."""
        value: bytes | None = self._db.get(key)
        return value

    def dues(self) -> Iterator[tuple[str, int]]:
        """(contact, due) for every stored contact with something due (timer index rebuild)."""
        for key, value in self._db.items():
            if not isinstance(key, bytes) or not isinstance(value, bytes) or key == META_KEY:
                continue
            due = due_of(value)
            if due is not None:
                yield key.decode("utf-8"), due

    def close(self) -> None:
        """Close the database (the files stay for the next start)."""
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the files (the state is recovered from Kafka next time)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
