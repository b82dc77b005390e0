"""Hypothesis invariants of the scoring engine (named, one property per test)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scorestream.engine.events import AnyEvent, event_from_dict
from scorestream.engine.rules import RuleSet, load_rules, parse_rules
from scorestream.engine.scorer import Engine, round2
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts

ROOT = Path(__file__).resolve().parents[2]
B2B = load_rules(ROOT / "rules" / "b2b.yaml")
BASE = parse_ts("2026-03-01T00:00:00Z")
HOUR = 3600 * US_PER_SECOND
DAY = 24 * HOUR

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_PAGE_URLS = ["/", "/blog/a", "/blog/b", "/pricing", "/pricing/team", "/about"]
_FORMS = ["contact", "webinar-q1", "ebook-guide", "newsletter"]


@st.composite
def raw_events(draw: st.DrawFn, contacts: int = 3, max_size: int = 40) -> list[dict[str, Any]]:
    """A realistic mix of B2B events for a few contacts, with event times in order."""
    n = draw(st.integers(min_value=1, max_value=max_size))
    gaps = draw(st.lists(st.integers(0, 3 * DAY), min_size=n, max_size=n))
    out = []
    t = BASE
    for i in range(n):
        t += gaps[i]
        who = draw(st.integers(0, contacts - 1))
        kind = draw(
            st.sampled_from(["page", "page", "page", "form", "sent", "open", "unsub", "profile"])
        )
        ev: dict[str, Any] = {
            "event_id": f"e{i}",
            "contact_id": f"c-{who}",
            "occurred_at": format_ts(t),
        }
        if kind == "page":
            ev["type"] = "page_view"
            ev["properties"] = {"url": draw(st.sampled_from(_PAGE_URLS))}
        elif kind == "form":
            ev["type"] = "form_submit"
            ev["properties"] = {"form_id": draw(st.sampled_from(_FORMS))}
        elif kind in {"sent", "open"}:
            ev["type"] = "email_sent" if kind == "sent" else "email_open"
            ev["properties"] = {"campaign_id": draw(st.sampled_from(["k1", "k2"]))}
        elif kind == "unsub":
            ev["type"] = "email_unsubscribe"
        else:
            ev["type"] = "profile_update"
            ev["properties"] = {
                "attributes": {
                    "job_title": draw(st.sampled_from(["CEO", "Engineer", "Student", None])),
                    "company_size": draw(st.sampled_from([10, 120, 500, None])),
                }
            }
        out.append(ev)
    return out


class Contacts:
    """Contact states applied in list order (the engine alone: no routing needed here,
    every event names its contact)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.states: dict[str, ContactState] = {}

    def process(self, ev: AnyEvent) -> list[Any]:
        state = self.states.get(ev.key)
        if state is None:
            state = self.states[ev.key] = self.engine.new_state(ev.key)
        return self.engine.apply(state, ev).crossings

    def advance_all(self, at: int) -> list[Any]:
        out = []
        for key in sorted(self.states):
            out.extend(self.engine.advance(self.states[key], at))
        return out

    def __iter__(self) -> Any:
        return (self.states[k] for k in sorted(self.states))


def to_events(raws: list[dict[str, Any]]) -> list[AnyEvent]:
    return [event_from_dict(r) for r in raws]


def run(rules: RuleSet, events: list[AnyEvent], at: int) -> tuple[list[Any], list[Any]]:
    """Scores per contact at ``at`` and every crossing, as plain comparable data."""
    pop = Contacts(Engine(rules))
    crossings = []
    for ev in events:
        crossings.extend(c.to_dict() for c in pop.process(ev))
    crossings.extend(c.to_dict() for c in pop.advance_all(at))
    engine = pop.engine
    scores = [(s.key, engine.scores(s, at), engine.tiers(s)) for s in pop]
    return scores, crossings


def end_of(events: list[AnyEvent]) -> int:
    return max(e.ts for e in events) + 2 * DAY


@PROFILE
@given(
    points=st.lists(st.floats(1, 100), min_size=1, max_size=8),
    offsets=st.lists(st.integers(0, 60 * DAY), min_size=8, max_size=8),
    later=st.lists(st.integers(0, 400 * DAY), min_size=2, max_size=2),
)
def test_half_life_decay_is_monotone_and_composes(
    points: list[float], offsets: list[int], later: list[int]
) -> None:
    """Positive points only fall with time, and the aggregate equals the sum of decayed parts."""
    rules = parse_rules(
        "version: 1\nmodels:\n  m:\n    decay: {half_life: 7d}\n    rules:\n"
        "      - {id: r, event: x, points: {per: p}}\n"
    )
    engine = Engine(rules)
    state = engine.new_state("c")
    times = sorted(BASE + o for o in offsets[: len(points)])
    for i, (p, t) in enumerate(zip(points, times, strict=False)):
        ev = event_from_dict(
            {
                "event_id": f"e{i}",
                "type": "x",
                "contact_id": "c",
                "occurred_at": format_ts(t),
                "properties": {"p": p},
            }
        )
        engine.apply(state, ev)
    model = rules.models[0]
    t1, t2 = sorted(times[-1] + x for x in later)
    s1, s2 = engine.raw_score(state, model, t1), engine.raw_score(state, model, t2)
    assert s2 <= s1 * (1 + 1e-12)
    half_life = 7 * DAY
    direct = math.fsum(
        p * 0.5 ** ((t2 - t) / half_life) for p, t in zip(points, times, strict=False)
    )
    assert math.isclose(s2, direct, rel_tol=1e-9, abs_tol=1e-9)


@PROFILE
@given(raws=raw_events(), seed=st.integers(0, 2**32 - 1))
def test_shuffling_the_rule_list_changes_nothing(raws: list[dict[str, Any]], seed: int) -> None:
    """The order rules (and models) are listed in a file has no effect on any output."""
    doc = yaml.safe_load((ROOT / "rules" / "b2b.yaml").read_text())
    rng = random.Random(seed)
    for model in doc["models"].values():
        rng.shuffle(model["rules"])
        rng.shuffle(model.get("thresholds", []))
    items = list(doc["models"].items())
    rng.shuffle(items)
    doc["models"] = dict(items)
    shuffled = parse_rules(yaml.safe_dump(doc, sort_keys=False))
    events = to_events(raws)
    at = end_of(events)
    a_scores, a_cross = run(B2B, events, at)
    b_scores, b_cross = run(shuffled, events, at)
    assert a_scores == b_scores
    for c in a_cross + b_cross:
        c.pop("rules_version")
    assert a_cross == b_cross


@PROFILE
@given(raws=raw_events(), data=st.data())
def test_a_duplicated_event_changes_nothing(
    raws: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Redelivering an event (same event_id, same contact) anywhere later has no effect."""
    events = to_events(raws)
    i = data.draw(st.integers(0, len(raws) - 1))
    j = data.draw(st.integers(i + 1, len(raws)))
    dup_raws = [*raws[:j], raws[i], *raws[j:]]
    at = end_of(events)
    assert run(B2B, events, at) == run(B2B, to_events(dup_raws), at)


@PROFILE
@given(raws=raw_events(), data=st.data())
def test_serialise_then_load_changes_nothing(
    raws: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Round-tripping every state through bytes mid-stream gives the same future results."""
    events = to_events(raws)
    cut = data.draw(st.integers(0, len(events)))
    at = end_of(events)
    expected = run(B2B, events, at)

    pop = Contacts(Engine(B2B))
    crossings = []
    for ev in events[:cut]:
        crossings.extend(c.to_dict() for c in pop.process(ev))
    for key, state in list(pop.states.items()):
        blob = state.to_bytes()
        again = ContactState.from_bytes(blob)
        assert again.to_bytes() == blob
        pop.states[key] = again
    for ev in events[cut:]:
        crossings.extend(c.to_dict() for c in pop.process(ev))
    crossings.extend(c.to_dict() for c in pop.advance_all(at))
    scores = [(s.key, pop.engine.scores(s, at), pop.engine.tiers(s)) for s in pop]
    assert (scores, crossings) == expected


@PROFILE
@given(raws=raw_events(contacts=1, max_size=30), extra=st.integers(0, 90 * DAY))
def test_score_at_t_equals_the_explanation_at_t(raws: list[dict[str, Any]], extra: int) -> None:
    """Per-rule points explain the score exactly; the ledger re-derives it (decay included)."""
    events = to_events(raws)
    engine = Engine(B2B)
    pop = Contacts(engine)
    for ev in events:
        pop.process(ev)
    (state,) = pop.states.values()
    t = (state.clock or BASE) + extra
    engine.advance(state, t)
    doc = engine.explain(state, t)
    for model in B2B.models:
        score = engine.scores(state, t)[model.name]
        parts = [c.points for c in engine.contributions(state, t) if c.model == model.name]
        raw = math.fsum(parts)
        assert doc["models"][model.name]["score"] == score
        assert engine._clamp_round(model, raw) == score
        if len(state.ledger) < engine.bounds.ledger:
            half = model.decay_us
            from_ledger = math.fsum(
                e[3] * (0.5 ** ((t - e[4]) / half) if model.decay == "half_life" else 1.0)
                for e in state.ledger
                if e[1] == model.name
            )
            assert math.isclose(from_ledger, raw, rel_tol=1e-9, abs_tol=1e-6)


@st.composite
def hot_streak(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One contact doing valuable things within hours: enough to cross mql and sales_ready."""
    n = draw(st.integers(3, 12))
    out: list[dict[str, Any]] = [
        {"type": "form_submit", "properties": {"form_id": "contact"}},
        {"type": "form_submit", "properties": {"form_id": "webinar-q1"}},
    ]
    for i, ev in enumerate(out):
        ev.update({"event_id": f"f{i}", "contact_id": "c-hot", "occurred_at": format_ts(BASE)})
    t = BASE
    for i in range(n):
        t += draw(st.integers(1, 6 * HOUR))
        if draw(st.booleans()):
            ev = {"type": "form_submit", "properties": {"form_id": draw(st.sampled_from(_FORMS))}}
        else:
            ev = {"type": "page_view", "properties": {"url": draw(st.sampled_from(_PAGE_URLS))}}
        ev.update({"event_id": f"h{i}", "contact_id": "c-hot", "occurred_at": format_ts(t)})
        out.append(ev)
    return out


@PROFILE
@given(raws=hot_streak(), extra=st.integers(20 * DAY, 400 * DAY))
def test_decay_crossings_are_stamped_at_the_exact_microsecond(
    raws: list[dict[str, Any]], extra: int
) -> None:
    """At a down crossing's instant the score is below exit; a microsecond earlier it is not."""
    events = to_events(raws)
    engine = Engine(B2B)
    state = engine.new_state("c-hot")
    for ev in events:
        engine.apply(state, ev)
    assume(engine.tiers(state)["engagement"] is not None)
    replay = ContactState.from_bytes(state.to_bytes())
    downs = [c for c in engine.advance(state, events[-1].ts + extra) if c.direction == "down"]
    assume(downs)
    model = B2B.model_by_name["engagement"]
    exits = {t.name: t.exit for t in model.thresholds}
    for c in downs:
        before = round2(engine.raw_score(replay, model, c.at - 1))
        after = round2(engine.raw_score(replay, model, c.at))
        assert before >= exits[c.threshold] > after
        assert c.score == after and c.previous_score == before


@PROFILE
@given(raws=raw_events(contacts=1, max_size=40))
def test_limits_hold_in_every_window(raws: list[dict[str, Any]]) -> None:
    """article-read awards at most 3 times in any window (t - 1d, t]."""
    engine = Engine(B2B, bounds=None)
    pop = Contacts(engine)
    for ev in to_events(raws):
        pop.process(ev)
    for state in pop:
        times = sorted(e[4] for e in state.ledger if e[2] == "article-read")
        for i in range(len(times) - 3):
            assert times[i + 3] - times[i] >= DAY


@PROFILE
@given(raws=raw_events(contacts=4), seed=st.integers(0, 2**32 - 1))
def test_contacts_are_independent_of_interleaving(raws: list[dict[str, Any]], seed: int) -> None:
    """Only a contact's own event order matters: interleaving with others changes nothing."""
    events = to_events(raws)
    at = end_of(events)
    by_contact: dict[str, list[AnyEvent]] = {}
    for ev in events:
        by_contact.setdefault(ev.key, []).append(ev)
    rng = random.Random(seed)
    queues = [list(v) for v in by_contact.values()]
    mixed: list[AnyEvent] = []
    while queues:
        q = rng.choice(queues)
        mixed.append(q.pop(0))
        if not q:
            queues.remove(q)
    a_scores, a_cross = run(B2B, events, at)
    b_scores, b_cross = run(B2B, mixed, at)
    assert a_scores == b_scores

    def key(c: dict[str, Any]) -> str:
        return json.dumps(c, sort_keys=True)

    assert sorted(a_cross, key=key) == sorted(b_cross, key=key)
