"""Collector intake: bodies, the engine's validation, filled fields, keys and topics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scorestream.collector.intake import (
    MAX_BATCH,
    Accepted,
    BodyError,
    Rejected,
    parse_body,
    prepare,
)
from scorestream.engine.events import decode_event
from scorestream.engine.timeutil import parse_ts

NOW = parse_ts("2026-03-01T10:15:00Z")
PAGE = {
    "event_id": "pv-1",
    "type": "page_view",
    "anonymous_id": "a-1",
    "occurred_at": "2026-03-01T10:14:59Z",
    "properties": {"url": "/pricing"},
}


def take(item: Any, **kw: Any) -> Accepted:
    out = prepare(item, 0, NOW, max_bytes=kw.pop("max_bytes", 1_000_000), **kw)
    assert isinstance(out, Accepted), out
    return out


def record(item: Any, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(take(item, **kw).value)
    return doc


def test_one_object_or_an_array() -> None:
    assert parse_body(json.dumps(PAGE).encode()) == [PAGE]
    assert parse_body(json.dumps([PAGE, PAGE]).encode()) == [PAGE, PAGE]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{nope", 400, "body is not valid JSON"),
        (b"\xff\xfe", 400, "body is not UTF-8"),
        (b'"text"', 400, "an event (JSON object) or an array"),
        (b"[]", 400, "empty batch"),
        (b'[{"value": NaN}]', 400, "NaN is not a JSON number"),
        (json.dumps([PAGE] * (MAX_BATCH + 1)).encode(), 413, "at most 500 per request"),
    ],
)
def test_bodies_that_are_refused_whole(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(BodyError) as err:
        parse_body(body)
    assert err.value.status == status
    assert reason in err.value.reason


def test_a_valid_event_becomes_a_record_keyed_and_routed_like_the_contract() -> None:
    acc = take(PAGE)
    assert acc.topic == "events.page_view"
    assert acc.key == b"a-1"
    assert acc.event_id == "pv-1"
    doc = json.loads(acc.value)
    assert doc["received_at"] == "2026-03-01T10:15:00Z"
    assert "client_address" not in doc
    # what the worker will decode is the very event the collector validated
    event = decode_event(acc.value)
    assert event.occurred_at.isoformat() == "2026-03-01T10:14:59+00:00"
    assert event.properties == {"url": "/pricing"}


def test_the_contact_id_is_the_key_and_identify_goes_to_the_profile_topic() -> None:
    acc = take({**PAGE, "type": "identify", "contact_id": "c-9", "properties": {}})
    assert acc.topic == "contacts.profile"
    assert acc.key == b"c-9"
    assert take({**PAGE, "type": "webinar_attended"}).topic == "events.custom"


def test_missing_event_id_and_occurred_at_are_filled() -> None:
    item = {k: v for k, v in PAGE.items() if k not in {"event_id", "occurred_at"}}
    first, second = take(item), take(item)
    assert len(first.event_id) == 32 and first.event_id != second.event_id
    doc = json.loads(first.value)
    assert doc["event_id"] == first.event_id
    assert doc["occurred_at"] == "2026-03-01T10:15:00Z"


def test_invalid_events_are_rejected_with_the_engines_reason() -> None:
    out = prepare({**PAGE, "properties": {}}, 3, NOW, max_bytes=1_000_000)
    assert out == Rejected(3, "properties.url: required", "pv-1")
    out = prepare({"type": "page_view"}, 0, NOW, max_bytes=1_000_000)
    assert isinstance(out, Rejected)
    assert out.reason == "one of contact_id or anonymous_id is required"
    out = prepare({**PAGE, "occurred_at": "yesterday"}, 0, NOW, max_bytes=1_000_000)
    assert isinstance(out, Rejected) and "RFC 3339" in out.reason
    assert prepare([1, 2], 0, NOW, max_bytes=1000) == Rejected(0, "not a JSON object")
    out = prepare({**PAGE, "event_id": 7}, 0, NOW, max_bytes=1000)
    assert isinstance(out, Rejected) and out.event_id is None


def test_clients_cannot_set_the_collectors_fields() -> None:
    doc = record({**PAGE, "received_at": "1999-01-01T00:00:00Z", "client_address": "1.2.3.4"})
    assert doc["received_at"] == "2026-03-01T10:15:00Z"
    assert "client_address" not in doc


def test_the_client_address_is_added_only_when_given() -> None:
    assert record(PAGE, client_address="192.0.2.7")["client_address"] == "192.0.2.7"


def test_sent_at_corrects_a_wrong_browser_clock() -> None:
    # the browser is 1 hour ahead: it says it sent at 11:15 what happened at 11:14:50
    item = {**PAGE, "occurred_at": "2026-03-01T11:14:50Z", "sent_at": "2026-03-01T11:15:00Z"}
    doc = record(item)
    assert doc["occurred_at"] == "2026-03-01T10:14:50Z"
    assert "sent_at" not in doc
    # never later than received, even if the browser says it sent before it happened
    later = {**PAGE, "occurred_at": "2026-03-01T10:16:00Z", "sent_at": "2026-03-01T10:15:00Z"}
    assert record(later)["occurred_at"] == "2026-03-01T10:15:00Z"
    bad = prepare({**PAGE, "sent_at": "now"}, 0, NOW, max_bytes=1_000_000)
    assert isinstance(bad, Rejected) and bad.reason.startswith("sent_at:")


def test_an_event_too_large_for_the_worker_is_rejected() -> None:
    big = {**PAGE, "properties": {"url": "/x", "blob": "y" * 2000}}
    out = prepare(big, 0, NOW, max_bytes=1000)
    assert isinstance(out, Rejected) and out.reason.startswith("too large:")
