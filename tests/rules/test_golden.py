"""Golden scenarios: every scoring plan in rules/ against hand-computed expectations.

Layout: ``scenarios/<plan>/<name>.jsonl`` (input events) with ``<name>.expected.jsonl``
(the stdout lines of ``scorestream score``), ``<name>.crossings.jsonl`` (the crossings
file) and optionally ``<name>.options.json`` (``{"at": "..."}`` for ``--at``). Every
expected number was computed by hand from spec/rules.md; the arithmetic is in
``scenarios/README.md``. The scenarios run through the real command line (``score
--rules ... --crossings ...``), exactly as a user would.

Crossings are compared on the fields of the wire contract except ``rules_version``;
``occurred_at`` is compared to the second (a decay crossing happens at a computed
microsecond; the hand computation pins the second it falls in, event-stamped crossings
are whole seconds anyway). Crossings stamped with the same instant may come in any
order (spec/cli.md only orders them by ``occurred_at``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from scorestream.cli import main
from scorestream.engine.conditions import OPERATORS

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
OUTPUT_SUFFIXES = (".expected.jsonl", ".crossings.jsonl")
COMPARED = (
    "crossing_id",
    "contact_id",
    "model",
    "threshold",
    "direction",
    "score",
    "previous_score",
    "occurred_at",
    "top_contributors",
)

#: "<plan>/<scenario>" -> why the engine's output is believed wrong (strict xfail).
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def plan_files() -> list[Path]:
    """Every scoring plan in rules/."""
    return sorted([*RULES_DIR.glob("*.yaml"), *RULES_DIR.glob("*.yml")])


def scenario_inputs(plan: str) -> list[Path]:
    """Input event files of one plan's scenarios."""
    folder = SCENARIOS / plan
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl") if not p.name.endswith(OUTPUT_SUFFIXES))


def _sibling(events: Path, suffix: str) -> Path:
    return events.with_name(events.name.removesuffix(".jsonl") + suffix)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _second(stamp: str) -> str:
    """An RFC 3339 stamp truncated to the second, in UTC with Z."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _comparable(crossings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in crossings:
        row = {key: c.get(key) for key in COMPARED}
        row["occurred_at"] = _second(c["occurred_at"])
        out.append(row)
    return sorted(out, key=lambda r: (r["occurred_at"], r["crossing_id"]))


def _cases() -> Iterator[Any]:
    for plan in plan_files():
        for events in scenario_inputs(plan.stem):
            case = f"{plan.stem}/{events.name.removesuffix('.jsonl')}"
            reason = KNOWN_DISAGREEMENTS.get(case)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(plan, events, id=case, marks=marks)


@pytest.mark.parametrize(("plan", "events"), list(_cases()))
def test_golden_scenario(
    plan: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scorestream score`` gives exactly the hand-computed scores, tiers and crossings."""
    crossings_file = tmp_path / "crossings.jsonl"
    rejects_file = tmp_path / "rejects.jsonl"
    argv = ["score", "--rules", str(plan), "--crossings", str(crossings_file)]
    argv += ["--rejects", str(rejects_file)]
    options_file = _sibling(events, ".options.json")
    if options_file.exists():
        options = json.loads(options_file.read_text("utf-8"))
        argv += ["--at", options["at"]]
    argv.append(str(events))

    code = main(argv)
    out, err = capsys.readouterr()

    assert code == 0, err
    assert rejects_file.read_text("utf-8") == "", "every scenario event must be valid"
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["contact_id"] for r in rows] == sorted(r["contact_id"] for r in rows)
    assert rows == _read_jsonl(_sibling(events, ".expected.jsonl"))

    actual = _read_jsonl(crossings_file)
    times = [_instant(c["occurred_at"]) for c in actual]
    assert times == sorted(times), "crossings must be ordered by occurred_at"
    expected = _read_jsonl(_sibling(events, ".crossings.jsonl"))
    assert _comparable(actual) == _comparable(expected)


@pytest.mark.parametrize("plan", plan_files(), ids=lambda p: p.stem)
def test_every_plan_is_valid_and_has_a_scenario(
    plan: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan in rules/ passes ``rules check`` and has at least one complete scenario."""
    code = main(["rules", "check", str(plan)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert str(plan) in out
    inputs = scenario_inputs(plan.stem)
    assert inputs, f"no scenario for {plan.name}: add tests/rules/scenarios/{plan.stem}/*.jsonl"
    for events in inputs:
        for suffix in OUTPUT_SUFFIXES:
            assert _sibling(events, suffix).exists(), f"{events.name}: missing *{suffix}"


def test_no_scenarios_without_a_plan() -> None:
    """Every scenario folder belongs to a plan (a renamed plan must take its scenarios)."""
    plans = {p.stem for p in plan_files()}
    folders = {p.name for p in SCENARIOS.iterdir() if p.is_dir()}
    assert folders <= plans


def _walk_rules(node: Any) -> Iterator[dict[str, Any]]:
    for spec in node["models"].values():
        yield from spec["rules"]


def test_plans_use_every_construct_of_the_rule_language() -> None:
    """Taken together, the plans in rules/ show every construct of spec/rules.md."""
    used: set[str] = set()
    for plan in plan_files():
        data = yaml.safe_load(plan.read_text("utf-8"))
        for spec in data["models"].values():
            decay = spec.get("decay") or {"none": True}
            used.update(f"decay:{kind}" for kind in decay)
            used.update(key for key in ("min_score", "max_score") if key in spec)
            for th in spec.get("thresholds", []):
                used.add("threshold:exit" if "exit" in th else "threshold:no-exit")
        for rule in _walk_rules(data):
            where = rule.get("where")
            if "attribute" in rule:
                used.add("attribute:where" if where is not None else "attribute:exists")
                if where is not None and not isinstance(where, dict):
                    used.add("attribute:scalar")
                tests = [where] if isinstance(where, dict) else []
            else:
                used.add("event")
                tests = list(where.values()) if isinstance(where, dict) else []
                if isinstance(where, dict) and any("." in path for path in where):
                    used.add("dotted-path")
            for test in tests:
                if isinstance(test, dict):
                    used.update(f"op:{op}" for op in test)
                else:
                    used.add("op:scalar")
            points = rule["points"]
            if isinstance(points, dict):
                used.add("points:per")
                used.update(f"points:{key}" for key in ("factor", "max") if key in points)
                if "." in points["per"]:
                    used.add("dotted-path")
            elif points < 0:
                used.add("points:negative")
            limit = rule.get("limit")
            if limit:
                used.add("limit:per" if "per" in limit else "limit:ever")
            unless = rule.get("unless")
            if unless:
                used.add("unless:match" if unless.get("match") else "unless:any")
    ops = [*OPERATORS, "scalar"]
    wanted = {f"op:{op}" for op in ops} | {
        "decay:half_life",
        "decay:expire_after",
        "decay:none",
        "min_score",
        "max_score",
        "threshold:exit",
        "threshold:no-exit",
        "attribute:where",
        "attribute:exists",
        "attribute:scalar",
        "event",
        "dotted-path",
        "points:per",
        "points:factor",
        "points:max",
        "points:negative",
        "limit:per",
        "limit:ever",
        "unless:match",
        "unless:any",
    }
    assert wanted - used == set()
