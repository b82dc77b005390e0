"""A contact's state stays bounded however many events it gets (state.Bounds).

5,000 events for one contact, on the B2B plan (half-life decay, a windowed limit, an
``unless`` timer rule) and on an ``expire_after`` plan with awards at 5,000 distinct
times: every list in the state stays within its bound, the serialised state stays
small, and the bytes round-trip exactly.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import cramjam
import pytest

from scorestream.engine.events import event_from_dict
from scorestream.engine.rules import load_rules, parse_rules
from scorestream.engine.scorer import Engine, Outcome
from scorestream.engine.state import MAGIC, MAGIC_LZ4, Bounds, ContactState
from scorestream.engine.timeutil import format_ts, parse_ts

ROOT = Path(__file__).resolve().parents[2]
T0 = parse_ts("2026-01-05T08:00:00Z")
SECOND = 1_000_000
MINUTE = 60 * SECOND
N_EVENTS = 5_000
#: the last events are a burst of e-mails, 1 s apart: more timers than Bounds().timers
BURST = 300
BOUNDS = Bounds()

# Serialised size limit. Measured: ~26 KB for the B2B contact below (256 pending timers,
# 512 dedupe hashes, 50 ledger entries) and ~13 KB for the expire_after contact (256
# buckets). 40 KB leaves ~1.5x headroom for harmless changes of the encoding, yet fails
# if the dedupe memory (5,000 x 8 bytes = 40 KB by itself), the ledger (5,000 entries)
# or the expire buckets (5,000 entries) stopped being bounded.
MAX_STATE_BYTES = 40_000


def _event(i: int, etype: str, ts: int, props: dict[str, Any], contact: str) -> Any:
    return event_from_dict(
        {
            "event_id": f"ev-{i:05d}",
            "type": etype,
            "contact_id": contact,
            "occurred_at": format_ts(ts),
            "properties": props,
        }
    )


def b2b_events() -> list[Any]:
    """5,000 events of one contact across the rules of rules/b2b.yaml, ending in a burst."""
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("page_view", {"url": "/"}),
        ("page_view", {"url": "/blog/post"}),
        ("page_view", {"url": "/pricing"}),
        ("form_submit", {"form_id": "ebook-2026"}),
        ("email_sent", {"campaign_id": "weekly"}),
        ("email_open", {"campaign_id": "weekly"}),
        ("page_view", {"url": "/docs"}),  # matches nothing
        ("email_unsubscribe", {}),
        ("profile_update", {"attributes": {"company_size": 500, "job_title": "CTO"}}),
    ]
    mixed = N_EVENTS - BURST
    events = []
    for i in range(mixed):
        etype, props = kinds[i % len(kinds)]
        events.append(_event(i, etype, T0 + i * MINUTE, props, "c-1"))
    burst_start = T0 + mixed * MINUTE
    for i in range(mixed, N_EVENTS):
        ts = burst_start + (i - mixed) * SECOND
        events.append(_event(i, "email_sent", ts, {"campaign_id": f"camp-{i}"}, "c-1"))
    return events


EXPIRE_PLAN = """\
version: 1
models:
  intent:
    decay: {expire_after: 365d}
    thresholds:
      - {name: hot, enter: 100, exit: 80}
    rules:
      - {id: view, event: page_view, points: 1}
      - {id: cart, event: cart_add, points: 2}
"""


def expire_events() -> list[Any]:
    """5,000 awards at 5,000 distinct times, all within the 365 days they count."""
    return [
        _event(
            i,
            "cart_add" if i % 5 == 0 else "page_view",
            T0 + i * 7 * MINUTE,
            {"url": "/"} if i % 5 else {"value": 1},
            "c-2",
        )
        for i in range(N_EVENTS)
    ]


@pytest.fixture(scope="module")
def b2b() -> tuple[Engine, ContactState, list[Outcome]]:
    engine = Engine(load_rules(ROOT / "rules" / "b2b.yaml"))
    state = engine.new_state("c-1")
    outcomes = [engine.apply(state, ev) for ev in b2b_events()]
    return engine, state, outcomes


@pytest.fixture(scope="module")
def expiring() -> tuple[Engine, ContactState]:
    engine = Engine(parse_rules(EXPIRE_PLAN, "expire.yaml"))
    state = engine.new_state("c-2")
    for ev in expire_events():
        assert engine.apply(state, ev).status == "applied"
    return engine, state


# ------------------------------------------------------------------ B2B contact


def test_every_event_was_applied(b2b: tuple[Engine, ContactState, list[Outcome]]) -> None:
    _, _, outcomes = b2b
    assert len(outcomes) == N_EVENTS
    assert all(o.status == "applied" for o in outcomes)


def test_dedupe_memory_is_bounded(b2b: tuple[Engine, ContactState, list[Outcome]]) -> None:
    _, state, _ = b2b
    assert len(state.seen) == BOUNDS.seen_ids  # full, not beyond


def test_ledger_is_bounded_and_keeps_the_latest(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    _, state, _ = b2b
    assert len(state.ledger) == BOUNDS.ledger
    times = [entry[4] for entry in state.ledger]
    assert times == sorted(times)
    # the newest entry is from the last scoring events, not from the beginning
    assert times[-1] >= T0 + (N_EVENTS - BURST - 20) * MINUTE


def test_timers_are_bounded_and_the_rest_are_counted(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    engine, _, outcomes = b2b
    # Replay up to the burst to see how many timers were pending when it began.
    events = b2b_events()
    state = engine.new_state("c-1")
    for ev in events[:-BURST]:
        engine.apply(state, ev)
    pending = len(state.timers)
    assert pending < 10  # the weekly e-mails are opened a minute later: few stay pending
    # The burst: 300 e-mails within 5 minutes; none of their timers can fire yet.
    room = BOUNDS.timers - pending
    burst = [engine.apply(state, ev) for ev in events[-BURST:]]
    assert [o.timers_dropped for o in burst] == [0] * room + [1] * (BURST - room)
    assert len(state.timers) == BOUNDS.timers
    # the module's run saw the same
    assert [o.timers_dropped for o in outcomes[-BURST:]] == [o.timers_dropped for o in burst]


def test_timers_that_fit_are_kept(b2b: tuple[Engine, ContactState, list[Outcome]]) -> None:
    _, state, _ = b2b
    assert len(state.timers) == BOUNDS.timers
    dues = [timer[0] for timer in state.timers]
    assert dues == sorted(dues)


def test_limit_bookkeeping_is_bounded(b2b: tuple[Engine, ContactState, list[Outcome]]) -> None:
    # article-read: at most 3 per 1d; the engine keeps award times of the last 2 days only,
    # so at most 2 x 3 of them.
    _, state, _ = b2b
    times = state.limits["engagement/article-read"]
    assert 0 < len(times) <= 6


def test_half_life_points_are_one_number_per_rule(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    engine, state, _ = b2b
    model = engine.rules.model_by_name["engagement"]
    assert set(state.models["engagement"].pts) <= {r.id for r in model.event_rules}


def test_serialised_size_is_bounded(b2b: tuple[Engine, ContactState, list[Outcome]]) -> None:
    _, state, _ = b2b
    assert len(state.to_bytes()) < MAX_STATE_BYTES


def test_big_state_round_trips_byte_for_byte(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    engine, state, _ = b2b
    data = state.to_bytes()
    copy = ContactState.from_bytes(data)
    assert copy.to_bytes() == data
    # ... and behaves the same from here on.
    t = state.clock
    assert t is not None
    assert engine.scores(copy, t + 3 * 86400 * SECOND) == engine.scores(
        state, t + 3 * 86400 * SECOND
    )


def test_duplicates_inside_and_outside_the_dedupe_window() -> None:
    # A fresh run, since this test changes the state.
    engine = Engine(load_rules(ROOT / "rules" / "b2b.yaml"))
    state = engine.new_state("c-1")
    events = b2b_events()
    for ev in events:
        engine.apply(state, ev)
    # The newest 512 ids are remembered: a redelivery of one of them is ignored.
    recent = events[-BOUNDS.seen_ids]
    before = state.to_bytes()
    assert engine.apply(state, recent).status == "duplicate"
    assert state.to_bytes() == before
    # Older ids are forgotten: that is the price of the bound. A duplicate of an event
    # older than the window is scored again (here: the pricing page, +15 points).
    old = next(ev for ev in events if ev.properties.get("url") == "/pricing")
    assert events.index(old) < len(events) - BOUNDS.seen_ids
    outcome = engine.apply(state, old)
    assert outcome.status == "applied"
    assert state.ledger[-1][:4] == (old.event_id, "engagement", "pricing-visit", 15.0)
    assert state.ledger[-1][4] == old.ts  # scored at its own (old) time


# ------------------------------------------------------------------ expire_after contact


def test_expire_buckets_are_bounded(expiring: tuple[Engine, ContactState]) -> None:
    _, state = expiring
    buckets = state.models["intent"].buckets
    assert len(buckets) == BOUNDS.buckets
    times = [t for t, _ in buckets]
    assert times == sorted(set(times))


def test_coarsening_loses_no_points(expiring: tuple[Engine, ContactState]) -> None:
    engine, state = expiring
    last = T0 + (N_EVENTS - 1) * 7 * MINUTE
    # 4,000 page views x 1 + 1,000 carts x 2, all younger than 365 days
    assert engine.scores(state, last) == {"intent": 6000.0}
    assert engine.tiers(state) == {"intent": "hot"}


def test_coarsened_points_never_expire_early_and_do_expire(
    expiring: tuple[Engine, ContactState],
) -> None:
    engine, state = expiring
    year = 365 * 86400 * SECOND
    last = T0 + (N_EVENTS - 1) * 7 * MINUTE
    first = T0
    # Just before the first award expires, everything still counts.
    assert engine.scores(state, first + year - 1) == {"intent": 6000.0}
    # When the last award has expired, nothing counts.
    assert engine.scores(state, last + year) == {"intent": 0.0}


def test_expiring_state_size_and_round_trip(expiring: tuple[Engine, ContactState]) -> None:
    _, state = expiring
    data = state.to_bytes()
    assert len(data) < MAX_STATE_BYTES
    assert ContactState.from_bytes(data).to_bytes() == data
    assert len(state.seen) == BOUNDS.seen_ids
    assert len(state.ledger) == BOUNDS.ledger


def _uncompressed(state: ContactState) -> bytes:
    """The same state in the plain MessagePack format (b"S2") that older versions wrote."""
    data = state.to_bytes()
    assert data[:2] == MAGIC_LZ4
    (size,) = struct.unpack_from(">I", data, 2)
    body = bytes(cramjam.lz4.decompress_block(data[6 : 6 + size]))
    return MAGIC + struct.pack(">I", len(body)) + body + data[6 + size :]


def test_a_large_state_is_compressed_and_smaller(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    _, state, _ = b2b
    data = state.to_bytes()
    plain = _uncompressed(state)
    assert data[:2] == MAGIC_LZ4
    assert len(data) < 0.8 * len(plain)


def test_states_written_uncompressed_read_back_the_same(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    engine, state, _ = b2b
    old = ContactState.from_bytes(_uncompressed(state))
    assert old.to_bytes() == state.to_bytes()
    t = state.clock
    assert t is not None
    assert engine.scores(old, t + SECOND) == engine.scores(state, t + SECOND)


def test_a_small_state_stays_uncompressed() -> None:
    state = ContactState("c-1")
    assert state.to_bytes()[:2] == MAGIC
    assert ContactState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()


def test_a_damaged_compressed_state_is_refused(
    b2b: tuple[Engine, ContactState, list[Outcome]],
) -> None:
    _, state, _ = b2b
    data = bytearray(state.to_bytes())
    (size,) = struct.unpack_from(">I", data, 2)
    data[6 : 6 + size] = b"\xff" * size  # an LZ4 block that points before its start
    with pytest.raises(ValueError, match="not a scorestream contact state"):
        ContactState.from_bytes(bytes(data))
