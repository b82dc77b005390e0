"""``scorestream score``, ``explain`` and ``rules check`` through ``cli.main`` (spec/cli.md)."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scorestream import cli

ROOT = Path(__file__).resolve().parents[2]

PLAN = """\
version: 1
models:
  engagement:
    thresholds:
      - {name: mql, enter: 20, exit: 10}
      - {name: sales_ready, enter: 40, exit: 30}
    rules:
      - id: pricing-visit
        event: page_view
        where: {url: {glob: "/pricing*"}}
        points: 15
      - id: email-ignored
        event: email_sent
        unless: {event: email_open, within: 24h, match: [campaign_id]}
        points: -5
  fit:
    rules:
      - id: large-company
        attribute: company_size
        where: {gte: 200}
        points: 20
"""

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _no_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SCORESTREAM_"):
            monkeypatch.delenv(name)


def ev(eid: str, etype: str, contact: str, at: str, **props: Any) -> str:
    obj: dict[str, Any] = {"event_id": eid, "type": etype, "occurred_at": at}
    if contact.startswith("anon-"):
        obj["anonymous_id"] = contact
    else:
        obj["contact_id"] = contact
    if props:
        obj["properties"] = props
    return json.dumps(obj)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    return write(tmp_path, "plan.yaml", PLAN)


# Three contacts, in the file in no particular order; c-b's events come first but are later.
EVENTS = [
    ev("b1", "page_view", "c-b", "2026-03-01T10:00:00Z", url="/pricing"),
    ev("b2", "page_view", "c-b", "2026-03-01T10:01:00Z", url="/pricing/team"),
    ev("a1", "page_view", "c-a", "2026-03-01T09:00:00Z", url="/pricing"),
    ev("a2", "page_view", "c-a", "2026-03-01T09:01:00Z", url="/pricing"),
    ev("a3", "page_view", "c-a", "2026-03-01T09:02:00Z", url="/pricing"),
    ev("c1", "profile_update", "c-c", "2026-03-01T08:00:00Z", attributes={"company_size": 500}),
]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return write(tmp_path, "events.jsonl", "\n".join(EVENTS) + "\n")


# ------------------------------------------------------------------ stdout


def test_one_line_per_contact_sorted_with_every_model(
    plan: Path, events: Path, capsys: Capsys
) -> None:
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    out = capsys.readouterr().out
    assert lines_of(out) == [
        {
            "contact_id": "c-a",
            "scores": {"engagement": 45.0, "fit": 0.0},
            "tiers": {"engagement": "sales_ready", "fit": None},
        },
        {
            "contact_id": "c-b",
            "scores": {"engagement": 30.0, "fit": 0.0},
            "tiers": {"engagement": "mql", "fit": None},
        },
        {
            "contact_id": "c-c",
            "scores": {"engagement": 0.0, "fit": 20.0},
            "tiers": {"engagement": None, "fit": None},
        },
    ]


def test_an_identified_visitor_is_reported_under_its_contact(
    plan: Path, tmp_path: Path, capsys: Capsys
) -> None:
    events = write(
        tmp_path,
        "events.jsonl",
        "\n".join(
            [
                ev("v1", "page_view", "anon-9", "2026-03-01T09:00:00Z", url="/pricing"),
                ev("v2", "page_view", "anon-9", "2026-03-01T09:05:00Z", url="/pricing"),
                json.dumps(
                    {
                        "event_id": "i1",
                        "type": "identify",
                        "contact_id": "c-z",
                        "anonymous_id": "anon-9",
                        "occurred_at": "2026-03-01T09:10:00Z",
                    }
                ),
                ev("z1", "page_view", "c-z", "2026-03-01T09:20:00Z", url="/pricing"),
            ]
        ),
    )
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    rows = lines_of(capsys.readouterr().out)
    assert [r["contact_id"] for r in rows] == ["c-z"]
    assert rows[0]["scores"] == {"engagement": 45.0, "fit": 0.0}


# ------------------------------------------------------------------ --at


AT_EVENTS = [
    ev("e1", "email_sent", "c-1", "2026-03-01T08:00:00Z", campaign_id="spring"),
    ev("p1", "page_view", "c-1", "2026-03-03T08:00:00Z", url="/pricing"),
]


@pytest.mark.parametrize(
    ("at", "engagement"),
    [
        ("2026-03-01T08:00:00Z", 0.0),
        ("2026-03-02T07:59:59Z", 0.0),  # t + 24h - 1s: the timer has not fired
        ("2026-03-02T07:59:59.999999Z", 0.0),
        ("2026-03-02T08:00:00Z", -5.0),  # t + 24h: it fires, at or before --at
        ("2026-03-02T10:00:00+02:00", -5.0),  # the same instant, with an offset
        ("2026-03-02T09:00:00Z", -5.0),
    ],
)
def test_at_scores_events_up_to_it_and_fires_due_timers(
    plan: Path, tmp_path: Path, capsys: Capsys, at: str, engagement: float
) -> None:
    events = write(tmp_path, "events.jsonl", "\n".join(AT_EVENTS) + "\n")
    assert cli.main(["score", "--rules", str(plan), "--at", at, str(events)]) == 0
    captured = capsys.readouterr()
    # the pricing visit of 2026-03-03 is after --at: not scored (it would add 15)
    assert lines_of(captured.out) == [
        {
            "contact_id": "c-1",
            "scores": {"engagement": engagement, "fit": 0.0},
            "tiers": {"engagement": None, "fit": None},
        }
    ]
    assert "scorestream: 1 events after --at were not scored" in captured.err


def test_without_at_scores_at_the_latest_event(plan: Path, tmp_path: Path, capsys: Capsys) -> None:
    events = write(tmp_path, "events.jsonl", "\n".join(AT_EVENTS) + "\n")
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    (row,) = lines_of(capsys.readouterr().out)
    assert row["scores"]["engagement"] == 10.0  # -5 (timer) + 15 (pricing)


def test_an_open_within_the_window_cancels_the_timer(
    plan: Path, tmp_path: Path, capsys: Capsys
) -> None:
    events = write(
        tmp_path,
        "events.jsonl",
        "\n".join(
            [
                AT_EVENTS[0],
                ev("o1", "email_open", "c-1", "2026-03-02T08:00:00Z", campaign_id="spring"),
            ]
        ),
    )
    assert (
        cli.main(["score", "--rules", str(plan), "--at", "2026-03-05T00:00:00Z", str(events)]) == 0
    )
    (row,) = lines_of(capsys.readouterr().out)
    assert row["scores"]["engagement"] == 0.0


def test_a_bad_at_is_a_usage_error(plan: Path, events: Path, capsys: Capsys) -> None:
    assert cli.main(["score", "--rules", str(plan), "--at", "2026-03-02", str(events)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("scorestream: --at: invalid timestamp '2026-03-02'")


# ------------------------------------------------------------------ --crossings


LEAD_KEYS = {
    "crossing_id",
    "contact_id",
    "model",
    "threshold",
    "direction",
    "score",
    "previous_score",
    "occurred_at",
    "rules_version",
    "top_contributors",
}


def test_crossings_file_in_the_leads_format_ordered_by_time(
    plan: Path, events: Path, tmp_path: Path, capsys: Capsys
) -> None:
    crossings = tmp_path / "crossings.jsonl"
    assert (
        cli.main(["score", "--rules", str(plan), "--crossings", str(crossings), str(events)]) == 0
    )
    capsys.readouterr()
    rows = lines_of(crossings.read_text(encoding="utf-8"))
    version = "sha256:" + hashlib.sha256(plan.read_bytes()).hexdigest()
    for row in rows:
        assert set(row) >= LEAD_KEYS
        assert row["rules_version"] == version
        assert row["crossing_id"] == (
            f"{row['contact_id']}:{row['model']}:{row['threshold']}:"
            + row["crossing_id"].rsplit(":", 1)[1]
        )
    # c-a's crossings (09:01, 09:02) come before c-b's (10:01) although c-b is first in the file
    assert [
        (r["contact_id"], r["threshold"], r["direction"], r["occurred_at"], r["crossing_id"])
        for r in rows
    ] == [
        ("c-a", "mql", "up", "2026-03-01T09:01:00Z", "c-a:engagement:mql:1"),
        ("c-a", "sales_ready", "up", "2026-03-01T09:02:00Z", "c-a:engagement:sales_ready:1"),
        ("c-b", "mql", "up", "2026-03-01T10:01:00Z", "c-b:engagement:mql:1"),
    ]
    first = rows[0]
    assert (first["score"], first["previous_score"]) == (30.0, 15.0)
    assert first["top_contributors"] == [{"rule_id": "pricing-visit", "points": 30.0}]
    assert first["model"] == "engagement"


def test_a_timer_crossing_is_stamped_with_its_due_time(tmp_path: Path, capsys: Capsys) -> None:
    plan = write(
        tmp_path,
        "plan.yaml",
        PLAN.replace("{name: mql, enter: 20, exit: 10}", "{name: mql, enter: 30}"),
    )
    events = write(
        tmp_path,
        "events.jsonl",
        "\n".join(
            [
                ev("p1", "page_view", "c-1", "2026-03-01T07:00:00Z", url="/pricing"),
                ev("p2", "page_view", "c-1", "2026-03-01T07:30:00Z", url="/pricing"),
                ev("e1", "email_sent", "c-1", "2026-03-01T08:00:00Z", campaign_id="spring"),
                ev("x1", "page_view", "c-1", "2026-03-04T00:00:00Z", url="/about"),
            ]
        ),
    )
    crossings = tmp_path / "crossings.jsonl"
    assert (
        cli.main(["score", "--rules", str(plan), "--crossings", str(crossings), str(events)]) == 0
    )
    (row,) = lines_of(capsys.readouterr().out)
    assert row["scores"]["engagement"] == 25.0
    rows = lines_of(crossings.read_text(encoding="utf-8"))
    assert [(r["direction"], r["occurred_at"], r["score"]) for r in rows] == [
        ("up", "2026-03-01T07:30:00Z", 30.0),
        ("down", "2026-03-02T08:00:00Z", 25.0),  # t_A + 24h, not the time of a later event
    ]


# ------------------------------------------------------------------ rejects

BAD_LINES = [
    "not json",
    json.dumps({"event_id": "x1", "type": "page_view", "contact_id": "c-a"}),
    json.dumps(
        {
            "event_id": "x2",
            "type": "page_view",
            "contact_id": "c-a",
            "occurred_at": "2026-03-01T09:00:00Z",
        }
    ),
]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    # line 1 valid, 2 bad, 3 valid, 4 empty (skipped but counted), 5 bad, 6 bad, 7 valid
    lines = [EVENTS[2], BAD_LINES[0], EVENTS[3], "", BAD_LINES[1], BAD_LINES[2], EVENTS[4]]
    return write(tmp_path, "events.jsonl", "\n".join(lines) + "\n")


EXPECTED_REJECTS = [
    (2, "not valid JSON: ", BAD_LINES[0]),
    (5, "missing field: occurred_at", BAD_LINES[1]),
    (6, "properties.url: required", BAD_LINES[2]),
]


def test_rejects_file_has_line_reason_and_input(
    plan: Path, mixed: Path, tmp_path: Path, capsys: Capsys
) -> None:
    rejects = tmp_path / "rejects.jsonl"
    assert cli.main(["score", "--rules", str(plan), "--rejects", str(rejects), str(mixed)]) == 0
    captured = capsys.readouterr()
    rows = lines_of(rejects.read_text(encoding="utf-8"))
    assert len(rows) == len(EXPECTED_REJECTS)
    for row, (line, reason, text) in zip(rows, EXPECTED_REJECTS, strict=True):
        assert set(row) == {"line", "reason", "input"}
        assert row["line"] == line
        assert row["reason"].startswith(reason)
        assert row["input"] == text
    # the run went on: the three valid pricing visits of c-a were scored
    assert lines_of(captured.out) == [
        {
            "contact_id": "c-a",
            "scores": {"engagement": 45.0, "fit": 0.0},
            "tiers": {"engagement": "sales_ready", "fit": None},
        }
    ]
    assert "line " not in captured.err


def test_without_rejects_file_the_reasons_go_to_stderr(
    plan: Path, mixed: Path, capsys: Capsys
) -> None:
    assert cli.main(["score", "--rules", str(plan), str(mixed)]) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("line ")]
    assert len(err) == 3
    for line_text, (line, reason, _) in zip(err, EXPECTED_REJECTS, strict=True):
        assert line_text.startswith(f"line {line}: {reason}")
    assert len(lines_of(captured.out)) == 1


def _fail_on_mql(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the offline emitter fail on every `mql` crossing (an internal error)."""
    from scorestream import offline  # noqa: PLC0415

    kept = offline._Collect.crossing

    def crossing(self: Any, crossing: Any) -> None:
        if crossing.threshold == "mql":
            raise RuntimeError("boom")
        kept(self, crossing)

    monkeypatch.setattr(offline._Collect, "crossing", crossing)


def test_an_internal_error_is_reported_with_its_line_and_the_run_goes_on(
    plan: Path, mixed: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault of ours while applying line 3 (c-a crossing `mql`): the worker would put the
    # event in the DLQ with the reason; `score` reports it like a reject and exits 1.
    _fail_on_mql(monkeypatch)
    rejects = tmp_path / "rejects.jsonl"
    assert cli.main(["score", "--rules", str(plan), "--rejects", str(rejects), str(mixed)]) == 1
    captured = capsys.readouterr()
    rows = lines_of(rejects.read_text(encoding="utf-8"))
    assert [row["line"] for row in rows] == [2, 3, 5, 6]
    internal = rows[1]
    assert internal["reason"] == "internal error: RuntimeError('boom')"
    event = json.loads(internal["input"])
    assert event == json.loads(EVENTS[3])  # the event as applied, encoded again
    assert "1 events hit an internal error" in captured.err
    # The other events were scored: c-a went on to 45 and `sales_ready`.
    assert lines_of(captured.out)[0]["scores"]["engagement"] == 45.0
    assert lines_of(captured.out)[0]["tiers"]["engagement"] == "sales_ready"


def test_explain_and_rules_diff_say_so_and_exit_1_on_an_internal_error(
    plan: Path, mixed: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_on_mql(monkeypatch)
    assert cli.main(["explain", "--rules", str(plan), "--contact", "c-a", str(mixed)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["contact_id"] == "c-a"  # the explanation still comes
    assert "1 events hit an internal error" in captured.err
    assert "line 3: internal error: RuntimeError('boom')" in captured.err
    assert "line 2:" not in captured.err  # invalid input is not an internal error

    assert cli.main(["rules", "diff", str(plan), str(plan), str(mixed)]) == 1
    assert capsys.readouterr().err.count("line 3: internal error") == 2  # once per plan


def test_a_file_of_only_bad_lines_still_exits_0(plan: Path, tmp_path: Path, capsys: Capsys) -> None:
    events = write(tmp_path, "events.jsonl", "\n".join(BAD_LINES) + "\n")
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [line.split(":")[0] for line in captured.err.splitlines()] == [
        "line 1",
        "line 2",
        "line 3",
    ]


# ------------------------------------------------------------------ stdin


def test_events_from_stdin(
    plan: Path, events: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(events.read_bytes())))
    assert cli.main(["score", "--rules", str(plan), "-"]) == 0
    from_stdin = capsys.readouterr().out
    assert from_stdin == from_file
    assert len(lines_of(from_stdin)) == 3


# ------------------------------------------------------------------ usage errors (exit 2)


def test_invalid_rules_exit_2_with_the_problem_on_stderr(
    events: Path, tmp_path: Path, capsys: Capsys
) -> None:
    bad = write(tmp_path, "bad.yaml", PLAN.replace("within: 24h", "within: 1 day"))
    assert cli.main(["score", "--rules", str(bad), str(events)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        f"scorestream: {bad}: rule 'email-ignored' (models.engagement.rules[1].unless.within): "
        "invalid duration '1 day'" in captured.err
    )


def test_missing_rules_file_exits_2(events: Path, tmp_path: Path, capsys: Capsys) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["score", "--rules", str(missing), str(events)]) == 2
    assert f"{missing}: cannot read rule file" in capsys.readouterr().err


def test_missing_events_file_exits_2(plan: Path, tmp_path: Path, capsys: Capsys) -> None:
    missing = tmp_path / "nope.jsonl"
    assert cli.main(["score", "--rules", str(plan), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"scorestream: {missing}: cannot read events: ")


def test_rules_check_valid_files_exit_0_with_summaries(capsys: Capsys) -> None:
    paths = [str(ROOT / "rules" / "b2b.yaml"), str(ROOT / "rules" / "ecommerce.yaml")]
    assert cli.main(["rules", "check", *paths]) == 0
    out = capsys.readouterr().out
    assert f"{paths[0]}: sha256:" in out
    assert f"{paths[1]}: sha256:" in out
    assert "threshold sales_ready: enter 100, exit 80" in out


def test_rules_check_names_the_invalid_file_and_exits_2(
    plan: Path, tmp_path: Path, capsys: Capsys
) -> None:
    bad = write(tmp_path, "bad.yaml", PLAN.replace("points: 15", "pionts: 15"))
    assert cli.main(["rules", "check", str(plan), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{plan}: sha256:" in captured.out  # the valid one is still summarised
    assert f"{bad}" not in captured.out
    assert captured.err.startswith("scorestream: invalid rules:\n")
    assert (
        f"{bad}: rule 'pricing-visit' (models.engagement.rules[0].pionts): unknown key 'pionts'"
        in captured.err
    )
    assert f"{plan}:" not in captured.err


# ------------------------------------------------------------------ explain


EXPLAIN_EVENTS = [
    ev("1", "page_view", "c-1", "2026-03-01T10:00:00Z", url="/pricing"),
    ev("2", "page_view", "c-1", "2026-03-03T11:00:00Z", url="/blog/a"),
    ev("3", "form_submit", "c-1", "2026-03-07T12:30:00Z", form_id="contact"),
    ev(
        "4",
        "profile_update",
        "c-1",
        "2026-03-08T12:30:00Z",
        attributes={"company_size": 500, "job_title": "CTO"},
    ),
    ev("5", "email_unsubscribe", "c-1", "2026-03-09T12:30:00Z"),
    *[ev(f"u{i}", "email_unsubscribe", "c-2", f"2026-03-09T12:3{i}:00Z") for i in range(4)],
]


def _clamp(value: float, lo: float | None, hi: float | None) -> float:
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


@pytest.mark.parametrize(
    ("contact", "at"), [("c-1", "2026-04-01T00:00:00Z"), ("c-2", "2026-03-10T00:00:00Z")]
)
def test_explain_points_add_up_to_the_score(
    tmp_path: Path, capsys: Capsys, contact: str, at: str
) -> None:
    rules = ROOT / "rules" / "b2b.yaml"  # half-life decay, clamp [-50, 500]
    events = write(tmp_path, "events.jsonl", "\n".join(EXPLAIN_EVENTS) + "\n")
    args = ["--rules", str(rules), "--at", at]
    assert cli.main(["explain", *args, "--contact", contact, str(events)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["contact_id"], doc["at"]) == (contact, at)
    assert cli.main(["score", *args, str(events)]) == 0
    scored = {row["contact_id"]: row for row in lines_of(capsys.readouterr().out)}[contact]
    clamps = {"engagement": (-50.0, 500.0), "fit": (None, None)}
    assert set(doc["models"]) == set(clamps)
    for name, model in doc["models"].items():
        points = [r["points"] for r in model["rules"]]
        total = _clamp(sum(points), *clamps[name])
        # each listed rule is rounded to 2 decimals: the sum may be off by half a cent each
        assert abs(round(total, 2) - model["score"]) <= 0.005 * len(points) + 1e-9, (name, model)
        assert model["score"] == scored["scores"][name]  # the same as `score` reports
    engagement = doc["models"]["engagement"]
    if contact == "c-1":
        assert {r["rule_id"] for r in engagement["rules"]} == {
            "pricing-visit",
            "article-read",
            "contact-form",
            "unsubscribed",
        }
        assert 0 < engagement["score"] < 15 + 10 + 30 - 20  # decayed
        assert doc["models"]["fit"]["rules"] == [
            {"rule_id": "decision-maker", "kind": "attribute", "points": 15.0},
            {"rule_id": "large-company", "kind": "attribute", "points": 20.0},
        ]
        assert doc["models"]["fit"]["score"] == 35.0
    else:
        # four unsubscribes, about -80 after a little decay: clamped to min_score
        (rule,) = engagement["rules"]
        assert rule["rule_id"] == "unsubscribed"
        assert rule["points"] < -79
        assert engagement["score"] == -50.0


def test_explain_unknown_contact_fails(tmp_path: Path, capsys: Capsys) -> None:
    events = write(tmp_path, "events.jsonl", "\n".join(EXPLAIN_EVENTS) + "\n")
    rules = str(ROOT / "rules" / "b2b.yaml")
    assert cli.main(["explain", "--rules", rules, "--contact", "c-9", str(events)]) == 1
    assert "no events for contact 'c-9'" in capsys.readouterr().err


# ------------------------------------------------------------------ the program itself


def program(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m scorestream``: :func:`cli.entry`, which ends batch commands itself."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SCORESTREAM_") and k != "PYTHONUNBUFFERED"
    }
    return subprocess.run(
        [sys.executable, "-m", "scorestream", *argv],
        capture_output=True,  # pipes: block-buffered, so unflushed output would be lost
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_the_program_ends_batch_commands_with_all_their_output(
    plan: Path, events: Path, tmp_path: Path, capsys: Capsys
) -> None:
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    in_process = capsys.readouterr().out
    done = program("score", "--rules", str(plan), str(events))
    assert (done.returncode, done.stdout) == (0, in_process)
    assert len(done.stdout.splitlines()) == 3

    # explain prints without flushing: the program must flush before it ends.
    done = program("explain", "--rules", str(plan), "--contact", "c-a", str(events))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["contact_id"], doc["models"]["engagement"]["score"]) == ("c-a", 45.0)

    bad = write(tmp_path, "bad.jsonl", "not json\n")
    done = program("score", "--rules", str(plan), str(bad))
    assert done.returncode == 0
    assert "line 1: not valid JSON" in done.stderr

    done = program("explain", "--rules", str(plan), "--contact", "nobody", str(events))
    assert done.returncode == 1
    assert "no events for contact 'nobody'" in done.stderr

    done = program("score", "--rules", str(tmp_path / "missing.yaml"), str(events))
    assert done.returncode == 2


def test_the_program_gives_the_collector_back_after_a_batch_command_in_process(
    plan: Path, events: Path, capsys: Capsys
) -> None:
    assert gc.isenabled()
    assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
    assert gc.isenabled()
    gc.disable()  # a caller that keeps the collector off gets it back off
    try:
        assert cli.main(["score", "--rules", str(plan), str(events)]) == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
