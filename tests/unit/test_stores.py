"""The state-store contract, for the RocksDB store and the memory store alike."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict

from scorestream.app.rocks import RocksStore
from scorestream.engine.state import ContactState
from scorestream.pipeline.store import (
    META_KEY,
    CachedStore,
    MemoryStore,
    ScratchStore,
    decode_value,
    due_of,
    encode_value,
)


@pytest.fixture(params=["rocks", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CachedStore]:
    made: CachedStore
    if request.param == "rocks":
        made = RocksStore(tmp_path / "p0", block_cache_mb=8, cache_size=2)
    else:
        made = MemoryStore(cache_size=2)
    yield made
    made.close()


def state(key: str, clock: int) -> ContactState:
    s = ContactState(key)
    s.clock = clock
    s.marks = {"0:0:1": clock}
    return s


def test_a_value_carries_its_due_time_and_the_state(store: CachedStore) -> None:
    value = encode_value(state("c-1", 5), due=99)
    assert due_of(value) == 99
    assert decode_value(value) == state("c-1", 5)
    assert due_of(encode_value(state("c-1", 5), None)) is None


def test_changed_states_are_dirty_until_a_checkpoint_settles_them(store: CachedStore) -> None:
    store.put(state("c-2", 2))
    store.put(state("c-1", 1))
    taken = store.take_dirty()
    assert [s.key for s in taken] == ["c-1", "c-2"]  # key order
    assert store.take_dirty() == []
    store.settle(["c-1", "c-2"], written=False)  # the commit failed: dirty again
    assert [s.key for s in store.take_dirty()] == ["c-1", "c-2"]
    store.write([(b"c-1", encode_value(state("c-1", 1), None))], {"changelog_offset": 7})
    store.settle(["c-1", "c-2"], written=True)
    assert store.take_dirty() == []
    assert store.meta() == {"changelog_offset": 7}


def test_dirty_states_are_never_evicted_from_the_cache(store: CachedStore) -> None:
    for i in range(5):
        store.put(state(f"c-{i}", i))
    # cache_size is 2, but nothing was written yet: every state must still be there.
    assert [store.get(f"c-{i}") for i in range(5)] == [state(f"c-{i}", i) for i in range(5)]


def test_written_states_come_back_after_the_cache_drops_them(store: CachedStore) -> None:
    items = [
        (f"c-{i}".encode(), encode_value(state(f"c-{i}", i), i * 10 or None)) for i in range(4)
    ]
    store.write(items, {"changelog_offset": 4})
    store.drop_cache()
    assert store.get("c-3") == state("c-3", 3)
    assert store.get("nobody") is None
    assert sorted(store.dues()) == [("c-1", 10), ("c-2", 20), ("c-3", 30)]


def test_after_many_dirty_states_are_written_the_cache_shrinks_to_its_size(
    store: CachedStore,
) -> None:
    # A rescore's hand-over dirties every state of a partition at once, far beyond the
    # cache size: they all stay until written, then the cache shrinks to its size.
    for i in range(500):
        store.put(state(f"c-{i:03d}", i))
    assert store.cached == 500
    keys = [s.key for s in store.take_dirty()]
    store.write([(k.encode(), encode_value(store.get(k), None)) for k in keys], {})  # type: ignore[arg-type]
    store.settle(keys, written=True)
    assert store.cached == 2
    again = store.get("c-250")
    assert again is not None and again.clock == 250
    assert store.cached == 2
    assert "c-250" in store._cache  # the most recently used stays


def test_recovery_writes_records_and_tombstones(store: CachedStore) -> None:
    store.apply_changelog(
        [(b"c-1", encode_value(state("c-1", 1), None)), (b"c-2", encode_value(state("c-2", 2), 5))],
        {"changelog_offset": 2},
    )
    store.apply_changelog([(b"c-1", None)], {"changelog_offset": 3})
    store.drop_cache()
    assert store.get("c-1") is None
    assert store.get("c-2") == state("c-2", 2)
    assert store.meta() == {"changelog_offset": 3}


def test_recovery_keeps_the_latest_record_of_a_key_within_one_batch(store: CachedStore) -> None:
    """A put then a tombstone of one key (and the reverse) in one recovery batch: the
    later record wins, value and due index alike, as in the compacted topic."""
    store.apply_changelog(
        [
            (b"c-1", encode_value(state("c-1", 1), 10)),
            (b"c-2", None),
            (b"c-1", None),
            (b"c-2", encode_value(state("c-2", 2), 20)),
            (b"c-3", encode_value(state("c-3", 3), 30)),
        ],
        {"changelog_offset": 5},
    )
    store.drop_cache()
    assert store.get("c-1") is None
    assert store.get("c-2") == state("c-2", 2)
    assert sorted(store.dues()) == [("c-2", 20), ("c-3", 30)]
    assert store.meta() == {"changelog_offset": 5}


def test_recovery_keeps_the_latest_due_time_of_a_key_within_one_batch(
    store: CachedStore,
) -> None:
    """A contact with a timer due, then none (it fired), in one recovery batch: the
    due index must not keep the old time (and the reverse must keep the new one)."""
    store.apply_changelog(
        [
            (b"c-1", encode_value(state("c-1", 1), 10)),
            (b"c-2", encode_value(state("c-2", 1), None)),
            (b"c-1", encode_value(state("c-1", 2), None)),
            (b"c-2", encode_value(state("c-2", 2), 20)),
        ],
        {"changelog_offset": 4},
    )
    store.drop_cache()
    assert sorted(store.dues()) == [("c-2", 20)]
    assert store.get("c-1") == state("c-1", 2)


def test_the_due_index_follows_writes_recovery_and_tombstones(store: CachedStore) -> None:
    def value(key: str, due: int | None) -> tuple[bytes, bytes]:
        return key.encode(), encode_value(state(key, 1), due)

    store.write([value("c-1", 10), value("c-2", None), value("c-3", 30)], {})
    assert sorted(store.dues()) == [("c-1", 10), ("c-3", 30)]
    store.write([value("c-1", None), value("c-2", 20)], {})  # c-1's timer fired, c-2 got one
    assert sorted(store.dues()) == [("c-2", 20), ("c-3", 30)]
    store.apply_changelog([value("c-4", 40), (b"c-3", None)], {"changelog_offset": 9})
    assert sorted(store.dues()) == [("c-2", 20), ("c-4", 40)]


def test_a_rocks_store_without_a_due_index_builds_it_once(tmp_path: Path) -> None:
    """Databases written before the index existed (values only) get one at open."""
    path = tmp_path / "old"
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    old = rocksdict.Rdict(str(path), options=opts)
    old[b"c-1"] = encode_value(state("c-1", 1), 11)
    old[b"c-2"] = encode_value(state("c-2", 2), None)
    old[META_KEY] = b'{"changelog_offset": 2}'
    old.close()
    del old
    reopened = RocksStore(path, block_cache_mb=8)
    try:
        assert list(reopened.dues()) == [("c-1", 11)]
        assert reopened.get("c-2") == state("c-2", 2)
        assert reopened.meta() == {"changelog_offset": 2}
    finally:
        reopened.close()
    again = RocksStore(path, block_cache_mb=8)  # built once: kept across reopens
    try:
        assert list(again.dues()) == [("c-1", 11)]
    finally:
        again.close()


def test_the_rocks_store_keeps_its_data_across_a_reopen(tmp_path: Path) -> None:
    first = RocksStore(tmp_path / "p1", block_cache_mb=8)
    first.write([(b"c-9", encode_value(state("c-9", 9), None))], {"changelog_offset": 1})
    first.close()
    again = RocksStore(tmp_path / "p1", block_cache_mb=8)
    try:
        assert again.get("c-9") == state("c-9", 9)
        assert again.meta() == {"changelog_offset": 1}
    finally:
        again.destroy()
    assert not (tmp_path / "p1").exists()


def test_the_values_are_stored_without_a_second_compression(tmp_path: Path) -> None:
    """State documents are LZ4-compressed already; RocksDB compressing them again cost
    recovery time for 3% of space. RocksDB records the options it opened with."""
    RocksStore(tmp_path / "p1", block_cache_mb=8).close()
    options = sorted((tmp_path / "p1").glob("OPTIONS-*"))[-1].read_text()
    default = options.split('[CFOptions "default"]', 1)[1].split("[", 1)[0]
    assert "compression=kNoCompression" in default.split()


def test_the_scratch_store_keeps_objects_and_never_marks_them() -> None:
    scratch = ScratchStore()
    scratch.put(state("c-2", 2))
    scratch.put(state("c-1", 1))
    assert scratch.take_dirty() == []
    assert [s.key for s in scratch.states()] == ["c-1", "c-2"]
    assert scratch.cached == 2


_CRASH_AFTER_RECOVERY = """
import os, sys
from pathlib import Path
from scorestream.app.rocks import RocksStore
from scorestream.engine.state import ContactState
from scorestream.pipeline.store import encode_value

def value(key, clock, due):
    s = ContactState(key)
    s.clock = clock
    return key.encode(), encode_value(s, due)

store = RocksStore(Path(sys.argv[1]), block_cache_mb=8)
if sys.argv[2] == "checkpoint":
    store.write([value("a", 1, 11)], {"changelog_offset": 3})  # logged
else:
    store.apply_changelog([value("b", 2, 22), value("c", 3, None)], {"changelog_offset": 10})
    if sys.argv[2] == "synced":
        store.sync()
os._exit(0)  # no close, no flush: a kill -9
"""


@pytest.mark.parametrize("synced", [False, True])
def test_a_recovery_killed_before_sync_leaves_the_store_as_before_it(
    tmp_path: Path, synced: bool
) -> None:
    """Recovery writes skip RocksDB's log until ``sync``: a process killed before it
    reopens with the store as it was before the recovery (metadata, values and due index
    alike), so recovery starts again from there; killed after it, everything is there."""
    path = tmp_path / "p0"
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_AFTER_RECOVERY)
    for step in ("checkpoint", "synced" if synced else "recovery"):
        subprocess.run([sys.executable, str(script), str(path), step], check=True, timeout=60)
    store = RocksStore(path, block_cache_mb=8)
    try:
        if synced:
            assert store.meta() == {"changelog_offset": 10}
            assert sorted(store.keys()) == ["a", "b", "c"]
            assert sorted(store.dues()) == [("a", 11), ("b", 22)]
        else:
            assert store.meta() == {"changelog_offset": 3}
            assert store.keys() == ["a"]
            assert sorted(store.dues()) == [("a", 11)]
    finally:
        store.close()


_CRASH_MID_RECOVERY = """
import os, sys
from pathlib import Path
from scorestream.app.rocks import RocksStore
from scorestream.engine.state import ContactState
from scorestream.pipeline.store import encode_value

# A 1 MB write buffer: RocksDB flushes on its own several times during these batches.
store = RocksStore(Path(sys.argv[1]), block_cache_mb=8, write_buffer_mb=1)
filler = os.urandom(900).hex()  # incompressible: the values are about 2 KB each
for batch in range(40):
    records = []
    for i in range(100):
        s = ContactState(f"c-{batch:02d}-{i:03d}")
        s.clock = batch
        s.attrs = {"note": filler}
        due = 1_000 + batch if i % 2 else None  # half of them with something due
        records.append((s.key.encode(), encode_value(s, due)))
    store.apply_changelog(records, {"changelog_offset": (batch + 1) * 100})
os._exit(0)  # killed before sync
"""


def test_rocksdb_flushes_during_a_killed_recovery_keep_values_and_due_index_together(
    tmp_path: Path,
) -> None:
    """Without the write-ahead log, what survives a kill is what RocksDB flushed on its
    own. Atomic flushes keep the values' and the due index's column families at the same
    batch: the reopened store holds exactly the batches up to its metadata, each with its
    due entries, and recovery goes on from there. (Flushed one column family at a time,
    the tiny due index would stay in memory and be lost while the values survived.)"""
    path = tmp_path / "p0"
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_MID_RECOVERY)
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=120)
    store = RocksStore(path, block_cache_mb=8)
    try:
        offset = store.meta().get("changelog_offset", 0)
        done = offset // 100
        assert offset % 100 == 0 and 0 < done < 40  # flushed mid-way, not at the end
        keys = store.keys()
        assert keys == sorted(f"c-{b:02d}-{i:03d}" for b in range(done) for i in range(100))
        assert sorted(store.dues()) == sorted(
            (f"c-{b:02d}-{i:03d}", 1_000 + b) for b in range(done) for i in range(1, 100, 2)
        )
    finally:
        store.close()
