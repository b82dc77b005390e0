"""The pipeline's processor without Kafka: event-time order, identity, replays, waits.

Most tests run processors over a fake cluster (``tests/cluster.py``) that reads the
topic-partition logs in a random interleaving, and compare with ``scorestream score``'s
run of the same events.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, Member, run_members
from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.offline import OfflineRun, score_lines
from scorestream.pipeline.merge import (
    AHEAD_SECONDS,
    FRESH_SLACK_MS,
    POLL_STUCK_SECONDS,
    SLOW_FETCH_FACTOR,
    STALL_SECONDS,
)
from scorestream.pipeline.processor import Processor, Settings
from scorestream.pipeline.records import CLOCK, REQUEST, STATE, clock_envelope, decode_envelope
from scorestream.pipeline.routing import REPARTITION, partition_for
from scorestream.pipeline.store import MemoryStore
from traffic import journeys

ROOT = Path(__file__).resolve().parents[2]
PARITY = load_rules(ROOT / "tests" / "plans" / "parity.yaml")
B2B = load_rules(ROOT / "rules" / "b2b.yaml")
N = 6
T0 = parse_ts("2026-03-02T08:00:00Z")


def offline(raws: list[dict[str, Any]], rules: Any = PARITY) -> OfflineRun:
    return score_lines(Engine(rules), iter(json.dumps(r).encode() for r in raws))


def finish(members: list[Member], at: int) -> dict[str, dict[str, Any]]:
    """Time reaches ``at`` everywhere (as when the stream goes quiet); crossings by id."""
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        m.proc.advance_all(at)
        for c in m.out.crossings:
            doc = c.to_dict()
            assert out.setdefault(c.crossing_id, doc) == doc, "a crossing id with two contents"
    return out


def scores(members: list[Member], run: OfflineRun) -> dict[str, Any]:
    assert run.at is not None
    engine = run.engine
    return {
        s.key: (engine.scores(s, run.at), engine.tiers(s)) for m in members for s in m.proc.states()
    }


def expected_scores(run: OfflineRun) -> dict[str, Any]:
    return {row["contact_id"]: (row["scores"], row["tiers"]) for row in run.report()}


def ev(i: int, kind: str, minutes: float, **fields: Any) -> dict[str, Any]:
    props = fields.pop("props", None)
    raw: dict[str, Any] = {
        "event_id": f"e{i}",
        "type": kind,
        "occurred_at": format_ts(T0 + int(minutes * 60 * US_PER_SECOND)),
        **fields,
    }
    if props is not None:
        raw["properties"] = props
    return raw


def pair_on_two_partitions(first: set[int], second: set[int]) -> tuple[str, str]:
    """An anonymous id with its partition in ``first`` and a contact in ``second``."""
    anon = next(f"anon-{i}" for i in range(1000) if partition_for(f"anon-{i}", N) in first)
    contact = next(f"c-{i}" for i in range(1000) if partition_for(f"c-{i}", N) in second)
    return anon, contact


# ------------------------------------------------------------------ one worker


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_one_worker_gives_the_offline_result_whatever_the_read_order(seed: int) -> None:
    raws = journeys(60, seed=seed)
    run = offline(raws)
    assert run.at is not None
    member = live(raws, seed)
    assert finish([member], run.at) == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert scores([member], run) == expected_scores(run)
    assert member.proc.late == run.processor.late


def live(raws: list[dict[str, Any]], seed: int, partitions: Any = range(N)) -> Member:
    """One processor reading the published events in a seeded random order."""
    cluster = Cluster()
    cluster.publish(raws)
    member = Member(cluster, Engine(PARITY), partitions)
    run_members([member], random.Random(seed))
    return member


def test_events_out_of_order_on_different_topics_are_applied_in_time_order() -> None:
    # The open (e-mail topic) is published after a later page view (page-view topic);
    # applied in event time, it is inside the 30 min window and cancels the -10.
    raws = [
        ev(1, "email_sent", 0, contact_id="c-1", props={"campaign_id": "k"}),
        ev(2, "page_view", 40, contact_id="c-1", props={"url": "/"}),
        ev(3, "email_open", 10, contact_id="c-1", props={"campaign_id": "k"}),
    ]
    run = offline(raws)
    assert run.processor.late == 0
    assert expected_scores(run)["c-1"][0]["engagement"] == 0.0
    assert scores([live(raws, 5)], run) == expected_scores(run)


def test_an_event_late_in_its_own_topic_is_scored_late() -> None:
    # Two page views of one contact, the earlier published second: a limit of 2 per hour
    # sees them in Kafka order, and the late one counts as late.
    raws = [
        ev(1, "page_view", 30, contact_id="c-1", props={"url": "/blog/a"}),
        ev(2, "page_view", 31, contact_id="c-1", props={"url": "/blog/b"}),
        ev(3, "page_view", 0, contact_id="c-1", props={"url": "/blog/c"}),
    ]
    run = offline(raws)
    assert run.processor.late == 1


# ------------------------------------------------------------------ waiting


def test_nothing_is_applied_while_an_input_has_unread_records() -> None:
    cluster = Cluster()
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/pricing"})])
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    p = partition_for("c-1", N)
    cluster.publish_raw("events.email", p, ev(2, "email_sent", 5, contact_id="c-1"))
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    assert proc.run(1.0) == 0  # the e-mail topic holds a record not read yet
    assert [f"{s.topic}[{s.partition}]" for s in proc.merger.blocking] == [f"events.email[{p}]"]
    proc.receive("events.email", p, 0, cluster.logs[("events.email", p)][0], 1.1)
    assert proc.run(1.1) == 2


def test_a_caught_up_empty_input_is_not_waited_for_by_default() -> None:
    cluster = Cluster()
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/pricing"})])
    member = Member(cluster, Engine(PARITY), range(N))
    p = partition_for("c-1", N)
    member.proc.refresh(1.0)
    member.proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    assert member.proc.run(1.0) == 1


def _email_and_view(
    seen: dict[str, tuple[int, int]], poll: int, others: int
) -> tuple[Cluster, Processor, int]:
    """An e-mail (t=1) then a page view (t=2) of c-1 in Kafka. Partition p's inputs
    report the (high-water mark, poll time in ms) that ``seen`` holds when it is looked
    at (default: empty, polled at ``poll``); other partitions are empty, polled at
    ``others``."""
    cluster = Cluster()
    proc = Member(cluster, Engine(PARITY), range(N)).proc
    p = partition_for("c-1", N)
    cluster.publish([ev(1, "email_sent", 0, contact_id="c-1")])
    cluster.publish([ev(2, "page_view", 5, contact_id="c-1", props={"url": "/pricing"})])
    proc.merger.highwater = lambda topic, part: seen.get(topic, (0, 0))[0] if part == p else 0
    proc.merger.polled = lambda topic, part: seen.get(topic, (0, poll))[1] if part == p else others
    return cluster, proc, p


def _arrive(
    cluster: Cluster, proc: Processor, topic: str, p: int, at_ms: int, now: float, offset: int = 0
) -> None:
    """``offset`` of ``topic`` reaches the merge at ``at_ms``; the merge looks again."""
    source = proc.receive(topic, p, offset, cluster.logs[(topic, p)][offset], now)
    assert source is not None
    proc.merger.fetched(source, at_ms)
    proc.merger.look_again(now)


def test_an_empty_input_polled_before_a_record_was_fetched_is_polled_again_first() -> None:
    """A worker lagging live producers: the e-mail input looked caught up at the
    consumer's last poll of it (1,000 ms), the page view came from a later poll (2,000
    ms). The e-mail sent before it may be in Kafka by then: the page view waits for the
    e-mail input's next poll, and the e-mail is applied first, not late."""
    # (high-water mark, poll time) of partition p's inputs; the others are empty
    seen = {"events.email": (0, 1000), "events.page_view": (1, 2000)}
    cluster, proc, p = _email_and_view(seen, poll=1000, others=2100)
    proc.refresh(1.0)
    _arrive(cluster, proc, "events.page_view", p, 2000, 1.0)
    assert proc.run(1.0) == 0 and proc.merger.blocked
    seen["events.email"] = (1, 2100)  # polled again: it holds the e-mail
    seen.update({t: (0, 2100) for t in ("contacts.profile", "events.form", "events.cart")})
    seen.update({t: (0, 2100) for t in ("events.custom", REPARTITION)})
    proc.refresh(1.1)
    assert proc.run(1.1) == 0  # now it is behind its end: waited for as before
    _arrive(cluster, proc, "events.email", p, 2100, 1.2)
    assert proc.run(1.2) == 2
    assert proc.late == 0


def test_records_fetched_for_an_empty_input_but_not_handed_over_make_it_block() -> None:
    """The consumer's poll that brought the page view also brought the e-mail before it,
    but handed over only the page view (a fetch is handed over in parts): the e-mail
    input looked caught up when it was last checked, and is as recent as the page view.
    Its high-water mark, looked at again before the release, says it holds a record."""
    seen = {"events.email": (0, 1000), "events.page_view": (1, 1000)}
    cluster, proc, p = _email_and_view(seen, poll=2000, others=2000)
    proc.refresh(1.0)  # the e-mail input: caught up (nothing in Kafka yet)
    seen.update({"events.email": (1, 2000), "events.page_view": (1, 2000)})
    _arrive(cluster, proc, "events.page_view", p, 2000, 1.1)
    assert proc.run(1.1) == 0
    assert [f"{s.topic}[{s.partition}]" for s in proc.merger.blocking] == [f"events.email[{p}]"]
    _arrive(cluster, proc, "events.email", p, 2000, 1.2)
    assert proc.run(1.2) == 2
    assert proc.late == 0


def _view_waiting_for_email(polls: dict[str, int], fresh_polls: bool = True) -> Processor:
    """A page view (t=2) of c-1 reached the merge at 10,000 ms; the e-mail input of its
    partition is empty and was last polled at ``polls["events.email"]``, every other
    input at ``polls["others"]`` (both may be changed later). ``fresh_polls``: the
    merge's setting when the page view came."""
    cluster = Cluster()
    proc = Member(cluster, Engine(PARITY), range(N)).proc
    assert proc.merger.fresh_polls  # the default
    proc.merger.fresh_polls = fresh_polls
    p = partition_for("c-1", N)
    cluster.publish([ev(2, "page_view", 5, contact_id="c-1", props={"url": "/pricing"})])
    proc.merger.highwater = lambda topic, part: 1 if (topic, part) == ("events.page_view", p) else 0
    proc.merger.polled = lambda topic, part: polls[
        "events.email" if (topic, part) == ("events.email", p) else "others"
    ]
    proc.refresh(10.0)
    _arrive(cluster, proc, "events.page_view", p, 10_000, 10.0)
    return proc


def test_an_empty_input_the_consumer_stopped_polling_is_not_waited_for() -> None:
    """A record waits for a fresher poll of an empty input, but not for an input the
    consumer has not polled for ``poll_stale`` seconds while it polled the others (it
    would wait for ever)."""
    polls = {"events.email": 9_000, "others": 10_000}
    proc = _view_waiting_for_email(polls)
    assert proc.run(10.0) == 0  # the e-mail input was last polled before the page view came
    assert proc.merger.poll_stale == 1.0
    polls["others"] = 10_400  # the consumer goes on polling the others, not the e-mail input
    proc.merger.look_again(10.5)  # 1.4 s between its poll and theirs: not waited for
    assert proc.run(10.5) == 1


def test_a_consumer_that_polls_nothing_has_not_stopped_polling_one_input() -> None:
    """The consumer's thread short of CPU (the worker busy with a batch) polls no input
    for a while: the empty e-mail input is still waited for, since it may hold the
    contact's older records; its next poll decides."""
    polls = {"events.email": 9_000, "others": 10_000}
    proc = _view_waiting_for_email(polls)
    proc.merger.look_again(12.0)  # 3 s after the e-mail input's poll, 2 s after any poll
    assert proc.run(12.0) == 0
    polls["events.email"] = polls["others"] = 12_100
    proc.merger.look_again(12.1)
    assert proc.run(12.1) == 1


def test_a_consumer_that_polls_nothing_for_long_is_taken_as_stuck() -> None:
    """Waiting for a consumer short of CPU has a bound: after POLL_STUCK_SECONDS without
    any poll, the inputs it has not polled are not waited for, and the release goes on."""
    polls = {"events.email": 9_000, "others": 10_000}
    proc = _view_waiting_for_email(polls)
    stuck = 9.0 + POLL_STUCK_SECONDS  # seconds, when the e-mail input's poll stops counting
    proc.merger.look_again(stuck - 0.1)
    assert proc.run(stuck - 0.1) == 0
    proc.merger.look_again(stuck + 0.1)
    assert proc.run(stuck + 0.1) == 1


def test_a_poll_made_just_before_a_record_came_is_fresh_enough() -> None:
    """A worker that keeps up gets a record in the poll that also looked at its empty
    inputs, a few ms before the record reaches the merge: no wait (FRESH_SLACK_MS)."""
    for polled_at, released in ((10_000 - FRESH_SLACK_MS, 1), (10_000 - FRESH_SLACK_MS - 1, 0)):
        cluster = Cluster()
        member = Member(cluster, Engine(PARITY), range(N))
        proc = member.proc
        p = partition_for("c-1", N)
        cluster.publish([ev(2, "page_view", 5, contact_id="c-1", props={"url": "/pricing"})])
        proc.merger.highwater = lambda topic, part, p=p: (
            1 if (topic, part) == ("events.page_view", p) else 0
        )
        proc.merger.polled = lambda topic, part, at=polled_at: at
        proc.refresh(10.0)
        log = cluster.logs[("events.page_view", p)]
        source = proc.receive("events.page_view", p, 0, log[0], 10.0)
        assert source is not None
        proc.merger.fetched(source, 10_000)
        proc.merger.look_again(10.0)
        assert proc.run(10.0) == released


def test_without_fresh_polls_a_record_passes_inputs_polled_before_it_came() -> None:
    """``SCORESTREAM_MERGE_FRESH_POLL=false``: the page view passes the empty e-mail
    input polled a second before the page view came, as far as the high-water marks
    allow; with the default it waits for that input's next poll."""
    for fresh, released in ((True, 0), (False, 1)):
        proc = _view_waiting_for_email({"events.email": 9_000, "others": 10_000}, fresh)
        assert proc.run(10.0) == released


def test_a_record_waits_for_polls_after_its_own_batch_not_after_later_ones() -> None:
    """Two page views of c-1 reach the merge in two batches (10,000 and 10,050 ms); the
    e-mail input of their partition is empty. A poll of every input at 10,020 ms comes
    after the first view's batch: that view passes, the second waits for a later poll.
    (With one arrival time per input, the first view waited for the second's batch too,
    and a busy input's head kept waiting while its batches kept coming.)"""
    cluster = Cluster()
    proc = Member(cluster, Engine(PARITY), range(N)).proc
    p = partition_for("c-1", N)
    views = [ev(i, "page_view", 5 + i, contact_id="c-1", props={"url": "/"}) for i in range(2)]
    cluster.publish(views)
    polls = {"now": 9_000}
    proc.merger.highwater = lambda topic, part: 2 if (topic, part) == ("events.page_view", p) else 0
    proc.merger.polled = lambda topic, part: polls["now"]
    proc.refresh(10.0)
    for offset, at_ms in ((0, 10_000), (1, 10_050)):
        _arrive(cluster, proc, "events.page_view", p, at_ms, at_ms / 1000, offset)
        assert proc.run(at_ms / 1000) == 0  # every input last polled at 9,000 ms
    polls["now"] = 10_020
    proc.merger.look_again(10.06)
    assert proc.run(10.06) == 1
    assert proc.merger.blocked
    polls["now"] = 10_070
    proc.merger.look_again(10.08)
    assert proc.run(10.08) == 1
    assert proc.late == 0


def test_a_long_run_of_releases_looks_at_the_empty_inputs_again() -> None:
    """A worker catching up releases thousands of records per run while the consumer's
    thread fetches: every ``look_every`` releases the empty inputs' high-water marks
    are looked at again, and records fetched meanwhile for one of them stop the run."""
    cluster = Cluster()
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    proc.merger.look_every = 2
    p = partition_for("c-1", N)
    views = [ev(i, "page_view", i, contact_id="c-1", props={"url": "/"}) for i in range(6)]
    cluster.publish(views)
    seen = {"events.page_view": 6}
    proc.merger.highwater = lambda topic, part: seen.get(topic, 0) if part == p else 0
    proc.refresh(1.0)
    for offset in range(6):
        log = cluster.logs[("events.page_view", p)]
        proc.receive("events.page_view", p, offset, log[offset], 1.0)
    proc.merger.look_again(1.0)
    assert proc.run(1.0, limit=2) == 2
    seen["events.email"] = 1  # fetched, not handed over yet: an e-mail from before
    assert proc.run(1.0) == 0  # looked again before the third release
    assert [f"{s.topic}[{s.partition}]" for s in proc.merger.blocking] == [f"events.email[{p}]"]


def test_with_an_idle_wait_an_emptied_input_is_waited_for_that_long() -> None:
    cluster = Cluster()
    p = partition_for("c-1", N)
    member = Member(cluster, Engine(PARITY), range(N), settings=Settings(merge_idle=0.5))
    proc = member.proc
    cluster.publish([ev(1, "email_sent", 0, contact_id="c-1")])
    proc.refresh(1.0)
    proc.receive("events.email", p, 0, cluster.logs[("events.email", p)][0], 1.0)
    assert proc.run(1.0) == 1  # nothing emptied yet: every input was caught up and empty
    cluster.publish([ev(2, "page_view", 1, contact_id="c-1", props={"url": "/"})])
    cluster.publish([ev(3, "email_open", 2, contact_id="c-1")])
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.1)
    assert proc.run(1.1) == 0  # the e-mail input emptied at 1.0 and has a record unread
    proc.receive("events.email", p, 1, cluster.logs[("events.email", p)][1], 1.2)
    assert proc.run(1.2) == 1  # the page view; now the page-view input has emptied
    assert proc.run(1.3) == 0  # so the open waits for it until 1.7
    proc.refresh(1.71)
    assert proc.run(1.71) == 1
    cluster.publish([ev(4, "page_view", 3, contact_id="c-1", props={"url": "/"})])
    proc.receive("events.page_view", p, 1, cluster.logs[("events.page_view", p)][1], 1.8)
    assert proc.run(1.8) == 0  # the e-mail input emptied at 1.71: waited for until 2.21
    proc.refresh(2.22)
    assert proc.run(2.22) == 1


def test_a_source_stuck_behind_its_end_is_read_again_then_given_up() -> None:
    cluster = Cluster()
    p = partition_for("c-1", N)
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/"})])
    # A transaction marker: the end offset is one beyond the last record ever delivered.
    cluster.log("events.email", p).append(None)
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    assert proc.run(1.0) == 0
    proc.refresh(1.0 + STALL_SECONDS / 2)
    assert proc.run(1.0 + STALL_SECONDS / 2) == 0
    assert proc.merger.take_rereads() == []
    # Nothing for the stall time: the consumer is asked to read it again from offset 0.
    proc.refresh(1.0 + STALL_SECONDS + 0.01)
    assert proc.run(1.0 + STALL_SECONDS + 0.01) == 0
    rereads = proc.merger.take_rereads()
    assert [(s.topic, s.partition, s.received) for s in rereads] == [("events.email", p, 0)]
    # The re-read brings nothing either: the offsets hold no records; stop waiting. (The
    # worker looks every few milliseconds; a look in between stands for those.)
    proc.refresh(1.0 + 1.5 * STALL_SECONDS)
    assert proc.run(1.0 + 1.5 * STALL_SECONDS) == 0
    proc.refresh(1.0 + 2 * STALL_SECONDS + 0.02)
    assert proc.run(1.0 + 2 * STALL_SECONDS + 0.02) == 1
    assert proc.merger.stalls == 1
    assert proc.merger.take_rereads() == []


def test_time_the_process_stood_still_is_not_a_stall() -> None:
    # A worker stopped (SIGSTOP, swapped out) for longer than the stall time: at resume
    # its sources look quiet by the wall clock, but the merge was not looking; records
    # still in flight must not be read again. Watched for the stall time, it does ask.
    cluster = Cluster()
    p = partition_for("c-1", N)
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/"})])
    cluster.log("events.email", p).append(None)  # an end offset with no record delivered
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    assert proc.run(1.0) == 0
    resumed = 1.0 + 10 * STALL_SECONDS  # frozen in between: no look at all
    proc.refresh(resumed)
    assert proc.run(resumed) == 0
    assert proc.merger.take_rereads() == []
    proc.refresh(resumed + STALL_SECONDS / 2)
    assert proc.merger.take_rereads() == []
    proc.refresh(resumed + STALL_SECONDS + 0.01)
    rereads = proc.merger.take_rereads()
    assert [(s.topic, s.partition, s.received) for s in rereads] == [("events.email", p, 0)]


def _quiet_email_source(position: Callable[[str, int], int | None]) -> Processor:
    """A processor whose e-mail input has an end offset and no record delivered."""
    p = partition_for("c-1", N)
    cluster = Cluster()
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/"})])
    cluster.log("events.email", p).append(None)
    proc = Member(cluster, Engine(PARITY), range(N)).proc
    proc.merger.position = position
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    assert proc.run(1.0) == 0
    return proc


def _seconds_to_reread(proc: Processor) -> float:
    now = 1.0
    while not proc.merger.take_rereads():
        now += 0.25  # the worker looks every few milliseconds; a look per 0.25 s stands in
        proc.refresh(now)
        assert now < 60
    return now - 1.0


def test_the_consumer_position_decides_how_long_a_quiet_source_waits() -> None:
    # The same quiet source with the consumer's position unknown, past the offset the
    # merge expects (handed over: on the way, or lost) and still at it (not handed over:
    # slow). Unknown: the stall time. Past it: it must stay past for AHEAD_SECONDS more
    # (records on their way arrive meanwhile). At it: SLOW_FETCH_FACTOR times as long.
    def at(offset: int | None) -> Callable[[str, int], int | None]:
        return lambda topic, partition: offset if topic == "events.email" else None

    unknown = _seconds_to_reread(_quiet_email_source(at(None)))
    lost = _seconds_to_reread(_quiet_email_source(at(1)))
    slow = _seconds_to_reread(_quiet_email_source(at(0)))
    assert STALL_SECONDS <= unknown < STALL_SECONDS + 0.3
    assert STALL_SECONDS + AHEAD_SECONDS <= lost < STALL_SECONDS + AHEAD_SECONDS + 0.3
    longer = SLOW_FETCH_FACTOR * STALL_SECONDS
    assert longer <= slow < longer + 0.3


def test_records_on_their_way_are_not_read_again() -> None:
    # The consumer handed a batch over (its position is past the offset expected) and
    # the merge looks before the batch reaches it: the batch then arrives, and nothing
    # is read again. (Seen with a starved source on a busy worker: the re-read came 2 ms
    # before the batch it asked for.)
    p = partition_for("c-1", N)
    cluster = Cluster()
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/"})])
    cluster.publish([ev(2, "email_sent", 1, contact_id="c-1", props={"campaign_id": "k"})])
    proc = Member(cluster, Engine(PARITY), range(N)).proc
    proc.merger.position = lambda topic, partition: 1 if topic == "events.email" else None
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    now = 1.0
    while now < 1.0 + STALL_SECONDS + AHEAD_SECONDS / 2:
        now += 0.25
        proc.refresh(now)
    proc.receive("events.email", p, 0, cluster.logs[("events.email", p)][0], now)
    assert proc.run(now) == 2
    for _ in range(20):
        now += 0.25
        proc.refresh(now)
    assert proc.merger.take_rereads() == []


def test_a_message_after_a_gap_is_refused_once_and_the_source_read_again() -> None:
    cluster = Cluster()
    p = partition_for("c-1", N)
    cluster.publish([ev(i, "page_view", i, contact_id="c-1", props={"url": "/"}) for i in range(3)])
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    log = cluster.logs[("events.page_view", p)]
    proc.refresh(1.0)
    # Offset 2 comes first (a stale message, 0 and 1 were lost): refused, re-read asked.
    proc.receive("events.page_view", p, 2, log[2], 1.0)
    assert [(s.topic, s.received) for s in proc.merger.take_rereads()] == [("events.page_view", 0)]
    for offset in range(3):
        proc.receive("events.page_view", p, offset, log[offset], 1.1)
    assert proc.run(1.1) == 3
    # A gap that comes again (offsets without records) is taken the second time.
    cluster.publish_raw("events.page_view", p, None)  # offset 3: never delivered
    cluster.publish([ev(9, "page_view", 9, contact_id="c-1", props={"url": "/"})])
    proc.receive("events.page_view", p, 4, log[4], 1.2)
    assert len(proc.merger.take_rereads()) == 1
    proc.receive("events.page_view", p, 4, log[4], 1.3)
    assert proc.merger.take_rereads() == []
    assert proc.run(1.3) == 1


def test_a_stale_batch_after_a_rebalance_asks_for_one_re_read() -> None:
    """After a rebalance the consumer handed over offsets 5-9 while the merge expected
    0 (seen in soaks: one re-read and one seek per refused record). One re-read is
    asked for, and the records that come again from 0 are taken in order (a later gap:
    the test above)."""
    cluster = Cluster()
    p = partition_for("c-1", N)
    events = [ev(i, "page_view", i, contact_id="c-1", props={"url": "/"}) for i in range(10)]
    cluster.publish(events)
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    log = cluster.logs[("events.page_view", p)]
    proc.refresh(1.0)
    for offset in range(5, 10):
        proc.receive("events.page_view", p, offset, log[offset], 1.0)
    assert [(s.topic, s.received) for s in proc.merger.take_rereads()] == [("events.page_view", 0)]
    for offset in range(10):
        proc.receive("events.page_view", p, offset, log[offset], 1.1)
    assert proc.merger.take_rereads() == []
    assert proc.run(1.1) == 10


def test_a_re_read_brings_the_records_a_consumer_skipped() -> None:
    cluster = Cluster()
    p = partition_for("c-1", N)
    cluster.publish([ev(1, "page_view", 0, contact_id="c-1", props={"url": "/"})])
    cluster.publish([ev(2, "email_sent", 1, contact_id="c-1", props={"campaign_id": "k"})])
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    proc.refresh(1.0)
    proc.receive("events.page_view", p, 0, cluster.logs[("events.page_view", p)][0], 1.0)
    proc.refresh(1.0 + STALL_SECONDS / 2)  # the worker looks every few milliseconds
    proc.refresh(1.0 + STALL_SECONDS + 0.01)
    (source,) = proc.merger.take_rereads()
    # The re-read delivers the e-mail the consumer had skipped: both are applied, in order.
    proc.receive("events.email", p, source.received, cluster.logs[("events.email", p)][0], 4.0)
    assert proc.run(4.0) == 2
    assert proc.merger.stalls == 0


# ------------------------------------------------------------------ identity


def test_identify_merges_what_came_before_and_forwards_what_comes_after() -> None:
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    raws = [
        ev(1, "page_view", 0, anonymous_id=anon, props={"url": "/pricing"}),
        ev(2, "page_view", 1, anonymous_id=anon, props={"url": "/blog/a"}),
        ev(3, "identify", 2, contact_id=contact, anonymous_id=anon),
        ev(4, "page_view", 3, anonymous_id=anon, props={"url": "/pricing/team"}),
        ev(5, "form_submit", 4, contact_id=contact, props={"form_id": "contact"}),
    ]
    run = offline(raws)
    assert list(expected_scores(run)) == [contact]
    assert expected_scores(run)[contact][1]["engagement"] == "mql"
    for seed in range(5):
        cluster = Cluster()
        cluster.publish(raws)
        member = Member(cluster, Engine(PARITY), range(N))
        run_members([member], random.Random(seed))
        assert scores([member], run) == expected_scores(run)
        assert member.proc.resolve(anon) is member.proc.lookup(contact)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_two_workers_agree_with_offline_without_cookie_events_after_an_identify(
    seed: int,
) -> None:
    raws = journeys(60, seed=seed, cookie_after_identify=0.0, identify_delay=(1, 5), late_share=0.0)
    run = offline(raws)
    assert run.at is not None
    cluster = Cluster()
    cluster.publish(raws)
    members = [
        Member(cluster, Engine(PARITY), [0, 1, 2]),
        Member(cluster, Engine(PARITY), [3, 4, 5]),
    ]
    run_members(members, random.Random(seed))
    assert finish(members, run.at) == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert scores(members, run) == expected_scores(run)


def cookie_contacts(raws: list[dict[str, Any]]) -> set[str]:
    """Contacts (and their anonymous ids) whose anonymous id has an event after the
    identify: dated at or after it, or published after it."""
    identified: dict[str, tuple[str, int, int]] = {}
    for i, raw in enumerate(raws):
        if raw["type"] == "identify":
            when = parse_ts(raw["occurred_at"])
            identified[raw["anonymous_id"]] = (raw["contact_id"], when, i)
    out = set()
    for i, raw in enumerate(raws):
        anon = raw.get("anonymous_id")
        if anon in identified and raw["type"] != "identify":
            contact, when, index = identified[anon]
            if parse_ts(raw["occurred_at"]) >= when or i > index:
                out.update((contact, anon))  # its crossings as a visitor may differ too
    return out


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_across_workers_only_contacts_with_cookie_events_after_identify_may_differ(
    seed: int,
) -> None:
    # The documented bound (README, "Known limits"): with the anonymous id and the
    # contact on different workers, what differs from offline is confined to contacts
    # with events under the anonymous id dated at or after the identify. Final scores
    # do not depend on that order in this plan's sums only where decay allows; the
    # check here is on crossings and tiers.
    raws = journeys(60, seed=seed)
    run = offline(raws)
    assert run.at is not None
    cluster = Cluster()
    cluster.publish(raws)
    members = [
        Member(cluster, Engine(PARITY), [0, 1, 2]),
        Member(cluster, Engine(PARITY), [3, 4, 5]),
    ]
    run_members(members, random.Random(seed))
    live = finish(members, run.at)
    expected = {c.crossing_id: c.to_dict() for c in run.crossings}
    racy = cookie_contacts(raws)
    assert racy  # the traffic has such contacts
    differing = {k.split(":")[0] for k in set(live) ^ set(expected)}
    differing |= {k.split(":")[0] for k in live.keys() & expected.keys() if live[k] != expected[k]}
    assert differing <= racy
    got, want = scores(members, run), expected_scores(run)
    assert {k for k in want if got.get(k) != want[k]} <= racy


class Split:
    """Contacts on one worker (partitions 3-5), anonymous ids on another (0-2); the
    contacts' worker reads alone first, so its hand-over requests go unanswered."""

    def __init__(self, raws: list[dict[str, Any]], seed: int) -> None:
        self.raws = raws
        self.cluster = Cluster()
        self.cluster.publish(raws)
        self.contacts = Member(self.cluster, Engine(PARITY), [3, 4, 5])
        self.anons = Member(self.cluster, Engine(PARITY), [0, 1, 2])
        self.rng = random.Random(seed)
        for _ in range(200):
            self.contacts.step(self.rng)

    def finish_as_offline(self) -> None:
        """Both read to the end; the result is the offline one."""
        run_members([self.anons, self.contacts], self.rng)
        run = offline(self.raws)
        assert scores([self.contacts], run) == expected_scores(run)
        assert finish([self.contacts, self.anons], run.at or 0) == {
            c.crossing_id: c.to_dict() for c in run.crossings
        }


def test_a_hand_over_from_another_worker_is_awaited_before_later_events() -> None:
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    other = next(f"o-{i}" for i in range(1000) if partition_for(f"o-{i}", N) in {3, 4, 5})
    raws = [
        ev(1, "page_view", 0, anonymous_id=anon, props={"url": "/pricing"}),
        ev(2, "page_view", 1, anonymous_id=anon, props={"url": "/pricing/team"}),
        ev(3, "identify", 2, contact_id=contact, anonymous_id=anon),
        ev(4, "form_submit", 3, contact_id=contact, props={"form_id": "contact"}),
        ev(5, "form_submit", 4, contact_id=other, props={"form_id": "contact"}),
    ]
    split = Split(raws, seed=0)
    # The contact's worker sent the request and waits: the contact's form is parked,
    # while another contact's later form is applied (only the identified contact waits).
    rep = split.cluster.logs[(REPARTITION, partition_for(anon, N))]
    sent = [decode_envelope(v) for v in rep if v]
    assert [r.kind for r in sent if r.kind != CLOCK] == [REQUEST]  # and frontier markers
    proc = split.contacts.proc
    assert proc.merger.expected == 1 and proc.awaiting == 1 and proc.parked == 1
    state = proc.lookup(contact)
    assert state is not None and state.clock is not None
    assert proc.engine.scores(state, state.clock)["engagement"] == 0.0
    applied = proc.lookup(other)
    assert applied is not None and applied.clock is not None
    assert proc.engine.scores(applied, applied.clock)["engagement"] > 0.0
    split.finish_as_offline()
    assert proc.merger.expected == 0 and proc.awaiting == 0 and proc.parked == 0


def _awaiting_member(wait: float = 30.0) -> tuple[Member, Cluster, str, str]:
    """A worker that applied an identify and awaits its hand-over (nobody answers)."""
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    cluster = Cluster()
    cluster.publish(
        [
            ev(1, "identify", 0, contact_id=contact, anonymous_id=anon),
            ev(2, "form_submit", 1, contact_id=contact, props={"form_id": "contact"}),
        ]
    )
    settings = Settings(identify_wait=wait, front_interval=0.002)
    member = Member(cluster, Engine(PARITY), [3, 4, 5], settings=settings)
    proc = member.proc
    p = partition_for(contact, N)
    proc.refresh(1.0)
    proc.receive("contacts.profile", p, 0, cluster.logs[("contacts.profile", p)][0], 1.0)
    proc.receive("events.form", p, 0, cluster.logs[("events.form", p)][0], 1.0)
    return member, cluster, anon, contact


def _engagement(member: Member, contact: str) -> float:
    state = member.proc.lookup(contact)
    assert state is not None and state.clock is not None
    return float(member.proc.engine.scores(state, state.clock)["engagement"])


def test_a_hand_over_that_never_comes_is_given_up_after_the_wait() -> None:
    member, _, _, contact = _awaiting_member(wait=5.0)
    proc = member.proc
    assert proc.run(1.0) == 2  # the identify, and the form, which is parked
    assert proc.parked == 1 and _engagement(member, contact) == 0.0
    proc.refresh(5.9)
    proc.run(5.9)
    assert proc.parked == 1 and _engagement(member, contact) == 0.0
    proc.refresh(6.1)
    proc.run(6.1)
    assert proc.parked == 0 and proc.awaiting == 0
    assert _engagement(member, contact) > 0.0
    assert proc.merger.expect_timeouts == 1


def test_parked_records_and_the_awaited_identify_hold_the_commit() -> None:
    member, _, _, contact = _awaiting_member()
    proc = member.proc
    p = partition_for(contact, N)
    assert proc.run(1.0) == 2
    # Both were released, but the identify's answer and the parked form are in memory
    # only: a restart must read both again (and ask again), so neither is committed.
    offsets = proc.commit_offsets()[p]
    assert offsets["contacts.profile"] == 0
    assert offsets["events.form"] == 0
    assert proc.parked == 1


def test_revoking_the_partition_drops_what_waited_in_it() -> None:
    member, _, _, contact = _awaiting_member()
    proc = member.proc
    assert proc.run(1.0) == 2
    proc.revoke([partition_for(contact, N)])
    assert proc.awaiting == 0 and proc.parked == 0
    assert proc.merger.expected == 0


def test_a_plan_switch_waits_for_the_hand_overs_before_it() -> None:
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    other = next(f"o-{i}" for i in range(1000) if partition_for(f"o-{i}", N) in {3, 4, 5})
    raws = [
        ev(1, "identify", 0, contact_id=contact, anonymous_id=anon),
        ev(2, "form_submit", 1, contact_id=contact, props={"form_id": "contact"}),
        ev(3, "form_submit", 2, contact_id=other, props={"form_id": "contact"}),
        ev(4, "form_submit", 10, contact_id=other, props={"form_id": "contact"}),
    ]
    cluster = Cluster()
    cluster.publish(raws)
    member = Member(cluster, Engine(PARITY), [3, 4, 5])
    proc = member.proc
    proc.schedule_plan(T0 + 5 * 60 * US_PER_SECOND, Engine(B2B))
    proc.refresh(1.0)
    for topic in ("contacts.profile", "events.form"):
        for p in (3, 4, 5):
            for offset, value in enumerate(cluster.logs.get((topic, p), [])):
                proc.receive(topic, p, offset, value, 1.0)
    proc.refresh(1.0)
    # The identify, the contact's form (parked) and the other contact's form at minute 2
    # are released; the form at minute 10 comes after the switch at minute 5: it waits.
    assert proc.run(1.0) == 3
    assert proc.merger.buffered == 1 and proc.parked == 1
    assert proc.engine.rules.version == PARITY.version


# ------------------------------------------------------------------ exactly once


def test_reading_everything_again_changes_nothing_and_sends_nothing_new() -> None:
    raws = journeys(60, seed=31)
    run = offline(raws)
    cluster = Cluster()
    cluster.publish(raws)
    first = Member(cluster, Engine(PARITY), range(N))
    run_members([first], random.Random(1))
    crossings = len(first.out.crossings)
    before = {
        k: s.to_bytes()
        for p in first.stores
        for s in first.proc.parts[p].store.states()
        for k in [s.key]
    }
    # A new processor over the same states, from offset 0 of every log (nothing committed).
    again = Member(cluster, Engine(PARITY), range(N), stores=first.stores)
    run_members([again], random.Random(2))
    assert again.out.crossings == []
    after = {s.key: s.to_bytes() for p in again.stores for s in again.proc.parts[p].store.states()}
    assert after == before
    assert crossings and run.at is not None


def test_a_handed_over_state_does_not_send_on_what_it_counted_itself() -> None:
    # Replayed after a crash, an anonymous event the identified state had counted before
    # the hand-over must not reach the contact a second time.
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    raws = [
        ev(1, "form_submit", 0, anonymous_id=anon, props={"form_id": "contact"}),
        ev(2, "identify", 1, contact_id=contact, anonymous_id=anon),
    ]
    cluster = Cluster()
    cluster.publish(raws)
    member = Member(cluster, Engine(PARITY), range(N))
    run_members([member], random.Random(3))
    merged = member.proc.lookup(contact)
    assert merged is not None
    points = dict(merged.models["engagement"].pts)
    # The contact's partition restarts from scratch (its state lost, nothing committed),
    # the anonymous partition keeps its handed-over state: both read everything again.
    stores = dict(member.stores)
    del stores[partition_for(contact, N)]
    again = Member(cluster, Engine(PARITY), range(N), stores=stores)
    run_members([again], random.Random(4))
    state = again.proc.lookup(contact)
    assert state is not None
    assert state.models["engagement"].pts == points  # contact-form once, not twice


def test_handed_bytes_are_the_state_without_its_alias_and_hand_over_mark() -> None:
    anon = "anon-1"
    run = offline(
        [
            ev(1, "cart_add", 0, anonymous_id=anon, props={"value": 100}),
            ev(2, "page_view", 1, anonymous_id=anon, props={"url": "/pricing"}),
            ev(3, "email_sent", 2, anonymous_id=anon, props={"campaign_id": "k"}),
        ]
    )
    state = run.processor.lookup(anon)
    assert state is not None and state.alias is None
    before = state.to_bytes()
    state.alias, state.handed = "c-1", "e9"
    assert state.to_bytes() != before
    assert state.handed_bytes() == before
    copy = ContactState.from_bytes(state.handed_bytes())
    assert (copy.alias, copy.handed) == (None, None)


def test_a_hand_over_in_memory_merges_the_state_kafka_would_have_carried() -> None:
    # One worker passes the anonymous state itself to the contact's partition; two
    # workers send its bytes through the repartition topic. The merge must leave the
    # handed-over state as it was sent, even when the contact later adds to what it
    # merged (the expiry bucket at minute 0 comes from the visitor; a late cart event
    # at minute 0, behind a later one in its partition, adds to it after the merge).
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    raws = [
        ev(1, "cart_add", 0, anonymous_id=anon, props={"value": 100}),
        ev(2, "page_view", 0.5, anonymous_id=anon, props={"url": "/pricing"}),
        ev(3, "email_sent", 0.7, anonymous_id=anon, props={"campaign_id": "k"}),
        ev(4, "identify", 1, contact_id=contact, anonymous_id=anon),
        ev(5, "cart_add", 2, contact_id=contact, props={"value": 40}),
        ev(6, "cart_add", 0, contact_id=contact, props={"value": 60}),
        ev(7, "page_view", 3, contact_id=contact, props={"url": "/pricing/team"}),
    ]
    cluster = Cluster()
    cluster.publish(raws)
    pair = [
        Member(cluster, Engine(PARITY), [0, 1, 2]),
        Member(cluster, Engine(PARITY), [3, 4, 5]),
    ]
    run_members(pair, random.Random(5))
    (sent,) = [
        record.payload
        for (topic, _), log in cluster.logs.items()
        if topic == REPARTITION
        for value in log
        if value is not None
        and (record := decode_envelope(value)).kind == STATE
        and record.payload is not None
    ]
    alone = Cluster()
    alone.publish(raws)
    member = Member(alone, Engine(PARITY), range(N))
    run_members([member], random.Random(5))
    assert not any(topic == REPARTITION for topic, _ in alone.logs)  # all in memory
    handed = member.proc.lookup(anon)
    assert handed is not None and handed.alias == contact
    assert handed.handed_bytes() == sent
    merged = member.proc.lookup(contact)
    assert merged is not None
    assert merged.to_bytes() == pair[1].proc.lookup(contact).to_bytes()  # type: ignore[union-attr]
    assert merged.models["intent"].buckets[0] == (T0, {"cart": 30.0, "basket": 8.0})


def test_invalid_messages_go_to_the_dlq_with_reason_and_payload() -> None:
    cluster = Cluster()
    cluster.publish_raw("events.page_view", 2, b"not json")
    cluster.publish_raw("events.page_view", 2, None)
    cluster.publish_raw("events.page_view", 2, b"\xff\xfe")
    cluster.publish_raw(REPARTITION, 4, b"junk")
    member = Member(cluster, Engine(PARITY), range(N), settings=Settings(max_bytes=50))
    big = ev(1, "page_view", 0, contact_id="c-1", props={"url": "/" + "x" * 100})
    cluster.publish_raw("events.page_view", 2, big)
    run_members([member], random.Random(0))
    records = member.out.dlq_records
    assert sorted((r["topic"], r["partition"], r["offset"]) for r in records) == [
        ("events.page_view", 2, 0),
        ("events.page_view", 2, 1),
        ("events.page_view", 2, 2),
        ("events.page_view", 2, 3),
        ("scorestream.repartition", 4, 0),
    ]
    by_offset = {(r["topic"], r["offset"]): r for r in records}
    assert by_offset[("events.page_view", 0)]["payload"] == "not json"
    assert by_offset[("events.page_view", 1)]["error"] == "empty message (no value)"
    assert by_offset[("events.page_view", 2)]["encoding"] == "base64"
    assert "too large" in by_offset[("events.page_view", 3)]["error"]
    assert "not a repartition envelope" in by_offset[("scorestream.repartition", 0)]["error"]


def test_a_misrouted_event_is_applied_in_its_home_partition() -> None:
    raw = ev(1, "page_view", 0, contact_id="c-1", props={"url": "/pricing"})
    home = partition_for("c-1", N)
    cluster = Cluster()
    cluster.publish_raw("events.page_view", (home + 1) % N, raw)
    member = Member(cluster, Engine(PARITY), range(N))
    run_members([member], random.Random(0))
    state = member.proc.lookup("c-1")
    assert state is not None and state.models["engagement"].pts == {"pricing": 15.0}
    counts = member.proc.take_counts()
    assert counts[("events.page_view", "forwarded")] == 1


# ------------------------------------------------------------------ commits and time


def test_commit_offsets_stop_before_a_record_whose_consequence_still_waits() -> None:
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    cluster = Cluster()
    cluster.publish([ev(1, "identify", 0, contact_id=contact, anonymous_id=anon)])
    member = Member(cluster, Engine(PARITY), range(N))
    proc = member.proc
    pc = partition_for(contact, N)
    proc.refresh(1.0)
    proc.receive("contacts.profile", pc, 0, cluster.logs[("contacts.profile", pc)][0], 1.0)
    assert proc.run(1.0, limit=1) == 1
    # The identify is applied; its hand-over request waits in the anonymous id's
    # partition, in memory only: were the worker to die now, replaying the identify is
    # what re-creates it, so its offset may not be committed yet.
    assert proc.commit_offsets()[pc]["contacts.profile"] == 0
    assert proc.run(1.0) == 2  # the request, then the (empty) answer
    assert proc.commit_offsets()[pc]["contacts.profile"] == 1


def test_a_quiet_backlog_stays_at_its_newest_event_and_a_live_one_follows_the_clock() -> None:
    raw = ev(1, "page_view", 0, contact_id="c-1", props={"url": "/pricing"})
    # A replay: the event is ten hours old when the worker reads it.
    replay = Member(Cluster(), Engine(PARITY), range(N), settings=Settings(idle_timeout=2.0))
    replay.cluster.publish([raw])
    replay.now = T0 / US_PER_SECOND + 10 * 3600
    run_members([replay], random.Random(0))
    assert replay.proc.advance_watermark(replay.now) < T0  # not quiet yet: 5 s lateness
    assert replay.proc.advance_watermark(replay.now + 3.0) == T0  # quiet: its newest event
    # A live stream: the event is a minute old; once quiet, time follows the wall clock.
    live = Member(Cluster(), Engine(PARITY), range(N), settings=Settings(idle_timeout=2.0))
    live.cluster.publish([raw])
    live.now = T0 / US_PER_SECOND + 60
    run_members([live], random.Random(0))
    wm = live.proc.advance_watermark(live.now + 3.0)
    assert wm == int((live.now + 3.0) * US_PER_SECOND) - 5 * US_PER_SECOND


def quiet_member(partitions: Iterable[int]) -> tuple[Member, float, int]:
    """A member that applied 20 events and is quiet: it, a quiet time, its newest time."""
    member = Member(Cluster(), Engine(PARITY), partitions, settings=Settings(idle_timeout=2.0))
    member.cluster.publish(
        [ev(1, "page_view", 0, contact_id=f"c-{i}", props={"url": "/"}) for i in range(20)]
    )
    run_members([member], random.Random(0))
    quiet = member.now + 3.0
    newest = member.proc.clock_due(quiet)
    assert newest is not None
    return member, quiet, newest


def test_the_newest_event_time_is_told_again_after_every_rebalance() -> None:
    # A worker that rejoins (after kill -9) has no remote newest: the others must tell it
    # theirs again, although their own newest has not changed since they last told.
    member, quiet, newest = quiet_member([0, 1, 2])
    proc = member.proc
    proc.send_clock(newest)
    assert proc.clock_due(quiet) is None  # told, nothing new
    proc.set_generation(proc.generation + 1)
    assert proc.clock_due(quiet) == newest
    proc.send_clock(newest)
    proc.revoke([2])
    assert proc.clock_due(quiet) == newest


def test_a_worker_owning_every_partition_tells_its_time_once_others_are_back() -> None:
    # While the other workers are down it tells no one; marking its time as told then
    # left the restarted ones without it (their timers and decay stopped).
    member, quiet, newest = quiet_member(range(N))
    proc = member.proc
    sent = len(member.cluster.logs.get((REPARTITION, 0), []))
    proc.send_clock(newest)
    assert len(member.cluster.logs.get((REPARTITION, 0), [])) == sent  # nobody to tell
    assert proc.clock_due(quiet) == newest  # so not told
    proc.revoke([0])  # another worker owns partition 0 now
    proc.send_clock(newest)
    assert proc.clock_due(quiet) is None
    told = [decode_envelope(v) for v in member.cluster.logs[(REPARTITION, 0)][sent:]]
    assert [(r.kind, r.key[0]) for r in told] == [(CLOCK, newest)]


def test_a_worker_that_just_joined_waits_before_taking_another_workers_time() -> None:
    # A worker restarting after kill -9 has released nothing yet: it may find its inputs
    # at their end on its first fetch while the traffic goes on. The newest time another
    # worker tells it moves its contacts only once it has been quiet for idle_timeout
    # since it joined (the clock re-sent after rebalances without this, 994eaea:
    # two-worker live soaks with kill -9 differed in 149 - 2,964 crossings).
    member = Member(Cluster(), Engine(PARITY), [0, 1, 2], settings=Settings(idle_timeout=2.0))
    proc = member.proc
    member.now += 100.0  # long after the process started
    proc.joined(member.now)
    proc.refresh(member.now)
    remote = T0 + 3600 * US_PER_SECOND
    proc.receive(REPARTITION, 0, 0, clock_envelope(-1, remote), member.now)
    assert proc.remote_newest == remote
    assert not proc.quiet(member.now + 1.9)
    assert proc.advance_watermark(member.now + 1.9) < T0
    assert proc.quiet(member.now + 2.0)
    assert proc.advance_watermark(member.now + 2.0) == remote


def test_events_that_waited_for_a_hand_over_are_not_counted_as_late() -> None:
    # The contact's form (minute 3) waits for the visitor's state from the other worker
    # while another contact of its partition goes on to minute 4: applied after that one
    # by design, it did not reach Kafka late. An event that did (minute 1, published
    # after the contact's minute-3 one in the same topic) still counts, parked or not.
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    home = partition_for(contact, N)
    other = next(f"o-{i}" for i in range(1000) if partition_for(f"o-{i}", N) == home)
    raws = [
        ev(1, "page_view", 0, anonymous_id=anon, props={"url": "/pricing"}),
        ev(2, "identify", 2, contact_id=contact, anonymous_id=anon),
        ev(3, "form_submit", 3, contact_id=contact, props={"form_id": "contact"}),
        ev(4, "form_submit", 4, contact_id=other, props={"form_id": "contact"}),
    ]
    split = Split(raws, seed=0)
    proc = split.contacts.proc
    assert proc.parked == 1 and proc.late == 0
    split.finish_as_offline()
    assert proc.parked == 0 and proc.late == 0
    late = [*raws, ev(5, "form_submit", 1, contact_id=contact, props={"form_id": "demo"})]
    split = Split(late, seed=0)
    split.finish_as_offline()
    assert split.contacts.proc.late == 1


def test_a_late_record_behind_a_parked_one_in_its_queue_waits_too() -> None:
    # The contact's page view at minute 3 is parked (it comes after the identify); the
    # one at minute 1 was published after it in the same topic-partition, so the whole
    # stream has it after the minute-3 one, hence after the hand-over too. It must wait
    # as well, although its own time is before the identify.
    anon, contact = pair_on_two_partitions({0, 1, 2}, {3, 4, 5})
    raws = [
        ev(1, "page_view", 0, anonymous_id=anon, props={"url": "/pricing"}),
        ev(2, "form_submit", 0.5, anonymous_id=anon, props={"form_id": "contact"}),
        ev(3, "identify", 2, contact_id=contact, anonymous_id=anon),
        ev(4, "page_view", 3, contact_id=contact, props={"url": "/pricing"}),
        ev(5, "page_view", 1, contact_id=contact, props={"url": "/pricing/team"}),
        ev(6, "page_view", 1.5, contact_id=contact, props={"url": "/pricing"}),
    ]
    split = Split(raws, seed=3)
    assert split.contacts.proc.awaiting == 1 and split.contacts.proc.parked == 3
    split.finish_as_offline()
    assert split.contacts.proc.parked == 0


@pytest.mark.parametrize("seed", [41, 42, 43, 44])
def test_two_workers_restarted_from_their_commits_still_agree_with_offline(seed: int) -> None:
    # Workers die at random points (contacts parked, hand-overs awaited or half-way)
    # and start again from what they committed, with the states they had: the result is
    # still the offline one, every crossing id with one content.
    raws = journeys(60, seed=seed, cookie_after_identify=0.0, identify_delay=(1, 5), late_share=0.0)
    run = offline(raws)
    assert run.at is not None
    cluster = Cluster()
    cluster.publish(raws)
    splits = ([0, 1, 2], [3, 4, 5])
    members = [Member(cluster, Engine(PARITY), parts) for parts in splits]
    retired: list[Member] = []
    rng = random.Random(seed)
    restarts = parked_at_restart = 0
    for _ in range(200_000):
        i = rng.randrange(2)
        member = members[i]
        if rng.random() < 0.06:
            restarts += 1
            parked_at_restart += member.proc.parked
            members[i] = Member(
                cluster,
                Engine(PARITY),
                splits[i],
                committed=member.proc.commit_offsets(),
                stores=member.stores,
            )
            members[i].now = member.now
            retired.append(member)
            continue
        member.step(rng)
        if not any(m.pending() for m in members) and all(m.proc.awaiting == 0 for m in members):
            break
    run_members(members, rng)
    assert restarts > 5 and parked_at_restart > 0
    assert finish(retired + members, run.at) == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert scores(members, run) == expected_scores(run)


def test_only_input_sources_name_a_stream_of_their_own() -> None:
    """Events read from an input topic carry its source's stream; the repartition
    source has none (its records carry their own), so it cannot collide with the
    profile topic's stream, which has the same partition and rank 0."""
    member = Member(Cluster(), Engine(PARITY), range(N))
    sources = [s for s in member.proc.merger.sources.values() if s.partition == 0]
    inputs = [s.stream for s in sources if s.queue is not None]
    assert len(inputs) == len(set(inputs)) == len(sources) - 1
    assert all(inputs)
    assert [s.stream for s in sources if s.queue is None] == [""]


def _checkpoint(member: Member) -> tuple[dict[int, dict[str, int]], dict[int, MemoryStore]]:
    """What a checkpoint would make durable now: the commits and copies of the states."""
    stores: dict[int, MemoryStore] = {}
    for p, store in member.stores.items():
        copy = stores[p] = MemoryStore()
        for state in store.states():
            copy.put(ContactState.from_bytes(state.to_bytes()))
    return member.proc.commit_offsets(), stores


def _published(
    count: int, seed: int, rules: Any, late_share: float = 0.0
) -> tuple[OfflineRun, Cluster]:
    """Journeys without cookie events after an identify, scored offline and published."""
    raws = journeys(
        count, seed=seed, cookie_after_identify=0.0, identify_delay=(1, 5), late_share=late_share
    )
    cluster = Cluster()
    cluster.publish(raws)
    return offline(raws, rules), cluster


# Seeds 46, 67 and 79 failed before the fix (3 of the first 80 seeds).
@pytest.mark.parametrize("seed", [0, 1, 2, 46, 67, 79])
def test_a_worker_taking_over_its_peers_partitions_still_agrees_with_offline(seed: int) -> None:
    # Both workers checkpoint, go on (sending each other records through Kafka), then
    # one dies and the other takes its partitions too, all replayed from the checkpoint.
    # What was sent through Kafka is read again from the repartition logs while the
    # replay makes the same records in memory: a Kafka copy with a later key once held
    # an in-memory answer back, and the contact's later events were applied before it.
    run, cluster = _published(200, seed, B2B)
    assert run.at is not None
    first = Member(cluster, Engine(B2B), [0, 1, 2])
    second = Member(cluster, Engine(B2B), [3, 4, 5])
    rng = random.Random(seed)
    for _ in range(rng.randrange(100, 300)):
        rng.choice([first, second]).step(rng)
    committed: dict[int, dict[str, int]] = {}
    stores: dict[int, MemoryStore] = {}
    for member in (first, second):
        offsets, states = _checkpoint(member)
        committed.update(offsets)
        stores.update(states)
    for _ in range(rng.randrange(100, 300)):
        rng.choice([first, second]).step(rng)
    survivor = Member(cluster, Engine(B2B), range(N), committed=committed, stores=stores)
    survivor.now = max(first.now, second.now)
    run_members([survivor], rng)
    members = [first, second, survivor]
    assert finish(members, run.at) == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert scores([survivor], run) == expected_scores(run)


def _markers(cluster: Cluster) -> list[Any]:
    """The frontier markers at the ends of the repartition logs."""
    found = [
        decode_envelope(v)
        for (topic, _), log in cluster.logs.items()
        if topic == REPARTITION
        for v in log[-3:]
        if v
    ]
    return [m for m in found if m.kind == CLOCK]


@pytest.mark.parametrize("second_identify", [False, True])
def test_a_worker_awaiting_a_hand_over_promises_what_its_parked_records_allow(
    second_identify: bool,
) -> None:
    # Records parked for the answer are applied when it comes, and may send records
    # then: the frontier a worker sends stays at the key such a record came after,
    # however far past it the release has gone. A parked event of the contact sends
    # nothing, and does not hold the frontier back (Processor._frontier).
    member, cluster, anon, contact = _awaiting_member()
    proc = member.proc
    p = partition_for(contact, N)
    if second_identify:
        again = ev(9, "identify", 1.5, contact_id=contact, anonymous_id=f"{anon}-2")
        proc.receive("contacts.profile", p, 1, json.dumps(again).encode(), 1.0)
    # Another contact's later form on the same partition is applied meanwhile.
    other = next(f"o-{i}" for i in range(1000) if partition_for(f"o-{i}", N) == p)
    form = ev(3, "form_submit", 2, contact_id=other, props={"form_id": "contact"})
    proc.receive("events.form", p, 1, json.dumps(form).encode(), 1.0)
    # ... and its later profile update: the profile input's next record comes after it,
    # so the input floor is the form's key, not the identify's (Merger.input_floor).
    update = ev(4, "profile_update", 3, contact_id=other, props={"attributes": {"x": 1}})
    proc.receive("contacts.profile", p, 1 + second_identify, json.dumps(update).encode(), 1.0)
    parked = 2 if second_identify else 1
    assert proc.run(1.0) == 4 + second_identify and proc.parked == parked
    rep = cluster.logs[(REPARTITION, partition_for(anon, N))]
    (request,) = [decode_envelope(v) for v in rep if v]
    assert request.kind == REQUEST
    assert proc.send_fronts(2.0) == 3 * 3  # for each partition it owns, to each other one
    markers = _markers(cluster)
    assert len(markers) == 9 and len({m.frontier for m in markers}) == 1
    assert {m.at for m in markers} == {cluster.generation}
    frontier = markers[0].frontier
    released = proc.merger.high  # the other contact's update, past everything parked
    floor = proc.merger.input_floor()
    assert floor is not None and floor[0] == T0 + 120 * US_PER_SECOND < released[0]
    if second_identify:
        assert frontier is not None and frontier[0] == T0 + 90 * US_PER_SECOND < released[0]
    else:
        assert frontier == floor  # the form's: what the form input brings comes after it
    assert proc.send_fronts(2.001) == 0  # not before front_interval
    assert proc.send_fronts(3.0) == 0  # nor when it has not moved
    proc.set_generation(cluster.generation + 1)  # a rebalance: receivers forgot it
    assert proc.send_fronts(4.0) == 9


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_workers_on_a_backlog_pass_each_others_inputs_and_still_agree(seed: int) -> None:
    # Each worker's repartition inputs are behind their ends most of the time; below
    # the frontiers the other sends, records are released anyway (Merger.front).
    run, cluster = _published(300, seed, B2B, late_share=0.02)
    assert run.at is not None
    members = [Member(cluster, Engine(B2B), [0, 1, 2]), Member(cluster, Engine(B2B), [3, 4, 5])]
    rng = random.Random(seed)
    turn = 0
    while any(m.pending() for m in members):
        # In turns, a few records of every topic-partition each (a consumer's batch):
        # each keeps sending the other hand-overs and markers it has not read yet.
        members[turn % 2].fetch(rng, most=5)
        turn += 1
    run_members(members, rng)
    assert sum(m.proc.merger.passed for m in members) > 0
    assert finish(members, run.at) == {c.crossing_id: c.to_dict() for c in run.crossings}
    assert scores(members, run) == expected_scores(run)
