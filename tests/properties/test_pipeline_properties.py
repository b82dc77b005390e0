"""Hypothesis invariants of the pipeline: order and redelivery (one property per test).

* however a worker happens to read its topic-partitions (chunk sizes, which partition
  first), it applies the same events in the same order as ``scorestream score``;
* a redelivered message (the same offset read twice, as after a rebalance or a crash)
  changes nothing.
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
