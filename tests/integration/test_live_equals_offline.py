"""Live equals offline on a backlog: every input topic filled first, then the worker.

The traffic (``traffic.journeys``) and the plan (``plans/parity.yaml``) exercise what
depends on the order of a contact's events: limits, ``unless`` timers, half-life decay,
expiry, attributes, identify across partitions, cookie events after an identify, equal
timestamps on different topics and events published late. Each test compares, with the
worker's default settings (the first test also without the wait for fresh fetches),
every crossing on ``leads.sales_ready`` (all fields, and redelivered copies must be
identical) and every contact's final scores with ``scorestream score`` on the same
events, and the DLQ with the bad messages sent.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    WorkerProc,
    crossings_by_id,
    offline,
    processed,
    producer,
    read_topic,
    wait_processed,
)

from scorestream.engine.timeutil import format_ts
from scorestream.pipeline.routing import topic_for
from scorestream.simulate import BAD_MESSAGES
from traffic import journeys

PLAN = Path(__file__).resolve().parents[1] / "plans" / "parity.yaml"


def publish_backlog(
    bootstrap: str, prefix: str, raws: list[dict[str, Any]], bad_every: int, seed: int
) -> int:
    """Publish the events and, every ``bad_every`` events, a bad message; return the bad count."""
    rng = random.Random(seed)
    p = producer(bootstrap)
    bad = 0
    for i, raw in enumerate(raws):
        key = (raw.get("contact_id") or raw.get("anonymous_id") or "").encode()
        topic = prefix + topic_for(raw["type"])
        p.produce(topic, json.dumps(raw).encode(), key)
        if i % bad_every == bad_every - 1:
            p.produce(topic, rng.choice(BAD_MESSAGES), None)
            bad += 1
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return bad


def publish_across_workers(
    bootstrap: str, prefix: str, seed: int, bad_every: int
) -> tuple[list[dict[str, Any]], int, int]:
    """Traffic that is exact across workers, published: (events, bad messages, total).

    Across workers the result is exact unless an anonymous id has events after its
    identify (README, "Known limits"); this traffic has none.
    """
    raws = journeys(
        600, seed=seed, cookie_after_identify=0.0, identify_delay=(1, 5), late_share=0.0
    )
    bad = publish_backlog(bootstrap, prefix, raws, bad_every=bad_every, seed=seed)
    return raws, bad, len(raws) + bad


def settle(workers: list[WorkerProc], bootstrap: str, prefix: str) -> None:
    """Everything processed, and the stream quiet long enough for time to reach its end."""
    wait_processed(bootstrap, prefix, workers)
    time.sleep(4.0)  # idle_timeout (2 s) + ticks: timers and decay reach the newest event
    wait_processed(bootstrap, prefix, workers)


def assert_live_equals_offline(
    workers: list[WorkerProc], bootstrap: str, prefix: str, raws: list[dict[str, Any]], bad: int
) -> dict[str, dict[str, Any]]:
    run = offline(PLAN, raws, None)
    assert run.at is not None and not run.errors
    expected = {c.crossing_id: c.to_dict() for c in run.crossings}
    deadline = time.monotonic() + 30
    live = crossings_by_id(bootstrap, prefix + "leads.sales_ready")
    while live != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        live = crossings_by_id(bootstrap, prefix + "leads.sales_ready")
    missing = sorted(set(expected) - set(live))[:5]
    extra = sorted(set(live) - set(expected))[:5]
    changed = [k for k in expected if k in live and live[k] != expected[k]][:3]
    assert live == expected, (
        f"missing {missing}, extra {extra}, changed {[(expected[k], live[k]) for k in changed]}"
    )
    at = format_ts(run.at)
    for row in run.report():
        code, doc = workers[0].get(f"/contacts/{row['contact_id']}?at={at}")
        assert code == 200, (row, doc)
        assert (doc["scores"], doc["tiers"]) == (row["scores"], row["tiers"]), row["contact_id"]
    dlq = read_topic(bootstrap, prefix + "events.dlq")
    sources = {
        (d["topic"], d["partition"], d["offset"])
        for d in (json.loads(v or b"{}") for _, v, _, _ in dlq)
    }
    assert len(sources) == bad  # every bad message, once per source position
    return live


@pytest.mark.parametrize("fresh_poll", ["true", "false"])
def test_a_backlog_on_every_input_topic_gives_the_offline_crossings_and_scores(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path, fresh_poll: str
) -> None:
    """Also without the wait for fresh fetches (SCORESTREAM_MERGE_FRESH_POLL=false): what
    is in Kafka together is merged by the inputs' end offsets alone, so a backlog stays
    exact; only live producer skew is given up, and the worker says so at start-up."""
    raws = journeys(300, seed=21)
    bad = publish_backlog(kafka_bootstrap, topic_prefix, raws, bad_every=97, seed=21)
    worker = WorkerProc(
        "w",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "state",
        PLAN,
        extra_env={"SCORESTREAM_MERGE_FRESH_POLL": fresh_poll},
    )
    worker.start()
    try:
        worker.wait_ready()
        settle([worker], kafka_bootstrap, topic_prefix)
        live = assert_live_equals_offline([worker], kafka_bootstrap, topic_prefix, raws, bad)
        kinds = {(c["model"], c["direction"]) for c in live.values()}
        assert {("engagement", "down"), ("intent", "down"), ("fit", "up")} <= kinds
        warned = "SCORESTREAM_MERGE_FRESH_POLL=false" in worker.log_path.read_text()
        assert warned == (fresh_poll == "false")
        assert worker.status()["merge"]["fresh_polls"] is (fresh_poll == "true")
    finally:
        worker.stop()


def test_three_kill_9_in_the_backlog_change_nothing(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws = journeys(800, seed=22)
    bad = publish_backlog(kafka_bootstrap, topic_prefix, raws, bad_every=101, seed=22)
    state = tmp_path / "state"
    total = len(raws) + bad
    worker = WorkerProc("w0", kafka_bootstrap, topic_prefix, state, PLAN)
    worker.start()
    try:
        for kill in range(3):
            worker.wait_ready()
            target = total * (kill + 1) // 4
            deadline = time.monotonic() + 90
            while sum(processed([worker]).values()) < target:
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.01)
            worker.kill9()
            worker = WorkerProc(f"w{kill + 1}", kafka_bootstrap, topic_prefix, state, PLAN)
            worker.start()
        worker.wait_ready()
        settle([worker], kafka_bootstrap, topic_prefix)
        assert_live_equals_offline([worker], kafka_bootstrap, topic_prefix, raws, bad)
    finally:
        worker.stop()


def test_a_second_worker_joining_and_leaving_changes_nothing(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws, bad, total = publish_across_workers(kafka_bootstrap, topic_prefix, 23, 89)
    first = WorkerProc("a", kafka_bootstrap, topic_prefix, tmp_path / "a", PLAN)
    second = WorkerProc("b", kafka_bootstrap, topic_prefix, tmp_path / "b", PLAN)
    first.start()
    try:
        first.wait_ready()
        deadline = time.monotonic() + 90
        while sum(processed([first]).values()) < total * 0.25:
            assert time.monotonic() < deadline, first.tail()
            time.sleep(0.01)
        second.start()
        second.wait_ready()
        deadline = time.monotonic() + 60
        while not (first.status()["partitions"] and second.status()["partitions"]):
            assert time.monotonic() < deadline, "the partitions were not shared"
            time.sleep(0.1)
        owned_a = set(first.status()["partitions"])
        owned_b = set(second.status()["partitions"])
        assert owned_a and owned_b and not owned_a & owned_b
        while sum(processed([first, second]).values()) < total * 0.6:
            assert time.monotonic() < deadline + 60, second.tail()
            time.sleep(0.05)
        second.stop()  # leaves the group: the first worker takes everything back
        settle([first], kafka_bootstrap, topic_prefix)
        assert len(first.status()["partitions"]) == 6
        assert_live_equals_offline([first], kafka_bootstrap, topic_prefix, raws, bad)
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize("frontiers", ["false", "true"])
def test_two_workers_with_kill_9_in_the_backlog_change_nothing(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path, frontiers: str
) -> None:
    # The survivor takes the killed worker's partitions and replays them from their
    # commits while the repartition topic still holds what the killed one sent it. This
    # traffic is too small to have caught the peer-queue bug that a two-worker kill -9
    # soak found (114 and 606 crossings differed on 150,000 events; it passed twice
    # on the commit before the fix, also with 2,000 journeys): that bug is pinned by
    # test_processor's take-over test. This one holds the whole path on a real broker,
    # also with frontier markers between the workers (SCORESTREAM_MERGE_FRONTIERS).
    raws, bad, total = publish_across_workers(kafka_bootstrap, topic_prefix, 24, 83)
    env = {"SCORESTREAM_MERGE_FRONTIERS": frontiers}

    def worker(label: str, name: str) -> WorkerProc:
        return WorkerProc(
            label, kafka_bootstrap, topic_prefix, tmp_path / name, PLAN, extra_env=env
        ).start()

    workers = [worker(f"{name}0", name) for name in ("a", "b")]
    try:
        for w in workers:
            w.wait_ready()
        for kill, share in enumerate((0.3, 0.6)):
            deadline = time.monotonic() + 120
            while sum(processed(workers).values()) < total * share:
                assert time.monotonic() < deadline, [w.tail() for w in workers]
                time.sleep(0.01)
            victim = kill % 2
            workers[victim].kill9()
            name = "ab"[victim]
            workers[victim] = worker(f"{name}{kill + 1}", name)
            workers[victim].wait_ready()
        settle(workers, kafka_bootstrap, topic_prefix)
        # Everything is applied; the second leaves so that the first answers for every
        # contact (the scores are asked of one worker).
        workers[1].stop()
        deadline = time.monotonic() + 60
        while len(workers[0].status()["partitions"]) < 6:
            assert time.monotonic() < deadline, workers[0].tail()
            time.sleep(0.2)
        settle(workers[:1], kafka_bootstrap, topic_prefix)
        assert_live_equals_offline(workers[:1], kafka_bootstrap, topic_prefix, raws, bad)
        # Whether markers are sent at all on a backlog this small depends on timing (the
        # first worker may apply most of it alone): tests/unit/test_processor.py pins
        # what they do; here the setting must reach the worker, and the result not move.
        assert workers[0].status()["merge"]["frontiers"] is (frontiers == "true")
    finally:
        for w in workers:
            w.stop()
