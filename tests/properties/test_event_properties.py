"""Hypothesis: the fast event decoder never accepts what the models reject, and builds the
very event the models would (one property per test)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scorestream.engine import events
from scorestream.engine.events import KNOWN_TYPES, decode_event

PROFILE = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ids = st.one_of(
    st.none(),
    st.text(min_size=0, max_size=3),
    st.text(alphabet="abc-", min_size=1, max_size=12),
    st.just("x" * 256),
    st.just("x" * 257),
    st.integers(0, 9),
    st.booleans(),
)
_types = st.one_of(
    st.sampled_from(sorted(KNOWN_TYPES)),
    st.sampled_from(["app_download", "a.b-c_9", "x" * 64, "x" * 65, "Page", "9a", "", "a b"]),
    st.integers(0, 3),
    st.none(),
)
_times = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T10:15:00Z",
            "2026-03-01t10:15:00z",
            "2026-03-01 10:15:00+02:00",
            "2026-03-01T10:15:00.123456789Z",
            "2026-03-01T10:15:00.5-05:30",
            "2026-03-01T10:15:00",
            "2026-02-30T10:15:00Z",
            "2026-03-01T25:15:00Z",
            "2026-03-01T10:15:00+24:00",
            "2026-03-01T10:15Z",
            "1772360100",
        ]
    ),
    st.integers(0, 2_000_000_000),
    st.none(),
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
)
_prop_names = st.sampled_from(
    [
        "url",
        "title",
        "campaign_id",
        "link_url",
        "form_id",
        "fields",
        "value",
        "currency",
        "attributes",
        "product_id",
        "other",
    ]
)
_props = st.one_of(
    st.dictionaries(_prop_names, _values, max_size=4),
    st.none(),
    st.lists(st.integers(), max_size=1),
)


def sometimes(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Mostly a valid value, now and then a wrong one (so both paths are exercised)."""
    return st.integers(0, 19).flatmap(lambda roll: bad if roll == 7 else good)


_good_times = st.sampled_from(
    [
        "2026-03-01T10:15:00Z",
        "2026-03-01t10:15:00z",
        "2026-03-01 10:15:00+02:00",
        "2026-03-01T10:15:00.123456789Z",
        "2026-03-01T10:15:00.5-05:30",
        "1999-12-31T23:59:59.999999+14:00",
    ]
)
_good_ids = st.text(alphabet="abcxyz-0123456789é", min_size=1, max_size=16)
_good_props = st.fixed_dictionaries(
    {},
    optional={
        "url": st.text(max_size=6),
        "title": sometimes(st.text(max_size=3), _values),
        "form_id": st.text(max_size=4),
        "attributes": st.dictionaries(st.sampled_from(["a", "b"]), _values, max_size=2),
        "campaign_id": st.text(max_size=3),
        "value": st.one_of(st.integers(-3, 3), st.floats(-1, 1)),
        "fields": st.dictionaries(st.sampled_from(["email"]), st.text(max_size=3), max_size=1),
        "other": _values,
    },
)


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    fields = (
        ("event_id", sometimes(_good_ids, _ids)),
        ("type", sometimes(st.sampled_from([*sorted(KNOWN_TYPES), "app_download"]), _types)),
        ("contact_id", sometimes(_good_ids, _ids)),
        ("anonymous_id", sometimes(_good_ids, _ids)),
        ("occurred_at", sometimes(_good_times, _times)),
        ("properties", sometimes(_good_props, _props)),
        ("extra", _values),
    )
    for name, strategy in fields:
        if draw(st.integers(0, 9)) < 8 or name in {"event_id", "type", "occurred_at"}:
            obj[name] = draw(strategy)
    return obj


def by_the_models(raw: bytes) -> Any:
    try:
        return events._native(events._ADAPTER.validate_json(raw))
    except ValidationError:
        return None


@PROFILE
@given(obj=objects())
def test_the_fast_decoder_agrees_with_the_models(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    fast = events._fast(raw)
    if fast is None:
        return  # not sure: the models decide (decode_event falls back to them)
    slow = by_the_models(raw)
    assert slow is not None, f"the fast path accepted what the models reject: {obj}"
    assert type(fast) is type(slow)
    assert fast.fields() == slow.fields()
    assert (fast.key, fast.ts) == (slow.key, slow.ts)
    assert fast.occurred_at.utcoffset() == slow.occurred_at.utcoffset()
    assert fast == slow


@PROFILE
@given(obj=objects())
def test_decode_event_gives_the_models_answer(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    slow = by_the_models(raw)
    try:
        decoded = decode_event(raw)
    except events.InvalidEvent:
        assert slow is None
    else:
        assert slow is not None and decoded == slow and decoded.ts == slow.ts


def test_plainly_valid_events_take_the_fast_path() -> None:
    raw = json.dumps(
        {
            "event_id": "e1",
            "type": "page_view",
            "anonymous_id": "v1",
            "occurred_at": "2026-03-01T10:15:00.25Z",
            "properties": {"url": "/pricing"},
        }
    ).encode()
    fast = events._fast(raw)
    assert fast is not None and fast.key == "v1" and fast.ts == 1772360100250000
