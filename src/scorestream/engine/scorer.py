"""The scoring engine: events in, scores, crossings and explanations out.

Pure: no I/O, no clock. Every function takes the time it works at. The live worker and
``scorestream score`` call the same :class:`Engine` methods, so identical input gives
identical results by construction.

Time model. A contact's ``clock`` is the latest event time it has been advanced to.
Before an event at ``t`` is applied, everything due strictly before ``t`` happens first
(``unless`` timers fire at ``t_A + D``, expiring points drop out at ``t_i + D``, decay
carries the score below an ``exit`` at the exact microsecond it does), each stamped with
its own time. The event is then scored at ``t``; a late event (``t`` before the clock) is
scored at its own time but thresholds are checked at the clock, and its crossings are
stamped with the clock: that is when, in event time, the change became known.

Scores are compared with thresholds as reported: clamped, then rounded to two decimals
(half up), so a reported 100.0 is always "in" a threshold with ``enter: 100``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scorestream.engine.conditions import MISSING, lookup, split_path
from scorestream.engine.events import AnyEvent, Identify, ProfileUpdate
from scorestream.engine.plan import AttributeRule, EventRule, Model
from scorestream.engine.rules import RuleSet
from scorestream.engine.state import (
    UNKNOWN,
    Bounds,
    ContactState,
    ModelState,
    id_digest,
    id_hash,
)
from scorestream.engine.timeutil import format_ts

TOP_CONTRIBUTORS = 3
#: how far (µs) the analytic decay instant may be from the exact one before we look closely
GUESS_SLACK = 1_000_000
_exp2 = math.exp2
_fsum = math.fsum


def round2(value: float) -> float:
    """Round to two decimals, half up (the reported score)."""
    return math.floor(value * 100 + 0.5) / 100


@dataclass(frozen=True, slots=True)
class Crossing:
    """One threshold crossing (the ``leads.sales_ready`` message)."""

    contact_id: str
    model: str
    threshold: str
    direction: Literal["up", "down"]
    seq: int
    score: float
    previous_score: float
    at: int
    rules_version: str
    top_contributors: tuple[tuple[str, float], ...]
    anonymous: bool = False

    @property
    def crossing_id(self) -> str:
        """Deterministic id: same input, same id (CRM connectors dedupe on it)."""
        return f"{self.contact_id}:{self.model}:{self.threshold}:{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        """The wire form (spec/events.md, Outputs)."""
        return {
            "crossing_id": self.crossing_id,
            "contact_id": self.contact_id,
            "model": self.model,
            "threshold": self.threshold,
            "direction": self.direction,
            "score": self.score,
            "previous_score": self.previous_score,
            "occurred_at": format_ts(self.at),
            "rules_version": self.rules_version,
            "top_contributors": [
                {"rule_id": rule_id, "points": points} for rule_id, points in self.top_contributors
            ],
            "anonymous": self.anonymous,
        }


class Outcome:
    """What applying one event did."""

    # A plain class, not a dataclass: compiled, it is built in a fraction of the time
    # (one per event).
    __slots__ = ("crossings", "status", "timers_dropped")

    def __init__(
        self,
        status: Literal["applied", "duplicate"],
        crossings: list[Crossing] | None = None,
        timers_dropped: int = 0,
    ) -> None:
        self.status = status
        self.crossings: list[Crossing] = [] if crossings is None else crossings
        #: ``unless`` timers not started because the contact already had Bounds.timers
        #: pending
        self.timers_dropped = timers_dropped

    def __repr__(self) -> str:
        return (
            f"Outcome({self.status!r}, crossings={self.crossings!r}, "
            f"timers_dropped={self.timers_dropped})"
        )


@dataclass(frozen=True, slots=True)
class RulePoints:
    """One line of an explanation: what a rule contributes at a time."""

    model: str
    rule_id: str
    kind: Literal["event", "attribute"]
    points: float


class Engine:
    """Applies a :class:`RuleSet` to contact states."""

    def __init__(self, rules: RuleSet, bounds: Bounds | None = None) -> None:
        self.rules = rules
        self.bounds = bounds or Bounds()
        self._models = rules.models
        # The plan's lookup tables as typed dicts: read for every event, and compiled a
        # dict read is a C call where a Mapping attribute of the plan is a Python lookup.
        self._by_type: dict[str, tuple[EventRule, ...]] = dict(rules.by_type)
        self._cancels: dict[str, tuple[EventRule, ...]] = dict(rules.cancels)
        self._model_by_name: dict[str, Model] = dict(rules.model_by_name)
        self._threshold_models = tuple(m for m in rules.models if m.thresholds)
        # Only these can change with the passing of time alone (see _next_change).
        self._timed_models = tuple(
            m
            for m in rules.models
            if m.decay == "expire_after" or (m.decay == "half_life" and m.thresholds)
        )
        # States keep a short form of the rules version: enough to notice a change.
        self._version = rules.version[:23]
        self._attribute_models = tuple(m for m in rules.models if m.attribute_rules)
        self._attr_paths: dict[str, tuple[str, ...]] = {
            a.attribute: split_path(a.attribute) for m in rules.models for a in m.attribute_rules
        }
        # Whether a contact without attributes gets attribute points (a rule that passes
        # on a missing attribute, such as `ne` or `exists: false`). Most plans have none:
        # then a new contact's first event has no attribute points to compute.
        self._points_without_attributes = any(
            rule.test(lookup({}, self._attr_paths[rule.attribute]))
            for m in self._attribute_models
            for rule in m.attribute_rules
        )

    # ------------------------------------------------------------------ public API

    def new_state(self, key: str, anonymous: bool = False) -> ContactState:
        """A state for a profile never seen before."""
        state = ContactState(key, anonymous)
        state.rules_version = self._version
        return state

    def apply(self, state: ContactState, event: AnyEvent) -> Outcome:
        """Score one event for the contact whose state this is (identify: see :meth:`merge`)."""
        # The hash's bytes, as the dedupe memory holds them (no int in between).
        h = id_digest(event.event_id)
        if state.has_seen_digest(h):
            return Outcome("duplicate")
        t = event.ts
        out = Outcome("applied")
        if state.rules_version != self._version:
            self._sync_rules(state, t, out.crossings)
        if state.clock is not None and (state.timers or self._timed_models):
            out.crossings.extend(self._advance(state, t, inclusive=False))
        state.remember_digest(h, self.bounds.seen_ids)
        if event.contact_id is not None and event.contact_id == state.key:
            state.anonymous = False
        first = state.clock is None and bool(self._attribute_models)
        if first and (self._points_without_attributes or state.attrs or state.models):
            # A new contact has no attributes, and attribute rules that pass on a missing
            # attribute (`ne`, `exists: false`) count from its first event on. (Without
            # such rules, attributes or models, the recomputation would find nothing.)
            self._recompute_attributes(state, event.event_id, t, changed=None)
        now = t if state.clock is None or t > state.clock else state.clock
        # ``type() is``, not isinstance: pydantic's metaclass makes isinstance an ABC check
        # costing more than a small rule (the event classes have no subclasses).
        if type(event) is ProfileUpdate:
            self._profile_update(state, event, t, now, out)
        elif type(event) is not Identify:
            self._score_event(state, event, t, now, out)
        if first:
            for model in self._attribute_models:
                if model.thresholds:
                    out.crossings.extend(
                        self._check(state, model, now, self._clamp_round(model, 0.0))
                    )
        state.clock = now
        return out

    def advance(self, state: ContactState, t: int) -> list[Crossing]:
        """Let time pass to ``t`` (inclusive): fire due timers, expiry and decay crossings."""
        crossings: list[Crossing] = []
        self._sync_rules(state, t, crossings)
        crossings.extend(self._advance(state, t, inclusive=True))
        return crossings

    def merge(
        self, into: ContactState, other: ContactState, at: int, merge_id: str
    ) -> list[Crossing]:
        """``identify``: move everything of ``other`` (anonymous) into ``into`` (the contact).

        As if ``other``'s events had been the contact's from the start: points keep their
        times, attributes merge (the contact's own values win), limits, timers, dedupe
        memory, ledger and the caller's marks are combined. Thresholds are then checked
        once, and crossings are stamped with the identify time (or the contact's clock if
        that is later).
        ``merge_id`` makes the merge idempotent: a repeated merge changes nothing.
        """
        h = id_hash("merge:" + merge_id)
        if into.has_seen(h):
            return []
        crossings: list[Crossing] = []
        self._sync_rules(into, at, crossings)
        crossings.extend(self._advance(into, at, inclusive=False))
        into.remember(h, self.bounds.seen_ids)
        now = max(at, into.clock if into.clock is not None else at)
        if other.clock is not None:
            now = max(now, other.clock)
        before = {m.name: self._reported(into, m, now) for m in self._threshold_models}
        self._merge_models(into, other)
        for h_other in other.seen:
            if not into.has_seen(h_other):
                into.remember(h_other, self.bounds.seen_ids)
        # The other side's attribute entries are left out: attribute points are recomputed
        # below from the merged attributes, and that recomputation is ledgered as deltas.
        other_events = [
            e
            for e in other.ledger
            if not isinstance(self.rules.rules_by_key.get((e[1], e[2])), AttributeRule)
        ]
        merged_ledger = sorted(other_events + into.ledger, key=lambda e: e[4])
        into.ledger = merged_ledger[-self.bounds.ledger :]
        into.timers = sorted(into.timers + other.timers, key=lambda x: (x[0], x[4], x[2]))
        del into.timers[self.bounds.timers :]
        self._merge_limits(into, other)
        marks = into.marks
        for stream, position in other.marks.items():
            if position > marks.get(stream, -1):
                marks[stream] = position
        merged_attrs = dict(other.attrs)
        merged_attrs.update(into.attrs)
        into.attrs = merged_attrs
        self._recompute_attributes(into, merge_id, now, changed=None)
        # Timers of the anonymous side that fell due before now fire silently: their points
        # count, and the crossings they cause are the merge's, stamped now.
        while into.timers and into.timers[0][0] < now:
            self._fire_timer(into, into.timers.pop(0))
        into.clock = now
        for model in self._threshold_models:
            crossings.extend(self._check(into, model, now, before[model.name]))
        return crossings

    def next_due(self, state: ContactState) -> int | None:
        """When, with no further events, something may next happen to this contact.

        Exact for timers and expiry; for decay the analytic instant (the worker's sweep
        then calls :meth:`advance`, which finds the exact microsecond).
        """
        best: int | None = state.timers[0][0] if state.timers else None
        clock = state.clock if state.clock is not None else 0
        for model in self._models:
            ms = state.models.get(model.name)
            if ms is None:
                continue
            cand: int | None = None
            if model.decay == "expire_after" and ms.buckets:
                cand = ms.buckets[0][0] + model.decay_us
            elif model.decay == "half_life" and model.thresholds and ms.pts:
                instant = self._cached_instant(model, ms)
                cand = None if instant is None else max(instant, clock + 1)
            if cand is not None and (best is None or cand < best):
                best = cand
        return best

    def scores(self, state: ContactState, t: int) -> dict[str, float]:
        """Reported score of every model at ``t`` (clamped, rounded)."""
        return {m.name: self._reported(state, m, t) for m in self._models}

    def tiers(self, state: ContactState) -> dict[str, str | None]:
        """Per model, the threshold with the highest ``enter`` that the contact is in."""
        out: dict[str, str | None] = {}
        for m in self._models:
            ms = state.models.get(m.name)
            tier = None
            if ms is not None and ms.inside:
                for th in m.thresholds:  # sorted by enter, so the last one in wins
                    if th.name in ms.inside:
                        tier = th.name
            out[m.name] = tier
        return out

    def contributions(self, state: ContactState, t: int) -> list[RulePoints]:
        """Points per rule at ``t``, after decay (the explanation of the score)."""
        out: list[RulePoints] = []
        for m in self._models:
            ms = state.models.get(m.name)
            if ms is None:
                continue
            for rule_id, pts in sorted(self._event_parts(m, ms, t).items()):
                out.append(RulePoints(m.name, rule_id, "event", pts))
            for rule_id, pts in sorted(ms.attr.items()):
                out.append(RulePoints(m.name, rule_id, "attribute", pts))
        return out

    def raw_score(self, state: ContactState, model: Model, t: int) -> float:
        """Unclamped, unrounded score of one model at ``t``.

        ``math.fsum`` is correctly rounded, so the result does not depend on the order of
        the parts: the same per-rule points give the same score however they were summed.
        """
        ms = state.models.get(model.name)
        if ms is None:
            return 0.0
        if model.decay == "half_life":
            if not ms.pts:
                return _fsum(ms.attr.values())
            f = _exp2(-(t - ms.t0) / model.decay_us)
            return _fsum([v * f for v in ms.pts.values()] + list(ms.attr.values()))
        if model.decay == "none":
            return _fsum(list(ms.pts.values()) + list(ms.attr.values()))
        parts = list(self._event_parts(model, ms, t).values())
        parts.extend(ms.attr.values())
        return _fsum(parts)

    def explain(self, state: ContactState, t: int) -> dict[str, Any]:
        """Why the scores are what they are at ``t`` (JSON-ready)."""
        contributions = self.contributions(state, t)
        tiers = self.tiers(state)
        models: dict[str, Any] = {}
        for m in self._models:
            ms = state.models.get(m.name)
            raw = self.raw_score(state, m, t)
            models[m.name] = {
                "score": self._clamp_round(m, raw),
                "raw_score": raw,
                "tier": tiers[m.name],
                "thresholds_in": sorted(ms.inside) if ms else [],
                "decay": m.decay,
                "rules": [
                    {"rule_id": c.rule_id, "kind": c.kind, "points": round2(c.points)}
                    for c in contributions
                    if c.model == m.name
                ],
            }
        return {
            "contact_id": state.key,
            "anonymous": state.anonymous,
            "alias_of": state.alias,
            "at": format_ts(t),
            "rules_version": self.rules.version,
            "models": models,
            "attributes": state.attrs,
            "pending_timers": [
                {"rule_id": x[2], "model": x[1], "due": format_ts(x[0]), "event_id": x[5]}
                for x in state.timers
            ],
            "ledger": [
                {
                    "event_id": e[0],
                    "model": e[1],
                    "rule_id": e[2],
                    "points": e[3],
                    "at": format_ts(e[4]),
                }
                for e in state.ledger
            ],
        }

    # ------------------------------------------------------------------ scoring

    def _score_event(
        self, state: ContactState, event: AnyEvent, t: int, now: int, out: Outcome
    ) -> None:
        props = event.properties
        etype = event.type
        cancels = self._cancels.get(etype)
        if cancels and state.timers:
            self._cancel_timers(state, cancels, props, t)
        rules = self._by_type.get(etype)
        if not rules:
            return
        awards: list[tuple[EventRule, float]] = []
        for rule in rules:
            match = rule.match
            if match is not None and not match(props):
                continue
            points = rule.fixed
            if points is None:
                points = rule.points_for(props)
                if points is None:
                    continue
            if rule.unless_event is not None:
                if len(state.timers) >= self.bounds.timers:
                    out.timers_dropped += 1
                    continue
                values = tuple(_plain(lookup(props, p)) for p in rule.unless_match)
                timer = (
                    t + rule.unless_within,
                    rule.model,
                    rule.id,
                    values,
                    t,
                    event.event_id,
                    points,
                )
                timers = state.timers
                if not timers or _timer_key(timers[-1]) <= _timer_key(timer):
                    timers.append(timer)  # the usual case: timers start in time order
                else:
                    bisect.insort(timers, timer, key=_timer_key)
                continue
            awards.append((rule, points))
        if not awards:
            return
        # Points this event added, as they count at `now`, per model with thresholds: the
        # score before the event is the score after it minus these (one evaluation, not two).
        added: dict[str, float] = {}
        model_by_name = self._model_by_name
        for rule, points in awards:
            if self._limit_allows(state, rule, t):
                self._award(state, rule.model, rule.id, points, t, event.event_id)
                model = model_by_name[rule.model]
                if model.thresholds:
                    added[model.name] = added.get(model.name, 0.0) + points * _weight(
                        model, now - t
                    )
        for name, delta in added.items():
            model = model_by_name[name]
            raw = self.raw_score(state, model, now)
            out.crossings.extend(
                self._check(
                    state,
                    model,
                    now,
                    self._clamp_round(model, raw - delta),
                    self._clamp_round(model, raw),
                )
            )

    def _profile_update(
        self, state: ContactState, event: ProfileUpdate, t: int, now: int, out: Outcome
    ) -> None:
        changed = set()
        for key, value in event.attributes.items():
            if value is None:
                if key in state.attrs:
                    del state.attrs[key]
                    changed.add(key)
            elif (
                key not in state.attrs
                or state.attrs[key] != value
                or (type(state.attrs[key]) is not type(value))
            ):
                state.attrs[key] = value
                changed.add(key)
        if not changed:
            return
        before = {m.name: self._reported(state, m, now) for m in self._threshold_models}
        self._recompute_attributes(state, event.event_id, t, changed)
        for model in self._threshold_models:
            out.crossings.extend(self._check(state, model, now, before[model.name]))

    def _recompute_attributes(
        self, state: ContactState, source_id: str, t: int, changed: set[str] | None
    ) -> None:
        """Attribute points follow the current attributes (set semantics, no decay)."""
        for model in self._models:
            if not model.attribute_rules:
                continue
            new: dict[str, float] = {}
            for rule in model.attribute_rules:
                if changed is not None and rule.attribute.split(".", 1)[0] not in changed:
                    ms_old = state.models.get(model.name)
                    if ms_old is not None and rule.id in ms_old.attr:
                        new[rule.id] = ms_old.attr[rule.id]
                    continue
                if rule.test(lookup(state.attrs, self._attr_paths[rule.attribute])):
                    new[rule.id] = rule.points
            ms = state.models.get(model.name)
            old = ms.attr if ms is not None else {}
            if new == old:
                continue
            if ms is None:
                ms = state.models[model.name] = ModelState()
            for rule_id in sorted(set(old) | set(new)):
                delta = new.get(rule_id, 0.0) - old.get(rule_id, 0.0)
                if delta:
                    self._ledger(state, source_id, model.name, rule_id, delta, t)
            ms.attr = new
            ms.guess = UNKNOWN

    def _sync_rules(self, state: ContactState, t: int, crossings: list[Crossing]) -> None:
        """A state scored under other rules gets its attribute points recomputed once."""
        if state.rules_version == self._version:
            return
        state.rules_version = self._version
        if not state.attrs:
            return
        now = max(t, state.clock or t)
        before = {m.name: self._reported(state, m, now) for m in self._threshold_models}
        self._recompute_attributes(state, "rules-change", now, changed=None)
        for model in self._threshold_models:
            crossings.extend(self._check(state, model, now, before[model.name]))

    # ------------------------------------------------------------------ points

    def _award(
        self, state: ContactState, model_name: str, rule_id: str, points: float, t: int, eid: str
    ) -> None:
        model = self._model_by_name.get(model_name)
        ms = state.models.get(model_name)
        if ms is None:
            ms = state.models[model_name] = ModelState()
        decay = model.decay if model is not None else "none"
        ms.guess = UNKNOWN
        if decay == "half_life":
            assert model is not None
            pts = ms.pts
            if not pts:
                ms.t0 = t
                pts[rule_id] = points
            elif t > ms.t0:
                # Move the reference time forward: every amount decays to t first.
                f = _exp2(-(t - ms.t0) / model.decay_us)
                for key in pts:
                    pts[key] *= f
                ms.t0 = t
                pts[rule_id] = pts.get(rule_id, 0.0) + points
            else:
                pts[rule_id] = pts.get(rule_id, 0.0) + points * _exp2(-(ms.t0 - t) / model.decay_us)
        elif decay == "expire_after":
            _add_bucket(ms.buckets, t, {rule_id: points})
            if len(ms.buckets) > self.bounds.buckets:
                _coarsen(ms.buckets)
        else:
            ms.pts[rule_id] = ms.pts.get(rule_id, 0.0) + points
        self._ledger(state, eid, model_name, rule_id, points, t)

    def _ledger(
        self, state: ContactState, eid: str, model: str, rule_id: str, points: float, t: int
    ) -> None:
        ledger = state.ledger
        # Tuples of plain values are not tracked by the cyclic GC: fewer objects for its
        # full collections to scan (measured: their pauses were the worker's latency tail).
        ledger.append((eid, model, rule_id, points, t))
        if len(ledger) > self.bounds.ledger:
            del ledger[: len(ledger) - self.bounds.ledger]

    def _limit_allows(self, state: ContactState, rule: EventRule, t: int) -> bool:
        """Check and record a limited award: at most N in any window (t - D, t]."""
        count = rule.limit_count
        if count is None:
            return True
        key = f"{rule.model}/{rule.id}"
        if rule.limit_per is None:
            done = state.limits.get(key, 0)
            if done >= count:
                return False
            state.limits[key] = done + 1
            return True
        span = rule.limit_per
        times: list[int] = state.limits.setdefault(key, [])
        i = bisect.bisect_right(times, t)
        candidate = [*times[:i], t, *times[i:]]
        # N+1 awards fit in a half-open window of length D iff they span less than D.
        for j in range(max(0, i - count), i + 1):
            if j + count < len(candidate) and candidate[j + count] - candidate[j] < span:
                return False
        times.insert(i, t)
        # Keep what a late event up to D behind the newest award can still collide with.
        horizon = times[-1] - 2 * span
        if times[0] <= horizon:
            del times[: bisect.bisect_right(times, horizon)]
        return True

    def _cancel_timers(
        self,
        state: ContactState,
        rules: Iterable[EventRule],
        props: Mapping[str, Any],
        t: int,
    ) -> None:
        keep = []
        wanted = {(r.model, r.id): r for r in rules}
        for timer in state.timers:
            rule = wanted.get((timer[1], timer[2]))
            if (
                rule is not None
                and timer[4] < t <= timer[0]
                and tuple(_plain(lookup(props, p)) for p in rule.unless_match) == timer[3]
            ):
                continue
            keep.append(timer)
        state.timers = keep

    def _fire_timer(self, state: ContactState, timer: tuple[Any, ...]) -> None:
        due, model, rule_id, _values, _start, eid, points = timer
        rule = self.rules.rules_by_key.get((model, rule_id))
        if isinstance(rule, EventRule) and not self._limit_allows(state, rule, due):
            return
        if rule is None and model not in self.rules.model_by_name:
            return  # the model is gone from the rules: nothing to award
        self._award(state, model, rule_id, points, due, eid)

    def _merge_models(self, into: ContactState, other: ContactState) -> None:
        for name, oms in other.models.items():
            model = self._model_by_name.get(name)
            ims = into.models.get(name)
            if ims is None:
                ims = into.models[name] = ModelState()
                ims.t0 = oms.t0
            ims.guess = UNKNOWN
            decay = model.decay if model is not None else "none"
            if decay == "half_life" and oms.pts:
                assert model is not None
                if not ims.pts:
                    ims.t0 = oms.t0
                t0 = max(ims.t0, oms.t0)
                fi = _exp2(-(t0 - ims.t0) / model.decay_us)
                fo = _exp2(-(t0 - oms.t0) / model.decay_us)
                merged = {k: v * fi for k, v in ims.pts.items()}
                for k, v in oms.pts.items():
                    merged[k] = merged.get(k, 0.0) + v * fo
                ims.pts, ims.t0 = merged, t0
            elif decay == "expire_after":
                for bt, parts in oms.buckets:
                    _add_bucket(ims.buckets, bt, parts)
                while len(ims.buckets) > self.bounds.buckets:
                    _coarsen(ims.buckets)
            else:
                for k, v in oms.pts.items():
                    ims.pts[k] = ims.pts.get(k, 0.0) + v

    def _merge_limits(self, into: ContactState, other: ContactState) -> None:
        for key, value in other.limits.items():
            mine = into.limits.get(key)
            if isinstance(value, int):
                into.limits[key] = (mine if isinstance(mine, int) else 0) + value
            else:
                into.limits[key] = sorted((mine if isinstance(mine, list) else []) + value)

    # ------------------------------------------------------------------ time

    def _advance(self, state: ContactState, t: int, inclusive: bool) -> list[Crossing]:
        """Process everything due before ``t`` (or at ``t`` if inclusive), in time order."""
        crossings: list[Crossing] = []
        if state.clock is None:
            return crossings
        limit = t if inclusive else t - 1
        while True:
            nxt = self._next_change(state, limit)
            if nxt is None:
                return crossings
            crossings.extend(self._step(state, nxt))

    def _next_change(self, state: ContactState, limit: int) -> int | None:
        """The earliest time <= limit at which something changes, if any."""
        assert state.clock is not None
        best: int | None = None
        if state.timers and state.timers[0][0] <= limit:
            best = state.timers[0][0]
        clock = state.clock
        for model in self._timed_models:
            ms = state.models.get(model.name)
            if ms is None:
                continue
            if model.decay == "expire_after":
                if ms.buckets:
                    cand = ms.buckets[0][0] + model.decay_us
                    if cand <= limit and (best is None or cand < best):
                        best = cand
            elif ms.pts:
                if not ms.inside and _fsum(ms.pts.values()) >= 0:
                    continue  # outside every threshold and falling: nothing to cross
                bound = limit if best is None else best - 1
                if bound <= clock:
                    continue
                guess = self._cached_instant(model, ms)
                if guess is None or guess > bound + GUESS_SLACK:
                    continue  # the analytic instant is well after the bound
                if self._would_cross(state, model, ms, bound):
                    cand = self._first_crossing(state, model, ms, clock, bound)
                    if best is None or cand < best:
                        best = cand
        return best

    def _step(self, state: ContactState, at: int) -> list[Crossing]:
        """Everything that happens at ``at``: timers fire, points expire, thresholds move."""
        assert state.clock is not None
        now = max(at, state.clock)
        before = {m.name: self._reported(state, m, now - 1) for m in self._threshold_models}
        # Timers due at `at` fire before anything else happens at that instant.
        while state.timers and state.timers[0][0] <= at:
            self._fire_timer(state, state.timers.pop(0))
        for model in self._models:
            if model.decay == "expire_after":
                ms = state.models.get(model.name)
                if ms is not None and ms.buckets:
                    horizon = now - model.decay_us
                    i = 0
                    while i < len(ms.buckets) and ms.buckets[i][0] <= horizon:
                        i += 1
                    if i:
                        del ms.buckets[:i]
        state.clock = now
        crossings: list[Crossing] = []
        for model in self._threshold_models:
            crossings.extend(self._check(state, model, now, before[model.name]))
        return crossings

    def _would_cross(self, state: ContactState, model: Model, ms: ModelState, t: int) -> bool:
        """Whether the reported score at ``t`` disagrees with the thresholds the contact is in."""
        score = self._reported(state, model, t)
        inside = ms.inside
        for th in model.thresholds:
            if th.name in inside:
                if score < th.exit:
                    return True
            elif score >= th.enter:
                return True
        return False

    def _first_crossing(
        self, state: ContactState, model: Model, ms: ModelState, lo: int, hi: int
    ) -> int:
        """First microsecond in (lo, hi] at which a threshold flips (the score is monotone)."""
        instant = self._decay_instant(model, ms)
        guess = None if instant is None else max(instant, lo + 1)
        if guess is not None and lo < guess <= hi:
            if self._would_cross(state, model, ms, guess):
                if not self._would_cross(state, model, ms, guess - 1):
                    return guess
                hi = guess
            else:
                lo = guess
        # Invariant: no flip at lo, a flip at hi.
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._would_cross(state, model, ms, mid):
                hi = mid
            else:
                lo = mid
        return hi

    def _cached_instant(self, model: Model, ms: ModelState) -> int | None:
        """:meth:`_decay_instant`, computed once per change of the model's state."""
        if ms.guess is UNKNOWN:
            ms.guess = self._decay_instant(model, ms)
        instant: int | None = ms.guess
        return instant

    def _decay_instant(self, model: Model, ms: ModelState) -> int | None:
        """Analytic instant of the next threshold flip under half-life decay, if any.

        Accurate to well under a millisecond; :meth:`_first_crossing` finds the exact
        microsecond with the same evaluation as every reported score.
        """
        total = _fsum(ms.pts.values())
        if total == 0.0:
            return None
        attr = _fsum(ms.attr.values())
        best: float | None = None
        for th in model.thresholds:
            if th.name in ms.inside:
                if total < 0:
                    continue  # rising score never leaves
                target = th.exit_bound
            else:
                if total > 0:
                    continue  # falling score never enters
                target = th.enter_bound
            if model.min_score is not None and target <= model.min_score:
                continue
            if model.max_score is not None and target > model.max_score:
                continue
            ratio = (target - attr) / total
            if not 0.0 < ratio < 1.0:
                continue
            when = ms.t0 - model.decay_us * math.log2(ratio)
            if best is None or when < best:
                best = when
        if best is None or not math.isfinite(best):
            return None
        return math.ceil(best)

    # ------------------------------------------------------------------ thresholds

    def _check(
        self,
        state: ContactState,
        model: Model,
        now: int,
        before: float,
        score: float | None = None,
    ) -> list[Crossing]:
        if score is None:
            score = self._reported(state, model, now)
        ms = state.models.get(model.name)
        if ms is None:
            if score < model.thresholds[0].enter:
                return []
            ms = state.models[model.name] = ModelState()
        inside = ms.inside
        if not inside and score < model.thresholds[0].enter:
            return []  # the common case: below every threshold and in none
        ups = [th for th in model.thresholds if th.name not in inside and score >= th.enter]
        downs = [th for th in reversed(model.thresholds) if th.name in inside and score < th.exit]
        if not ups and not downs:
            return []
        top = self._top(state, model, ms, now)
        ms.guess = UNKNOWN
        out = []
        for th, direction in [(th, "down") for th in downs] + [(th, "up") for th in ups]:
            seq = ms.counts.get(th.name, 0) + 1
            ms.counts[th.name] = seq
            if direction == "up":
                inside.append(th.name)
            else:
                inside.remove(th.name)
            out.append(
                Crossing(
                    contact_id=state.key,
                    model=model.name,
                    threshold=th.name,
                    direction="up" if direction == "up" else "down",
                    seq=seq,
                    score=score,
                    previous_score=before,
                    at=now,
                    rules_version=self.rules.version,
                    top_contributors=top,
                    anonymous=state.anonymous,
                )
            )
        inside.sort()
        return out

    def _top(
        self, state: ContactState, model: Model, ms: ModelState, t: int
    ) -> tuple[tuple[str, float], ...]:
        parts = self._event_parts(model, ms, t)
        for rule_id, pts in ms.attr.items():
            parts[rule_id] = parts.get(rule_id, 0.0) + pts
        ranked = sorted(
            ((rule_id, round2(p)) for rule_id, p in parts.items() if round2(p) != 0.0),
            key=lambda item: (-abs(item[1]), item[0]),
        )
        return tuple(ranked[:TOP_CONTRIBUTORS])

    # ------------------------------------------------------------------ evaluation

    def _event_parts(self, model: Model, ms: ModelState, t: int) -> dict[str, float]:
        """Event points per rule at ``t`` (decayed, or only the unexpired ones)."""
        if model.decay == "half_life":
            if not ms.pts:
                return {}
            f = _exp2(-(t - ms.t0) / model.decay_us)
            return {k: v * f for k, v in ms.pts.items()}
        if model.decay == "expire_after":
            out: dict[str, float] = {}
            horizon = t - model.decay_us
            for bt, parts in ms.buckets:
                if horizon < bt <= t:
                    for rule_id, pts in parts.items():
                        out[rule_id] = out.get(rule_id, 0.0) + pts
            return out
        return dict(ms.pts)

    def _reported(self, state: ContactState, model: Model, t: int) -> float:
        return self._clamp_round(model, self.raw_score(state, model, t))

    @staticmethod
    def _clamp_round(model: Model, raw: float) -> float:
        if model.min_score is not None and raw < model.min_score:
            raw = model.min_score
        if model.max_score is not None and raw > model.max_score:
            raw = model.max_score
        return round2(raw)


def _weight(model: Model, age: int) -> float:
    """What one point awarded ``age`` microseconds ago counts now."""
    if model.decay == "half_life":
        return _exp2(-age / model.decay_us) if age else 1.0
    if model.decay == "expire_after":
        return 1.0 if age < model.decay_us else 0.0
    return 1.0


def _timer_key(timer: tuple[Any, ...]) -> tuple[int, int, str]:
    return (timer[0], timer[4], timer[2])


def _plain(value: Any) -> Any:
    """A property value as stored in a timer's match list (missing counts as null)."""
    return None if value is MISSING else value


def _add_bucket(
    buckets: list[tuple[int, dict[str, float]]], t: int, parts: Mapping[str, float]
) -> None:
    """Add points to the entry at time ``t`` (created if needed; entries stay sorted)."""
    i = bisect.bisect_left(buckets, t, key=_first)
    if i < len(buckets) and buckets[i][0] == t:
        mine: dict[str, float] = buckets[i][1]
        for rule_id, pts in parts.items():
            mine[rule_id] = mine.get(rule_id, 0.0) + pts
    else:
        buckets.insert(i, (t, dict(parts)))


def _first(item: tuple[int, dict[str, float]]) -> int:
    value: int = item[0]
    return value


def _coarsen(buckets: list[tuple[int, dict[str, float]]]) -> None:
    """Merge the two entries closest in time into one at the later time.

    Keeps an ``expire_after`` model bounded for contacts with very many live awards;
    merged points expire with the later of the two entries (never early).
    """
    i = min(range(len(buckets) - 1), key=lambda k: (buckets[k + 1][0] - buckets[k][0], k))
    (_, early), (late_t, late) = buckets[i], buckets[i + 1]
    merged = dict(late)
    for rule_id, pts in early.items():
        merged[rule_id] = merged.get(rule_id, 0.0) + pts
    buckets[i : i + 2] = [(late_t, merged)]


__all__ = [
    "AttributeRule",
    "Crossing",
    "Engine",
    "Outcome",
    "RulePoints",
    "round2",
]
