"""decode_event: the wire contract of spec/events.md, accepted and rejected precisely.

Every rejection is an ``InvalidEvent`` whose ``reason`` goes to the DLQ and to the
rejects file of ``scorestream score``; the reasons are asserted word for word.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from scorestream.engine.events import (
    CART_TYPES,
    DEFAULT_MAX_BYTES,
    EMAIL_TYPES,
    CartEvent,
    CustomEvent,
    EmailEvent,
    FormSubmit,
    Identify,
    InvalidEvent,
    PageView,
    ProfileUpdate,
    decode_event,
)
from scorestream.engine.timeutil import parse_ts

BASE: dict[str, Any] = {
    "event_id": "ev-1",
    "type": "page_view",
    "contact_id": "c-42",
    "occurred_at": "2026-03-01T10:15:00Z",
    "properties": {"url": "/pricing"},
}
#: 2026-03-01T10:15:00Z in microseconds since the epoch: 20513 days * 86400 s + 10:15:00
T_UTC = (20513 * 86400 + 10 * 3600 + 15 * 60) * 1_000_000


def event(**changes: Any) -> dict[str, Any]:
    """BASE with fields replaced; a value of ``...`` removes the field."""
    out = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def reason(data: bytes | str, **kw: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_event(data, **kw)
    assert str(info.value) == info.value.reason
    return info.value.reason


# ------------------------------------------------------------------ accepted, one per type

ACCEPTED = [
    ("page_view", {"url": "/"}, PageView),
    ("page_view", {"url": "/", "title": "Home", "utm_source": "google"}, PageView),
    *[(t, {"campaign_id": "spring", "message_id": "m-1"}, EmailEvent) for t in EMAIL_TYPES],
    ("email_open", {}, EmailEvent),
    ("form_submit", {"form_id": "contact", "fields": {"company": "ACME"}}, FormSubmit),
    ("form_submit", {"form_id": "contact"}, FormSubmit),
    *[(t, {"product_id": "p-1", "value": 19.99, "currency": "EUR"}, CartEvent) for t in CART_TYPES],
    ("cart_add", {"value": 20}, CartEvent),
    ("cart_abandon", {}, CartEvent),
    ("profile_update", {"attributes": {"job_title": "CTO", "company_size": 250}}, ProfileUpdate),
    ("profile_update", {"attributes": {}}, ProfileUpdate),
    ("subscription_renewed", {"plan": "yearly"}, CustomEvent),
    ("app_download", {}, CustomEvent),
    ("loyalty_tier_reached", {"tier": "gold"}, CustomEvent),
    ("a", {}, CustomEvent),
    ("shop.order-paid_v2", {}, CustomEvent),
]


@pytest.mark.parametrize(("etype", "props", "cls"), ACCEPTED, ids=lambda v: str(v)[:30])
def test_every_type_decodes_to_its_class(etype: str, props: dict[str, Any], cls: type) -> None:
    ev = decode_event(encode(event(type=etype, properties=props)))
    assert type(ev) is cls
    assert ev.type == etype
    assert ev.properties == props
    assert ev.event_id == "ev-1"
    assert ev.key == "c-42"
    assert ev.ts == T_UTC


def test_identify_with_both_ids() -> None:
    ev = decode_event(encode(event(type="identify", anonymous_id="anon-7", properties=...)))
    assert isinstance(ev, Identify)
    assert (ev.contact_id, ev.anonymous_id, ev.key) == ("c-42", "anon-7", "c-42")


def test_properties_are_optional_for_types_without_required_ones() -> None:
    ev = decode_event(encode(event(type="email_unsubscribe", properties=...)))
    assert ev.properties == {}


def test_unknown_properties_are_kept() -> None:
    props = {"url": "/", "experiment": {"arm": "B", "n": [1, 2]}, "score_hint": 3.5, "x": None}
    ev = decode_event(encode(event(properties=props)))
    assert ev.properties == props


def test_unknown_top_level_fields_are_ignored() -> None:
    ev = decode_event(encode(event(source="tracker-3")))
    assert isinstance(ev, PageView)


def test_decoding_accepts_str_and_bytes_alike() -> None:
    text = json.dumps(BASE)
    assert decode_event(text) == decode_event(text.encode())


# ------------------------------------------------------------------ key and ts


def test_key_is_contact_id_else_anonymous_id() -> None:
    assert decode_event(encode(event(anonymous_id="anon-7"))).key == "c-42"
    anon = decode_event(encode(event(contact_id=..., anonymous_id="anon-7")))
    assert anon.key == "anon-7"
    assert anon.anonymous is True
    anon_null = decode_event(encode(event(contact_id=None, anonymous_id="anon-7")))
    assert anon_null.key == "anon-7"


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-03-01T10:15:00Z", T_UTC),
        ("2026-03-01T12:15:00+02:00", T_UTC),  # the same instant, two hours east
        ("2026-03-01T05:45:00-04:30", T_UTC),
        ("2026-03-01T10:15:00.000001Z", T_UTC + 1),
        ("2026-03-01T12:15:00.25+02:00", T_UTC + 250_000),
    ],
)
def test_ts_is_integer_microseconds_since_the_epoch(stamp: str, expected: int) -> None:
    ev = decode_event(encode(event(occurred_at=stamp)))
    assert ev.ts == expected
    assert type(ev.ts) is int


def test_ts_of_an_offset_timestamp_exact_value() -> None:
    ev = decode_event(encode(event(occurred_at="2026-03-01T10:15:00+02:00")))
    assert ev.ts == 1_772_352_900_000_000  # 08:15:00 UTC


# ------------------------------------------------------------------ rejected, with the reason


def test_not_json() -> None:
    assert reason(b"{not json").startswith("not valid JSON: ")
    assert reason(b"").startswith("not valid JSON: ")
    assert reason(encode(BASE)[:-1]).startswith("not valid JSON: ")


def test_not_utf8() -> None:
    raw = encode(event(properties={"url": "/caf"})).replace(b"/caf", b"/caf\xe9")
    offset = raw.index(b"\xe9")
    assert reason(raw) == f"not UTF-8 text: byte {offset} is invalid"
    assert reason(b"\xff\xfe{}") == "not UTF-8 text: byte 0 is invalid"


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"page_view"', b"42", b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert reason(raw) == "not a JSON object"


@pytest.mark.parametrize("field", ["event_id", "type", "occurred_at"])
def test_missing_required_field(field: str) -> None:
    assert reason(encode(event(**{field: ...}))) == f"missing field: {field}"


def test_several_missing_fields_are_all_named() -> None:
    raw = encode({"contact_id": "c-1"})
    assert reason(raw) == (
        "missing field: event_id; missing field: type; missing field: occurred_at"
    )


@pytest.mark.parametrize(
    "ids", [{"contact_id": ...}, {"contact_id": None}, {"contact_id": None, "anonymous_id": None}]
)
def test_both_ids_missing(ids: dict[str, Any]) -> None:
    assert reason(encode(event(**ids))) == "one of contact_id or anonymous_id is required"


@pytest.mark.parametrize(
    "ids", [{"anonymous_id": ...}, {"contact_id": ..., "anonymous_id": "anon-7"}]
)
def test_identify_without_both_ids(ids: dict[str, Any]) -> None:
    raw = encode(event(type="identify", properties=..., **ids))
    assert reason(raw) == "identify needs both contact_id and anonymous_id"


@pytest.mark.parametrize(
    ("etype", "props", "expected"),
    [
        ("page_view", {}, "properties.url: required"),
        ("page_view", None, "properties.url: required"),
        ("page_view", {"title": "Home"}, "properties.url: required"),
        ("page_view", {"url": 5}, "properties.url: expected string, got number"),
        ("form_submit", {}, "properties.form_id: required"),
        ("form_submit", {"form_id": None}, "properties.form_id: expected string, got null"),
        (
            "form_submit",
            {"form_id": "contact", "fields": "x"},
            "properties.fields: expected object, got string",
        ),
        ("profile_update", {}, "properties.attributes: required"),
        ("profile_update", None, "properties.attributes: required"),
        (
            "profile_update",
            {"attributes": [["job_title", "CTO"]]},
            "properties.attributes: expected object, got array",
        ),
        (
            "profile_update",
            {"attributes": "CTO"},
            "properties.attributes: expected object, got string",
        ),
        ("cart_add", {"value": "19.99"}, "properties.value: expected number, got string"),
        ("cart_add", {"value": True}, "properties.value: expected number, got boolean"),
        ("purchase", {"value": False}, "properties.value: expected number, got boolean"),
        ("checkout_start", {"value": None}, "properties.value: expected number, got null"),
        ("email_open", {"campaign_id": 7}, "properties.campaign_id: expected string, got number"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_type_specific_properties(etype: str, props: Any, expected: str) -> None:
    raw = encode(event(type=etype, properties=... if props is None else props))
    assert reason(raw) == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"event_id": 17}, "event_id: Input should be a valid string"),
        ({"event_id": ""}, "event_id: String should have at least 1 character"),
        ({"event_id": "x" * 129}, "event_id: String should have at most 128 characters"),
        ({"contact_id": 42}, "contact_id: Input should be a valid string"),
        ({"contact_id": ""}, "contact_id: String should have at least 1 character"),
        ({"contact_id": "c" * 257}, "contact_id: String should have at most 256 characters"),
        ({"anonymous_id": "a" * 257}, "anonymous_id: String should have at most 256 characters"),
        ({"type": 3}, "type: Input should be a valid string"),
        ({"properties": [1]}, "properties: Input should be an object"),
        ({"properties": "url=/"}, "properties: Input should be an object"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_wrong_types_and_lengths(changes: dict[str, Any], expected: str) -> None:
    assert reason(encode(event(**changes))) == expected


def test_length_limits_are_inclusive() -> None:
    ev = decode_event(encode(event(event_id="e" * 128, contact_id="c" * 256)))
    assert (len(ev.event_id), len(ev.key)) == (128, 256)
    ev = decode_event(encode(event(contact_id=..., anonymous_id="a" * 256)))
    assert len(ev.key) == 256


@pytest.mark.parametrize(
    "bad", ["Page_View", "1st_visit", "_x", "page view", "page/view", "", "a" * 65, "é"]
)
def test_type_not_matching_the_pattern(bad: str) -> None:
    assert reason(encode(event(type=bad))) == (
        "type: String should match pattern '^[a-z][a-z0-9_.-]{0,63}$'"
    )


def test_type_of_64_characters_is_accepted() -> None:
    assert isinstance(decode_event(encode(event(type="a" * 64))), CustomEvent)


RFC3339_REASON = (
    "occurred_at: expected an RFC 3339 timestamp with offset, e.g. 2026-03-01T10:15:00Z"
)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-03-01T10:15:00", RFC3339_REASON),
        ("2026-03-01T10:15:00.5", RFC3339_REASON),
    ],
)
def test_timestamp_without_offset(stamp: str, expected: str) -> None:
    assert reason(encode(event(occurred_at=stamp))) == expected


@pytest.mark.parametrize(
    "stamp",
    ["2026-03-01", "yesterday", "2026-02-30T10:15:00Z", "2026-03-01T25:00:00Z", "10:15:00Z"],
)
def test_timestamp_that_is_not_a_timestamp(stamp: str) -> None:
    assert reason(encode(event(occurred_at=stamp))) == RFC3339_REASON


def test_timestamp_as_a_number_is_rejected() -> None:
    assert reason(encode(event(occurred_at=1772360100))) == (
        "occurred_at: Input should be a valid datetime"
    )


@pytest.mark.parametrize(
    "stamp",
    [
        pytest.param("1772360100", id="digits-as-unix-seconds"),
        pytest.param("2026-03-01T10:15Z", id="no-seconds"),
        pytest.param("2026-03-01T10:15:00+0200", id="offset-without-colon"),
        pytest.param("2026-03-01_10:15:00Z", id="underscore-separator"),
        pytest.param("2026-03-01T10:15:00+02", id="offset-hours-only"),
    ],
)
def test_timestamp_strings_that_are_not_rfc3339_are_rejected(stamp: str) -> None:
    assert reason(encode(event(occurred_at=stamp))).startswith("occurred_at: ")


@pytest.mark.parametrize(
    "literal",
    ["NaN", "Infinity"],
)
def test_non_json_number_literals_are_rejected(literal: str) -> None:
    raw = encode(event(type="cart_add", properties={"value": 1})).replace(
        b'"value": 1', b'"value": ' + literal.encode()
    )
    assert b'"value": ' + literal.encode() in raw
    assert reason(raw).startswith("not valid JSON")


# ------------------------------------------------------------------ size limit


def test_message_over_the_size_limit() -> None:
    raw = encode(event(properties={"url": "/" + "x" * 200}))
    assert reason(raw, max_bytes=100) == f"too large: {len(raw)} bytes > 100"


def test_message_exactly_at_the_size_limit_is_accepted() -> None:
    raw = encode(BASE)
    assert isinstance(decode_event(raw, max_bytes=len(raw)), PageView)
    assert reason(raw, max_bytes=len(raw) - 1) == f"too large: {len(raw)} bytes > {len(raw) - 1}"


def test_the_default_size_limit() -> None:
    raw = encode(event(properties={"url": "/", "blob": "x" * DEFAULT_MAX_BYTES}))
    assert reason(raw) == f"too large: {len(raw)} bytes > {DEFAULT_MAX_BYTES}"


def test_size_is_checked_before_parsing() -> None:
    # An over-large message is reported as too large, not as invalid JSON.
    assert reason(b"{" * 50, max_bytes=10) == "too large: 50 bytes > 10"


def test_size_counts_utf8_bytes_not_characters() -> None:
    raw = encode(event(properties={"url": "/" + "é" * 40})).replace(b"\\u00e9", "é".encode())
    chars = len(raw.decode())
    assert len(raw) == chars + 40
    assert reason(raw, max_bytes=chars) == f"too large: {len(raw)} bytes > {chars}"


def test_size_of_a_str_counts_its_utf8_bytes() -> None:
    text = json.dumps(event(properties={"url": "/" + "é" * 40}), ensure_ascii=False)
    size = len(text.encode())
    assert reason(text, max_bytes=len(text)) == f"too large: {size} bytes > {len(text)}"


def test_events_compare_by_class_and_fields_and_are_not_hashable() -> None:
    raw = (
        b'{"event_id":"e-1","type":"webinar.attended","contact_id":"c-1",'
        b'"occurred_at":"2026-03-01T00:00:00+01:00","properties":{"seats":2}}'
    )
    first, second = decode_event(raw), decode_event(raw)
    assert first is not second and first == second
    at = parse_ts("2026-02-28T23:00:00Z")
    assert (first.key, first.ts, first.anonymous) == ("c-1", at, False)
    assert first.occurred_at.utcoffset() == timedelta(hours=1)  # the offset as given
    assert first != decode_event(raw.replace(b'"seats":2', b'"seats":3'))
    # The same fields under another class are another event.
    assert PageView(*first.fields(), first.ts) != first == CustomEvent(*first.fields(), first.ts)
    with pytest.raises(TypeError):
        hash(first)
    assert repr(first).startswith("CustomEvent(event_id='e-1', type='webinar.attended'")
