"""``scorestream calibrate``: planted effects are recovered; the suggested plan is valid.

The synthetic population is made here, seeded: contacts who visit pricing are won with
probability 0.7 and the others with 0.2; contacts who unsubscribe are lost with 0.9
whatever else they did; reading the blog, basket values and company size have no effect.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from scorestream import cli
from scorestream.calibrate import (
    Cut,
    best_cut,
    candidate_cuts,
    cut_table,
    fired_rules,
    lift,
    log_odds_ratio,
    logistic_regression,
    read_outcomes,
    scaled_thresholds,
    score_before,
)
from scorestream.engine.rules import load_rules, parse_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.state import Bounds
from scorestream.engine.timeutil import US_PER_SECOND, format_ts
from scorestream.offline import score_lines

Capsys = pytest.CaptureFixture[str]
DAY = 86_400 * US_PER_SECOND
START = 1_772_000_000 * US_PER_SECOND  # late February 2026

PLAN = """\
# a comment the suggested plan does not keep
version: 1
description: calibration test plan
models:
  engagement:
    decay: {half_life: 30d}
    min_score: -50
    thresholds:
      - {name: mql, enter: 10, exit: 5}
      - {name: sales_ready, enter: 20, exit: 15}
    rules:
      - id: pricing-visit
        event: page_view
        where: {url: {glob: "/pricing*"}}
        points: 10
      - id: blog-read
        event: page_view
        where: {url: {glob: "/blog/*"}}
        points: 10
      - id: unsubscribed
        event: email_unsubscribe
        points: -10
      - id: big-basket
        event: cart_add
        points: {per: value, factor: 0.1, max: 20}
      - id: demo-day
        description: never happens in this data
        event: form_submit
        where: {form_id: demo-day}
        points: 7
  fit:
    rules:
      - id: large-company
        attribute: company_size
        where: {gte: 200}
        points: 10
"""

CONTACTS = 3000
WITHOUT_OUTCOME = 25


class Population(NamedTuple):
    """Event lines, outcome lines, and how many observations have no award before them."""

    events: list[str]
    outcomes: list[str]
    silent: int


def population(seed: int = 20260301) -> Population:
    """A population with the planted effects of the module docstring."""
    rng = random.Random(seed)
    silent = 0
    events: list[str] = []
    outcomes: list[str] = []
    n = 0

    def add(contact: str, etype: str, t: int, **props: Any) -> None:
        nonlocal n
        n += 1
        obj: dict[str, Any] = {
            "event_id": f"e{n}",
            "type": etype,
            "contact_id": contact,
            "occurred_at": format_ts(t),
        }
        if props:
            obj["properties"] = props
        events.append(json.dumps(obj))

    for i in range(CONTACTS):
        contact = f"c-{i:04d}"
        t = START + rng.randrange(20 * DAY)
        size = rng.randrange(10, 1000)
        add(contact, "profile_update", t, attributes={"company_size": size})
        pricing = rng.random() < 0.4
        unsubscribed = rng.random() < 0.15
        last = t
        steps: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < 0.5:
            steps += [("page_view", {"url": "/blog/post"})] * rng.randint(1, 3)
        if pricing:
            steps += [("page_view", {"url": "/pricing"})] * rng.randint(1, 2)
        if rng.random() < 0.3:
            steps.append(("cart_add", {"value": round(rng.uniform(10, 400), 2)}))
        if unsubscribed:
            steps.append(("email_unsubscribe", {}))
        rng.shuffle(steps)
        for etype, props in steps:
            last += rng.randrange(1, DAY)
            add(contact, etype, last, **props)
        if i < WITHOUT_OUTCOME:
            continue  # these contacts have events but no outcome
        silent += not steps and size < 200
        good = rng.random() < (0.1 if unsubscribed else 0.7 if pricing else 0.2)
        label = rng.choice(("won", "converted") if good else ("lost", "churned"))
        at = last + rng.randrange(DAY, 5 * DAY)
        outcomes.append(
            json.dumps({"contact_id": contact, "outcome": label, "occurred_at": format_ts(at)})
        )
    # one label that is neither good nor bad, one contact without events, one broken line
    outcomes.append(
        json.dumps({"contact_id": "c-0100", "outcome": "open", "occurred_at": format_ts(START)})
    )
    outcomes.append(
        json.dumps({"contact_id": "c-ghost", "outcome": "won", "occurred_at": format_ts(START)})
    )
    outcomes.append("not json")
    rng.shuffle(events)  # file order is not time order; the processor orders them
    return Population(events, outcomes, silent)


@pytest.fixture(autouse=True)
def _no_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SCORESTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def made() -> Population:
    return population()


@pytest.fixture(scope="module")
def files(made: Population, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("calibrate")
    plan = folder / "plan.yaml"
    plan.write_text(PLAN, encoding="utf-8")
    events, outcomes, _ = made
    events_path = folder / "events.jsonl"
    outcomes_path = folder / "outcomes.jsonl"
    events_path.write_text("\n".join(events) + "\n", encoding="utf-8")
    outcomes_path.write_text("\n".join(outcomes) + "\n", encoding="utf-8")
    return plan, events_path, outcomes_path


@pytest.fixture(scope="module")
def calibrated(
    files: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    plan, events, outcomes = files
    out = tmp_path_factory.mktemp("out") / "suggested.yaml"
    capture = _Capture()
    with capture:
        code = cli.main(
            [
                *("calibrate", "--rules", str(plan), "--outcomes", str(outcomes), str(events)),
                *("--out", str(out), "--json"),
            ]
        )
    assert code == cli.EXIT_OK, capture.err
    assert "outcomes line" in capture.err  # the broken line is reported...
    return json.loads(capture.out), out


class _Capture:
    """stdout/stderr capture usable from a module-scoped fixture (capsys is per test)."""

    def __enter__(self) -> None:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def rules_of(doc: dict[str, Any], model: str) -> dict[str, dict[str, Any]]:
    return {r["rule_id"]: r for r in doc["models"][model]["rules"]}


# ------------------------------------------------------------------ planted effects


def test_the_planted_effects_are_recovered(calibrated: tuple[dict[str, Any], Path]) -> None:
    doc, _ = calibrated
    eng = rules_of(doc, "engagement")
    fit = rules_of(doc, "fit")
    pricing = eng["pricing-visit"]["suggested"]
    unsubscribed = eng["unsubscribed"]["suggested"]
    # the sign of every planted effect
    assert pricing > 0
    assert unsubscribed < 0
    # pricing has the highest positive points of the plan
    everything = [r["suggested"] for r in [*eng.values(), *fit.values()] if r["suggested"]]
    assert pricing == max(everything)
    # the rules without an effect are near zero: well under a quarter of pricing's points
    # (their weights' noise is about 0.1 here, pricing's weight about 2)
    for irrelevant in (eng["blog-read"], eng["big-basket"], fit["large-company"]):
        assert abs(irrelevant["suggested"]) <= 0.25 * pricing, irrelevant
    # the planted effects are far outside chance
    assert eng["pricing-visit"]["weight"] > 4 * eng["pricing-visit"]["weight_se"]
    assert eng["unsubscribed"]["weight"] < -4 * eng["unsubscribed"]["weight_se"]
    # lift: pricing visitors are over-represented among good outcomes, unsubscribers under
    assert eng["pricing-visit"]["lift"] > 1.3
    assert eng["unsubscribed"]["lift"] < 0.5


def test_scale_keeps_the_plans_points(calibrated: tuple[dict[str, Any], Path]) -> None:
    # scale = sum |current points| / sum |joint weight| over the rules with support, so
    # the suggested points have (up to rounding) the plan's total size.
    doc, _ = calibrated
    used = [r for m in doc["models"].values() for r in m["rules"] if r["suggested"] is not None]
    size = sum(abs(r["mean_award"]) for r in used)
    spread = sum(abs(r["weight"]) for r in used)
    assert doc["scale"] == pytest.approx(size / spread, rel=1e-3)
    for r in used:
        assert r["suggested"] == pytest.approx(doc["scale"] * r["weight"], abs=0.5 + 1e-3)
    assert sum(abs(doc["scale"] * r["weight"]) for r in used) == pytest.approx(size, rel=1e-3)


def test_rules_without_evidence_keep_their_points(
    calibrated: tuple[dict[str, Any], Path],
) -> None:
    doc, out = calibrated
    demo = rules_of(doc, "engagement")["demo-day"]
    assert demo["fired"] == {"good": 0, "bad": 0}
    assert demo["suggested"] is None
    assert demo["lift"] is None and demo["weight"] is None
    assert "never fired" in demo["note"]
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    rules = {r["id"]: r for r in written["models"]["engagement"]["rules"]}
    assert rules["demo-day"]["points"] == 7


def test_counts_of_what_could_not_be_used(
    calibrated: tuple[dict[str, Any], Path], made: Population
) -> None:
    doc, _ = calibrated
    counts = doc["counts"]
    assert counts["good"] + counts["bad"] == CONTACTS - WITHOUT_OUTCOME
    assert counts["outcome_lines"] == CONTACTS - WITHOUT_OUTCOME + 3
    assert counts["invalid_lines"] == 1
    assert counts["ignored"] == {"open": 1}
    assert counts["outcomes_without_events"] == 1
    assert counts["contacts_without_events"] == 1
    # c-0100's only outcome line is ignored, but it has one: not counted here
    assert counts["contacts_without_outcomes"] == WITHOUT_OUTCOME
    # contacts whose only event is a profile of a company under 200: no award at all
    assert 0 < made.silent == counts["without_activity"]


def test_per_value_rule_gets_a_scaled_factor(calibrated: tuple[dict[str, Any], Path]) -> None:
    doc, out = calibrated
    basket = rules_of(doc, "engagement")["big-basket"]
    assert basket["points"] == {"per": "value", "factor": 0.1, "max": 20.0}
    suggested = basket["suggested_points"]
    ratio = doc["scale"] * basket["weight"] / basket["mean_award"]
    assert suggested["factor"] == pytest.approx(0.1 * ratio, rel=1e-3)
    assert suggested["max"] == round(20 * abs(ratio))
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    rules = {r["id"]: r for r in written["models"]["engagement"]["rules"]}
    assert rules["big-basket"]["points"]["per"] == "value"
    assert rules["big-basket"]["points"]["factor"] == pytest.approx(suggested["factor"])


# ------------------------------------------------------------------ thresholds


def test_thresholds_mark_the_best_cut(calibrated: tuple[dict[str, Any], Path]) -> None:
    doc, _ = calibrated
    assert doc["best"] == "separation"
    th = doc["models"]["engagement"]["thresholds"]
    for which in ("current", "suggested"):
        cuts = th[which]["cuts"]
        best = th[which]["best"]
        assert best in cuts
        assert best["separation"] == max(c["separation"] for c in cuts)
        for c in cuts:
            assert c["precision"] == pytest.approx(c["good"] / (c["good"] + c["bad"]), abs=1e-4)
    # the plan's own thresholds are evaluated with the current points
    assert [(p["name"], p["enter"]) for p in th["plan"]] == [("mql", 10.0), ("sales_ready", 20.0)]
    # pricing visitors score higher, and they are mostly won: a cut separates
    assert th["suggested"]["best"]["separation"] > 0.3
    assert th["suggested"]["best"]["precision"] > 0.5


def test_the_suggested_plan_passes_rules_check(
    calibrated: tuple[dict[str, Any], Path], capsys: Capsys
) -> None:
    doc, out = calibrated
    assert cli.main(["rules", "check", str(out)]) == cli.EXIT_OK
    assert "model engagement" in capsys.readouterr().out
    plan = load_rules(out)
    engagement = plan.model_by_name["engagement"]
    rules = {r.id: r for r in engagement.event_rules}
    eng = rules_of(doc, "engagement")
    assert rules["pricing-visit"].fixed == eng["pricing-visit"]["suggested"]
    assert rules["unsubscribed"].fixed == eng["unsubscribed"]["suggested"]
    # the highest threshold enters at the best cut, the other keeps its proportion
    th = doc["models"]["engagement"]["thresholds"]["suggested"]
    best = th["best"]["threshold"]
    by_name = {t.name: t for t in engagement.thresholds}
    assert by_name["sales_ready"].enter == pytest.approx(best)
    assert by_name["sales_ready"].exit == pytest.approx(15 * best / 20, abs=0.006)
    assert by_name["mql"].enter == pytest.approx(10 * best / 20, abs=0.006)
    assert [t["name"] for t in th["thresholds"]] == ["mql", "sales_ready"]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Suggested by `scorestream calibrate`")
    assert "a comment the suggested plan does not keep" not in text
    assert "description: never happens in this data" in text


def test_text_report_states_the_derivation(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    plan, events, outcomes = files
    code = cli.main(["calibrate", "--rules", str(plan), "--outcomes", str(outcomes), str(events)])
    assert code == 0
    out = capsys.readouterr().out
    assert "model engagement" in out
    assert "how: fired: an event rule awarded points in [T - window, T)" in out
    assert "suggested points = round(scale x joint)" in out
    assert "(--out PLAN writes the suggested plan)" in out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("rule "))
    assert header.split() == [
        "rule",
        "kind",
        "good",
        "bad",
        "lift",
        "alone",
        "joint",
        "±se",
        "points",
        "suggested",
    ]
    assert "never fired (points kept): demo-day" in out


def test_good_and_bad_can_be_redefined(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    # Only "won" is good and only "lost" bad: converted and churned are then ignored.
    plan, events, outcomes = files
    argv = ["calibrate", "--rules", str(plan), "--outcomes", str(outcomes), str(events)]
    assert cli.main([*argv, "--good", "won", "--bad", "lost", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["good"] == ["won"] and doc["bad"] == ["lost"]
    assert set(doc["counts"]["ignored"]) == {"converted", "churned", "open"}


# ------------------------------------------------------------------ exit codes


def test_usage_errors_exit_2(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: Capsys
) -> None:
    plan, events, outcomes = files
    base = ["calibrate", "--rules", str(plan), "--outcomes", str(outcomes), str(events)]
    for extra, message in (
        (["--window", "30days"], "--window"),
        (["--good", "won", "--bad", "won"], "both name won"),
        (["--min-support", "0"], "--min-support"),
        (["--good", " , "], "--good"),
    ):
        assert cli.main([*base, *extra]) == cli.EXIT_USAGE, extra
        assert message in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(PLAN.replace("points: -10", "points: minus ten"), encoding="utf-8")
    argv = ["calibrate", "--rules", str(bad), "--outcomes", str(outcomes), str(events)]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert f"{bad}: rule 'unsubscribed'" in capsys.readouterr().err
    argv = ["calibrate", "--rules", str(plan), "--outcomes", str(tmp_path / "no"), str(events)]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "cannot read outcomes" in capsys.readouterr().err
    argv = ["calibrate", "--rules", str(plan), "--outcomes", "-", "-"]
    assert cli.main(argv) == cli.EXIT_USAGE


def test_without_both_kinds_of_outcome_it_exits_1(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: Capsys
) -> None:
    plan, events, _ = files
    only_won = tmp_path / "won.jsonl"
    only_won.write_text(
        json.dumps(
            {"contact_id": "c-0500", "outcome": "won", "occurred_at": "2026-12-01T00:00:00Z"}
        )
        + "\n",
        encoding="utf-8",
    )
    argv = ["calibrate", "--rules", str(plan), "--outcomes", str(only_won), str(events)]
    assert cli.main(argv) == cli.EXIT_FAILURE
    assert "found 1 good and 0 bad" in capsys.readouterr().err


def test_an_unwritable_out_exits_1(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    plan, events, outcomes = files
    argv = ["calibrate", "--rules", str(plan), "--outcomes", str(outcomes), str(events)]
    assert cli.main([*argv, "--out", "/nonexistent/dir/plan.yaml"]) == cli.EXIT_FAILURE
    assert "/nonexistent/dir/plan.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------ the pure parts


def test_log_odds_ratio_and_lift_by_hand() -> None:
    # g = 30 of G = 40 good, b = 10 of B = 60 bad:
    # ln(31/11) - ln(11/51) = 1.0361 + 1.5339 = 2.5700
    lor, se = log_odds_ratio(30, 40, 10, 60)
    assert lor == pytest.approx(math.log(31 / 11) - math.log(11 / 51))
    assert lor == pytest.approx(2.5700, abs=1e-4)
    assert se == pytest.approx(math.sqrt(1 / 31 + 1 / 11 + 1 / 11 + 1 / 51))
    # lift = (30/40) / (40/100) = 1.875
    assert lift(30, 40, 10, 60) == pytest.approx(1.875)
    assert lift(0, 40, 0, 60) is None


def test_logistic_regression_matches_the_closed_form() -> None:
    # One 0/1 input, no penalty: the weight is the log-odds ratio of the 2x2 table,
    # logit(70/100) - logit(20/100) = 0.8473 + 1.3863, its error sqrt(1/20+1/80+1/70+1/30).
    rows = [([0], 100, 20), ([1], 100, 70)]
    weights, errors = logistic_regression(rows, 1, ridge=0.0)
    assert weights[0] == pytest.approx(math.log(70 / 30) - math.log(20 / 80), abs=1e-6)
    assert errors[0] == pytest.approx(math.sqrt(1 / 20 + 1 / 80 + 1 / 70 + 1 / 30), abs=1e-6)
    # a penalty pulls a perfectly separating input to a finite weight
    separated, _ = logistic_regression([([0], 10, 0), ([1], 10, 10)], 1, ridge=1.0)
    assert 0 < separated[0] < 10


def test_joint_weights_do_not_credit_a_correlated_rule() -> None:
    # "b" fires exactly when "a" does half the time and otherwise at random, but only
    # "a" changes the outcome: alone, b looks good; jointly, it is near 0.
    rows = [
        ([1, 1], 200, 140),  # a and b: 70% good
        ([1, 0], 200, 140),  # a only: 70% good
        ([0, 1], 100, 20),  # b only: 20% good
        ([0, 0], 300, 60),  # neither: 20% good
    ]
    weights, errors = logistic_regression(rows, 2, ridge=1.0)
    assert weights[0] > 1.5
    assert abs(weights[1]) < errors[1]


def test_cuts_by_hand() -> None:
    scored = [(30.0, True), (20.0, True), (20.0, False), (10.0, False), (5.0, True)]
    assert candidate_cuts([s for s, _ in scored]) == [5.0, 10.0, 20.0, 30.0]
    cuts = {c.threshold: c for c in cut_table(scored, [5.0, 10.0, 20.0, 30.0])}
    # >= 20: good 2 of 3, bad 1 of 2 -> precision 2/3, recall 2/3, separation 2/3 - 1/2
    assert cuts[20.0] == Cut(20.0, 2, 1, 2 / 3, 2 / 3, 2 / 3, 2 / 3 - 1 / 2)
    # >= 30: precision 1, recall 1/3, F1 1/2, separation 1/3
    assert cuts[30.0] == Cut(30.0, 1, 0, 1.0, 1 / 3, 0.5, 1 / 3)
    # >= 5: everyone: precision 3/5, recall 1, separation 0
    assert cuts[5.0].separation == 0.0
    assert best_cut(cuts.values()) == cuts[30.0]  # separation 1/3 beats 1/6
    assert best_cut(cuts.values(), "f1") == cuts[5.0]  # F1 3/4
    assert best_cut([]) is None
    many = [float(i) for i in range(1000)]
    quantiles = candidate_cuts(many, most=11)
    assert len(quantiles) == 11
    assert (quantiles[0], quantiles[-1]) == (0.0, 999.0)
    assert all(abs(q - 99.9 * k) <= 0.5 for k, q in enumerate(quantiles))


def test_scaled_thresholds() -> None:
    plan = parse_rules(
        "version: 1\nmodels:\n  m:\n    thresholds:\n"
        "      - {name: low, enter: 50, exit: 40}\n      - {name: high, enter: 100, exit: 80}\n"
        "    rules:\n      - {id: r, event: page_view, points: 1}\n",
        "p.yaml",
    )
    model = plan.model_by_name["m"]
    assert scaled_thresholds(model, 60.0) == [("low", 30.0, 24.0), ("high", 60.0, 48.0)]
    # a cut that is not positive shifts instead of scaling
    assert scaled_thresholds(model, -10.0) == [("low", -60.0, -70.0), ("high", -10.0, -30.0)]


def test_fired_rules_use_the_window_and_attributes_as_held() -> None:
    plan = parse_rules(PLAN, "p.yaml")
    t = START
    entries = [
        ("e1", "engagement", "pricing-visit", 10.0, t),  # 40 days before: outside 30d
        ("e2", "engagement", "blog-read", 10.0, t + 15 * DAY),  # inside
        ("e3", "fit", "large-company", 10.0, t),  # held from then on...
        ("e4", "fit", "large-company", -10.0, t + DAY),  # ...until the size changed
    ]
    fired = fired_rules(plan, entries, t + 40 * DAY, 30 * DAY)
    assert fired == {"engagement": frozenset({"blog-read"}), "fit": frozenset()}
    fired = fired_rules(plan, entries[:3], t + 40 * DAY, 30 * DAY)
    assert fired["fit"] == frozenset({"large-company"})


def test_score_before_agrees_with_the_engine(files: tuple[Path, Path, Path]) -> None:
    # The score rebuilt from the unbounded ledger is the engine's reported score.
    plan_path, events, _ = files
    plan = load_rules(plan_path)
    with events.open("rb") as fh:
        run = score_lines(Engine(plan, Bounds(ledger=1 << 62)), iter(fh))
    assert run.at is not None
    at = run.at + 3 * DAY
    run.processor.advance_all(at)
    checked = 0
    for state in run.processor.states():
        scores = run.engine.scores(state, at)
        for model in plan.models:
            assert score_before(model, state.ledger, at) == pytest.approx(
                scores[model.name], abs=0.011
            ), (state.key, model.name)
            checked += 1
    assert checked == 2 * CONTACTS


def test_read_outcomes_rejects_what_is_not_an_outcome() -> None:
    lines = [
        b'{"contact_id": "c-1", "outcome": "won", "occurred_at": "2026-03-01T00:00:00Z"}\n',
        b"\n",
        b"[1, 2]\n",
        b'{"contact_id": "", "outcome": "won", "occurred_at": "2026-03-01T00:00:00Z"}\n',
        b'{"contact_id": "c-2", "outcome": "won", "occurred_at": "yesterday"}\n',
        b'{"contact_id": "c-3", "outcome": "lost"}\n',
    ]
    found, rejects = read_outcomes(lines)
    assert [(o.line, o.contact_id, o.outcome) for o in found] == [(1, "c-1", "won")]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (3, "expected a JSON object"),
        (4, "contact_id"),
        (5, "occurred_at"),
        (6, "occurred_at"),
    ]
