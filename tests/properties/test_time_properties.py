"""Hypothesis: the timestamp fast path gives exactly what the full RFC 3339 parser gives,
and declines (never mis-reads) every other string; the formatter writes what isoformat
writes (one property per test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream.engine.timeutil import (
    TimeFormatError,
    format_ts,
    parse_datetime,
    parse_ts,
    parse_utc,
    to_us,
)

PROFILE = settings(max_examples=1500, deadline=None)

#: naive, read as UTC; the default bounds are years 1 to 9999
_MOMENTS = st.datetimes()


def _canonical(moment: datetime, digits: int) -> str:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    text = f"{moment.year:04d}{text[text.index('-') :]}"  # strftime does not pad years < 1000
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


@PROFILE
@given(_MOMENTS, st.integers(0, 6))
def test_the_common_form_parses_to_the_full_parsers_instant(moment: datetime, digits: int) -> None:
    text = _canonical(moment, digits)
    parsed = parse_utc(text)
    assert parsed is not None, text
    full = parse_datetime(text)
    assert parsed == (full, to_us(full))
    assert parsed[0].tzinfo is UTC
    # and it is the instant written: the fraction is truncated, never rounded
    kept = moment.microsecond - moment.microsecond % 10 ** (6 - digits) if digits else 0
    assert parsed[0] == moment.replace(microsecond=kept, tzinfo=UTC)


# Strings shaped like the common form, one character changed to anything a mistake,
# another alphabet or another RFC 3339 spelling could put there.
# (an Arabic-Indic three and a full-width zero are digits to a ``str`` regular expression)
_NOISE = st.sampled_from([*"0123456789-:T.Zz tW+,", "\u0663", "\uff10", "\x00", "\u00e9"])


@PROFILE
@given(_MOMENTS, st.integers(0, 9), st.data())
def test_a_changed_character_is_declined_or_read_as_the_full_parser_reads_it(
    moment: datetime, digits: int, data: st.DataObject
) -> None:
    text = (
        _canonical(moment, min(digits, 6))
        if digits <= 6
        else _canonical(moment, 6)[:-1] + "1" * (digits - 6) + "Z"
    )
    at = data.draw(st.integers(0, len(text) - 1))
    mutated = text[:at] + data.draw(_NOISE) + text[at + 1 :]
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]  # cut short as well
    parsed = parse_utc(mutated)
    if parsed is None:
        return  # declined: the full parser decides (either way)
    try:
        full = parse_datetime(mutated)
    except TimeFormatError:  # pragma: no cover - the assertion below reports it
        full = None
    assert full is not None, f"fast path accepted {mutated!r}, which RFC 3339 refuses"
    assert parsed == (full, to_us(full))


_TEN_FIFTEEN = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


@given(
    st.sampled_from(
        [
            ("2026-03-01T11:15:00+01:00", 0),
            ("2026-03-01t10:15:00Z", 0),
            ("2026-03-01T10:15:00z", 0),
            ("2026-03-01 10:15:00Z", 0),
            ("2026-03-01T10:15:00.1234567Z", 123_456),
            ("2026-03-01T10:15:00-00:00", 0),
        ]
    )
)
def test_other_rfc3339_spellings_go_to_the_full_parser(case: tuple[str, int]) -> None:
    # valid, but not the common form: declined, and the full parser reads the instant
    text, micros = case
    assert parse_utc(text) is None
    assert parse_datetime(text) == _TEN_FIFTEEN + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: microseconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59.999999Z
_FIRST_US = -62_135_596_800_000_000
_LAST_US = 253_402_300_799_999_999


def _isoformat_ts(us: int) -> str:
    """format_ts as it was written before (through a datetime and isoformat)."""
    moment = (_EPOCH + timedelta(microseconds=us)).replace(tzinfo=None)
    if moment.microsecond:
        return moment.isoformat(timespec="microseconds").rstrip("0") + "Z"
    return moment.isoformat(timespec="seconds") + "Z"


@PROFILE
@given(
    st.one_of(
        st.integers(_FIRST_US, _LAST_US),
        # whole seconds and round fractions: the cases where zeros are stripped
        st.integers(_FIRST_US // 1_000_000, _LAST_US // 1_000_000).map(lambda s: s * 1_000_000),
        st.integers(_FIRST_US // 1_000, _LAST_US // 1_000).map(lambda ms: ms * 1_000),
    )
)
def test_format_ts_writes_what_isoformat_writes_and_reads_back(us: int) -> None:
    text = format_ts(us)
    assert text == _isoformat_ts(us)
    assert parse_ts(text) == us


@PROFILE
@given(st.one_of(st.integers(max_value=_FIRST_US - 1), st.integers(min_value=_LAST_US + 1)))
def test_format_ts_outside_years_1_to_9999_raises_overflow_as_before(us: int) -> None:
    with pytest.raises(OverflowError):
        _isoformat_ts(us)
    with pytest.raises(OverflowError):
        format_ts(us)
