"""Durations and RFC 3339 timestamps as integer microseconds (spec/rules.md, Durations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorestream.engine import timeutil
from scorestream.engine.timeutil import (
    TimeFormatError,
    format_duration,
    format_ts,
    from_us,
    parse_duration,
    parse_ts,
    to_us,
)

S = 1_000_000  # microseconds per second


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("30s", 30 * S),
        ("15m", 15 * 60 * S),
        ("24h", 24 * 3600 * S),
        ("7d", 7 * 86400 * S),
        ("2w", 14 * 86400 * S),  # a week is 7 days
        ("1s", S),
        ("1w", 7 * 86400 * S),
        ("365d", 365 * 86400 * S),
        ("90d", 7_776_000 * S),
        ("1000000s", 1_000_000 * S),
    ],
)
def test_durations_in_exact_microseconds(text: str, us: int) -> None:
    assert parse_duration(text) == us
    assert type(parse_duration(text)) is int


def test_units_relate_exactly() -> None:
    assert parse_duration("60s") == parse_duration("1m")
    assert parse_duration("60m") == parse_duration("1h")
    assert parse_duration("24h") == parse_duration("1d")
    assert parse_duration("7d") == parse_duration("1w")


@pytest.mark.parametrize(
    "text",
    [
        "1 day",
        "1day",
        "5x",
        "0d",  # zero is no duration
        "0s",
        "00d",
        "01d",
        "-1d",
        "+1d",
        "1.5h",
        "1,5h",
        "1D",
        "1H",
        "1ms",
        "1y",
        "1M",
        "24",
        "h",
        "",
        " 1d",
        "1d ",
        "1h30m",
        "P1D",  # ISO 8601
        "\u0661d",  # ARABIC-INDIC DIGIT ONE: not an ASCII digit
    ],
)
def test_rejected_duration_forms(text: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_duration(text)
    assert str(info.value) == (
        f"invalid duration {text!r}: use a whole number and one of s, m, h, d, w (e.g. 24h)"
    )


@pytest.mark.parametrize("value", [30, 1.5, None, True, ["1d"]])
def test_durations_must_be_strings(value: object) -> None:
    # YAML `within: 30` is a number: rejected, not read as seconds.
    with pytest.raises(TimeFormatError) as info:
        parse_duration(value)
    assert str(info.value) == (
        f"expected a duration string such as 30s, 15m, 24h, 7d or 2w, got {value!r}"
    )


def test_a_trailing_newline_is_not_a_duration() -> None:
    with pytest.raises(TimeFormatError):
        parse_duration("24h\n")


@pytest.mark.parametrize(
    ("us", "text"),
    [(30 * S, "30s"), (90 * S, "90s"), (3600 * S, "1h"), (86400 * S, "1d"), (14 * 86400 * S, "2w")],
)
def test_format_duration_uses_the_largest_whole_unit(us: int, text: str) -> None:
    assert format_duration(us) == text
    assert parse_duration(format_duration(us)) == us


# ------------------------------------------------------------------ timestamps

T = 1_772_360_100 * S  # 2026-03-01T10:15:00Z


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("2026-03-01T10:15:00Z", T),
        ("2026-03-01T10:15:00z", T),
        ("2026-03-01t10:15:00Z", T),
        ("2026-03-01 10:15:00Z", T),  # RFC 3339 allows a space
        ("2026-03-01T10:15:00+00:00", T),
        ("2026-03-01T10:15:00-00:00", T),
        ("2026-03-01T12:15:00+02:00", T),
        ("2026-03-01T05:45:00-04:30", T),
        ("2026-03-02T00:15:00+14:00", T),
        ("2026-03-01T10:15:00.5Z", T + 500_000),
        ("2026-03-01T10:15:00.000001Z", T + 1),
        ("2026-03-01T12:15:00.123456+02:00", T + 123_456),
        ("2026-03-01T10:15:00.1234569Z", T + 123_456),  # digits beyond µs are dropped
        ("2026-03-01T10:15:00.999999999Z", T + 999_999),  # ... not rounded up
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999Z", -1),
    ],
)
def test_parse_ts(text: str, us: int) -> None:
    assert parse_ts(text) == us


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T10:15:00",  # no offset
        "2026-03-01",
        "2026-03-01T10:15Z",  # no seconds
        "2026-03-01T10:15:00+0200",
        "2026-03-01T10:15:00+02",
        "2026-03-01T10:15:00.Z",
        "2026-03-01_10:15:00Z",
        "1772360100",
        "2026-02-30T10:15:00Z",
        "2026-03-01T24:00:00Z",
        " 2026-03-01T10:15:00Z",
        "2026-03-01T10:15:00Z ",
        "2026-03-01T10:15:00Z\n",
        "",
    ],
)
def test_parse_ts_rejects(text: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_ts(text)
    assert str(info.value).startswith(f"invalid timestamp {text!r}")


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (T, "2026-03-01T10:15:00Z"),
        (T + 500_000, "2026-03-01T10:15:00.5Z"),
        (T + 120_000, "2026-03-01T10:15:00.12Z"),
        (T + 1, "2026-03-01T10:15:00.000001Z"),
        (T + 123_456, "2026-03-01T10:15:00.123456Z"),
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_format_ts_is_utc_with_z_and_fraction_only_when_needed(us: int, text: str) -> None:
    assert format_ts(us) == text


@pytest.mark.parametrize(
    "us", [T, T + 1, T + 10, T + 500_000, T + 999_999, 0, 1, 253_402_300_799 * S + 999_999]
)
def test_format_then_parse_round_trips(us: int) -> None:
    assert parse_ts(format_ts(us)) == us


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T12:15:00.25+02:00",
        "2026-03-01T05:45:00.000001-04:30",
        "2026-12-31T23:59:59.999999+01:00",
    ],
)
def test_parse_then_format_then_parse_keeps_the_instant(text: str) -> None:
    us = parse_ts(text)
    formatted = format_ts(us)
    assert formatted.endswith("Z")
    assert parse_ts(formatted) == us


def test_to_us_and_from_us_are_inverse_and_offset_aware() -> None:
    moment = datetime(2026, 3, 1, 12, 15, 0, 250_000, tzinfo=timezone(timedelta(hours=2)))
    us = to_us(moment)
    assert us == T + 250_000
    back = from_us(us)
    assert back == moment
    assert back.tzinfo == UTC


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_seconds_to_microseconds_is_the_plain_product(seconds: int) -> None:
    # Split at bit 16 so compiled code multiplies in machine words; exact either side
    # of the epoch and far past 2**30 seconds.
    assert timeutil._seconds_to_us(seconds) == seconds * S


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.5Z"]
)
def test_to_us_at_the_edges_of_the_calendar(text: str) -> None:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert to_us(moment) == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
