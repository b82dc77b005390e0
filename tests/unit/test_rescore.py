"""The pure parts of ``scorestream rescore``: tier comparison, records, reading to the end."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scorestream import cli
from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import parse_ts
from scorestream.offline import score_lines
from scorestream.rescore import (
    Current,
    Progress,
    Span,
    TierChange,
    parse_current,
    progress_line,
    read_to_end,
    rules_changed_record,
    tier_changes,
    tier_order,
    top_contributors,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["engagement", "fit"]
ORDER = ("mql", "sales_ready")


def row(key: str, engagement: str | None, fit: str | None = None) -> dict[str, Any]:
    return {
        "contact_id": key,
        "scores": {"engagement": 120.0, "fit": 5.0},
        "tiers": {"engagement": engagement, "fit": fit},
    }


# ---------------------------------------------------------------------- tier comparison


def test_only_models_whose_tier_differs_are_changes() -> None:
    was = Current({"engagement": 60.0, "fit": 5.0}, {"engagement": "mql", "fit": None}, "v1")
    changes = tier_changes(was, row("c-1", "sales_ready", None), MODELS)
    assert changes == [
        TierChange("c-1", "engagement", "mql", "sales_ready", 120.0, 60.0, False, "v1")
    ]
    assert tier_changes(was, row("c-1", "mql", None), MODELS) == []


def test_a_contact_without_a_published_state_counts_as_in_no_tier() -> None:
    changes = tier_changes(None, row("c-2", "mql", "good_fit"), MODELS, anonymous=True)
    assert [(c.model, c.old, c.new, c.previous_score) for c in changes] == [
        ("engagement", None, "mql", None),
        ("fit", None, "good_fit", None),
    ]
    assert all(c.anonymous for c in changes)
    assert tier_changes(None, row("c-3", None, None), MODELS) == []


def test_a_model_the_published_state_does_not_name_counts_as_in_no_tier() -> None:
    was = Current({"engagement": 60.0}, {"engagement": "mql"})
    changes = tier_changes(was, row("c-4", "mql", "good_fit"), MODELS)
    assert [(c.model, c.old, c.new, c.previous_score) for c in changes] == [
        ("fit", None, "good_fit", None)
    ]


@pytest.mark.parametrize(
    ("old", "new", "direction"),
    [
        (None, "mql", "up"),
        ("mql", "sales_ready", "up"),
        ("sales_ready", "mql", "down"),
        ("mql", None, "down"),
        ("gone", None, "down"),  # a tier the plan no longer has ranks as no tier
        ("gone", "mql", "up"),
    ],
)
def test_direction_follows_the_order_of_the_thresholds(
    old: str | None, new: str | None, direction: str
) -> None:
    change = TierChange("c", "engagement", old, new, 1.0, 2.0, False)
    assert change.direction_in(ORDER) == direction


def test_tier_order_is_lowest_enter_first() -> None:
    rules = load_rules(ROOT / "rules" / "b2b.yaml")
    assert tier_order(rules.model_by_name["engagement"]) == ("mql", "sales_ready")


# ---------------------------------------------------------------------- records


def test_an_upward_change_names_the_tier_entered() -> None:
    change = TierChange("c-1", "engagement", "mql", "sales_ready", 120.0, 60.0, False, "sha256:a")
    top = [{"rule_id": "pricing-visit", "points": 45.0}]
    record = rules_changed_record(
        change, ORDER, parse_ts("2026-03-01T10:00:00Z"), "sha256:0123456789abcdef99", top
    )
    assert record == {
        "crossing_id": "c-1:engagement:sales_ready:rules_changed:0123456789abcdef",
        "contact_id": "c-1",
        "model": "engagement",
        "threshold": "sales_ready",
        "direction": "up",
        "score": 120.0,
        "previous_score": 60.0,
        "occurred_at": "2026-03-01T10:00:00Z",
        "rules_version": "sha256:0123456789abcdef99",
        "top_contributors": top,
        "anonymous": False,
        "reason": "rules_changed",
        "tier": "sales_ready",
        "previous_tier": "mql",
        "previous_rules_version": "sha256:a",
    }


def test_a_downward_change_names_the_tier_left() -> None:
    change = TierChange("a-9", "engagement", "mql", None, 30.0, 55.0, True)
    record = rules_changed_record(change, ORDER, 0, "sha256:ff", [])
    assert (record["threshold"], record["direction"], record["tier"]) == ("mql", "down", None)
    assert record["crossing_id"] == "a-9:engagement:mql:rules_changed:ff"
    assert record["anonymous"] is True
    assert record["previous_rules_version"] is None


def test_top_contributors_rank_rules_of_the_model_by_points() -> None:
    rules = load_rules(ROOT / "rules" / "b2b.yaml")
    engine = Engine(rules)
    events = [
        {"type": "page_view", "url": "/pricing", "id": "e1"},
        {"type": "page_view", "url": "/", "id": "e2"},
        {"type": "page_view", "url": "/blog/a", "id": "e3"},
        {"type": "page_view", "url": "/pricing/b", "id": "e4"},
    ]
    lines = [
        json.dumps(
            {
                "event_id": e["id"],
                "type": e["type"],
                "contact_id": "c-1",
                "occurred_at": "2026-03-01T10:00:00Z",
                "properties": {"url": e["url"]},
            }
        ).encode()
        for e in events
    ]
    run = score_lines(engine, iter(lines))
    state = run.processor.resolve("c-1")
    assert state is not None and run.at is not None
    top = top_contributors(engine, state, "engagement", run.at)
    # No decay within the same instant: points are the plan's, largest first.
    assert top == [
        {"rule_id": "pricing-visit", "points": 30.0},
        {"rule_id": "article-read", "points": 10.0},
        {"rule_id": "home-visit", "points": 5.0},
    ]
    assert top_contributors(engine, state, "fit", run.at) == []


# ---------------------------------------------------------------------- contacts.scores


def test_a_scores_record_is_parsed() -> None:
    value = json.dumps(
        {
            "contact_id": "c-1",
            "scores": {"engagement": 103.5, "fit": 20},
            "tiers": {"engagement": "sales_ready", "fit": None},
            "updated_at": "2026-03-01T10:15:00Z",
            "rules_version": "sha256:3b1f",
            "anonymous": False,
        }
    ).encode()
    assert parse_current(value) == (
        "c-1",
        Current(
            {"engagement": 103.5, "fit": 20.0},
            {"engagement": "sales_ready", "fit": None},
            "sha256:3b1f",
        ),
    )


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[]", b'{"contact_id": 5, "scores": {}, "tiers": {}}', b'{"contact_id": "c"}'],
)
def test_anything_else_on_contacts_scores_is_not_a_state(value: bytes) -> None:
    assert parse_current(value) is None


# ---------------------------------------------------------------------- progress


def test_progress_line_gives_rate_share_and_time_left() -> None:
    assert progress_line(200_000, 1_000_000, 2.0) == (
        "rescore: 200,000 / 1,000,000 events (20%), 100,000 events/s, 8s left"
    )
    assert progress_line(100, 100, 1.0).endswith("100 events/s, -")
    assert progress_line(100_000, 10_100_000, 1.0).endswith("100,000 events/s, 1m40s left")
    assert progress_line(1_000, 10_001_000, 1.0).endswith("1,000 events/s, 2h46m left")


def test_progress_prints_at_most_once_per_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    meter = Progress(1000, out, every=1.0, clock=lambda: now[0])
    for t, done in ((0.5, 100), (1.0, 200), (1.5, 300), (2.2, 400)):
        now[0] = t
        meter.update(done)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("rescore: 200 / 1,000 events (20%)")
    assert lines[1].startswith("rescore: 400 / 1,000 events (40%)")


# ---------------------------------------------------------------------- reading to the end


@dataclass
class FakeMessage:
    t: str
    p: int
    o: int
    v: bytes | None = b"{}"

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def value(self) -> bytes | None:
        return self.v


class FakeConsumer:
    """Hands out scripted batches; ``position`` says where each partition's fetch is."""

    def __init__(self, batches: list[list[FakeMessage]], positions: dict[tuple[str, int], int]):
        self.batches = batches
        self.positions = positions
        self.assigned: list[tuple[str, int, int]] = []
        self.paused: list[tuple[str, int]] = []

    def assign(self, tps: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []

    def pause(self, tps: list[Any]) -> None:
        self.paused.extend((tp.topic, tp.partition) for tp in tps)

    def position(self, tps: list[Any]) -> list[Any]:
        for tp in tps:
            tp.offset = self.positions.get((tp.topic, tp.partition), -1001)
        return tps

    def unassign(self) -> None:
        self.assigned = []


def test_read_to_end_stops_at_the_snapshot_and_skips_later_records() -> None:
    spans = [Span("a", 0, 3, 6), Span("a", 1, 0, 0), Span("b", 0, 0, 2)]
    consumer = FakeConsumer(
        [
            [FakeMessage("a", 0, 3), FakeMessage("b", 0, 0), FakeMessage("a", 0, 4)],
            # a[0] offset 6 was written after the snapshot: not part of the rebuild
            [FakeMessage("a", 0, 5), FakeMessage("b", 0, 1), FakeMessage("a", 0, 6)],
        ],
        {},
    )
    seen: list[tuple[str, int, int]] = []

    def take(batch: list[Any]) -> None:
        seen.extend((m.topic(), m.partition(), m.offset()) for m in batch)

    read_to_end(consumer, spans, take)  # type: ignore[arg-type]
    assert seen == [("a", 0, 3), ("b", 0, 0), ("a", 0, 4), ("a", 0, 5), ("b", 0, 1)]
    assert sorted(consumer.paused) == [("a", 0), ("b", 0)]


def test_a_partition_whose_position_passed_its_end_is_finished() -> None:
    # The last offsets hold no records (a transaction marker, a compaction gap).
    spans = [Span("a", 0, 0, 5)]
    consumer = FakeConsumer([[FakeMessage("a", 0, 0), FakeMessage("a", 0, 2)]], {("a", 0): 5})
    seen: list[int] = []

    def take(batch: list[Any]) -> None:
        seen.extend(m.offset() for m in batch)

    read_to_end(consumer, spans, take)  # type: ignore[arg-type]
    assert seen == [0, 2]
    assert consumer.paused == [("a", 0)]


def test_reading_gives_up_when_nothing_comes() -> None:
    from scorestream.errors import KafkaFailure  # noqa: PLC0415

    consumer = FakeConsumer([], {("a", 0): 1})
    with pytest.raises(KafkaFailure, match=r"unfinished: a\[0\]"):
        read_to_end(consumer, [Span("a", 0, 0, 5)], lambda b: None, stall_limit=0.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("option", "value"), [("--in", "-1"), ("--grace", "-0.5"), ("--wait", "0")]
)
def test_hand_over_options_out_of_range_are_usage_errors_before_kafka(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = str(ROOT / "rules" / "b2b.yaml")
    code = cli.main(["rescore", "--rules", plan, option, value])
    assert code == 2
    assert "--in and --grace must be >= 0, --wait > 0" in capsys.readouterr().err


def test_an_invalid_plan_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels: {m: {rules: []}}\n")
    assert cli.main(["rescore", "--dry-run", "--rules", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
