"""The worker's side of a rescore hand-over (``app.handover.HandoverAgent``) without Kafka:
what each control record does to the processor, the freeze, giving up, closing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scorestream import metrics as metrics_mod
from scorestream.app.handover import HandoverAgent
from scorestream.app.kafka import Topology
from scorestream.engine.rules import parse_rules
from scorestream.engine.scorer import Engine
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.records import MIN_TS
from scorestream.plans import ABORTED, DONE, PENDING, READY, Handover, Swapped, decode_control

ROOT = Path(__file__).resolve().parents[2]
OLD_TEXT = (ROOT / "tests" / "plans" / "handover_old.yaml").read_text()
NEW_TEXT = (ROOT / "tests" / "plans" / "handover_new.yaml").read_text()
OLD = parse_rules(OLD_TEXT, "old.yaml")
NEW = parse_rules(NEW_TEXT, "new.yaml")
AT = 1_800_000_000_000_000  # the hand-over point (µs)


class FakeOutputs:
    """Records what the agent produces; the processor's emitter too."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, key: bytes | None, value: bytes, *args: Any) -> None:
        self.sent.append((topic, key, value))

    def poll(self) -> None:
        return None

    def crossing(self, crossing: Any) -> None:
        return None

    def dlq(self, record: Any) -> None:
        return None

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        return None


def agent(hold_limit: float = 300.0) -> tuple[HandoverAgent, Processor, FakeOutputs]:
    outputs = FakeOutputs()
    proc = Processor(Engine(OLD), 6, outputs, highwater=lambda t, p: 0)
    made = HandoverAgent(
        proc,
        outputs,
        None,
        Topology("t-", 6),
        metrics_mod.create(),
        hold_limit,  # type: ignore[arg-type]
    )
    return made, proc, outputs


def record(state: str) -> Handover:
    base = Handover(7, PENDING, AT, NEW.version, "new.yaml", NEW_TEXT, AT - 10**7)
    if state == PENDING:
        return base
    return base.with_state(
        state, ranges={p: (0, 0) for p in range(6)}, cuts={p: {} for p in range(6)}
    )


def test_pending_holds_at_the_point_and_freezes_at_its_wall_clock_time() -> None:
    made, proc, _ = agent()
    made.take(record(PENDING), Engine(NEW))
    assert proc.holding == AT
    made.freeze_check(AT / 1e6 - 1)
    assert proc.holding == AT and not made.frozen
    made.freeze_check(AT / 1e6)
    assert made.frozen and proc.holding == MIN_TS
    assert made.status() == {
        "id": 7,
        "state": PENDING,
        "at": "2027-01-15T08:00:00Z",
        "version": NEW.version,
        "holding": True,
        "frozen": True,
    }


def test_ready_installs_and_the_last_report_closes_the_hand_over() -> None:
    made, proc, outputs = agent()
    made.take(record(PENDING), Engine(NEW))
    made.take(record(READY), Engine(NEW))
    handover = made.begin()
    assert handover is not None and handover.state == READY
    assert made.install(handover, {}) == 0
    assert proc.holding is None
    assert proc.engine.rules.version == NEW.version
    assert made.reported([Swapped(7, p, "w") for p in range(5)]) is None
    assert outputs.sent == []
    done = made.reported([Swapped(7, 5, "w"), Swapped(6, 0, "old")])
    assert done is not None and done.state == DONE
    ((topic, key, value),) = outputs.sent
    assert topic == "t-scorestream.rules" and key == done.key
    assert decode_control(key, value) == done
    assert made.status() is None  # closed here too
    assert made.assigned([0, 1]) is None  # closed: nothing to install on assignment


def test_an_aborted_rescore_releases_the_hold_and_keeps_the_plan() -> None:
    made, proc, _ = agent()
    made.take(record(PENDING), Engine(NEW))
    made.freeze_check(AT / 1e6)
    made.take(record(PENDING).with_state(ABORTED), Engine(NEW))
    assert proc.holding is None and not made.frozen
    assert proc.engine.rules.version == OLD.version
    made.take(record(READY), Engine(NEW))  # a late record of a finished rescore
    assert made.begin() is None


def test_a_worker_gives_up_holding_after_the_limit_and_still_takes_the_states() -> None:
    made, proc, _ = agent(hold_limit=0.0)
    made.take(record(PENDING), Engine(NEW))
    made.hold_expired()
    assert proc.holding is None
    made.take(record(READY), Engine(NEW))
    assert made.begin() is not None


def test_a_worker_past_the_point_does_not_hold() -> None:
    made, proc, _ = agent()
    proc.newest = AT + 1
    made.take(record(PENDING), Engine(NEW))
    assert proc.holding is None


def test_done_read_at_start_up_makes_the_rescore_plan_the_workers_plan() -> None:
    made, proc, _ = agent()
    made.take(record(DONE), Engine(NEW))
    assert proc.engine.rules.version == NEW.version
    assert made.status() is None and proc.holding is None
    assert json.loads(record(DONE).encode())["cuts"] == {str(p): {} for p in range(6)}


def test_ready_read_by_a_starting_worker_freezes_it_until_the_states_are_in() -> None:
    # A worker (re)started while the hand-over is open must score nothing under the old
    # plan: what follows the cut would be scored again under the new one.
    made, proc, _ = agent()
    made.take(record(READY), Engine(NEW))
    assert made.frozen and proc.holding == MIN_TS
    handover = made.begin()
    assert handover is not None
    made.retry(handover, "Kafka away")  # the states could not be read: still frozen
    assert made.install_due and proc.holding == MIN_TS
    handover = made.begin()
    assert handover is not None
    made.install(handover, {})
    assert proc.holding is None and not made.frozen
    made.take(record(READY), Engine(NEW))  # read again after the install: nothing to do
    assert proc.holding is None and not made.install_due
