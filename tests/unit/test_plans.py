"""Published plans: the record format, validation, and the processor's switch in event time."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, Member, run_members
from scorestream.engine.rules import load_rules, parse_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.errors import UsageError
from scorestream.plans import (
    DONE,
    PENDING,
    READY,
    Handover,
    Plan,
    PlanError,
    Swapped,
    decode_control,
    decode_plan,
    make_plan,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = parse_ts("2026-03-02T08:00:00Z")
MINUTE = 60 * US_PER_SECOND

PLAN = """\
version: 1
models:
  engagement:
    thresholds:
      - {{name: hot, enter: 50, exit: 40}}
    rules:
      - id: pricing-visit
        event: page_view
        where: {{url: {{glob: "/pricing*"}}}}
        points: {points}
      - id: contact-form
        event: form_submit
        where: {{form_id: contact}}
        points: 30
"""
OLD = parse_rules(PLAN.format(points=10), "old.yaml")
NEW = parse_rules(PLAN.format(points=25), "new.yaml")


def plan_record(text: str, effective_at: int = T0, **override: Any) -> bytes:
    rules = parse_rules(text)
    doc = {
        "version": rules.version,
        "effective_at": format_ts(effective_at),
        "published_at": format_ts(effective_at - MINUTE),
        "source": "new.yaml",
        "plan": text,
        **override,
    }
    return json.dumps(doc).encode()


# ------------------------------------------------------------------ records


def test_a_plan_record_round_trips_and_its_key_sorts_by_effective_time() -> None:
    text = PLAN.format(points=25)
    plan = decode_plan(plan_record(text))
    assert (plan.version, plan.effective_at, plan.source) == (NEW.version, T0, "new.yaml")
    assert decode_plan(plan.encode()) == plan
    assert plan.rules().version == NEW.version
    later = Plan(plan.version, T0 + 1, plan.published_at, plan.source, plan.text)
    assert plan.key < later.key  # 20 digits: byte order is time order
    assert plan.key.decode().endswith(":" + NEW.version)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"version": "x"}).encode(), "'effective_at' missing"),
        (plan_record(PLAN.format(points=25), effective_at=T0)[:-1] + b', "x": 1}', None),
    ],
)
def test_records_that_are_not_plans_are_refused_with_the_reason(
    value: bytes | None, reason: str | None
) -> None:
    if reason is None:  # unknown fields are allowed
        assert decode_plan(value).version == NEW.version
        return
    with pytest.raises(PlanError, match=reason):
        decode_plan(value)


def test_a_bad_time_is_refused() -> None:
    value = plan_record(PLAN.format(points=25), effective_at=T0)
    doc = json.loads(value)
    doc["effective_at"] = "yesterday"
    with pytest.raises(PlanError, match="bad time"):
        decode_plan(json.dumps(doc).encode())


def test_a_plan_that_does_not_validate_never_runs() -> None:
    broken = PLAN.format(points="lots")
    doc = json.loads(plan_record(PLAN.format(points=25)))
    doc["plan"] = broken
    plan = decode_plan(json.dumps(doc).encode())
    with pytest.raises(PlanError, match="pricing-visit"):
        plan.rules()


def test_a_plan_whose_text_is_not_its_version_is_refused() -> None:
    doc = json.loads(plan_record(PLAN.format(points=25)))
    doc["version"] = OLD.version
    with pytest.raises(PlanError, match="version"):
        decode_plan(json.dumps(doc).encode()).rules()


def test_publishing_validates_the_file_first(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PLAN.format(points="lots"))
    with pytest.raises(UsageError, match=r"bad\.yaml.*pricing-visit"):
        make_plan(str(bad), T0, T0)
    good = ROOT / "rules" / "b2b.yaml"
    plan, rules = make_plan(str(good), T0, T0 - 1)
    # The version is the file's, byte for byte (no newline translation on the way).
    assert plan.version == rules.version == load_rules(good).version
    assert plan.rules().version == plan.version


# ------------------------------------------------------------------ the switch


def ev(i: int, kind: str, minutes: float, contact: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "type": kind,
        "contact_id": contact,
        "occurred_at": format_ts(T0 + int(minutes * MINUTE)),
        "properties": props,
    }


def traffic() -> list[dict[str, Any]]:
    """Pricing visits of three contacts before and after T0 + 60 min, on two topics."""
    raws = []
    i = 0
    for contact in ("c-1", "c-2", "c-3"):
        for minute in (10, 30, 50, 70, 90):
            i += 1
            raws.append(ev(i, "page_view", minute, contact, url="/pricing"))
        i += 1
        raws.append(ev(i, "form_submit", 65, contact, form_id="newsletter"))
    return raws


def switched(raws: list[dict[str, Any]], seed: int, late: bool = False) -> Member:
    cluster = Cluster()
    cluster.publish(raws)
    member = Member(cluster, Engine(OLD), range(6))
    at = T0 + 60 * MINUTE
    if not late:
        member.proc.schedule_plan(at, Engine(NEW))
        run_members([member], random.Random(seed))
    else:
        run_members([member], random.Random(seed))
        member.proc.schedule_plan(at, Engine(NEW))
    return member


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_events_from_the_effective_time_on_are_scored_with_the_new_plan(seed: int) -> None:
    member = switched(traffic(), seed)
    proc = member.proc
    assert proc.engine.rules.version == NEW.version
    assert proc.switches == [(NEW.version, T0 + 60 * MINUTE, False)]
    assert proc.take_switches() == [(NEW.version, T0 + 60 * MINUTE, False)]
    assert proc.take_switches() == []  # each switch is reported once
    at = T0 + 100 * MINUTE
    for state in proc.states():
        # three visits before 60 min at 10 points, two after at 25: whatever the read order
        assert proc.engine.scores(state, at) == {"engagement": 80.0}
    ups = [c for c in member.out.crossings if c.direction == "up"]
    # 10+10+10 = 30, +25 at 70 min = 55 >= 50: hot, under the new plan, once per contact
    assert sorted(c.contact_id for c in ups) == ["c-1", "c-2", "c-3"]
    assert {c.rules_version for c in ups} == {NEW.version}
    assert {c.at for c in ups} == {T0 + 70 * MINUTE}


def test_a_plan_read_after_its_effective_time_switches_at_once_and_says_late() -> None:
    member = switched(traffic(), 4, late=True)
    proc = member.proc
    assert proc.switches == [(NEW.version, T0 + 60 * MINUTE, True)]
    assert proc.engine.rules.version == NEW.version
    # Everything was applied with the old plan before the plan was read: it stays so.
    for state in proc.states():
        assert proc.engine.scores(state, T0 + 100 * MINUTE) == {"engagement": 50.0}


def test_a_plan_scheduled_twice_switches_once() -> None:
    cluster = Cluster()
    cluster.publish(traffic())
    member = Member(cluster, Engine(OLD), range(6))
    for _ in range(2):
        member.proc.schedule_plan(T0 + 60 * MINUTE, Engine(NEW))
    assert member.proc.pending_plans() == [(T0 + 60 * MINUTE, NEW.version)]
    run_members([member], random.Random(5))
    assert len(member.proc.switches) == 1
    assert member.proc.pending_plans() == []


def test_of_two_plans_the_one_in_effect_at_each_time_is_used() -> None:
    third = parse_rules(PLAN.format(points=40), "third.yaml")
    cluster = Cluster()
    cluster.publish(traffic())
    member = Member(cluster, Engine(OLD), range(6))
    member.proc.schedule_plan(T0 + 80 * MINUTE, Engine(third))
    member.proc.schedule_plan(T0 + 60 * MINUTE, Engine(NEW))
    run_members([member], random.Random(6))
    proc = member.proc
    assert [(v, at) for v, at, _ in proc.switches] == [
        (NEW.version, T0 + 60 * MINUTE),
        (third.version, T0 + 80 * MINUTE),
    ]
    for state in proc.states():  # 3 x 10 + 25 (70 min) + 40 (90 min)
        assert proc.engine.scores(state, T0 + 100 * MINUTE) == {"engagement": 95.0}


# ---------------------------------------------------------------------- rescore records


def test_a_rescore_record_goes_through_every_state_and_back() -> None:
    text = (ROOT / "rules" / "b2b.yaml").read_text()
    version = parse_rules(text, "b2b.yaml").version
    pending = Handover(
        1_700_000_000_000_000,
        PENDING,
        1_700_000_010_000_000,
        version,
        "b2b.yaml",
        text,
        1_700_000_000_000_000,
    )
    assert pending.key == b"rescore:00001700000000000000"
    assert decode_control(pending.key, pending.encode()) == pending
    ready = pending.with_state(
        READY,
        ranges={0: (5, 9), 1: (0, 3)},
        cuts={0: {"events.page_view": 12}, 1: {"events.form": 4}},
        clock=1_700_000_004_000_000,
    )
    assert decode_control(ready.key, ready.encode()) == ready
    done = ready.with_state(DONE)
    assert decode_control(done.key, done.encode()).state == DONE  # type: ignore[union-attr]
    assert pending.rules().version == version
    report = Swapped(pending.id, 3, "host:1")
    assert report.key == b"rescore:00001700000000000000:swapped:00003"
    assert decode_control(report.key, report.encode()) == report


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"kind": "other"}', "unknown kind"),
        (b'{"kind": "rescore", "state": "later"}', "unknown rescore state"),
        (b'{"kind": "rescore", "state": "pending"}', "not a valid rescore record"),
        (
            b'{"kind": "rescore", "id": 1, "state": "ready", "at": "2026-01-01T00:00:00Z", '
            b'"version": "v", "source": "s", "plan": "p", "published_at": "2026-01-01T00:00:00Z"}',
            "without ranges and cuts",
        ),
    ],
)
def test_a_damaged_rescore_record_is_refused_with_its_reason(value: bytes, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        decode_control(b"rescore:1", value)


def test_every_record_of_the_plan_topic_fits_its_json_schema() -> None:
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    schema = json.loads((ROOT / "topics" / "schemas" / "rules.schema.json").read_text())
    validator = Draft202012Validator(schema)
    text = (ROOT / "rules" / "b2b.yaml").read_text()
    version = parse_rules(text, "b2b.yaml").version
    plan = Plan(version, 2_000_000, 1_000_000, "b2b.yaml", text)
    pending = Handover(1, PENDING, 2_000_000, version, "b2b.yaml", text, 1_000_000)
    ready = pending.with_state(READY, ranges={0: (0, 4)}, cuts={0: {"events.form": 3}}, clock=5)
    records = [plan, pending, ready, ready.with_state(DONE), Swapped(1, 0, "h:1")]
    for record in records:
        errors = list(validator.iter_errors(json.loads(record.encode())))
        assert errors == [], (record, errors)
    assert list(validator.iter_errors({"kind": "rescore", "id": 1, "state": "later"}))
