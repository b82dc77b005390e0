"""``scorestream rules diff OLD NEW EVENTS``: a known pair of plans on hand-made events.

Every expected number below is worked out by hand in the comments next to the events.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from scorestream import cli
from scorestream.engine.rules import parse_rules
from scorestream.engine.scorer import Engine
from scorestream.offline import score_lines
from scorestream.whatif import (
    CrossingKey,
    CrossingSeen,
    ModelResult,
    PlanResult,
    diff_model,
    diff_plans,
    summarize,
)

Capsys = pytest.CaptureFixture[str]

# No decay anywhere, so every total is a plain sum.
OLD = """\
version: 1
models:
  engagement:
    thresholds:
      - {name: mql, enter: 15, exit: 10}
      - {name: sales_ready, enter: 40, exit: 30}
    rules:
      - {id: pricing-visit, event: page_view, where: {url: {glob: "/pricing*"}}, points: 15}
      - {id: blog-read, event: page_view, where: {url: {glob: "/blog/*"}}, points: 3}
      - {id: webinar, event: form_submit, where: {form_id: webinar}, points: 10}
  legacy:
    rules:
      - {id: any-view, event: page_view, points: 1}
"""

# pricing-visit 15 -> 25, blog-read unchanged, webinar removed, contact-form added;
# model legacy removed, model fit added.
NEW = """\
version: 1
models:
  engagement:
    thresholds:
      - {name: mql, enter: 15, exit: 10}
      - {name: sales_ready, enter: 40, exit: 30}
    rules:
      - {id: pricing-visit, event: page_view, where: {url: {glob: "/pricing*"}}, points: 25}
      - {id: blog-read, event: page_view, where: {url: {glob: "/blog/*"}}, points: 3}
      - {id: contact-form, event: form_submit, where: {form_id: contact}, points: 35}
  fit:
    thresholds:
      - {name: good_fit, enter: 10}
    rules:
      - {id: large, attribute: company_size, where: {gte: 200}, points: 20}
"""

T1 = "2026-03-01T10:00:00Z"
T2 = "2026-03-01T11:00:00Z"


def ev(eid: str, etype: str, contact: str, at: str, **props: Any) -> str:
    obj: dict[str, Any] = {"event_id": eid, "type": etype, "contact_id": contact}
    obj["occurred_at"] = at
    if props:
        obj["properties"] = props
    return json.dumps(obj)


EVENTS = [
    # c-1: OLD 15 -> mql up at T1 (15 >= 15).      NEW 25 -> mql up at T1.     mql -> mql
    ev("e1", "page_view", "c-1", T1, url="/pricing"),
    # c-2: OLD 15 (mql up T1), 30 (< 40).          NEW 25 (mql up T1), 50 (sales_ready up T2)
    #      tier mql -> sales_ready; crossing "c-2 sales_ready up T2" appears
    ev("e2", "page_view", "c-2", T1, url="/pricing"),
    ev("e3", "page_view", "c-2", T2, url="/pricing/team"),
    # c-3: OLD 10 + 3 = 13 (< 15).                 NEW 0 + 3 = 3.              none -> none
    ev("e4", "form_submit", "c-3", T1, form_id="webinar"),
    ev("e5", "page_view", "c-3", T2, url="/blog/a"),
    # c-4: OLD 10, 20 -> mql up at T2.             NEW 0 (webinar is gone).    mql -> none
    #      crossing "c-4 mql up T2" disappears
    ev("e6", "form_submit", "c-4", T1, form_id="webinar"),
    ev("e7", "form_submit", "c-4", T2, form_id="webinar"),
    # c-5: OLD 0 (no contact-form rule).           NEW 35 -> mql up at T1.     none -> mql
    #      crossing "c-5 mql up T1" appears
    ev("e8", "form_submit", "c-5", T1, form_id="contact"),
    # c-6: 3 under both.                                                        none -> none
    ev("e9", "page_view", "c-6", T1, url="/blog/b"),
    # c-7: engagement 0 under both (none -> none); fit (NEW only) 20 -> good_fit up at T1
    ev("e10", "profile_update", "c-7", T1, attributes={"company_size": 500}),
]
# Tiers of engagement, rows OLD, columns NEW (7 contacts):
#   none -> none 3 (c-3, c-6, c-7), none -> mql 1 (c-5),
#   mql -> none 1 (c-4), mql -> mql 1 (c-1), mql -> sales_ready 1 (c-2): 3 change.
# Crossings of engagement: OLD 3 (c-1 mql, c-2 mql, c-4 mql), NEW 4 (c-1 mql, c-2 mql,
#   c-2 sales_ready, c-5 mql): 2 appear, 1 disappears.
# Rule totals of engagement (OLD -> NEW):
#   pricing-visit 15 + 30 = 45 -> 25 + 50 = 75 (+30); blog-read 6 -> 6 (not listed);
#   webinar 10 + 20 = 30 -> removed (-30); contact-form added, 35 (+35).
#   Largest move first, a tie by rule id: contact-form, pricing-visit, webinar.
# legacy (OLD only): no thresholds, 7 contacts in no tier, no crossings.
# fit (NEW only): c-7 in good_fit, 6 in none; 1 crossing.


@pytest.fixture(autouse=True)
def _no_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SCORESTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    events = tmp_path / "events.jsonl"
    old.write_text(OLD, encoding="utf-8")
    new.write_text(NEW, encoding="utf-8")
    events.write_text("\n".join(EVENTS) + "\n", encoding="utf-8")
    return old, new, events


def run_json(argv: list[str], capsys: Capsys) -> dict[str, Any]:
    assert cli.main(argv) == cli.EXIT_OK
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


# ------------------------------------------------------------------ the known pair


def test_diff_of_the_known_pair_matches_the_hand_count(
    files: tuple[Path, Path, Path], capsys: Capsys
) -> None:
    old, new, events = files
    doc = run_json(["rules", "diff", str(old), str(new), str(events), "--json"], capsys)
    assert doc["contacts"] == 7
    assert doc["at"] == T2
    eng = doc["models"]["engagement"]
    assert eng["unchanged"] is False
    assert eng["tiers"]["changed"] == 3
    cells = {(c["from"], c["to"]): c["contacts"] for c in eng["tiers"]["matrix"]}
    assert cells == {
        (None, None): 3,
        (None, "mql"): 1,
        ("mql", None): 1,
        ("mql", "mql"): 1,
        ("mql", "sales_ready"): 1,
    }
    crossings = eng["crossings"]
    assert (crossings["old"], crossings["new"]) == (3, 4)
    appeared = crossings["appeared"]
    assert appeared["count"] == 2
    assert appeared["by"] == [
        {"threshold": "mql", "direction": "up", "count": 1},
        {"threshold": "sales_ready", "direction": "up", "count": 1},
    ]
    assert [
        (x["contact_id"], x["threshold"], x["direction"], x["occurred_at"], x["score"])
        for x in appeared["examples"]
    ] == [("c-5", "mql", "up", T1, 35.0), ("c-2", "sales_ready", "up", T2, 50.0)]
    disappeared = crossings["disappeared"]
    assert disappeared["count"] == 1
    assert [
        (x["contact_id"], x["threshold"], x["direction"], x["occurred_at"], x["score"])
        for x in disappeared["examples"]
    ] == [("c-4", "mql", "up", T2, 20.0)]
    assert eng["rules_moved"] == 3
    assert [(r["rule_id"], r["status"], r["old"], r["new"], r["delta"]) for r in eng["rules"]] == [
        ("contact-form", "added", None, 35.0, 35.0),
        ("pricing-visit", "both", 45.0, 75.0, 30.0),
        ("webinar", "removed", 30.0, None, -30.0),
    ]
    assert doc["models_removed"] == [
        {
            "model": "legacy",
            "thresholds": [],
            "tiers": [{"tier": None, "contacts": 7}],
            "crossings": 0,
        }
    ]
    assert doc["models_added"] == [
        {
            "model": "fit",
            "thresholds": ["good_fit"],
            "tiers": [{"tier": None, "contacts": 6}, {"tier": "good_fit", "contacts": 1}],
            "crossings": 1,
        }
    ]


def test_text_report_shows_the_same_numbers(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    old, new, events = files
    assert cli.main(["rules", "diff", str(old), str(new), str(events)]) == 0
    out = capsys.readouterr().out
    assert "7 contacts, evaluated at 2026-03-01T11:00:00Z" in out
    assert "tiers: 3 of 7 contacts change tier (rows OLD, columns NEW)" in out
    # the matrix: rows none, mql, sales_ready; columns none, mql, sales_ready
    assert [line.split() for line in out.splitlines() if line.startswith("    ")][:4] == [
        ["from", "\\", "to", "none", "mql", "sales_ready"],
        ["none", "3", "1", "0"],
        ["mql", "1", "1", "1"],
        ["sales_ready", "0", "0", "0"],
    ]
    assert "crossings: 3 -> 4; 2 appear, 1 disappear" in out
    assert "+ c-5 mql up 2026-03-01T10:00:00Z (score 35)" in out
    assert "- c-4 mql up 2026-03-01T11:00:00Z (score 20)" in out
    rule_lines = [line.split() for line in out.splitlines() if "event" in line.split()[1:2]]
    assert rule_lines == [
        ["contact-form", "event", "-", "35", "+35", "added"],
        ["pricing-visit", "event", "45", "75", "+30"],
        ["webinar", "event", "30", "-", "-30", "removed"],
    ]
    assert "model legacy: removed (only in OLD); tiers: none 7; crossings: 0" in out
    assert "model fit: added (only in NEW); tiers: none 6, good_fit 1; crossings: 1" in out


def test_top_cuts_the_rule_list_but_counts_every_move(
    files: tuple[Path, Path, Path], capsys: Capsys
) -> None:
    old, new, events = files
    doc = run_json(
        ["rules", "diff", str(old), str(new), str(events), "--json", "--top", "1"], capsys
    )
    eng = doc["models"]["engagement"]
    assert [r["rule_id"] for r in eng["rules"]] == ["contact-form"]
    assert eng["rules_moved"] == 3


def test_same_plan_twice_changes_nothing(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    old, _new, events = files
    doc = run_json(["rules", "diff", str(old), str(old), str(events), "--json"], capsys)
    for model in doc["models"].values():
        assert model["unchanged"] is True
        assert model["tiers"]["changed"] == 0
        assert model["crossings"]["appeared"]["count"] == 0
        assert model["crossings"]["disappeared"]["count"] == 0
        assert model["rules"] == []
    assert doc["models_added"] == doc["models_removed"] == []
    assert cli.main(["rules", "diff", str(old), str(old), str(events)]) == 0
    out = capsys.readouterr().out
    assert "model engagement: no change" in out
    assert "model legacy: no change" in out


def test_at_evaluates_both_plans_at_that_time(
    files: tuple[Path, Path, Path], capsys: Capsys
) -> None:
    # At T1 the T2 events are not scored: c-2 has 15 (OLD) and 25 (NEW), c-4 has 10 and
    # 0; the T2 crossings (c-2 sales_ready up, c-4 mql up) do not exist under either plan.
    old, new, events = files
    doc = run_json(["rules", "diff", str(old), str(new), str(events), "--json", "--at", T1], capsys)
    assert doc["at"] == T1
    assert doc["after_at"] == 3
    eng = doc["models"]["engagement"]
    assert eng["crossings"]["appeared"]["count"] == 1  # c-5 mql up
    assert eng["crossings"]["disappeared"]["count"] == 0
    cells = {(c["from"], c["to"]): c["contacts"] for c in eng["tiers"]["matrix"]}
    assert cells == {(None, None): 4, (None, "mql"): 1, ("mql", "mql"): 2}


def test_events_from_stdin_are_scored_under_both_plans(
    files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    old, new, events = files
    from_file = run_json(["rules", "diff", str(old), str(new), str(events), "--json"], capsys)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(events.read_bytes())))
    from_stdin = run_json(["rules", "diff", str(old), str(new), "-", "--json"], capsys)
    assert from_stdin["models"] == from_file["models"]


# ------------------------------------------------------------------ --json schema

_CROSSING = {
    "type": "object",
    "required": ["contact_id", "threshold", "direction", "occurred_at", "score"],
    "additionalProperties": False,
    "properties": {
        "contact_id": {"type": "string"},
        "threshold": {"type": "string"},
        "direction": {"enum": ["up", "down"]},
        "occurred_at": {"type": "string"},
        "score": {"type": "number"},
    },
}
_CHANGE = {
    "type": "object",
    "required": ["count", "by", "examples"],
    "additionalProperties": False,
    "properties": {
        "count": {"type": "integer"},
        "by": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["threshold", "direction", "count"],
                "additionalProperties": False,
                "properties": {
                    "threshold": {"type": "string"},
                    "direction": {"enum": ["up", "down"]},
                    "count": {"type": "integer"},
                },
            },
        },
        "examples": {"type": "array", "items": _CROSSING},
    },
}
_TIER = {"type": ["string", "null"]}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_ONLY = {
    "type": "object",
    "required": ["model", "thresholds", "tiers", "crossings"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string"},
        "thresholds": {"type": "array", "items": {"type": "string"}},
        "tiers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tier", "contacts"],
                "additionalProperties": False,
                "properties": {"tier": _TIER, "contacts": {"type": "integer"}},
            },
        },
        "crossings": {"type": "integer"},
    },
}
#: the schema docs/cli.md describes for `rules diff --json`
SCHEMA = {
    "type": "object",
    "required": [
        "old",
        "new",
        "events",
        "at",
        "contacts",
        "rejected_lines",
        "after_at",
        "models",
        "models_added",
        "models_removed",
    ],
    "additionalProperties": False,
    "properties": {
        "old": {
            "type": "object",
            "required": ["path", "rules_version"],
            "properties": {"path": {"type": "string"}, "rules_version": {"type": "string"}},
        },
        "new": {"$ref": "#/properties/old"},
        "events": {"type": "string"},
        "at": {"type": ["string", "null"]},
        "contacts": {"type": "integer"},
        "rejected_lines": {"type": "integer"},
        "after_at": {"type": "integer"},
        "models": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["unchanged", "tiers", "crossings", "rules_moved", "rules"],
                "additionalProperties": False,
                "properties": {
                    "unchanged": {"type": "boolean"},
                    "tiers": {
                        "type": "object",
                        "required": ["old", "new", "changed", "matrix"],
                        "additionalProperties": False,
                        "properties": {
                            "old": {"type": "array", "items": {"type": "string"}},
                            "new": {"type": "array", "items": {"type": "string"}},
                            "changed": {"type": "integer"},
                            "matrix": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["from", "to", "contacts"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "from": _TIER,
                                        "to": _TIER,
                                        "contacts": {"type": "integer"},
                                    },
                                },
                            },
                        },
                    },
                    "crossings": {
                        "type": "object",
                        "required": ["old", "new", "appeared", "disappeared"],
                        "additionalProperties": False,
                        "properties": {
                            "old": {"type": "integer"},
                            "new": {"type": "integer"},
                            "appeared": _CHANGE,
                            "disappeared": _CHANGE,
                        },
                    },
                    "rules_moved": {"type": "integer"},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["rule_id", "kind", "status", "old", "new", "delta"],
                            "additionalProperties": False,
                            "properties": {
                                "rule_id": {"type": "string"},
                                "kind": {"enum": ["event", "attribute"]},
                                "status": {"enum": ["both", "added", "removed"]},
                                "old": _NUMBER_OR_NULL,
                                "new": _NUMBER_OR_NULL,
                                "delta": {"type": "number"},
                            },
                        },
                    },
                },
            },
        },
        "models_added": {"type": "array", "items": _ONLY},
        "models_removed": {"type": "array", "items": _ONLY},
    },
}


def test_json_output_follows_the_documented_schema(
    files: tuple[Path, Path, Path], capsys: Capsys
) -> None:
    old, new, events = files
    doc = run_json(["rules", "diff", str(old), str(new), str(events), "--json"], capsys)
    jsonschema.validate(doc, SCHEMA)
    # and the documented schema is in the docs, field for field
    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = docs[docs.index("## `scorestream rules diff`") :]
    section = section[: section.index("\n## ", 1)]
    for name in (
        *SCHEMA["required"],  # type: ignore[misc]
        "unchanged",
        "matrix",
        "appeared",
        "disappeared",
        "examples",
        "rules_moved",
        "status",
        "delta",
    ):
        assert re.search(rf"`(\w+\.)*{name}`", section), name


# ------------------------------------------------------------------ exit codes


def test_an_invalid_plan_exits_2_naming_file_rule_and_path(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: Capsys
) -> None:
    old, _new, events = files
    bad = tmp_path / "broken.yaml"
    bad.write_text(NEW.replace("points: 35", "points: lots"), encoding="utf-8")
    assert cli.main(["rules", "diff", str(old), str(bad), str(events)]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid rules:" in captured.err
    assert f"{bad}: rule 'contact-form' (models.engagement.rules[2].points)" in captured.err


def test_both_invalid_plans_are_reported(
    files: tuple[Path, Path, Path], tmp_path: Path, capsys: Capsys
) -> None:
    _old, _new, events = files
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text("version: 2\nmodels: {}\n", encoding="utf-8")
    two.write_text("not: [valid", encoding="utf-8")
    assert cli.main(["rules", "diff", str(one), str(two), str(events)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{one}: " in err
    assert f"{two}: not valid YAML" in err


@pytest.mark.parametrize(
    "extra",
    [["--at", "yesterday"], ["--top", "-1"], ["--partitions", "0"]],
    ids=["bad --at", "negative --top", "zero partitions"],
)
def test_bad_options_exit_2(
    files: tuple[Path, Path, Path], extra: list[str], capsys: Capsys
) -> None:
    old, new, events = files
    assert cli.main(["rules", "diff", str(old), str(new), str(events), *extra]) == 2
    assert capsys.readouterr().err.startswith("scorestream: ")


def test_unreadable_events_exit_2(files: tuple[Path, Path, Path], capsys: Capsys) -> None:
    old, new, _events = files
    assert cli.main(["rules", "diff", str(old), str(new), "/nonexistent/events.jsonl"]) == 2
    assert "cannot read events" in capsys.readouterr().err


# ------------------------------------------------------------------ the pure parts


def test_summarize_totals_are_the_explained_points_after_decay() -> None:
    # A 1-day half-life: 16 points two days before the evaluation time count 4.
    plan = parse_rules(
        "version: 1\nmodels:\n  m:\n    decay: {half_life: 1d}\n    rules:\n"
        "      - {id: r, event: page_view, points: 16}\n",
        "p.yaml",
    )
    lines = [
        ev("a", "page_view", "c-1", "2026-03-01T00:00:00Z", url="/"),
        ev("b", "page_view", "c-2", "2026-03-03T00:00:00Z", url="/"),
    ]
    run = score_lines(Engine(plan), iter(line.encode() for line in lines))
    result = summarize(run, plan)
    total = result.models["m"].rules["r"]
    assert total.kind == "event"
    assert total.total == pytest.approx(16 + 4)


def test_crossings_are_matched_as_multisets() -> None:
    # Under OLD a contact goes up, down and up again at the same instant's threshold
    # twice; NEW has it once: one of the two disappears, not both.
    key = CrossingKey("c-1", "mql", "up", 10)
    down = CrossingKey("c-1", "mql", "down", 20)
    later = CrossingKey("c-1", "mql", "up", 30)
    old = ModelResult("m", ("mql",), {"c-1": "mql"}, [CrossingSeen(key, 50.0)] * 2)
    new = ModelResult(
        "m",
        ("mql",),
        {"c-1": "mql"},
        [CrossingSeen(key, 50.0), CrossingSeen(down, 30.0), CrossingSeen(later, 55.0)],
    )
    diff = diff_model(old, new)
    assert diff.disappeared.count == 1
    assert diff.appeared.count == 2
    assert [s.key for s in diff.appeared.examples] == [down, later]
    assert diff.tier_changes == 0


def test_a_renamed_threshold_counts_as_a_tier_change() -> None:
    old = ModelResult("m", ("hot",), {"c-1": "hot", "c-2": None})
    new = ModelResult("m", ("warm",), {"c-1": "warm", "c-2": None})
    diff = diff_model(old, new)
    assert diff.tier_changes == 1
    assert [(c.old, c.new, c.contacts) for c in diff.tiers] == [
        (None, None, 1),
        ("hot", "warm", 1),
    ]


def test_diff_plans_reports_models_in_one_plan_only() -> None:
    a = PlanResult(
        "a.yaml", "sha256:a", 0, 1, {"x": ModelResult("x", ()), "y": ModelResult("y", ())}
    )
    b = PlanResult(
        "b.yaml", "sha256:b", 0, 1, {"y": ModelResult("y", ()), "z": ModelResult("z", ())}
    )
    diff = diff_plans(a, b)
    assert [m.name for m in diff.models] == ["y"]
    assert [m.name for m in diff.added] == ["z"]
    assert [m.name for m in diff.removed] == ["x"]
