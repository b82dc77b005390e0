"""Hypothesis invariants of the pipeline: order and redelivery (one property per test).

* however a worker happens to read its topic-partitions (chunk sizes, which partition
  first), it applies the same events in the same order as ``scorestream score``;
* a redelivered message (the same offset read twice, as after a rebalance or a crash)
  changes nothing;
* live, a record passes an empty input once that input was polled after the record's
  own batch reached the merge, whatever batches of its input came since.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import Cluster, Member, run_members
from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Engine
from scorestream.offline import OfflineRun, score_lines
from scorestream.pipeline.merge import Merger
from scorestream.pipeline.records import EVENT, Record
from traffic import journeys

ROOT = Path(__file__).resolve().parents[2]
PARITY = load_rules(ROOT / "tests" / "plans" / "parity.yaml")
N = 6

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def offline(raws: list[dict[str, Any]]) -> OfflineRun:
    return score_lines(Engine(PARITY), iter(json.dumps(r).encode() for r in raws))


def results(member: Member, at: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    member.proc.advance_all(at)
    crossings = {c.crossing_id: c.to_dict() for c in member.out.crossings}
    states = {s.key: s.to_bytes() for s in member.proc.states()}
    return crossings, states


@PROFILE
@given(
    traffic=st.integers(0, 10_000),
    read_order=st.integers(0, 10_000),
    late_share=st.sampled_from([0.0, 0.05]),
)
def test_the_read_order_never_changes_the_result(
    traffic: int, read_order: int, late_share: float
) -> None:
    raws = journeys(12, seed=traffic, late_share=late_share)
    run = offline(raws)
    assert run.at is not None
    cluster = Cluster()
    cluster.publish(raws)
    member = Member(cluster, Engine(PARITY), range(N))
    run_members([member], random.Random(read_order))
    crossings, states = results(member, run.at)
    assert crossings == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert states == {s.key: s.to_bytes() for s in run.processor.states()}


@PROFILE
@given(traffic=st.integers(0, 10_000), data=st.data())
def test_a_redelivered_message_changes_nothing(traffic: int, data: st.DataObject) -> None:
    raws = journeys(12, seed=traffic)
    cluster = Cluster()
    cluster.publish(raws)
    # One reading; then a fresh processor over the same stores reads every log again (a
    # consumer sent back after a rebalance or a crash), each from offset 0 or from a
    # drawn offset part-way.
    once = Member(cluster, Engine(PARITY), range(N))
    run_members([once], random.Random(1))
    first, states = results(once, 0)
    again = Member(cluster, Engine(PARITY), range(N), stores=once.stores)
    rewind = data.draw(st.lists(st.sampled_from(sorted(again.position)), max_size=10))
    for tp in rewind:
        again.position[tp] = data.draw(st.integers(0, cluster.highwater(*tp)))
    run_members([again], random.Random(2))
    assert again.out.crossings == []
    assert {s.key: s.to_bytes() for s in again.proc.states()} == states
    assert first


@PROFILE
@given(
    steps=st.lists(
        st.one_of(
            # a batch of n records of input "a" reaching the merge dt ms after the last one
            st.tuples(st.just("batch"), st.integers(1, 4), st.integers(0, 20)),
            # every input polled dt ms after the last batch (never before an earlier poll)
            st.tuples(st.just("poll"), st.just(0), st.integers(-25, 25)),
        ),
        max_size=30,
    )
)
def test_a_record_passes_an_empty_input_once_it_was_polled_after_the_records_batch(
    steps: list[tuple[str, int, int]],
) -> None:
    """Batches of one input reach the merge at increasing times while another input of
    the partition stays empty, and now and then every input is polled. After each poll,
    the merge has released exactly the records whose own batch came at or before it:
    none whose batch came later, and none held back by a later batch of its input."""
    merger = Merger(lambda topic, part: merger.sources[(topic, part)].received)
    polls = {"at": 0}
    merger.polled = lambda topic, part: polls["at"]
    merger.add_partition(0, [("a", "a"), ("b", "b")], ("rep", "rep"), {})
    source = merger.sources[("a", 0)]
    assert source.queue is not None
    merger.refresh(1_000.0)
    clock, offset = 1_000_000, 0
    batch_of: dict[int, int] = {}  # offset -> when its batch reached the merge (ms)
    released: list[int] = []
    for kind, n, dt in steps:
        if kind == "batch":
            clock += dt
            for _ in range(n):
                record = Record(EVENT, (offset, 0, 0, offset, 0), "c-1", 0, offset=offset)
                merger.push(source.queue, record)
                merger.arrived(source, offset, clock / 1000)
                batch_of[offset] = clock
                offset += 1
            merger.fetched(source, clock)
        else:
            polls["at"] = max(polls["at"], clock + dt)
            now = max(clock, polls["at"]) / 1000
            merger.look_again(now)
            while (record := merger.pop(now)) is not None:
                released.append(record.offset)
            assert released == [o for o in sorted(batch_of) if batch_of[o] <= polls["at"]]
