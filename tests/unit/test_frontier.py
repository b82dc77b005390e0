"""Frontiers: a repartition input behind its end holds back only what its unread records
could come before (Merger.front, Processor._frontier, Processor.send_fronts)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from scorestream.app.worker import _event_time
from scorestream.pipeline.merge import Merger
from scorestream.pipeline.records import (
    CLOCK,
    EVENT,
    MIN_TS,
    Key,
    Record,
    decode_envelope,
    encode_envelope,
    front_envelope,
)


def key(ts: int, offset: int = 0, partition: int = 0) -> Key:
    return (ts, 0, partition, offset, 0)


class Fixture:
    """A merger owning partition 0 of a 3-partition stream (1 and 2 are remote), with
    one record queued on an input and the repartition input behind its end."""

    def __init__(self) -> None:
        self.high = {("rep", 0): 5, ("in", 0): 1}
        self.merger = Merger(lambda topic, part: self.high.get((topic, part), 0))
        self.merger.add_partition(0, [("in", "in")], ("rep", "rep"), {})
        self.merger.set_generation(7, [1, 2])
        self.source = self.merger.sources[("in", 0)]
        self.rep = self.merger.sources[("rep", 0)]
        assert self.source.queue is not None
        self.merger.push(self.source.queue, Record(EVENT, key(100), "c", 0))
        self.merger.arrived(self.source, 0, 1.0)
        self.merger.refresh(1.0)

    def front(self, sender: int, ts: int, generation: int = 7, offset: int = 0) -> None:
        self.merger.front(self.rep, sender, generation, key(ts, offset, sender))

    def released(self) -> bool:
        return self.merger.pop(1.0) is not None


def test_a_repartition_input_behind_its_end_blocks_without_frontiers() -> None:
    f = Fixture()
    assert f.merger.blocking == [f.rep]
    assert not f.released()


def test_records_before_every_remote_senders_frontier_pass_it() -> None:
    f = Fixture()
    f.front(1, 200)
    assert not f.released()  # partition 2 has promised nothing yet
    f.front(2, 150)
    assert f.rep.bound == key(150, 0, 2)
    assert f.released()
    assert f.merger.passed == 1


def test_a_record_at_or_past_the_smallest_frontier_waits() -> None:
    f = Fixture()
    f.front(1, 200)
    f.front(2, 100)  # (100, 0, 2, ...) comes after the head (100, 0, 0, ...): passes
    assert f.released()
    f = Fixture()
    f.front(1, 200)
    f.front(2, 99)
    assert not f.released()
    f.front(2, 101)  # the newest record from a sender is what counts
    assert f.released()


def test_everything_released_before_counts_not_only_the_head() -> None:
    # The head is early, but larger keys were released already: the unread records
    # could come before those in the order of the whole stream.
    f = Fixture()
    f.merger.high = key(300)
    f.front(1, 200)
    f.front(2, 200)
    assert not f.released()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda f: f.merger.front(f.rep, 1, 6, key(500)),  # an older generation
        lambda f: f.merger.front(f.rep, 2, 7, None),  # sent without a promise
    ],
)
def test_a_record_without_a_promise_for_this_generation_voids_the_frontiers(spoil: Any) -> None:
    f = Fixture()
    f.front(1, 200)
    f.front(2, 200)
    spoil(f)
    assert f.rep.bound is None
    assert not f.released()


def test_a_sender_this_worker_owns_promises_nothing() -> None:
    f = Fixture()
    f.front(1, 200)
    f.front(2, 200)
    f.front(0, 900)  # a previous owner of partition 0 (now ours) sent this
    assert f.rep.bound is None and not f.released()


def test_a_new_generation_forgets_the_frontiers() -> None:
    f = Fixture()
    f.front(1, 200)
    f.front(2, 200)
    f.merger.set_generation(8, [1, 2])
    assert f.rep.bound is None and not f.released()


def test_markers_carry_frontier_and_generation_in_an_envelope_old_workers_read() -> None:
    marker = decode_envelope(front_envelope(2, key(8), 4))
    assert (marker.kind, marker.sender, marker.frontier, marker.at) == (CLOCK, 2, key(8), 4)
    # Nine fields, as every envelope before markers: an older worker unpacks it as a
    # clock record, whose time (the key's first field) is below every event's.
    fields = msgpack.unpackb(front_envelope(2, key(8), 4)[2:], raw=False)
    assert len(fields) == 9 and fields[0] == CLOCK and fields[3][0] < 0
    # Other records carry no frontier, and a clock record without one is a clock.
    record = Record(EVENT, key(5), "c", 3, raw=b"{}")
    assert decode_envelope(encode_envelope(record)).frontier is None
    old = b"E1" + msgpack.packb([CLOCK, "", -1, [9, 0, -1, 0, 0], b"", "", 0, "", None])
    assert decode_envelope(old).frontier is None


def test_status_shows_frontiers_below_every_event_as_none() -> None:
    # A worker that has released nothing sends (and a receiver may hold) the smallest
    # key; /status once failed on it (OverflowError formatting the time), found by a
    # soak. Only real event times are formatted.
    assert _event_time(MIN_TS - 1) is None and _event_time(-(1 << 63)) is None
    assert _event_time(0) == "1970-01-01T00:00:00Z"


class Inputs:
    """A merger owning partition 0 with three input topics: ``a`` and ``b`` read to their
    ends (``b`` with two records queued), ``c`` never written to."""

    def __init__(self) -> None:
        self.high = {("a", 0): 1, ("b", 0): 2, ("c", 0): 0, ("rep", 0): 0}
        self.merger = Merger(lambda topic, part: self.high.get((topic, part), 0))
        self.merger.add_partition(0, [("a", "a"), ("b", "b"), ("c", "c")], ("rep", "rep"), {})
        self.queues = {}
        for topic, times in (("a", [100]), ("b", [300, 400])):
            source = self.merger.sources[(topic, 0)]
            assert source.queue is not None
            self.queues[topic] = source.queue
            for offset, ts in enumerate(times):
                self.merger.push(source.queue, Record(EVENT, key(ts, offset), "c", 0))
                self.merger.arrived(source, offset, 1.0)
        self.merger.refresh(1.0)

    def release(self, count: int) -> list[int]:
        return [record.key[0] for record in (self.merger.pop(1.0) for _ in range(count)) if record]


def test_the_input_floor_is_what_an_input_read_to_its_end_released_last() -> None:
    # A record that reaches ``a`` later, however old, is released after ``a``'s last one
    # (its queue is FIFO): a frontier past that key was promised more than a live input
    # can keep (a live two-worker soak differed in 64 crossings against 15).
    f = Inputs()
    assert f.merger.input_floor() == key(100)  # a's head
    assert f.release(2) == [100, 300]
    assert f.merger.high == key(300)
    assert f.merger.input_floor() == key(100)  # a emptied: its next record comes after 100
    f.merger.push(f.queues["a"], Record(EVENT, key(50, 1), "c", 0))  # a late event on a
    f.merger.arrived(f.merger.sources[("a", 0)], 1, 1.0)
    assert f.merger.input_floor() == key(100)  # queued behind a's 100: it comes after it
    assert f.release(1) == [50] and f.merger.last == key(100)


def test_an_unused_input_bounds_nothing_until_it_has_records_in_kafka() -> None:
    f = Inputs()
    f.release(3)
    assert f.merger.input_floor() == key(100)  # c (never written) is passed over
    f.high[("c", 0)] = 1  # c now holds a record nobody has read: it may be anything
    assert f.merger.input_floor() is None
