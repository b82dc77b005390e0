"""The human line of ``scorestream leads``."""

from __future__ import annotations

from scorestream.leads import format_lead

LEAD = {
    "crossing_id": "c-42:engagement:sales_ready:3",
    "contact_id": "c-42",
    "model": "engagement",
    "threshold": "sales_ready",
    "direction": "up",
    "score": 103.5,
    "previous_score": 88.0,
    "occurred_at": "2026-03-01T10:15:00Z",
    "rules_version": "sha256:abc",
    "top_contributors": [{"rule_id": "pricing-visit", "points": 45.0}],
}


def test_an_upward_crossing() -> None:
    assert format_lead(LEAD) == (
        "UP    c-42  engagement/sales_ready  88.0 -> 103.5  at 2026-03-01T10:15:00Z"
        "  top: pricing-visit +45.0"
    )


def test_a_downward_anonymous_crossing_with_several_contributors() -> None:
    lead = {
        **LEAD,
        "direction": "down",
        "anonymous": True,
        "score": 79,
        "previous_score": 101.25,
        "top_contributors": [
            {"rule_id": "a", "points": 40},
            {"rule_id": "b", "points": -12.5},
            {"rule_id": "c", "points": 3},
            {"rule_id": "d", "points": 1},
        ],
    }
    assert format_lead(lead) == (
        "DOWN  c-42 (anonymous)  engagement/sales_ready  101.2 -> 79.0"
        "  at 2026-03-01T10:15:00Z  top: a +40.0, b -12.5, c +3.0"
    )


def test_missing_fields_do_not_crash() -> None:
    assert format_lead({}) == "?     ?  ?/?  None -> None  at ?"
