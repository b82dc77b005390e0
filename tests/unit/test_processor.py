"""The worker's processor without Kafka: routing, identity hand-over, replays, DLQ, timers."""

from __future__ import annotations

import base64
import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from scorestream.app.processor import Processor
from scorestream.app.routing import Envelope, partition_for
from scorestream.app.store import PartitionStore, decode_value
from scorestream.engine.events import event_from_dict
from scorestream.engine.population import Population
from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "rules" / "b2b.yaml")
N = 6
REPART = "scorestream.repartition"
T0 = parse_ts("2026-03-01T10:00:00Z")


class Collect:
    """An emitter that keeps everything, and a queue standing in for the repartition topic."""

    def __init__(self) -> None:
        self.crossings: list[Crossing] = []
        self.dlqs: list[dict[str, Any]] = []
        self.queue: deque[tuple[int, str, Envelope]] = deque()

    def crossing(self, crossing: Crossing) -> None:
        self.crossings.append(crossing)

    def dlq(self, record: dict[str, Any]) -> None:
        self.dlqs.append(record)

    def repartition(self, partition: int, key: str, envelope: Envelope) -> None:
        self.queue.append((partition, key, envelope))


class Harness:
    """A processor owning every partition, with per-topic offsets like Kafka's."""

    def __init__(self, tmp: Path, **kwargs: Any) -> None:
        self.out = Collect()
        self.proc = Processor(Engine(RULES), N, REPART, self.out, **kwargs)
        self.offsets: dict[tuple[str, int], int] = {}
        self.tmp = tmp
        for p in range(N):
            self.proc.assign(p, PartitionStore(tmp / f"p{p}", block_cache_mb=8), {}, wall=0.0)

    def send(self, topic: str, partition: int, value: bytes | None, wall: float = 1.0) -> str:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        outcome = self.proc.handle(topic, partition, offset, value, wall)
        self.drain(wall)
        return outcome

    def drain(self, wall: float = 1.0) -> None:
        while self.out.queue:
            partition, _key, env = self.out.queue.popleft()
            offset = self.offsets.get((REPART, partition), 0)
            self.offsets[(REPART, partition)] = offset + 1
            self.proc.handle(REPART, partition, offset, env.encode(), wall)

    def event(self, raw: dict[str, Any], partition: int | None = None) -> str:
        key = raw.get("contact_id") or raw["anonymous_id"]
        p = partition_for(key, N) if partition is None else partition
        return self.send("events.any", p, json.dumps(raw).encode())

    def state(self, key: str) -> Any:
        return self.proc.lookup(key)


def ev(
    i: int, kind: str, minutes: float, props: dict[str, Any] | None = None, **ids: str
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "event_id": f"e{i}",
        "type": kind,
        "occurred_at": _ts(T0 + int(minutes * 60 * US_PER_SECOND)),
        **ids,
    }
    if props is not None:
        raw["properties"] = props
    return raw


def _ts(us: int) -> str:
    return format_ts(us)


def keys_on_different_partitions() -> tuple[str, str]:
    anon = "anon-1"
    for i in range(100):
        contact = f"c-{i}"
        if partition_for(contact, N) != partition_for(anon, N):
            return anon, contact
    raise AssertionError("no pair found")


def offline(raws: list[dict[str, Any]], at: int) -> dict[str, dict[str, float]]:
    engine = Engine(RULES)
    pop = Population(engine)
    for raw in raws:
        pop.process(event_from_dict(raw))
    pop.advance_all(at)
    return {s.key: engine.scores(s, at) for s in pop}


def test_identify_across_partitions_moves_the_anonymous_state(tmp_path: Path) -> None:
    anon, contact = keys_on_different_partitions()
    raws = [
        ev(1, "page_view", 0, {"url": "/pricing"}, anonymous_id=anon),
        ev(2, "page_view", 1, {"url": "/pricing/team"}, anonymous_id=anon),
        ev(3, "form_submit", 2, {"form_id": "contact"}, contact_id=contact),
        ev(4, "identify", 3, contact_id=contact, anonymous_id=anon),
        ev(5, "form_submit", 4, {"form_id": "contact"}, contact_id=contact),
        # after identify, the anonymous id refers to the contact
        ev(6, "page_view", 5, {"url": "/pricing"}, anonymous_id=anon),
    ]
    h = Harness(tmp_path)
    for raw in raws:
        assert h.event(raw) in {"applied", "forwarded"}
    at = T0 + 10 * 60 * US_PER_SECOND
    expected = offline(raws, at)
    state = h.state(contact)
    assert h.proc.engine.scores(state, at) == expected[contact]
    # 15 + 15 + 30 + 30 + 15, decayed by minutes of a 30-day half-life
    assert h.proc.engine.scores(state, at)["engagement"] == pytest.approx(105.0, abs=0.05)
    stub = h.state(anon)
    assert stub.alias == contact
    assert anon not in expected  # reported under its contact offline too
    # mql (50) entered at the merge (30 + 30), sales_ready (100) at the last page view
    assert [(c.threshold, c.direction, c.contact_id) for c in h.out.crossings] == [
        ("mql", "up", contact),
        ("sales_ready", "up", contact),
    ]


def test_a_misrouted_event_is_forwarded_to_its_home_partition(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    raw = ev(1, "page_view", 0, {"url": "/pricing"}, contact_id="c-9")
    home = partition_for("c-9", N)
    wrong = (home + 1) % N
    assert h.event(raw, partition=wrong) == "forwarded"
    state = h.state("c-9")
    assert state is not None and h.proc.engine.scores(state, state.clock)["engagement"] == 15.0
    assert h.offsets[(REPART, home)] == 1


def test_a_redelivered_offset_is_skipped(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    value = json.dumps(ev(1, "page_view", 0, {"url": "/pricing"}, contact_id="c-1")).encode()
    p = partition_for("c-1", N)
    assert h.proc.handle("events.page_view", p, 0, value, 1.0) == "applied"
    assert h.proc.handle("events.page_view", p, 0, value, 1.0) == "replayed"
    other = json.dumps(ev(2, "page_view", 1, {"url": "/pricing"}, contact_id="c-1")).encode()
    assert h.proc.handle("events.page_view", p, 1, other, 1.0) == "applied"
    state = h.state("c-1")
    assert h.proc.engine.scores(state, state.clock)["engagement"] == pytest.approx(30.0, abs=0.01)


def test_contacts_ahead_of_the_committed_offsets_skip_what_they_already_hold(
    tmp_path: Path,
) -> None:
    out = Collect()
    proc = Processor(Engine(RULES), N, REPART, out)
    p = partition_for("c-1", N)
    store = PartitionStore(tmp_path / "p", block_cache_mb=8)
    proc.assign(p, store, {"events.page_view": 0}, ahead={"c-1": {"events.page_view": 2}})
    pricing = [
        json.dumps(ev(i, "page_view", i, {"url": "/pricing"}, contact_id=c)).encode()
        for i, c in [(1, "c-1"), (2, "c-1"), (3, "c-1")]
    ]
    assert proc.handle("events.page_view", p, 0, pricing[0], 1.0) == "replayed"
    assert proc.handle("events.page_view", p, 1, pricing[1], 1.0) == "replayed"
    assert proc.handle("events.page_view", p, 2, pricing[2], 1.0) == "applied"
    state = proc.lookup("c-1")
    assert proc.engine.scores(state, state.clock)["engagement"] == 15.0


@pytest.mark.parametrize(
    ("value", "reason", "encoding"),
    [
        (b"not json", "not valid JSON", "utf-8"),
        (b"\xff\x00\xfe", "not UTF-8 text", "base64"),
        (
            b'{"event_id":"e","type":"page_view","contact_id":"c","occurred_at":"2026-01-01T00:00:00Z"}',
            "properties.url: required",
            "utf-8",
        ),
        (
            b'{"event_id":"e","type":"page_view","occurred_at":"2026-01-01T00:00:00Z","properties":{"url":"/"}}',
            "one of contact_id or anonymous_id is required",
            "utf-8",
        ),
        (None, "empty message", "utf-8"),
    ],
)
def test_invalid_messages_go_to_the_dlq_with_the_reason_and_the_payload(
    tmp_path: Path, value: bytes | None, reason: str, encoding: str
) -> None:
    h = Harness(tmp_path)
    assert h.send("events.page_view", 2, value) == "invalid"
    (record,) = h.out.dlqs
    assert reason in record["error"]
    assert (
        record["topic"] == "events.page_view" and record["partition"] == 2 and record["offset"] == 0
    )
    assert record["encoding"] == encoding
    if encoding == "base64":
        assert base64.b64decode(record["payload"]) == value
    elif value is not None:
        assert record["payload"] == value.decode()


def test_oversized_messages_go_to_the_dlq(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_bytes=200)
    big = ev(1, "page_view", 0, {"url": "/" + "x" * 300}, contact_id="c-1")
    assert h.event(big) == "invalid"
    assert h.out.dlqs[0]["error"].startswith("too large:")


def test_idle_contacts_fire_timers_when_the_watermark_passes(tmp_path: Path) -> None:
    h = Harness(tmp_path, lateness=0.0, idle_timeout=0.0)
    p = partition_for("c-1", N)
    h.event(ev(1, "form_submit", 0, {"form_id": "contact"}, contact_id="c-1"))
    h.event(ev(2, "form_submit", 1, {"form_id": "webinar-q1"}, contact_id="c-1"))  # 55: mql
    h.event(ev(3, "email_sent", 2, {"campaign_id": "k"}, contact_id="c-1"))  # -5 due in 24 h
    assert [c.threshold for c in h.out.crossings] == ["mql"]
    ps = h.proc.parts[p]
    due = T0 + (2 + 24 * 60) * 60 * US_PER_SECOND
    assert ps.scheduled["c-1"] == due
    # event time moves on in the partition (another contact), past the timer's due time
    h.event(ev(4, "page_view", 25 * 60, {"url": "/about"}, contact_id=_same_partition_as("c-1")))
    h.proc.tick(wall=2_000_000_000.0)
    state = h.state("c-1")
    assert state.ledger[-1][2:] == ("email-ignored", -5.0, due)
    assert ps.scheduled["c-1"] > due  # next: the decay of mql, weeks later


def _same_partition_as(key: str) -> str:
    target = partition_for(key, N)
    for i in range(1000):
        other = f"other-{i}"
        if partition_for(other, N) == target:
            return other
    raise AssertionError


def test_snapshot_returns_changed_states_and_the_offsets_vector(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.event(ev(1, "page_view", 0, {"url": "/pricing"}, contact_id="c-1"))
    p = partition_for("c-1", N)
    snap = h.proc.snapshot(p)
    assert [k for k, _ in snap.states] == ["c-1"]
    assert snap.vector == {"events.any": 1}
    state = decode_value(snap.states[0][1])
    assert state.key == "c-1"
    score = json.loads(snap.scores[0][1])
    assert score["scores"]["engagement"] == 15.0 and score["contact_id"] == "c-1"
    assert h.proc.snapshot(p).states == []  # nothing changed since
