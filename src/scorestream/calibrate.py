"""``scorestream calibrate``: evidence for a plan's points and thresholds, from outcomes.

Input: the plan, the events (scored through the very path of ``scorestream score``) and
outcomes, JSONL lines ``{"contact_id", "outcome", "occurred_at"}``. Each outcome line
whose label is good (default ``won``, ``converted``) or bad (default ``lost``,
``churned``) and whose contact has events is one **observation**; labels in neither
list are ignored and counted, and so are outcomes of contacts without events.

What happened before an observation comes from the engine's own ledger of awards (each
award's rule, points and event time). The ledger is bounded for the live service, so
the run here uses an engine whose ledger bound is lifted: scores, crossings and the
order of events are unchanged (the bound only trims explanations), and every award is
kept, including ``unless`` timers that fired and awards that came with an identify.

* A rule **fired** before an observation at ``T``: an event rule made an award in
  ``[T - window, T)``; an attribute rule held just before ``T`` (attributes describe who
  the contact is, so they have no window).
* ``G`` and ``B`` are the good and bad observations, ``g`` and ``b`` those before which
  the rule fired. **lift** = ``P(fired | good) / P(fired)`` = ``(g/G) / ((g+b)/(G+B))``,
  which equals ``P(good | fired) / P(good)``: above 1 the rule is a sign of good.
* **log-odds ratio alone**, with add-one smoothing of the four cells:
  ``ln((g+1)/(G-g+1)) - ln((b+1)/(B-b+1))``. Descriptive only: it looks at one rule at a
  time, and rules are correlated (keen contacts fire several at once), so it credits
  each rule with the others' effect.
* **joint weight** ``w``: per model, a logistic regression of "good" on whether each
  rule fired (one 0/1 input per rule that fired at all, and an intercept), with an L2
  penalty ``RIDGE`` (1.0: a normal prior of standard deviation 1 on each weight, which
  keeps rare or perfectly separating rules finite and is negligible with many
  observations). ``w`` is what the rule's firing adds to the log-odds of a good outcome
  with the other rules held fixed, and a model's score is a sum of points per rule that
  fired: so points proportional to ``w`` make the score a log-odds scale. Its standard
  error comes from the inverse of the penalised information matrix.
* **suggested points** = ``round(s * w)`` for the rules that fired before at least
  ``--min-support`` observations; ``s`` (points per unit of log-odds) keeps the plan's
  scale: ``s = sum |current points| / sum |w|`` over those rules of every model (10 if
  their points are all 0). One scale for the whole plan, because every weight is on the
  log-odds scale of the same outcomes: a model whose rules barely predict them gets
  small points instead of its noise blown up to its current size. Other rules keep
  their points. A weight within two standard errors of 0 is flagged as weak evidence.
  For a ``{per: ...}`` rule the current points are its mean award, and ``factor`` (and
  ``max``) are scaled by ``suggested / mean award``. Points are per award while the
  evidence is per contact (fired at least once): a rule that fires many times per
  contact weighs more in the score than its evidence says, which a ``limit`` corrects.
* **thresholds**: each model's score just before each observation (its awards before
  ``T``, decayed to ``T``, clamped and rounded as the engine reports it), under the
  current points and under the suggested points. A cut ``c`` predicts good when
  ``score >= c``; per candidate cut (the distinct scores, or 100 quantiles of them)
  precision, recall, F1 and **separation** (recall minus the share of bad outcomes at
  or above the cut: Youden's J) are reported. The best cut has the highest separation
  (``--best f1``: the highest F1); ties go to the higher precision, then the higher cut.
* the **suggested plan** (``--out``) is the input plan with the suggested points and,
  per model with thresholds, the best cut under the suggested points as the ``enter`` of
  its highest threshold; its other thresholds and every ``exit`` are scaled by the same
  factor (shifted by the same amount when a cut or an ``enter`` is not positive), so the
  tiers keep their proportions.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scorestream.engine.plan import AttributeRule, EventRule, Model
from scorestream.engine.rules import RulesError, RuleSet, parse_rules
from scorestream.engine.scorer import Engine, round2
from scorestream.engine.state import Bounds
from scorestream.engine.timeutil import (
    TimeFormatError,
    format_duration,
    parse_duration,
    parse_ts,
)
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.offline import (
    OfflineRun,
    Reject,
    internal_failures,
    load_rules_or_usage,
    open_events,
    partitions_option,
    score_lines,
)
from scorestream.settings import Settings
from scorestream.tables import num, pct, table

GOOD = ("won", "converted")
BAD = ("lost", "churned")
DEFAULT_WINDOW = "30d"
DEFAULT_MIN_SUPPORT = 10
#: L2 penalty of the joint weights (a normal prior of standard deviation 1)
RIDGE = 1.0
#: points per unit of log-odds when the plan gives no scale (all its points are 0)
DEFAULT_SCALE = 10.0
#: candidate cuts per model at most (quantiles beyond)
MAX_CUTS = 100
#: rows of the candidate table in the text report (JSON has them all)
SHOWN_CUTS = 15
#: a ledger bound no contact reaches: every award is kept
_ALL = 1 << 62
#: (event id, model, rule id, points, time µs): the engine's ledger entry
LedgerEntry = tuple[Any, ...]
#: how the best cut is chosen (see :func:`best_cut`)
Criterion = Literal["separation", "f1"]


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class OutcomeLine:
    """One valid outcome line."""

    line: int
    contact_id: str
    outcome: str
    at: int


def read_outcomes(lines: Iterable[bytes]) -> tuple[list[OutcomeLine], list[Reject]]:
    """Parse outcome lines; invalid ones are returned as rejects (they never stop a run)."""
    found: list[OutcomeLine] = []
    rejects: list[Reject] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        text = line.decode("utf-8", errors="backslashreplace")
        try:
            found.append(_outcome(number, line))
        except ValueError as exc:
            rejects.append(Reject(number, str(exc), text))
    return found, rejects


def _outcome(number: int, line: bytes) -> OutcomeLine:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    values: dict[str, str] = {}
    for key in ("contact_id", "outcome", "occurred_at"):
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key}: required, a non-empty string")
        values[key] = value
    try:
        at = parse_ts(values["occurred_at"])
    except TimeFormatError as exc:
        raise ValueError(f"occurred_at: {exc}") from None
    return OutcomeLine(number, values["contact_id"], values["outcome"], at)


# ---------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class Observation:
    """A good or bad outcome of a contact with events, and what came before it."""

    contact_id: str
    outcome: str
    good: bool
    at: int
    #: the contact's awards before ``at``, oldest first
    entries: tuple[LedgerEntry, ...]
    #: model -> ids of the rules that fired (see the module docstring)
    fired: dict[str, frozenset[str]]


@dataclass(slots=True)
class Observed:
    """The observations, and counts of what could not be one."""

    observations: list[Observation] = field(default_factory=list)
    #: outcome label -> lines that are neither good nor bad
    ignored: Counter[str] = field(default_factory=Counter)
    #: outcome lines (and their distinct contacts) with no events in the file
    without_events: int = 0
    contacts_without_events: int = 0
    #: contacts with events but no outcome line
    contacts_without_outcomes: int = 0
    #: observations of contacts with no award before the outcome
    without_activity: int = 0

    @property
    def good(self) -> int:
        """Good observations."""
        return sum(1 for o in self.observations if o.good)

    @property
    def bad(self) -> int:
        """Bad observations."""
        return sum(1 for o in self.observations if not o.good)


def observe(
    run: OfflineRun,
    outcomes: Iterable[OutcomeLine],
    good: Iterable[str],
    bad: Iterable[str],
    window: int,
) -> Observed:
    """Pair outcomes with the scored contacts (run with an unbounded ledger)."""
    good_set, bad_set = frozenset(good), frozenset(bad)
    rules = run.engine.rules
    out = Observed()
    with_outcome: set[str] = set()
    missing: set[str] = set()
    for o in outcomes:
        # An identified anonymous id stands for its contact, as in `explain`.
        state = run.processor.resolve(o.contact_id)
        if state is not None:
            with_outcome.add(state.key)
        if o.outcome not in good_set and o.outcome not in bad_set:
            out.ignored[o.outcome] += 1
            continue
        if state is None:
            out.without_events += 1
            missing.add(o.contact_id)
            continue
        entries = tuple(e for e in state.ledger if e[4] < o.at)
        if not entries:
            out.without_activity += 1
        out.observations.append(
            Observation(
                contact_id=state.key,
                outcome=o.outcome,
                good=o.outcome in good_set,
                at=o.at,
                entries=entries,
                fired=fired_rules(rules, entries, o.at, window),
            )
        )
    out.contacts_without_events = len(missing)
    out.contacts_without_outcomes = sum(
        1 for s in run.processor.states() if s.key not in with_outcome
    )
    return out


def fired_rules(
    rules: RuleSet, entries: Iterable[LedgerEntry], at: int, window: int
) -> dict[str, frozenset[str]]:
    """Per model, the rules that fired before ``at`` (entries must all be before ``at``)."""
    fired: dict[str, set[str]] = {m.name: set() for m in rules.models}
    held: dict[tuple[str, str], float] = {}
    start = at - window
    for _eid, model, rule_id, points, t in entries:
        rule = rules.rules_by_key.get((model, rule_id))
        if isinstance(rule, AttributeRule):
            # The ledger has attribute points as deltas: their sum is what holds now.
            held[(model, rule_id)] = held.get((model, rule_id), 0.0) + points
        elif rule is not None and t >= start:
            fired[model].add(rule_id)
    for (model, rule_id), total in held.items():
        if round2(abs(total)) != 0.0:
            fired[model].add(rule_id)
    return {name: frozenset(ids) for name, ids in fired.items()}


# ---------------------------------------------------------------- per-rule evidence


def log_odds_ratio(g: int, good: int, b: int, bad: int) -> tuple[float, float]:
    """Add-one smoothed log-odds ratio of firing among good vs bad, and its standard error."""
    cells = (g + 1.0, good - g + 1.0, b + 1.0, bad - b + 1.0)
    lor = math.log(cells[0] / cells[1]) - math.log(cells[2] / cells[3])
    se = math.sqrt(sum(1.0 / c for c in cells))
    return lor, se


def lift(g: int, good: int, b: int, bad: int) -> float | None:
    """``P(fired | good) / P(fired)``; None when the rule never fired or there is no good."""
    if g + b == 0 or good == 0:
        return None
    return (g / good) / ((g + b) / (good + bad))


@dataclass(slots=True)
class RuleStat:
    """The evidence for one rule, and the points it suggests."""

    model: str
    rule_id: str
    kind: Literal["event", "attribute"]
    #: fixed points, or None for a ``{per: PATH, factor: F, max: M}`` rule
    points: float | None
    #: (path, factor, max) of a per-value rule
    per: tuple[str, float, float | None] | None
    #: current points per award: the fixed points, or a per-value rule's mean award
    typical: float | None
    good: int
    bad: int
    lift: float | None
    #: add-one smoothed log-odds ratio of this rule alone (descriptive)
    log_odds: float | None
    #: the joint logistic-regression weight and its standard error
    weight: float | None = None
    weight_se: float | None = None
    #: suggested points per award (rounded); None: the points are kept
    suggested: float | None = None
    #: a per-value rule's suggested factor and max
    factor: float | None = None
    cap: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Cut:
    """``score >= threshold`` taken as a prediction of a good outcome."""

    threshold: float
    good: int
    bad: int
    precision: float
    recall: float
    f1: float
    #: share of good at or above the cut minus share of bad at or above it (Youden's J)
    separation: float


@dataclass(slots=True)
class ModelCalibration:
    """Everything ``calibrate`` says about one model."""

    name: str
    rules: list[RuleStat]
    #: the plan's thresholds under the current points: (name, enter, cut)
    plan_cuts: list[tuple[str, float, Cut]]
    current_cuts: list[Cut]
    current_best: Cut | None
    suggested_cuts: list[Cut]
    suggested_best: Cut | None
    #: the thresholds written to the suggested plan: (name, enter, exit)
    suggested_thresholds: list[tuple[str, float, float]]


def rule_stats(
    rules: RuleSet, observed: Sequence[Observation], mean_awards: dict[tuple[str, str], float]
) -> list[RuleStat]:
    """Evidence for every rule of every model (suggestions are added by :func:`suggest`)."""
    n_good = sum(1 for o in observed if o.good)
    n_bad = len(observed) - n_good
    stats: list[RuleStat] = []
    for m in rules.models:
        fired_good: Counter[str] = Counter()
        fired_bad: Counter[str] = Counter()
        for o in observed:
            (fired_good if o.good else fired_bad).update(o.fired.get(m.name, ()))
        rules_of: list[EventRule | AttributeRule] = [*m.event_rules, *m.attribute_rules]
        for rule in sorted(rules_of, key=lambda r: r.id):
            g, b = fired_good[rule.id], fired_bad[rule.id]
            lor: float | None = None
            if g + b:  # never fired: nothing to say (and smoothing alone would say something)
                lor, _ = log_odds_ratio(g, n_good, b, n_bad)
            points: float | None
            typical: float | None
            per: tuple[str, float, float | None] | None = None
            if isinstance(rule, AttributeRule):
                kind: Literal["event", "attribute"] = "attribute"
                points = typical = rule.points
            else:
                kind = "event"
                points = rule.fixed
                typical = points
                if rule.per is not None:
                    parts, factor, cap = rule.per
                    per = (".".join(parts), factor, cap)
                    typical = mean_awards.get((m.name, rule.id))
            stats.append(
                RuleStat(
                    model=m.name,
                    rule_id=rule.id,
                    kind=kind,
                    points=points,
                    per=per,
                    typical=typical,
                    good=g,
                    bad=b,
                    lift=lift(g, n_good, b, n_bad),
                    log_odds=lor,
                )
            )
    return stats


def fit_weights(
    stats: Sequence[RuleStat], observed: Sequence[Observation], ridge: float = 1.0
) -> None:
    """Fill in the joint weights of one model's rules (see the module docstring)."""
    used = [s for s in stats if s.good + s.bad > 0]
    if not used or not observed:
        return
    model = used[0].model
    # Observations with the same rules fired are one row with counts: there are far
    # fewer distinct patterns than observations, which keeps pure-Python Newton fast.
    rows: dict[tuple[int, ...], list[int]] = {}
    for o in observed:
        fired = o.fired.get(model, frozenset())
        key = tuple(1 if s.rule_id in fired else 0 for s in used)
        row = rows.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += 1 if o.good else 0
    weights, errors = logistic_regression(
        [(list(k), n, y) for k, (n, y) in rows.items()], len(used), ridge
    )
    for s, w, e in zip(used, weights, errors, strict=True):
        s.weight, s.weight_se = w, e


def logistic_regression(
    rows: Sequence[tuple[Sequence[int], int, int]], k: int, ridge: float
) -> tuple[list[float], list[float]]:
    """L2-penalised logistic regression by Newton's method on grouped rows.

    ``rows`` are ``(inputs, trials, successes)``. An intercept is added (and not
    penalised). Returns the ``k`` weights and their standard errors.
    """
    size = k + 1
    trials = sum(n for _, n, _ in rows)
    successes = sum(y for _, _, y in rows)
    rate = min(max(successes / trials, 1e-6), 1 - 1e-6)
    beta = [math.log(rate / (1 - rate))] + [0.0] * k
    hessian: list[list[float]] = []
    for _ in range(100):
        grad = [0.0] * size
        hessian = [[0.0] * size for _ in range(size)]
        for inputs, n, y in rows:
            x = [1.0, *map(float, inputs)]
            eta = math.fsum(b * v for b, v in zip(beta, x, strict=True))
            p = _sigmoid(eta)
            resid = y - n * p
            w = n * p * (1.0 - p)
            for i in range(size):
                if x[i]:
                    grad[i] += resid * x[i]
                    hi = hessian[i]
                    for j in range(size):
                        if x[j]:
                            hi[j] += w * x[i] * x[j]
        for i in range(1, size):
            grad[i] -= ridge * beta[i]
            hessian[i][i] += ridge
        step = _solve(hessian, grad)
        beta = [b + d for b, d in zip(beta, step, strict=True)]
        if max(abs(d) for d in step) < 1e-9:
            break
    inverse = [_solve(hessian, [1.0 if j == i else 0.0 for j in range(size)]) for i in range(size)]
    errors = [math.sqrt(max(inverse[i][i], 0.0)) for i in range(size)]
    return beta[1:], errors[1:]


def _sigmoid(eta: float) -> float:
    if eta >= 0:
        return 1.0 / (1.0 + math.exp(-eta))
    z = math.exp(eta)
    return z / (1.0 + z)


def _solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float]:
    """Solve ``matrix @ x = rhs`` (Gaussian elimination with partial pivoting)."""
    n = len(rhs)
    a = [[*row, r] for row, r in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            continue  # a column nothing informs (cannot happen with a ridge); leave it 0
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            if f:
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        if abs(a[r][r]) < 1e-300:
            continue
        x[r] = (a[r][n] - math.fsum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


def suggest(stats: Sequence[RuleStat], min_support: int) -> float | None:
    """Fill in the suggested points of the plan's rules; return the scale used.

    See the module docstring for the maths. Rules below ``min_support`` keep their
    points, and so does a per-value rule without a mean award to scale its factor by.
    One scale serves every model: all weights are on the same log-odds scale of the
    same outcomes, and a model whose rules barely predict them gets small points rather
    than its noise blown up to its current size.
    """
    usable: list[RuleStat] = []
    for s in stats:
        if s.weight is None:
            s.note = "never fired (points kept)"
        elif s.good + s.bad < min_support:
            s.note = f"fired before fewer than {min_support} outcomes (points kept)"
        elif s.typical is None or (s.per is not None and s.typical == 0.0):
            s.note = "no awards to scale the factor by (points kept)"
        else:
            usable.append(s)
    if not usable:
        return None
    size = math.fsum(abs(s.typical or 0.0) for s in usable)
    spread = math.fsum(abs(s.weight or 0.0) for s in usable)
    scale = DEFAULT_SCALE if size == 0.0 or spread == 0.0 else size / spread
    for s in usable:
        assert s.weight is not None and s.typical is not None and s.weight_se is not None
        raw = scale * s.weight
        s.suggested = _round_half_away(raw)
        if abs(s.weight) < 2 * s.weight_se:
            s.note = "weak evidence (|joint| < 2 se, the sign may be chance)"
        if s.per is not None:
            ratio = raw / s.typical
            _, factor, cap = s.per
            s.factor = _significant(factor * ratio)
            s.cap = None if cap is None else float(_round_half_away(cap * abs(ratio)))
    return scale


def _round_half_away(value: float) -> float:
    """Round to a whole number, halves away from zero (so +x and -x mirror)."""
    return math.copysign(math.floor(abs(value) + 0.5), value) + 0.0


def _significant(value: float, digits: int = 4) -> float:
    if value == 0.0 or not math.isfinite(value):
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def mean_awards(run: OfflineRun) -> dict[tuple[str, str], float]:
    """Per per-value rule, the mean of its awards over every contact (its typical points)."""
    wanted = {
        (r.model, r.id) for m in run.engine.rules.models for r in m.event_rules if r.per is not None
    }
    sums: dict[tuple[str, str], list[float]] = {}
    if not wanted:
        return {}
    for state in run.processor.states():
        for _eid, model, rule_id, points, _t in state.ledger:
            if (model, rule_id) in wanted:
                sums.setdefault((model, rule_id), []).append(points)
    return {key: math.fsum(v) / len(v) for key, v in sums.items() if v}


# ---------------------------------------------------------------- scores and cuts

PointsOf = Callable[[str, float], float]


def _same(rule_id: str, points: float) -> float:
    return points


def score_before(
    model: Model, entries: Iterable[LedgerEntry], at: int, points_of: PointsOf = _same
) -> float:
    """The model's reported score at ``at`` from award entries before it.

    The engine's definition (spec/rules.md, Score): event points decayed to ``at``,
    attribute points as they are, clamped, rounded to two decimals. ``points_of`` maps
    an entry's points to other points (the suggested plan's).
    """
    attribute_ids = {a.id for a in model.attribute_rules}
    parts: list[float] = []
    for _eid, name, rule_id, points, t in entries:
        if name != model.name:
            continue
        value = points_of(rule_id, points)
        if rule_id not in attribute_ids:
            age = at - t
            if model.decay == "half_life":
                value *= math.exp2(-age / model.decay_us)
            elif model.decay == "expire_after" and age >= model.decay_us:
                continue
        parts.append(value)
    raw = math.fsum(parts)
    if model.min_score is not None and raw < model.min_score:
        raw = model.min_score
    if model.max_score is not None and raw > model.max_score:
        raw = model.max_score
    return round2(raw)


def suggested_points_of(stats: Iterable[RuleStat]) -> PointsOf:
    """Map an award under the current plan to the award the suggested plan would make."""
    by_id = {s.rule_id: s for s in stats}

    def points_of(rule_id: str, points: float) -> float:
        s = by_id.get(rule_id)
        if s is None or s.suggested is None:
            return points
        if s.per is not None:
            # value * factor, capped: the same value under the new factor and cap
            _, factor, _cap = s.per
            if factor == 0.0 or s.factor is None:
                return points
            new = points * s.factor / factor
            if s.cap is not None and abs(new) > s.cap:
                new = math.copysign(s.cap, new)
            return new
        if s.kind == "attribute":
            # attribute entries are deltas of +points or -points
            return points * s.suggested / s.points if s.points else points
        return s.suggested

    return points_of


def candidate_cuts(scores: Sequence[float], most: int = MAX_CUTS) -> list[float]:
    """The distinct scores, or ``most`` quantiles of them when there are more."""
    distinct = sorted(set(scores))
    if len(distinct) <= most:
        return distinct
    ordered = sorted(scores)
    n = len(ordered)
    return sorted({ordered[round(i * (n - 1) / (most - 1))] for i in range(most)})


def cut_table(scored: Sequence[tuple[float, bool]], cuts: Iterable[float]) -> list[Cut]:
    """Precision, recall, F1 and separation of ``score >= cut`` as a prediction of good."""
    goods = sorted(s for s, good in scored if good)
    bads = sorted(s for s, good in scored if not good)
    out = []
    for c in cuts:
        g = len(goods) - bisect.bisect_left(goods, c)
        b = len(bads) - bisect.bisect_left(bads, c)
        precision = g / (g + b) if g + b else 0.0
        recall = g / len(goods) if goods else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        false_rate = b / len(bads) if bads else 0.0
        out.append(Cut(c, g, b, precision, recall, f1, recall - false_rate))
    return out


def best_cut(cuts: Iterable[Cut], criterion: Criterion = "separation") -> Cut | None:
    """The best cut by ``criterion`` (ties: the higher precision, then the higher cut).

    ``separation`` (the default) is Youden's J, the largest gap between the share of
    good and the share of bad outcomes at or above the cut (the Kolmogorov-Smirnov
    distance of the two score distributions): it does not depend on how common good
    outcomes are. F1 does, and when good outcomes are about as common as bad ones it
    tends to pick a cut below almost everyone.
    """
    if criterion == "f1":
        return max(cuts, key=lambda c: (c.f1, c.precision, c.threshold), default=None)
    return max(cuts, key=lambda c: (c.separation, c.precision, c.threshold), default=None)


def scaled_thresholds(model: Model, best: float) -> list[tuple[str, float, float]]:
    """The model's thresholds with the highest ``enter`` moved to ``best`` (see docstring)."""
    if not model.thresholds:
        return []
    top = model.thresholds[-1]  # sorted by enter
    if best > 0 and all(t.enter > 0 for t in model.thresholds):
        k = best / top.enter
        return [(t.name, round2(t.enter * k), round2(t.exit * k)) for t in model.thresholds]
    d = best - top.enter
    return [(t.name, round2(t.enter + d), round2(t.exit + d)) for t in model.thresholds]


def calibrate_model(
    model: Model,
    stats: list[RuleStat],
    observed: Sequence[Observation],
    criterion: Criterion = "separation",
) -> ModelCalibration:
    """Find the cuts of one model that separate outcomes, under current and suggested points.

    ``stats`` must have their suggestions filled in (:func:`suggest`).
    """
    current = [(score_before(model, o.entries, o.at), o.good) for o in observed]
    points_of = suggested_points_of(stats)
    after = [(score_before(model, o.entries, o.at, points_of), o.good) for o in observed]
    current_cuts = cut_table(current, candidate_cuts([s for s, _ in current]))
    suggested_cuts = cut_table(after, candidate_cuts([s for s, _ in after]))
    suggested_best = best_cut(suggested_cuts, criterion)
    plan_cuts = [(t.name, t.enter, cut_table(current, [t.enter])[0]) for t in model.thresholds]
    return ModelCalibration(
        name=model.name,
        rules=stats,
        plan_cuts=plan_cuts,
        current_cuts=current_cuts,
        current_best=best_cut(current_cuts, criterion),
        suggested_cuts=suggested_cuts,
        suggested_best=suggested_best,
        suggested_thresholds=(
            [] if suggested_best is None else scaled_thresholds(model, suggested_best.threshold)
        ),
    )


@dataclass(slots=True)
class Calibration:
    """The suggestions for a whole plan."""

    #: points per unit of log-odds; None when no rule had enough support
    scale: float | None
    criterion: Criterion
    models: list[ModelCalibration]


def calibrate(
    rules: RuleSet,
    run: OfflineRun,
    observed: Observed,
    min_support: int = DEFAULT_MIN_SUPPORT,
    criterion: Criterion = "separation",
) -> Calibration:
    """Calibrate every model of the plan from the observations."""
    observations = observed.observations
    stats = rule_stats(rules, observations, mean_awards(run))
    for m in rules.models:
        fit_weights([s for s in stats if s.model == m.name], observations, RIDGE)
    scale = suggest(stats, min_support)
    models = [
        calibrate_model(m, [s for s in stats if s.model == m.name], observations, criterion)
        for m in rules.models
    ]
    return Calibration(scale, criterion, models)


# ---------------------------------------------------------------- the suggested plan


class _PlanLoader(yaml.SafeLoader):
    """Reads a plan as the engine does: timestamps stay strings."""


_PlanLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _PlanDumper(yaml.SafeDumper):
    """Block style with list items indented under their key, as the plans in rules/."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _yaml_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def suggested_plan(raw: bytes, models: Sequence[ModelCalibration], header: str) -> str:
    """The plan's YAML with the suggested points and thresholds substituted.

    The plan is read and written as data, so its comments are not kept (``header`` says
    where it comes from); keys keep their order.
    """
    data = yaml.load(raw, Loader=_PlanLoader)  # a SafeLoader subclass
    by_name = {m.name: m for m in models}
    for name, mdata in data["models"].items():
        cal = by_name[str(name)]
        stats = {s.rule_id: s for s in cal.rules}
        for rdata in mdata["rules"]:
            s = stats[rdata["id"]]
            if s.suggested is None:
                continue
            if s.per is None:
                rdata["points"] = _yaml_number(s.suggested)
            else:
                per = dict(rdata["points"])
                per["factor"] = _yaml_number(s.factor or 0.0)
                if s.cap is not None:
                    per["max"] = _yaml_number(s.cap)
                rdata["points"] = per
        new = {n: (enter, exit_) for n, enter, exit_ in cal.suggested_thresholds}
        for tdata in mdata.get("thresholds") or []:
            if tdata["name"] in new:
                enter, exit_ = new[tdata["name"]]
                tdata["enter"] = _yaml_number(enter)
                if "exit" in tdata:
                    tdata["exit"] = _yaml_number(exit_)
    # Flow style for innermost collections, as the plans in rules/ write them:
    # `{half_life: 30d}`, `- {name: mql, enter: 50, exit: 40}`.
    body = yaml.dump(
        data, Dumper=_PlanDumper, sort_keys=False, allow_unicode=True, default_flow_style=None
    )
    return header + body


# ---------------------------------------------------------------- output

DERIVATION = (
    "fired: an event rule awarded points in [T - window, T), an attribute rule held just "
    "before T (T: the outcome's time); lift = P(fired | good) / P(fired); alone = "
    "ln((g+1)/(G-g+1)) - ln((b+1)/(B-b+1)) (g, b: good and bad outcomes the rule fired "
    "before, of G and B); joint = the rule's weight in a logistic regression of good on "
    "whether each rule of the model fired (L2 penalty 1): what firing adds to the "
    "log-odds of good with the other rules held fixed; suggested points = round(scale x "
    "joint), one scale for the plan = sum |current points| / sum |joint| over the rules "
    "that fired before at least min_support outcomes (the others keep their points); "
    "thresholds: the score just before T, cut c predicts good when score >= c; "
    "separation = recall - share of bad at or above c; best = {criterion}"
)


def derivation(criterion: Criterion) -> str:
    """How the numbers are made, in one paragraph (printed with every report)."""
    return DERIVATION.format(
        criterion="highest separation" if criterion == "separation" else "highest F1"
    )


def _cut_json(c: Cut | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "threshold": c.threshold,
        "good": c.good,
        "bad": c.bad,
        "precision": round(c.precision, 4),
        "recall": round(c.recall, 4),
        "f1": round(c.f1, 4),
        "separation": round(c.separation, 4),
    }


def _points_json(s: RuleStat, suggested: bool) -> Any:
    if s.per is None:
        return s.suggested if suggested else s.points
    path, factor, cap = s.per
    if suggested:
        if s.suggested is None:
            return None
        factor, cap = s.factor or 0.0, s.cap
    out: dict[str, Any] = {"per": path, "factor": factor}
    if cap is not None:
        out["max"] = cap
    return out


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rule_json(s: RuleStat, observed: Observed) -> dict[str, Any]:
    return {
        "rule_id": s.rule_id,
        "kind": s.kind,
        "points": _points_json(s, suggested=False),
        "mean_award": _r(s.typical),
        "fired": {"good": s.good, "bad": s.bad},
        "rate": {
            "good": _r(s.good / observed.good if observed.good else None),
            "bad": _r(s.bad / observed.bad if observed.bad else None),
        },
        "lift": _r(s.lift),
        "log_odds": _r(s.log_odds),
        "weight": _r(s.weight),
        "weight_se": _r(s.weight_se),
        "suggested": s.suggested,
        "suggested_points": _points_json(s, suggested=True),
        "note": s.note,
    }


def _model_json(m: ModelCalibration, observed: Observed) -> dict[str, Any]:
    return {
        "rules": [_rule_json(s, observed) for s in m.rules],
        "thresholds": {
            "plan": [
                {"name": name, "enter": enter, **(_cut_json(c) or {})}
                for name, enter, c in m.plan_cuts
            ],
            "current": {
                "best": _cut_json(m.current_best),
                "cuts": [_cut_json(c) for c in m.current_cuts],
            },
            "suggested": {
                "best": _cut_json(m.suggested_best),
                "cuts": [_cut_json(c) for c in m.suggested_cuts],
                "thresholds": [
                    {"name": n, "enter": e, "exit": x} for n, e, x in m.suggested_thresholds
                ],
            },
        },
    }


def to_json(report: Report) -> dict[str, Any]:
    """The ``--json`` document (its schema is in docs/cli.md)."""
    ob = report.observed
    cal = report.calibration
    return {
        "rules": report.rules.source,
        "rules_version": report.rules.version,
        "outcomes": report.outcomes_path,
        "events": report.events_path,
        "window": format_duration(report.window),
        "good": list(report.good),
        "bad": list(report.bad),
        "min_support": report.min_support,
        "best": cal.criterion,
        "counts": {
            "outcome_lines": report.outcome_lines,
            "invalid_lines": report.invalid_outcomes,
            "ignored": dict(sorted(ob.ignored.items())),
            "good": ob.good,
            "bad": ob.bad,
            "without_activity": ob.without_activity,
            "outcomes_without_events": ob.without_events,
            "contacts_without_events": ob.contacts_without_events,
            "contacts_without_outcomes": ob.contacts_without_outcomes,
        },
        "scale": _r(cal.scale),
        "derivation": derivation(cal.criterion),
        "models": {m.name: _model_json(m, ob) for m in cal.models},
        "out": report.out,
    }


def render_text(report: Report) -> str:
    """The readable report (the default output)."""
    ob = report.observed
    cal = report.calibration
    ignored = ", ".join(f"{k} {n}" for k, n in sorted(ob.ignored.items()))
    lines = [
        f"calibrate: {report.rules.source} ({report.rules.version[:19]}), outcomes "
        f"{report.outcomes_path}, events {report.events_path}, window "
        f"{format_duration(report.window)}",
        f"outcomes: {report.outcome_lines} lines"
        + (f", {report.invalid_outcomes} invalid" if report.invalid_outcomes else "")
        + f"; good: {', '.join(report.good)}; bad: {', '.join(report.bad)}"
        + (f"; neither (ignored): {ignored}" if ignored else ""),
        f"observations: {ob.good} good, {ob.bad} bad"
        + (f" ({ob.without_activity} with no award before it)" if ob.without_activity else ""),
        f"not used: outcomes of contacts without events {ob.without_events} "
        f"({ob.contacts_without_events} contacts); contacts with events but no outcome "
        f"{ob.contacts_without_outcomes}",
        "scale: "
        + (
            "none (no rule fired before enough outcomes: every point is kept)"
            if cal.scale is None
            else f"{num(cal.scale)} points per unit of log-odds"
        ),
    ]
    for m in cal.models:
        lines.append("")
        lines.append(f"model {m.name}")
        rows = [
            [
                s.rule_id,
                s.kind,
                f"{s.good} {pct(s.good, ob.good)}",
                f"{s.bad} {pct(s.bad, ob.bad)}",
                num(s.lift),
                "-" if s.log_odds is None else num(s.log_odds, sign=True),
                "-" if s.weight is None else num(s.weight, sign=True),
                "-" if s.weight_se is None else num(s.weight_se),
                _points_text(s, suggested=False),
                _points_text(s, suggested=True),
            ]
            for s in m.rules
        ]
        header = ["rule", "kind", "good", "bad", "lift", "alone", "joint", "±se", "points"]
        lines.extend(table([*header, "suggested"], rows, align="ll"))
        by_note: dict[str, list[str]] = {}
        for s in m.rules:
            if s.note:
                by_note.setdefault(s.note, []).append(s.rule_id)
        lines.extend(f"  {note}: {', '.join(ids)}" for note, ids in by_note.items())
        lines.extend(_threshold_lines(m, cal.criterion))
    lines.append("")
    lines.append("how: " + derivation(cal.criterion))
    lines.append(
        f"suggested plan written to {report.out}"
        if report.out
        else "(--out PLAN writes the suggested plan)"
    )
    return "\n".join(lines)


def _points_text(s: RuleStat, suggested: bool) -> str:
    if s.per is None:
        value = s.suggested if suggested else s.points
        if value is None:
            return "kept" if suggested else "-"
        return num(value, sign=suggested)
    _, factor, cap = s.per
    if suggested:
        if s.suggested is None:
            return "kept"
        factor, cap = s.factor or 0.0, s.cap
    return f"x{num(factor, 4)}" + ("" if cap is None else f" max {num(cap)}")


_CUT_HEADER = ["good", "bad", "precision", "recall", "F1", "separation"]


def _threshold_lines(m: ModelCalibration, criterion: Criterion) -> list[str]:
    if m.current_best is None:
        return ["  thresholds: no observations"]
    best = "separation" if criterion == "separation" else "F1"
    out = [
        f'  thresholds (score just before the outcome; "score >= cut" predicts good; best {best}):'
    ]
    rows = [
        [f"{name} (plan)", "current", num(c.threshold), *_cut_cells(c)]
        for name, _enter, c in m.plan_cuts
    ]
    rows.append(["best", "current", num(m.current_best.threshold), *_cut_cells(m.current_best)])
    if m.suggested_best is not None:
        rows.append(
            ["best", "suggested", num(m.suggested_best.threshold), *_cut_cells(m.suggested_best)]
        )
    out.extend(table(["", "points", "cut", *_CUT_HEADER], rows, indent=4, align="ll"))
    if m.suggested_thresholds:
        new = ", ".join(f"{n} {num(e)}/{num(x)}" for n, e, x in m.suggested_thresholds)
        out.append(f"    suggested thresholds (enter/exit): {new}")
    out.append("    cuts under the suggested points (* best):")
    shown = _spread(m.suggested_cuts, SHOWN_CUTS, m.suggested_best)
    rows = [
        [("* " if c == m.suggested_best else "") + num(c.threshold), *_cut_cells(c)] for c in shown
    ]
    out.extend(table(["cut", *_CUT_HEADER], rows, indent=6, align="r"))
    if len(shown) < len(m.suggested_cuts):
        out.append(f"      ({len(shown)} of {len(m.suggested_cuts)} cuts shown; --json has all)")
    return out


def _cut_cells(c: Cut) -> list[str]:
    return [
        str(c.good),
        str(c.bad),
        num(c.precision, 3),
        num(c.recall, 3),
        num(c.f1, 3),
        num(c.separation, 3),
    ]


def _spread(cuts: list[Cut], most: int, keep: Cut | None) -> list[Cut]:
    """At most ``most`` cuts evenly spread over the list, always with ``keep``."""
    if len(cuts) <= most:
        return cuts
    picked = {cuts[round(i * (len(cuts) - 1) / (most - 1))] for i in range(most)}
    if keep is not None:
        picked.add(keep)
    return sorted(picked, key=lambda c: c.threshold)


# ---------------------------------------------------------------- command


@dataclass(slots=True)
class Report:
    """A finished calibration, ready to print."""

    rules: RuleSet
    events_path: str
    outcomes_path: str
    window: int
    good: tuple[str, ...]
    bad: tuple[str, ...]
    min_support: int
    outcome_lines: int
    invalid_outcomes: int
    observed: Observed
    calibration: Calibration
    out: str | None = None


def _labels(text: str, option: str) -> tuple[str, ...]:
    labels = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not labels:
        raise UsageError(f"{option}: give at least one outcome")
    return labels


def _read_outcome_file(path: str, stack: ExitStack) -> Iterator[bytes]:
    if path == "-":
        return iter(sys.stdin.buffer)
    try:
        return iter(stack.enter_context(Path(path).open("rb")))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read outcomes: {exc.strerror}") from None


def calibrate_command(args: argparse.Namespace) -> int:
    """``scorestream calibrate --rules PATH --outcomes FILE EVENTS [--window D] [--out PLAN]``."""
    settings = Settings.load(config_file=args.config)
    rules = load_rules_or_usage(args.rules)
    try:
        window = parse_duration(args.window)
    except TimeFormatError as exc:
        raise UsageError(f"--window: {exc}") from None
    good, bad = _labels(args.good, "--good"), _labels(args.bad, "--bad")
    both = sorted(set(good) & set(bad))
    if both:
        raise UsageError(f"--good and --bad both name {', '.join(both)}")
    if args.min_support < 1:
        raise UsageError("--min-support: must be >= 1")
    if args.outcomes == "-" and args.events == "-":
        raise UsageError("only one of --outcomes and EVENTS can be - (stdin)")
    criterion: Criterion = "f1" if args.best == "f1" else "separation"
    partitions = partitions_option(args, settings)
    with ExitStack() as stack:
        outcomes, rejects = read_outcomes(_read_outcome_file(args.outcomes, stack))
        # The ledger bound is lifted so that every award is kept (module docstring).
        engine = Engine(rules, Bounds(ledger=_ALL))
        events = open_events(args.events, stack)
        run = score_lines(engine, events, None, settings.max_message_bytes, partitions)
    for r in rejects:
        print(f"outcomes line {r.line}: {r.reason}", file=sys.stderr)
    if len(run.rejects) > run.internal:
        invalid = len(run.rejects) - run.internal
        print(f"scorestream: {invalid} invalid event lines skipped", file=sys.stderr)
    failed = internal_failures(run)
    last = max((o.at for o in outcomes), default=None)
    if last is not None and run.at is not None and last > run.at:
        # Timers due between the last event and an outcome fire before that outcome.
        run.processor.advance_all(last)
    observed = observe(run, outcomes, good, bad, window)
    if not observed.good or not observed.bad:
        print(
            "scorestream: calibrate needs good and bad outcomes of contacts with events; "
            f"found {observed.good} good and {observed.bad} bad "
            f"(good: {', '.join(good)}; bad: {', '.join(bad)})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    report = Report(
        rules=rules,
        events_path=args.events,
        outcomes_path=args.outcomes,
        window=window,
        good=good,
        bad=bad,
        min_support=args.min_support,
        outcome_lines=len(outcomes) + len(rejects),
        invalid_outcomes=len(rejects),
        observed=observed,
        calibration=calibrate(rules, run, observed, args.min_support, criterion),
        out=args.out,
    )
    if args.out:
        status = _write_plan(report, args.out)
        if status != EXIT_OK:
            return status
    if args.json:
        print(json.dumps(to_json(report), indent=2, ensure_ascii=False))
    else:
        print(render_text(report))
    return failed


def _write_plan(report: Report, path: str) -> int:
    best = "separation" if report.calibration.criterion == "separation" else "F1"
    header = (
        f"# Suggested by `scorestream calibrate` from {report.rules.source}\n"
        f"# ({report.rules.version})\n"
        f"# and the outcomes in {report.outcomes_path}: {report.observed.good} good, "
        f"{report.observed.bad} bad, window {format_duration(report.window)}.\n"
        "# Points: round(scale x joint log-odds weight); the highest threshold of each\n"
        f"# model: the cut with the best {best}. See docs/cli.md (scorestream calibrate).\n"
        "# The comments of the input plan are not kept.\n"
    )
    try:
        raw = Path(report.rules.source).read_bytes()
    except OSError as exc:
        print(f"scorestream: {report.rules.source}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    text = suggested_plan(raw, report.calibration.models, header)
    try:
        parse_rules(text, path)  # what is written must be a plan `rules check` accepts
    except RulesError as exc:
        print(f"scorestream: the suggested plan is not valid (a bug):\n{exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"scorestream: {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
