"""Why the merge waited (Merger.waits, scorestream_merge_wait_seconds{reason}): records
of another worker not read yet, unread records of an input topic, a poll of an empty
input older than the next record, a hand-over before a plan switch; and the worker's
BacklogWatch, which starts a checkpoint once a backlog has been applied."""

from __future__ import annotations

import pytest

from scorestream.app.worker import BacklogWatch
from scorestream.pipeline.checkpoint import PACE_BELOW
from scorestream.pipeline.merge import Merger
from scorestream.pipeline.records import EVENT, Key, Record


def key(ts: int, offset: int = 0) -> Key:
    return (ts, 0, 0, offset, 0)


class Fixture:
    """A merger owning partition 0: inputs ``a`` and ``b`` and the repartition input
    ``rep``; one record queued on ``a``; high-water marks set per test."""

    def __init__(self, high: dict[tuple[str, int], int]) -> None:
        self.high = high
        self.merger = Merger(lambda topic, part: self.high.get((topic, part), 0))
        self.merger.add_partition(0, [("a", "a"), ("b", "b")], ("rep", "rep"), {})
        source = self.merger.sources[("a", 0)]
        assert source.queue is not None
        self.merger.push(source.queue, Record(EVENT, key(100), "c", 0))
        self.merger.arrived(source, 0, 1.0)
        self.high.setdefault(("a", 0), 1)

    def pop(self, now: float) -> Record | None:
        self.merger.refresh(now)
        return self.merger.pop(now)


def test_a_wait_for_another_workers_records_counts_as_peer() -> None:
    f = Fixture({("rep", 0): 3})
    assert f.pop(1.0) is None
    assert f.pop(1.2) is None  # still the same wait
    f.high[("rep", 0)] = 0  # (as if read to its end)
    assert f.pop(1.5) is not None
    waits = f.merger.waits
    assert waits == {"input": 0.0, "peer": pytest.approx(0.5), "poll": 0.0, "handover": 0.0}
    assert f.merger.wait_counts["peer"] == 1
    assert f.merger.waited == pytest.approx(0.5)


def test_a_wait_for_unread_input_records_counts_as_input() -> None:
    f = Fixture({("b", 0): 2})
    assert f.pop(2.0) is None
    f.high[("b", 0)] = 0
    assert f.pop(2.25) is not None
    assert f.merger.waits["input"] == pytest.approx(0.25)
    assert f.merger.waits["peer"] == 0.0
    assert f.merger.wait_counts == {"input": 1, "peer": 0, "poll": 0, "handover": 0}


def test_another_workers_records_go_first_and_a_wait_is_split_when_its_reason_changes() -> None:
    f = Fixture({("b", 0): 2, ("rep", 0): 3})
    assert f.pop(1.0) is None  # both block: another worker's records count first
    f.high[("rep", 0)] = 0
    assert f.pop(1.5) is None  # now only the input
    f.high[("b", 0)] = 0
    assert f.pop(2.0) is not None
    assert f.merger.waits["peer"] == pytest.approx(0.5)
    assert f.merger.waits["input"] == pytest.approx(0.5)
    assert f.merger.wait_counts["peer"] == f.merger.wait_counts["input"] == 1
    assert f.merger.waited == pytest.approx(1.0)


def test_a_hand_over_before_a_plan_switch_counts_as_handover() -> None:
    f = Fixture({})
    f.merger.barrier = key(50)
    f.merger.expect("t", key(40), 1.0)
    assert f.pop(1.0) is None
    f.merger.fulfil("t")
    assert f.pop(1.1) is not None
    assert f.merger.waits["handover"] == pytest.approx(0.1)
    assert f.merger.wait_counts["handover"] == 1


def test_nothing_buffered_is_no_wait() -> None:
    f = Fixture({})
    assert f.pop(1.0) is not None
    assert f.pop(5.0) is None  # empty: nothing held back
    assert f.merger.waited == 0.0
    assert sum(f.merger.wait_counts.values()) == 0


def test_a_backlog_is_reported_applied_once_when_the_merge_empties() -> None:
    watch = BacklogWatch()
    # live traffic: the merge never holds a backlog, so emptying means nothing
    assert [watch.drained(n) for n in (0, 800, 0, 5)] == [False] * 4
    # a backlog: reported when the merge is empty again, and only then
    seen = [watch.drained(n) for n in (PACE_BELOW, 50_000, 1_200, 0, 0, 300, 0)]
    assert seen == [False, False, False, True, False, False, False]


def test_a_wait_for_a_poll_of_an_empty_input_counts_as_poll() -> None:
    polls = {("a", 0): 2_000, ("b", 0): 1_000, ("rep", 0): 2_000}  # ms
    f = Fixture({})  # every input caught up
    f.merger.polled = lambda topic, part: polls.get((topic, part))
    f.merger.fetched(f.merger.sources[("a", 0)], 2_000)  # the record came at 2,000 ms
    # b was last polled at 1,000 ms, before the record came: what reached b since is unknown
    assert f.pop(2.0) is None
    polls[("b", 0)] = 2_100
    assert f.pop(2.3) is not None
    assert f.merger.waits["poll"] == pytest.approx(0.3)
    assert f.merger.wait_counts == {"input": 0, "peer": 0, "poll": 1, "handover": 0}
