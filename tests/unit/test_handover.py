"""A rescore's hand-over without Kafka: rebuilt states installed into a running processor.

A "worker" processor scores the published events under the old plan; a "rescore"
processor rebuilds them under the new plan up to a point in event time; the worker takes
the rebuilt states (:meth:`Processor.install`), reads its inputs again from the cut and
goes on. Whatever the worker did before — held at the point, or ran past it — it must end
with what ``scorestream score`` gives under the new plan for every event, and the
crossings it emits after the hand-over must be the new plan's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, Member, run_members
from scorestream.engine.rules import parse_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, parse_ts
from scorestream.offline import OfflineRun, score_lines
from scorestream.pipeline.processor import GENERATION_MARK
from scorestream.pipeline.records import MIN_TS
from traffic import journeys

ROOT = Path(__file__).resolve().parents[2]
OLD_TEXT = (ROOT / "tests" / "plans" / "parity.yaml").read_text()
# The new plan: other points, a stricter limit, a new threshold level.
NEW_TEXT = (
    OLD_TEXT.replace("points: 15", "points: 25")
    .replace("points: 30\n", "points: 20\n")
    .replace("enter: 40, exit: 30", "enter: 35, exit: 25")
)
OLD = parse_rules(OLD_TEXT, "old.yaml")
NEW = parse_rules(NEW_TEXT, "new.yaml")
N = 6
GEN = 7


def offline(raws: list[dict[str, Any]]) -> OfflineRun:
    return score_lines(Engine(NEW), iter(json.dumps(r).encode() for r in raws))


def states_of(member: Member, at: int) -> dict[str, Any]:
    engine = member.proc.engine
    return {s.key: (engine.scores(s, at), engine.tiers(s)) for s in member.proc.states()}


def expected(run: OfflineRun) -> dict[str, Any]:
    return {row["contact_id"]: (row["scores"], row["tiers"]) for row in run.report()}


def copy(state: ContactState) -> ContactState:
    return ContactState.from_bytes(state.to_bytes())


def rebuild(cluster: Cluster, at: int, seed: int) -> tuple[Member, dict[int, dict[str, int]], int]:
    """The rescore: the new plan over every partition, held at ``at``; its cut and clock."""
    member = Member(cluster, Engine(NEW), range(N))
    member.proc.hold(at)
    run_members([member], random.Random(seed))
    proc = member.proc
    cuts = {p: dict(part.released) for p, part in proc.parts.items()}
    newest = proc.newest
    lateness = int(proc.settings.lateness * US_PER_SECOND)
    clock = MIN_TS if newest is None else min(newest - lateness, at - 1)
    return member, cuts, clock


def hand_over(worker: Member, rescore: Member, cuts: dict[int, dict[str, int]], clock: int) -> int:
    """Install the rebuilt states in the worker; returns how many replaced old ones."""
    proc = worker.proc
    proc.engine = Engine(NEW)
    replaced = 0
    for p in sorted(proc.parts):
        states = [copy(s) for s in rescore.proc.parts[p].store.states()]  # type: ignore[attr-defined]
        replaced += len(proc.install(p, states, cuts[p], cuts, GEN, clock))
    proc.hold(None)
    for source in proc.merger.take_rereads():
        # The consumer's seek: read again from the cut.
        worker.position[(source.topic, source.partition)] = source.received
    return replaced


def split(raws: list[dict[str, Any]], at: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events published before the rescore, and "live" ones published during it."""
    first = [r for r in raws if parse_ts(r["occurred_at"]) < at - 1800 * US_PER_SECOND]
    rest = [r for r in raws if parse_ts(r["occurred_at"]) >= at - 1800 * US_PER_SECOND]
    return first, rest


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("held", [True, False])
def test_after_the_hand_over_the_worker_ends_as_score_does_under_the_new_plan(
    seed: int, held: bool
) -> None:
    raws = journeys(60, seed=seed)
    times = sorted(parse_ts(r["occurred_at"]) for r in raws)
    at = times[len(times) // 2]
    run = offline(raws)
    assert run.at is not None
    history, live = split(raws, at)

    cluster = Cluster()
    cluster.publish(history)
    worker = old_worker(cluster, at, held, seed)
    # Live traffic arrives while the rescore runs (the worker reads it too).
    cluster.publish(live)
    run_members([worker], random.Random(seed + 100))
    if held:
        assert worker.proc.newest is not None and worker.proc.newest < at
    else:
        assert worker.proc.newest is not None and worker.proc.newest >= at
    worker.proc.tick(worker.now)  # timers and decay of idle contacts, up to its time
    rescore, cuts, clock = rebuild(cluster, at, seed)
    before = len(worker.out.crossings)

    replaced = hand_over(worker, rescore, cuts, clock)
    assert replaced > 0
    # Time is the rebuild's again: what the worker's sweep does now happens there.
    assert worker.proc.watermark <= clock
    worker.proc.tick(worker.now)
    run_members([worker], random.Random(seed + 200))
    worker.proc.advance_all(run.at)

    assert states_of(worker, run.at) == expected(run)
    offline_crossings = {c.crossing_id: c.to_dict() for c in run.crossings}
    after = [c.to_dict() for c in worker.out.crossings[before:]]
    for doc in after:
        assert offline_crossings.get(doc["crossing_id"]) == doc, doc
    emitted = {d["crossing_id"] for d in after}
    missing = [
        d
        for d in offline_crossings.values()
        if parse_ts(d["occurred_at"]) >= at and d["crossing_id"] not in emitted
    ]
    assert missing == []


def scored(
    people: int, seed: int, share: int, held: bool
) -> tuple[int, OfflineRun, Cluster, Member]:
    """Journeys published at once; the point 1/``share`` into their event times; the
    offline run under the new plan; a worker that scored them under the old plan."""
    raws = journeys(people, seed=seed)
    times = sorted(parse_ts(r["occurred_at"]) for r in raws)
    at = times[len(times) // share]
    run = offline(raws)
    assert run.at is not None
    cluster = Cluster()
    cluster.publish(raws)
    return at, run, cluster, old_worker(cluster, at, held, seed)


def old_worker(cluster: Cluster, at: int, held: bool, seed: int) -> Member:
    """A worker that scored what the cluster holds under the old plan (held at ``at``)."""
    worker = Member(cluster, Engine(OLD), range(N))
    if held:
        worker.proc.hold(at)
    run_members([worker], random.Random(seed))
    return worker


def test_a_second_install_of_the_same_generation_keeps_what_came_after_it() -> None:
    # A worker restarted after its hand-over installs the generation again (it cannot
    # know whether its checkpoint included it): states already from the generation stay.
    at, run, cluster, worker = scored(40, seed=5, share=3, held=True)
    rescore, cuts, clock = rebuild(cluster, at, 5)
    hand_over(worker, rescore, cuts, clock)
    run_members([worker], random.Random(6))
    rebuilt = {s.key for s in rescore.proc.states()}
    assert rebuilt
    assert all(
        s.marks.get(GENERATION_MARK) == GEN for s in worker.proc.states() if s.key in rebuilt
    )

    assert hand_over(worker, rescore, cuts, clock) == 0
    run_members([worker], random.Random(7))
    worker.proc.advance_all(run.at)
    assert states_of(worker, run.at) == expected(run)


def test_a_contact_first_seen_after_the_cut_is_scored_again_under_the_new_plan() -> None:
    # Not held: the worker scored everything under the old plan first.
    at, run, cluster, worker = scored(40, seed=8, share=2, held=False)
    rescore, cuts, clock = rebuild(cluster, at, 8)
    rebuilt = {s.key for s in rescore.proc.states()}
    newcomers = {s.key for s in worker.proc.states()} - rebuilt
    assert newcomers, "the data must have contacts that appear only after the cut"
    hand_over(worker, rescore, cuts, clock)
    run_members([worker], random.Random(9))
    worker.proc.advance_all(run.at)
    got = states_of(worker, run.at)
    want = expected(run)
    assert {k: got[k] for k in newcomers} == {k: want[k] for k in newcomers}
    assert got == want


def test_a_held_processor_releases_nothing_at_or_after_the_hold_and_time_stays_before_it() -> None:
    raws = journeys(30, seed=11)
    times = sorted(parse_ts(r["occurred_at"]) for r in raws)
    at = times[len(times) // 2]
    cluster = Cluster()
    cluster.publish(raws)
    worker = Member(cluster, Engine(OLD), range(N))
    worker.proc.hold(at)
    run_members([worker], random.Random(11))
    proc = worker.proc
    assert proc.newest is not None and proc.newest < at
    assert proc.merger.buffered > 0
    # Quiet for long, a live stream would follow the wall clock: held, it stays before.
    later = worker.now + 3600
    proc.tick(later)
    assert proc.watermark < at
    proc.hold(None)
    proc.run(later)
    assert proc.merger.buffered == 0
    assert proc.newest is not None and proc.newest >= at
