"""The RocksDB state store (rocksdict): one database per owned partition.

Values are written only at checkpoints, after Kafka has the changelog records and the
offsets are committed, so the local database is never ahead of Kafka; deleting it
costs a replay of the changelog, nothing else (see :mod:`scorestream.pipeline.store`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import rocksdict

from scorestream.pipeline.store import CachedStore


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


class RocksStore(CachedStore):
    """Contact states of one partition: cache, dirty set, RocksDB."""

    def __init__(self, path: Path, block_cache_mb: int = 64, cache_size: int = 100_000) -> None:
        super().__init__(cache_size)
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(str(path), options=_options(block_cache_mb))

    def _load(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def _write(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch)

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if isinstance(key, bytes) and isinstance(value, bytes):
                yield key, value

    def close(self) -> None:
        """Close the database (the files stay for the next start)."""
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the files (the state is recovered from Kafka next time)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
