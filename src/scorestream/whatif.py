"""``scorestream rules diff OLD NEW EVENTS``: what a plan change would do, offline.

Both plans score the same events through the very path of ``scorestream score``
(:func:`scorestream.offline.score_lines`: the worker's processor, its event order and
its identity handling), each run is reduced to a :class:`PlanResult`, and two results
are compared by :func:`diff_plans`, a pure function. Per model present in both plans:

* **tiers**: a from -> to table of contact counts. A contact's tier is the threshold
  with the highest ``enter`` that it is in at the evaluation time, or none (as in
  ``score``). A contact whose tier names differ counts as changed, so a renamed
  threshold shows as a change of every contact in it.
* **crossings** that appear (only under NEW) or disappear (only under OLD), matched by
  contact, threshold, direction and time, as multisets: a crossing that happens twice
  under one plan and once under the other appears or disappears once.
* **rules** whose total points (summed over contacts, after decay at the evaluation
  time, as ``explain`` lists them) move most; a rule only in one plan is marked added
  or removed and moves by its whole total.

Models present in only one plan are reported as added or removed, with their tiers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from scorestream.engine.rules import RuleSet
from scorestream.engine.scorer import Engine, round2
from scorestream.engine.timeutil import format_ts
from scorestream.errors import EXIT_OK, UsageError
from scorestream.offline import (
    OfflineRun,
    internal_failures,
    load_plans_or_usage,
    parse_at,
    partitions_option,
    rereadable_events,
    score_lines,
)
from scorestream.settings import Settings
from scorestream.tables import num, table

#: rules listed per model, and crossing examples per direction, unless asked otherwise
DEFAULT_TOP = 10
DEFAULT_EXAMPLES = 5
#: the tier of a contact in no threshold, in tables (JSON has null)
NO_TIER = "none"


class CrossingKey(NamedTuple):
    """What identifies a crossing across two plans: contact, threshold, direction, time."""

    contact_id: str
    threshold: str
    direction: str
    at: int


@dataclass(frozen=True, slots=True)
class CrossingSeen:
    """One crossing of one run, with the score it crossed at (for examples)."""

    key: CrossingKey
    score: float


@dataclass(frozen=True, slots=True)
class RuleTotal:
    """A rule's total points over every contact at the evaluation time."""

    kind: Literal["event", "attribute"]
    total: float


@dataclass(slots=True)
class ModelResult:
    """What one plan did with one model: the parts a diff compares."""

    name: str
    #: threshold names, lowest ``enter`` first
    thresholds: tuple[str, ...]
    #: contact id -> tier (None: in no threshold)
    tiers: dict[str, str | None] = field(default_factory=dict)
    crossings: list[CrossingSeen] = field(default_factory=list)
    #: every rule of the model, including those that awarded nothing
    rules: dict[str, RuleTotal] = field(default_factory=dict)


@dataclass(slots=True)
class PlanResult:
    """One plan's run over the events, reduced to what ``rules diff`` reports."""

    source: str
    version: str
    #: evaluation time (µs); None when there were no valid events
    at: int | None
    contacts: int
    models: dict[str, ModelResult]
    rejects: int = 0
    after_at: int = 0


def summarize(run: OfflineRun, rules: RuleSet) -> PlanResult:
    """Reduce an offline run of ``rules`` to its tiers, crossings and rule totals."""
    models: dict[str, ModelResult] = {}
    for m in rules.models:
        result = ModelResult(m.name, tuple(t.name for t in m.thresholds))
        for er in m.event_rules:
            result.rules[er.id] = RuleTotal("event", 0.0)
        for ar in m.attribute_rules:
            result.rules[ar.id] = RuleTotal("attribute", 0.0)
        models[m.name] = result
    engine: Engine = run.engine
    contacts = 0
    if run.at is not None:
        at = run.at
        sums: dict[tuple[str, str], list[float]] = {}
        for state in run.processor.states():
            contacts += 1
            for name, tier in engine.tiers(state).items():
                models[name].tiers[state.key] = tier
            for part in engine.contributions(state, at):
                sums.setdefault((part.model, part.rule_id), []).append(part.points)
        for (model, rule_id), values in sums.items():
            kind = models[model].rules[rule_id].kind
            # fsum: the total does not depend on the order contacts were visited in
            models[model].rules[rule_id] = RuleTotal(kind, math.fsum(values))
    for c in run.crossings:
        models[c.model].crossings.append(
            CrossingSeen(CrossingKey(c.contact_id, c.threshold, c.direction, c.at), c.score)
        )
    return PlanResult(
        source=rules.source,
        version=rules.version,
        at=run.at,
        contacts=contacts,
        models=models,
        rejects=len(run.rejects),
        after_at=run.after_at,
    )


# ---------------------------------------------------------------- the diff (pure)


@dataclass(frozen=True, slots=True)
class TierCell:
    """How many contacts went from one tier (OLD) to another (NEW)."""

    old: str | None
    new: str | None
    contacts: int


@dataclass(slots=True)
class CrossingChange:
    """Crossings of one plan that the other plan does not have."""

    count: int
    #: (threshold, direction) -> count, most first
    by: list[tuple[str, str, int]]
    #: the earliest few, in time order
    examples: list[CrossingSeen]


@dataclass(frozen=True, slots=True)
class RuleMove:
    """A rule whose total points differ between the plans (or that only one has)."""

    rule_id: str
    kind: Literal["event", "attribute"]
    status: Literal["both", "added", "removed"]
    old: float | None
    new: float | None
    delta: float


@dataclass(slots=True)
class ModelDiff:
    """The comparison of one model present in both plans."""

    name: str
    old_thresholds: tuple[str, ...]
    new_thresholds: tuple[str, ...]
    tiers: list[TierCell]
    tier_changes: int
    crossings_old: int
    crossings_new: int
    appeared: CrossingChange
    disappeared: CrossingChange
    #: the top moves, largest absolute delta first
    rules: list[RuleMove]
    #: how many rules moved at all (the list may be cut to ``top``)
    rules_moved: int

    @property
    def unchanged(self) -> bool:
        """True when the change of plan changes nothing this diff looks at."""
        return not (
            self.tier_changes or self.appeared.count or self.disappeared.count or self.rules_moved
        )


@dataclass(slots=True)
class ModelOnly:
    """A model present in only one of the plans."""

    name: str
    thresholds: tuple[str, ...]
    #: tier -> contacts (None: in no threshold)
    tiers: list[tuple[str | None, int]]
    crossings: int


@dataclass(slots=True)
class PlanDiff:
    """Everything ``rules diff`` reports."""

    old: PlanResult
    new: PlanResult
    models: list[ModelDiff]
    added: list[ModelOnly]
    removed: list[ModelOnly]


def diff_plans(
    old: PlanResult, new: PlanResult, top: int = DEFAULT_TOP, examples: int = DEFAULT_EXAMPLES
) -> PlanDiff:
    """Compare two plans' results on the same events (see the module docstring)."""
    models = [
        diff_model(old.models[name], new.models[name], top, examples)
        for name in sorted(old.models.keys() & new.models.keys())
    ]
    added = [_only(new.models[name]) for name in sorted(new.models.keys() - old.models.keys())]
    removed = [_only(old.models[name]) for name in sorted(old.models.keys() - new.models.keys())]
    return PlanDiff(old, new, models, added, removed)


def diff_model(
    old: ModelResult, new: ModelResult, top: int = DEFAULT_TOP, examples: int = DEFAULT_EXAMPLES
) -> ModelDiff:
    """Compare one model's results under two plans."""
    # Both runs saw the same events, so the same contacts; the union guards the diff
    # against being handed results of different files.
    cells: Counter[tuple[str | None, str | None]] = Counter(
        (old.tiers.get(c), new.tiers.get(c)) for c in old.tiers.keys() | new.tiers.keys()
    )
    old_order = {t: i for i, t in enumerate((None, *old.thresholds))}
    new_order = {t: i for i, t in enumerate((None, *new.thresholds))}
    tiers = [
        TierCell(o, n, count)
        for (o, n), count in sorted(
            cells.items(), key=lambda kv: (old_order.get(kv[0][0], 0), new_order.get(kv[0][1], 0))
        )
    ]
    changes = sum(cell.contacts for cell in tiers if cell.old != cell.new)
    old_keys = Counter(c.key for c in old.crossings)
    new_keys = Counter(c.key for c in new.crossings)
    moves = _rule_moves(old.rules, new.rules)
    return ModelDiff(
        name=old.name,
        old_thresholds=old.thresholds,
        new_thresholds=new.thresholds,
        tiers=tiers,
        tier_changes=changes,
        crossings_old=len(old.crossings),
        crossings_new=len(new.crossings),
        appeared=_only_in(new.crossings, new_keys - old_keys, examples),
        disappeared=_only_in(old.crossings, old_keys - new_keys, examples),
        rules=moves[:top],
        rules_moved=len(moves),
    )


def _only_in(
    crossings: list[CrossingSeen], extra: Counter[CrossingKey], examples: int
) -> CrossingChange:
    """The crossings of ``crossings`` counted in ``extra`` (a multiset difference)."""
    by: Counter[tuple[str, str]] = Counter()
    for key, n in extra.items():
        by[(key.threshold, key.direction)] += n
    left = Counter(extra)
    picked: list[CrossingSeen] = []
    # Runs list crossings in time order; of a key present k times in the difference, the
    # last k occurrences are the ones the other plan lacks.
    for seen in reversed(crossings):
        if left[seen.key] > 0:
            left[seen.key] -= 1
            picked.append(seen)
    picked.sort(key=lambda s: (s.key.at, s.key.contact_id, s.key.threshold, s.key.direction))
    return CrossingChange(
        count=sum(extra.values()),
        by=[(t, d, n) for (t, d), n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))],
        examples=picked[:examples],
    )


def _rule_moves(old: dict[str, RuleTotal], new: dict[str, RuleTotal]) -> list[RuleMove]:
    moves: list[RuleMove] = []
    for rule_id in old.keys() | new.keys():
        o, n = old.get(rule_id), new.get(rule_id)
        if o is not None and n is not None:
            delta = round2(n.total) - round2(o.total)
            if round2(abs(delta)) == 0.0:
                continue  # unchanged at the precision scores are reported with
            moves.append(
                RuleMove(rule_id, n.kind, "both", round2(o.total), round2(n.total), round2(delta))
            )
        elif n is not None:
            moves.append(RuleMove(rule_id, n.kind, "added", None, round2(n.total), round2(n.total)))
        elif o is not None:
            moves.append(
                RuleMove(rule_id, o.kind, "removed", round2(o.total), None, round2(-o.total))
            )
    moves.sort(key=lambda m: (-abs(m.delta), m.rule_id))
    return moves


def _only(model: ModelResult) -> ModelOnly:
    counts = Counter(model.tiers.values())
    order = {t: i for i, t in enumerate((None, *model.thresholds))}
    return ModelOnly(
        name=model.name,
        thresholds=model.thresholds,
        tiers=sorted(counts.items(), key=lambda kv: order.get(kv[0], 0)),
        crossings=len(model.crossings),
    )


# ---------------------------------------------------------------- output


def to_json(diff: PlanDiff, events: str) -> dict[str, Any]:
    """The ``--json`` document (its schema is in docs/cli.md)."""
    at = diff.old.at if diff.old.at is not None else diff.new.at
    return {
        "old": {"path": diff.old.source, "rules_version": diff.old.version},
        "new": {"path": diff.new.source, "rules_version": diff.new.version},
        "events": events,
        "at": None if at is None else format_ts(at),
        "contacts": max(diff.old.contacts, diff.new.contacts),
        "rejected_lines": diff.old.rejects,
        "after_at": diff.old.after_at,
        "models": {m.name: _model_json(m) for m in diff.models},
        "models_added": [_only_json(m) for m in diff.added],
        "models_removed": [_only_json(m) for m in diff.removed],
    }


def _model_json(m: ModelDiff) -> dict[str, Any]:
    return {
        "unchanged": m.unchanged,
        "tiers": {
            "old": list(m.old_thresholds),
            "new": list(m.new_thresholds),
            "changed": m.tier_changes,
            "matrix": [{"from": c.old, "to": c.new, "contacts": c.contacts} for c in m.tiers],
        },
        "crossings": {
            "old": m.crossings_old,
            "new": m.crossings_new,
            "appeared": _change_json(m.appeared),
            "disappeared": _change_json(m.disappeared),
        },
        "rules_moved": m.rules_moved,
        "rules": [
            {
                "rule_id": r.rule_id,
                "kind": r.kind,
                "status": r.status,
                "old": r.old,
                "new": r.new,
                "delta": r.delta,
            }
            for r in m.rules
        ],
    }


def _change_json(change: CrossingChange) -> dict[str, Any]:
    return {
        "count": change.count,
        "by": [{"threshold": t, "direction": d, "count": n} for t, d, n in change.by],
        "examples": [_crossing_json(s) for s in change.examples],
    }


def _crossing_json(seen: CrossingSeen) -> dict[str, Any]:
    return {
        "contact_id": seen.key.contact_id,
        "threshold": seen.key.threshold,
        "direction": seen.key.direction,
        "occurred_at": format_ts(seen.key.at),
        "score": seen.score,
    }


def _only_json(m: ModelOnly) -> dict[str, Any]:
    return {
        "model": m.name,
        "thresholds": list(m.thresholds),
        "tiers": [{"tier": t, "contacts": n} for t, n in m.tiers],
        "crossings": m.crossings,
    }


def render_text(diff: PlanDiff, events: str) -> str:
    """The readable report (the default output)."""
    old, new = diff.old, diff.new
    at = old.at if old.at is not None else new.at
    lines = [
        f"rules diff: {old.source} ({_short(old.version)}) -> {new.source} ({_short(new.version)})",
        f"events: {events}: {max(old.contacts, new.contacts)} contacts, evaluated at "
        f"{'-' if at is None else format_ts(at)}"
        + (f"; {old.rejects} invalid lines skipped" if old.rejects else "")
        + (f"; {old.after_at} events after --at not scored" if old.after_at else ""),
    ]
    for m in diff.models:
        lines.append("")
        if m.unchanged:
            lines.append(f"model {m.name}: no change")
            continue
        lines.append(f"model {m.name}")
        lines.extend(_tier_lines(m))
        lines.extend(_crossing_lines(m))
        lines.extend(_rule_lines(m))
    for label, only in (("added", diff.added), ("removed", diff.removed)):
        for o in only:
            lines.append("")
            where = "NEW" if label == "added" else "OLD"
            tiers = ", ".join(f"{t or NO_TIER} {n}" for t, n in o.tiers) or "no contacts"
            lines.append(
                f"model {o.name}: {label} (only in {where}); tiers: {tiers}; "
                f"crossings: {o.crossings}"
            )
    return "\n".join(lines)


def _short(version: str) -> str:
    return version[:19]  # "sha256:" and 12 hex digits: enough to tell plans apart


def _tier_lines(m: ModelDiff) -> list[str]:
    total = sum(c.contacts for c in m.tiers)
    out = [f"  tiers: {m.tier_changes} of {total} contacts change tier (rows OLD, columns NEW)"]
    if not m.tiers:
        return out
    counts = {(c.old, c.new): c.contacts for c in m.tiers}
    rows_t: list[str | None] = [None, *m.old_thresholds]
    cols_t: list[str | None] = [None, *m.new_thresholds]
    header = ["from \\ to", *(t or NO_TIER for t in cols_t)]
    rows = [[o or NO_TIER, *(str(counts.get((o, n), 0)) for n in cols_t)] for o in rows_t]
    out.extend(table(header, rows, indent=4))
    return out


def _crossing_lines(m: ModelDiff) -> list[str]:
    out = [
        f"  crossings: {m.crossings_old} -> {m.crossings_new}; "
        f"{m.appeared.count} appear, {m.disappeared.count} disappear"
    ]
    for sign, label, change in (("+", "appear", m.appeared), ("-", "disappear", m.disappeared)):
        if not change.count:
            continue
        by = ", ".join(f"{t} {d} {n}" for t, d, n in change.by)
        out.append(f"    {label}: {by}")
        for s in change.examples:
            out.append(
                f"      {sign} {s.key.contact_id} {s.key.threshold} {s.key.direction} "
                f"{format_ts(s.key.at)} (score {num(s.score)})"
            )
    return out


def _rule_lines(m: ModelDiff) -> list[str]:
    if not m.rules:
        if m.rules_moved:
            return [f"  rules: {m.rules_moved} rules' total points move (--top 0 lists none)"]
        return ["  rules: no rule's total points move"]
    shown = (
        f"top {len(m.rules)} of {m.rules_moved}"
        if m.rules_moved > len(m.rules)
        else f"{m.rules_moved}"
    )
    out = [f"  rules whose total points move ({shown}; summed over contacts, after decay):"]
    rows = [
        [
            r.rule_id,
            r.kind,
            num(r.old),
            num(r.new),
            num(r.delta, sign=True),
            "" if r.status == "both" else r.status,
        ]
        for r in m.rules
    ]
    out.extend(table(["rule", "kind", "old", "new", "delta", ""], rows, indent=4, align="llrrrl"))
    return out


# ---------------------------------------------------------------- command


def diff_command(args: argparse.Namespace) -> int:
    """``scorestream rules diff OLD NEW EVENTS [--at T] [--top N] [--json]``."""
    settings = Settings.load(config_file=args.config)
    old_rules, new_rules = load_plans_or_usage([args.old, args.new])
    at = parse_at(args.at)
    partitions = partitions_option(args, settings)
    top: int = args.top
    examples: int = args.examples
    if top < 0 or examples < 0:
        raise UsageError("--top and --examples must be >= 0")
    results: list[PlanResult] = []
    status = EXIT_OK
    with ExitStack() as stack:
        lines = rereadable_events(args.events, stack)
        for rules in (old_rules, new_rules):
            run = score_lines(Engine(rules), lines(), at, settings.max_message_bytes, partitions)
            status = max(status, internal_failures(run))
            # Only the summary is kept: the second run need not share memory with the first.
            results.append(summarize(run, rules))
            del run
    diff = diff_plans(results[0], results[1], top=top, examples=examples)
    if args.json:
        print(json.dumps(to_json(diff, args.events), indent=2, ensure_ascii=False))
    else:
        print(render_text(diff, args.events))
    sys.stdout.flush()
    return status
