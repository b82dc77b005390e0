"""The RocksDB state store (rocksdict): one database per owned partition.

Values are written only at checkpoints, after Kafka has the changelog records and the
offsets are committed, so the local database is never ahead of Kafka; deleting it
costs a replay of the changelog, nothing else (see :mod:`scorestream.pipeline.store`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rocksdict

from scorestream.pipeline.store import META_KEY, CachedStore, due_of


def _options(block_cache_mb: int, write_buffer_mb: int = 16) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_max_open_files(256)
    # Faust's defaults (2 GiB block cache, 3 x 64 MB write buffers) are per partition;
    # far too much for a worker that owns many partitions.
    opts.set_write_buffer_size(write_buffer_mb * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(block_cache_mb * 1024 * 1024))
    table.set_bloom_filter(10, True)
    opts.set_block_based_table_factory(table)
    # Values are LZ4-compressed documents already (engine/state.py): RocksDB's own block
    # compression saved 3% of the space and cost about 1 us of a recovery's 10 per record
    # (bench/recovery_bench.py, in-process A/B), spent again on every block read.
    opts.set_compression_type(rocksdict.DBCompressionType.none())
    # Recovery writes skip the write-ahead log (RocksStore.sync). Without the log, a
    # crash keeps what was flushed: atomic flushes keep the values, the metadata and the
    # due index (another column family) at the same batch, so a store cut short by a
    # crash is an earlier consistent store, and its recovery goes on from its metadata.
    opts.set_atomic_flush(True)
    return opts


#: recovery's writes: the changelog they come from is their log (RocksStore.sync)
_UNLOGGED = rocksdict.WriteOptions()
# A property at run time; rocksdict's stubs call it a method.
_UNLOGGED.disable_wal = True  # type: ignore[method-assign,assignment]

#: column family of the due index (see scorestream.pipeline.store)
DUES_CF = "dues"
#: written with a complete due index; a store without it builds one at open
_INDEXED_KEY = b"\x00scorestream-due-index"


class RocksStore(CachedStore):
    """Contact states of one partition: cache, dirty set, RocksDB.

    Values live in the default column family, the due index in ``dues``, written in the
    same WriteBatch. A database from before the index (or whose index was being built
    when the process died) gets it built from a scan of its values when opened, once.
    """

    def __init__(
        self,
        path: Path,
        block_cache_mb: int = 64,
        cache_size: int = 100_000,
        write_buffer_mb: int = 16,
    ) -> None:
        super().__init__(cache_size)
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        opts = _options(block_cache_mb, write_buffer_mb)
        self._db = rocksdict.Rdict(str(path), options=opts)
        if DUES_CF in rocksdict.Rdict.list_cf(str(path)):
            self._dues_cf = self._db.get_column_family(DUES_CF)
        else:
            self._dues_cf = self._db.create_column_family(DUES_CF, rocksdict.Options(raw_mode=True))
        self._dues_handle: Any = self._db.get_column_family_handle(DUES_CF)
        if self._db.get(_INDEXED_KEY) is None:
            self._build_due_index()

    def _build_due_index(self) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in list(self._dues_cf.keys()):  # a build cut short: start over
            batch.delete(key, self._dues_handle)
        for key, value in self._items():
            if key != META_KEY and due_of(value) is not None:
                batch.put(key, value[:8], self._dues_handle)
        batch.put(_INDEXED_KEY, b"1")
        self._db.write(batch)

    def _load(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def _write(
        self,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        due_puts: list[tuple[bytes, bytes]],
        due_deletes: list[bytes],
        logged: bool = True,
    ) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        handle = self._dues_handle
        for key in deletes:
            batch.delete(key)
        for key, value in puts:
            batch.put(key, value)
        for key in due_deletes:
            batch.delete(key, handle)
        for key, value in due_puts:
            batch.put(key, value, handle)
        if logged:
            self._db.write(batch)
        else:
            # Recovery: the changelog is the log (measured: the WAL's writes and checksums
            # were about a tenth of a recovery, bench/recovery_bench.py).
            self._db.write(batch, _UNLOGGED)

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if isinstance(key, bytes) and isinstance(value, bytes) and key != _INDEXED_KEY:
                yield key, value

    def sync(self) -> None:
        """Flush what recovery wrote without the log, before any logged write follows.

        Required: a logged write replayed after a crash on top of a store that lost
        unlogged writes before it would claim a changelog position the store lacks.
        """
        # The due index first: a crash between the two flushes then leaves due entries
        # ahead of the values, which recovery rewrites, never values without them.
        self._dues_cf.flush(True)
        self._db.flush(True)

    def _due_items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._dues_cf.items():
            if isinstance(key, bytes) and isinstance(value, bytes):
                yield key, value

    def close(self) -> None:
        """Close the database (the files stay for the next start)."""
        # The column family's view and handle hold the database open: drop them first.
        self._dues_cf.close()
        self._dues_handle = None
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the files (the state is recovered from Kafka next time)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
