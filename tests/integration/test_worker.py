"""The live worker against the real broker: parity with `scorestream score`, crashes,
rebalancing, bad input and idle decay."""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

from support import (
    ROOT,
    WorkerProc,
    crossings_by_id,
    heartbeats,
    offline,
    processed,
    produce,
    producer,
    read_topic,
    rounds,
    wait_processed,
)

from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.simulate import Traffic

B2B = ROOT / "rules" / "b2b.yaml"
EVENT_TIME_ONLY = {"SCORESTREAM_LATENESS": "0", "SCORESTREAM_IDLE_TIMEOUT": "0"}


def simulated(n: int, people: int, seed: int, start: str, step_s: float) -> list[dict[str, Any]]:
    traffic = Traffic(people, seed, parse_ts(start), 1.0 / step_s)
    out = []
    for ev in traffic:
        out.append(ev)
        if len(out) >= n:
            return out
    return out


def page_views(n: int, people: int, seed: int, start: str, step_s: float) -> list[dict[str, Any]]:
    """Only page views: one topic, so each contact's order is Kafka's partition order."""
    rng = random.Random(seed)
    urls = ["/", "/blog/a", "/blog/b", "/pricing", "/pricing/team", "/about", "/careers"]
    t0 = parse_ts(start)
    return [
        {
            "event_id": f"pv-{seed}-{i}",
            "type": "page_view",
            "contact_id": f"c-{rng.randrange(people):04d}",
            "occurred_at": format_ts(t0 + int(i * step_s * US_PER_SECOND)),
            "properties": {"url": rng.choice(urls)},
        }
        for i in range(n)
    ]


def assert_same_as_offline(
    workers: list[WorkerProc],
    bootstrap: str,
    prefix: str,
    raws: list[dict[str, Any]],
    at: int,
    rules: Path = B2B,
) -> dict[str, dict[str, Any]]:
    """Crossings on the leads topic and scores from the HTTP API equal the offline run's."""
    run = offline(rules, raws, at)
    expected = {c.crossing_id: c.to_dict() for c in run.crossings}
    # Ticks and producer flushes run on their own schedule: on a busy machine the last
    # crossings can take a few seconds to appear. Wait for them (bounded), then compare.
    deadline = time.monotonic() + 30
    live = crossings_by_id(bootstrap, prefix + "leads.sales_ready")
    while sorted(live) != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.5)
        live = crossings_by_id(bootstrap, prefix + "leads.sales_ready")
    assert sorted(live) == sorted(expected)
    assert live == expected
    api = workers[0]
    for row in run.report():
        code, doc = api.get(f"/contacts/{row['contact_id']}?at={format_ts(at)}")
        assert code == 200, (row, doc)
        assert (doc["scores"], doc["tiers"]) == (row["scores"], row["tiers"]), row["contact_id"]
    return live


def test_the_worker_gives_the_same_scores_and_crossings_as_score(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws = simulated(500, people=40, seed=7, start="2026-03-01T08:00:00Z", step_s=600)
    end = parse_ts(raws[-1]["occurred_at"]) + 3600 * US_PER_SECOND
    # A fetch wait that is neither aiokafka's nor Faust's default: /status reads back
    # what the consumer's fetcher uses.
    env = {**EVENT_TIME_ONLY, "SCORESTREAM_FETCH_MAX_WAIT_MS": "170"}
    worker = WorkerProc("w", kafka_bootstrap, topic_prefix, tmp_path / "state", B2B, env)
    worker.start()
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 30
        while worker.status().get("consumer", {}).get("fetch_max_wait_ms") is None:
            assert time.monotonic() < deadline, worker.status()
            time.sleep(0.2)
        assert worker.status()["consumer"] == {"fetch_max_wait_ms": 170}
        batches = rounds(raws)
        assert len(batches) < len(raws) / 2  # rounds do group events
        for batch in batches:
            produce(kafka_bootstrap, topic_prefix, batch)
            wait_processed(kafka_bootstrap, topic_prefix, [worker])
        produce(kafka_bootstrap, topic_prefix, heartbeats(end))
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.0)  # a few ticks: every partition's clock is now `end`
        live = assert_same_as_offline(
            [worker], kafka_bootstrap, topic_prefix, raws + heartbeats(end), end
        )
        assert any(c["threshold"] == "sales_ready" for c in live.values())
        assert any(c["direction"] == "down" for c in live.values())
    finally:
        worker.stop()


def test_kill_9_and_restart_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws = page_views(30_000, people=300, seed=11, start="2026-03-01T08:00:00Z", step_s=20)
    end = parse_ts(raws[-1]["occurred_at"]) + 3600 * US_PER_SECOND
    produce(kafka_bootstrap, topic_prefix, raws)
    state = tmp_path / "state"
    worker = WorkerProc("w", kafka_bootstrap, topic_prefix, state, B2B, EVENT_TIME_ONLY)
    worker.start()
    try:
        worker.wait_ready()
        # kill -9 in the middle of the stream, with checkpoints behind it
        deadline = time.monotonic() + 60
        while sum(processed([worker]).values()) < len(raws) * 0.4:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.02)
        worker.kill9()
        before = sum(processed([worker]).values())
        assert before < len(raws)  # it really died mid-stream
        worker = WorkerProc("w2", kafka_bootstrap, topic_prefix, state, B2B, EVENT_TIME_ONLY)
        worker.start()
        worker.wait_ready()
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        produce(kafka_bootstrap, topic_prefix, heartbeats(end))
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.0)
        assert_same_as_offline([worker], kafka_bootstrap, topic_prefix, raws + heartbeats(end), end)
    finally:
        worker.stop()


def test_a_worker_killed_after_recovering_a_lost_disk_keeps_what_it_recovered(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    """Recovery writes skip RocksDB's write-ahead log and are flushed when it ends.

    A worker that lost its disk recovers every contact from the changelog, checkpoints
    new events (logged writes, with a changelog position), and is killed before RocksDB
    would flush on its own. Without the flush, the restarted worker would find the
    checkpoint's writes but not the recovered states before them, and would recover only
    from the checkpoint's position on: the contacts the new events did not touch would
    be gone.
    """
    first = page_views(6_000, people=1_500, seed=21, start="2026-03-01T08:00:00Z", step_s=20)
    t1 = parse_ts(first[-1]["occurred_at"])
    later = [
        {**raw, "event_id": f"later-{i}", "occurred_at": format_ts(t1 + (i + 1) * US_PER_SECOND)}
        for i, raw in enumerate(first[:300])  # about 270 of the 1,500 contacts
    ]
    end = parse_ts(later[-1]["occurred_at"]) + 3600 * US_PER_SECOND
    state = tmp_path / "state"
    produce(kafka_bootstrap, topic_prefix, first)
    worker = WorkerProc("w", kafka_bootstrap, topic_prefix, state, B2B, EVENT_TIME_ONLY)
    worker.start()
    try:
        worker.wait_ready()
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.5)  # checkpoints: every contact is in the changelog
    finally:
        worker.stop()
    shutil.rmtree(state)  # the disk is lost
    worker = WorkerProc("w2", kafka_bootstrap, topic_prefix, state, B2B, EVENT_TIME_ONLY)
    worker.start()
    try:
        worker.wait_ready()  # recovered from the changelog
        produce(kafka_bootstrap, topic_prefix, later)
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.5)  # checkpoints of the contacts the later events touched
    finally:
        worker.kill9()
    worker = WorkerProc("w3", kafka_bootstrap, topic_prefix, state, B2B, EVENT_TIME_ONLY)
    worker.start()
    try:
        worker.wait_ready()
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        produce(kafka_bootstrap, topic_prefix, heartbeats(end))
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        time.sleep(1.0)
        raws = first + later + heartbeats(end)
        assert_same_as_offline([worker], kafka_bootstrap, topic_prefix, raws, end)
    finally:
        worker.stop()


def test_a_second_worker_joining_half_way_changes_nothing(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws = page_views(12_000, people=200, seed=5, start="2026-03-01T08:00:00Z", step_s=30)
    end = parse_ts(raws[-1]["occurred_at"]) + 3600 * US_PER_SECOND
    half = len(raws) // 2
    first = WorkerProc("a", kafka_bootstrap, topic_prefix, tmp_path / "a", B2B, EVENT_TIME_ONLY)
    second = WorkerProc("b", kafka_bootstrap, topic_prefix, tmp_path / "b", B2B, EVENT_TIME_ONLY)
    first.start()
    try:
        first.wait_ready()
        produce(kafka_bootstrap, topic_prefix, raws[:half])
        wait_processed(kafka_bootstrap, topic_prefix, [first])
        second.start()
        produce(kafka_bootstrap, topic_prefix, raws[half:])
        second.wait_ready()
        deadline = time.monotonic() + 60
        while not (first.status()["partitions"] and second.status()["partitions"]):
            assert time.monotonic() < deadline, "the partitions were not shared"
            time.sleep(0.2)
        wait_processed(kafka_bootstrap, topic_prefix, [first, second])
        produce(kafka_bootstrap, topic_prefix, heartbeats(end))
        wait_processed(kafka_bootstrap, topic_prefix, [first, second])
        time.sleep(1.0)
        owned_a = set(first.status()["partitions"])
        owned_b = set(second.status()["partitions"])
        assert owned_a and owned_b and not owned_a & owned_b
        # scores are asked of the first worker: it answers for its own contacts and
        # routes the others to the second worker
        assert_same_as_offline(
            [first, second], kafka_bootstrap, topic_prefix, raws + heartbeats(end), end
        )
    finally:
        second.stop()
        first.stop()


def test_a_flood_of_bad_messages_ends_in_the_dlq_and_the_worker_goes_on(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    good = page_views(400, people=30, seed=3, start="2026-03-01T08:00:00Z", step_s=60)
    rng = random.Random(9)
    bad: list[bytes] = []
    for i in range(60):
        bad.append(b"not json at all %d" % i)
        bad.append(
            json.dumps(
                {
                    "event_id": i,
                    "type": "page_view",
                    "contact_id": "c",
                    "occurred_at": "2026-03-01T08:00:00Z",
                    "properties": {"url": "/"},
                }
            ).encode()
        )
        bad.append(
            json.dumps(
                {
                    "event_id": f"m{i}",
                    "type": "page_view",
                    "occurred_at": "2026-03-01T08:00:00Z",
                    "properties": {"url": "/"},
                }
            ).encode()
        )
        bad.append(bytes(rng.getrandbits(8) for _ in range(40)) + b"\xff")
        bad.append(
            json.dumps(
                {
                    "event_id": f"o{i}",
                    "type": "page_view",
                    "contact_id": "c",
                    "occurred_at": "2026-03-01T08:00:00Z",
                    "properties": {"url": "/" + "x" * 3000},
                }
            ).encode()
        )
    prod = producer(kafka_bootstrap)
    sent: dict[tuple[int, int], bytes] = {}

    def remember(err: Any, msg: Any) -> None:
        assert err is None
        sent[(msg.partition(), msg.offset())] = msg.value()

    topic = topic_prefix + "events.page_view"
    stream = [json.dumps(g).encode() for g in good]
    mixed: list[tuple[bytes, bool]] = [(v, True) for v in stream] + [(v, False) for v in bad]
    rng.shuffle(mixed)
    good_in_order = iter(good)
    for value, is_good in mixed:
        if is_good:
            raw = next(good_in_order)  # keep the good events in their own order
            prod.produce(topic, json.dumps(raw).encode(), raw["contact_id"].encode())
        else:
            prod.produce(topic, value, b"bad", on_delivery=remember)
    assert prod.flush(30) == 0
    worker = WorkerProc(
        "w",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "state",
        B2B,
        {**EVENT_TIME_ONLY, "SCORESTREAM_MAX_MESSAGE_BYTES": "2000"},
    )
    worker.start()
    try:
        worker.wait_ready()
        wait_processed(kafka_bootstrap, topic_prefix, [worker])
        dlq = [
            json.loads(v) for _, v, _, _ in read_topic(kafka_bootstrap, topic_prefix + "events.dlq")
        ]
        assert len(dlq) == len(bad) == 300
        for record in dlq:
            assert record["topic"] == topic and record["error"]
            original = sent[(record["partition"], record["offset"])]
            if record["encoding"] == "base64":
                assert base64.b64decode(record["payload"]) == original
            else:
                assert record["payload"].encode() == original
        reasons = " ".join(r["error"] for r in dlq)
        for expected in (
            "not valid JSON",
            "event_id",
            "contact_id or anonymous_id",
            "not UTF-8",
            "too large",
        ):
            assert expected in reasons
        code, health = worker.get("/healthz")
        assert code == 200 and health["status"] == "ready"
        with __import__("urllib.request").request.urlopen(worker.url("/metrics")) as resp:
            metrics = resp.read().decode()
        assert f'scorestream_dlq_total{{topic="{topic}"}} 300.0' in metrics
        end = parse_ts(good[-1]["occurred_at"])
        run = offline(B2B, good, end)
        for row in run.report():
            code, doc = worker.get(f"/contacts/{row['contact_id']}?at={format_ts(end)}")
            assert code == 200 and doc["scores"] == row["scores"]
    finally:
        worker.stop()


def test_an_idle_contact_gets_its_decay_down_crossing(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    rules = tmp_path / "fast-decay.yaml"
    rules.write_text(
        "version: 1\nmodels:\n  engagement:\n    decay: {half_life: 10s}\n"
        "    thresholds:\n      - {name: mql, enter: 50, exit: 40}\n"
        "    rules:\n      - {id: pricing, event: page_view, where: {url: /pricing}, points: 60}\n"
    )
    worker = WorkerProc(
        "w",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "state",
        rules,
        {"SCORESTREAM_LATENESS": "0.5", "SCORESTREAM_IDLE_TIMEOUT": "1"},
    )
    worker.start()
    try:
        worker.wait_ready()
        now = int(time.time() * US_PER_SECOND)
        raw = {
            "event_id": "only",
            "type": "page_view",
            "contact_id": "c-idle",
            "occurred_at": format_ts(now),
            "properties": {"url": "/pricing"},
        }
        produce(kafka_bootstrap, topic_prefix, [raw])
        # 60 points fall below 40 (reported 39.99) after 10 s * log2(60 / 39.995) = 5.85 s
        due = now + int(10 * math.log2(60 / 39.995) * US_PER_SECOND)
        deadline = time.monotonic() + 40
        live: dict[str, Any] = {}
        while time.monotonic() < deadline:
            live = crossings_by_id(kafka_bootstrap, topic_prefix + "leads.sales_ready")
            if any(c["direction"] == "down" for c in live.values()):
                break
            time.sleep(0.5)
        arrived = time.time()
        expected = {
            c.crossing_id: c.to_dict()
            for c in offline(rules, [raw], now + 60 * US_PER_SECOND).crossings
        }
        assert live == expected
        down = expected["c-idle:engagement:mql:2"]
        assert (
            abs(parse_ts(down["occurred_at"]) - due) <= 2
        )  # the exact microsecond, modulo rounding
        # emitted within the documented bound: lateness + idle timeout + tick (+ margin)
        assert arrived - due / US_PER_SECOND < 10
    finally:
        worker.stop()
