"""``scorestream simulate`` without Kafka: format, determinism, outcomes, invalid lines."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from itertools import islice, product
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from scorestream import cli, simulate
from scorestream.engine.events import InvalidEvent, decode_event
from scorestream.engine.rules import load_rules
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.pipeline.routing import INPUT_TOPICS, topic_for
from scorestream.simulate import (
    BAD_MESSAGES,
    BAD_OUTCOMES,
    BASELINE_GOOD_RATE,
    BASELINE_RANGE,
    GOOD_OUTCOMES,
    OUTCOME_DELAY_DAYS,
    PLANTED_EFFECTS,
    SIGNALS,
    Traffic,
    _intent_quantiles,
    await_leaders,
    expected_good_rate,
    planted_signal,
)

START = "2026-03-01T00:00:00Z"
RULES = Path(__file__).resolve().parents[2] / "rules"
DAY_US = 86_400 * US_PER_SECOND


def run(tmp_path: Path, *extra: str, name: str = "events.jsonl") -> tuple[int, Path]:
    out = tmp_path / name
    argv = ["simulate", "--dry-run", "--rate", "0", "--start", START, "--out", str(out)]
    return cli.main([*argv, *extra]), out


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def signals_by_contact(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Planted signals per contact as calibration sees them: cookies joined by identify."""
    alias = {e["anonymous_id"]: e["contact_id"] for e in events if e["type"] == "identify"}
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        signal = planted_signal(e)
        if signal:
            who = e.get("contact_id") or alias.get(e["anonymous_id"], e["anonymous_id"])
            seen[who].add(signal)
    return seen


# --- events ------------------------------------------------------------------------


def test_every_event_is_valid_and_written_as_json_dumps_would(tmp_path: Path) -> None:
    code, out = run(tmp_path, "--events", "20000", "--contacts", "300")
    assert code == cli.EXIT_OK
    lines = out.read_bytes().splitlines()
    assert len(lines) == 20_000
    kinds: Counter[str] = Counter()
    for line in lines:
        event = decode_event(line)
        raw = json.loads(line)
        assert json.dumps(raw, separators=(",", ":")).encode() == line
        assert raw["occurred_at"] == format_ts(parse_ts(raw["occurred_at"]))
        kinds[raw["type"]] += 1
        if raw["type"] == "identify":
            assert list(raw) == ["event_id", "type", "contact_id", "occurred_at", "anonymous_id"]
            assert raw["anonymous_id"].startswith("anon-1-")
        else:
            assert ("contact_id" in raw) != ("anonymous_id" in raw)
        assert event.event_id == raw["event_id"]
    # every type of the contract's table (docs/events.md), on every input topic
    assert set(kinds) == {
        "page_view",
        "form_submit",
        "identify",
        "profile_update",
        "email_sent",
        "email_open",
        "email_click",
        "email_unsubscribe",
        "email_bounce",
        "cart_add",
        "cart_remove",
        "product_review_view",
        "product_compare",
        "checkout_start",
        "purchase",
        "cart_abandon",
        *simulate.CUSTOM_TYPES,
    }
    assert {topic_for(kind) for kind in kinds} == set(INPUT_TOPICS)
    assert kinds["page_view"] > kinds["form_submit"] > kinds["email_unsubscribe"]


@pytest.mark.parametrize("plan", sorted(RULES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_of_every_shipped_plan_gets_leads(tmp_path: Path, plan: Path) -> None:
    """``simulate`` feeds every shipped plan: each model enters a tier for someone.

    Before the custom events (streaming service, brand app) two shipped plans scored
    nothing at all on simulated traffic, so a demo or a soak with them tested nothing.
    """
    code, out = run(tmp_path, "--events", "30000", "--contacts", "1000")
    assert code == cli.EXIT_OK
    crossings = tmp_path / "crossings.jsonl"
    argv = ["score", "--rules", str(plan), str(out), "--crossings", str(crossings)]
    assert cli.main(argv) == cli.EXIT_OK
    entered = {
        doc["model"]
        for doc in map(json.loads, crossings.read_text().splitlines())
        if doc["direction"] == "up"
    }
    assert entered == set(load_rules(plan).model_by_name)


def test_simulated_times_are_one_step_apart(tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    argv = ["simulate", "--dry-run", "--rate", "4", "--start", START, "--events", "9"]
    assert cli.main([*argv, "--out", str(out)]) == cli.EXIT_OK
    times = [e["occurred_at"] for e in events_of(out)]
    assert times[:5] == [
        "2026-03-01T00:00:00.25Z",
        "2026-03-01T00:00:00.5Z",
        "2026-03-01T00:00:00.75Z",
        "2026-03-01T00:00:01Z",
        "2026-03-01T00:00:01.25Z",
    ]


def test_the_same_seed_gives_the_same_events_and_outcomes(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b", "c"):
        seed = "7" if name != "c" else "8"
        code, out = run(
            tmp_path,
            *("--events", "5000", "--contacts", "200", "--seed", seed),
            *("--outcomes", str(tmp_path / f"{name}.outcomes")),
            name=f"{name}.jsonl",
        )
        assert code == cli.EXIT_OK
        files.append((out.read_bytes(), (tmp_path / f"{name}.outcomes").read_bytes()))
    assert files[0] == files[1]
    assert files[0][0] != files[2][0]
    assert files[0][1] != files[2][1]


def test_batches_and_iteration_give_the_same_stream() -> None:
    start = parse_ts(START)
    whole = [line for _, _, line in Traffic(50, 3, start, 10.0).batch(3000)]
    traffic = Traffic(50, 3, start, 10.0)
    pieces = []
    for size in (1, 2, 7, 500, 2490):
        pieces += [line for _, _, line in traffic.batch(size)]
    assert pieces == whole
    as_dicts = list(islice(Traffic(50, 3, start, 10.0), 3000))
    assert [json.dumps(d, separators=(",", ":")) for d in as_dicts] == whole


def test_keys_are_the_contact_or_the_cookie() -> None:
    for kind, key, line in Traffic(100, 1, parse_ts(START), 1.0).batch(5000):
        raw = json.loads(line)
        assert raw["type"] == kind
        assert key == (raw.get("contact_id") or raw["anonymous_id"])


def test_the_cost_of_an_event_does_not_grow_with_the_population() -> None:
    # The old generator weighed every person for every event: a million people made it
    # ~1000x slower than a thousand. Generous bound: the machine is shared.
    took = {}
    for people in (1_000, 1_000_000):
        traffic = Traffic(people, 1, parse_ts(START), 0.0)
        traffic.batch(100)  # the quantile table is built once per process
        began = time.perf_counter()
        traffic.batch(30_000)
        took[people] = time.perf_counter() - began
    assert took[1_000_000] < 4 * took[1_000] + 0.5


def test_intents_follow_beta_1_2_4() -> None:
    quantiles = _intent_quantiles()
    assert list(quantiles) == sorted(quantiles)
    assert 0.0 < quantiles[0] < 0.01 and 0.7 < quantiles[-1] < 1.0
    assert sum(quantiles) / len(quantiles) == pytest.approx(1.2 / 5.2, abs=1e-3)
    traffic = Traffic(100_000, 4, None, 0.0)
    intents = [traffic.intent(i) for i in range(100_000)]
    mean = sum(intents) / len(intents)
    variance = sum((x - mean) ** 2 for x in intents) / len(intents)
    assert mean == pytest.approx(1.2 / 5.2, abs=0.003)
    assert variance == pytest.approx(1.2 * 4 / (5.2**2 * 6.2), rel=0.03)


def test_a_persons_intent_depends_on_the_seed_and_the_person_only() -> None:
    short, long = Traffic(1000, 9, None, 0.0), Traffic(1000, 9, None, 0.0)
    short.batch(50)
    long.batch(5000)
    seen = [i for i in range(1000) if short._intent[i] >= 0]
    assert seen
    assert all(short._intent[i] == long._intent[i] == long.intent(i) for i in seen)
    assert [Traffic(10, 1, None, 0.0).intent(i) for i in range(10)] != [
        Traffic(10, 2, None, 0.0).intent(i) for i in range(10)
    ]


# --- invalid lines -------------------------------------------------------------------


def test_bad_ratio_writes_invalid_lines_to_the_file(tmp_path: Path) -> None:
    code, out = run(tmp_path, "--events", "20000", "--contacts", "500", "--bad-ratio", "0.1")
    assert code == cli.EXIT_OK
    valid = invalid = 0
    previous_valid = True
    for line in out.read_bytes().split(b"\n")[:-1]:
        try:
            decode_event(line)
        except InvalidEvent:
            assert line in BAD_MESSAGES
            assert previous_valid  # each follows its event
            invalid += 1
            previous_valid = False
        else:
            valid += 1
            previous_valid = True
    assert valid == 20_000  # --events counts valid events
    assert invalid / valid == pytest.approx(0.1, abs=0.01)
    assert out.read_bytes().endswith(b"\n")


def test_invalid_lines_go_to_stdout_too(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    argv = ["simulate", "--dry-run", "--rate", "0", "--start", START, "--events", "3000"]
    assert cli.main([*argv, "--bad-ratio", "0.2"]) == cli.EXIT_OK
    captured = capsysbinary.readouterr()
    lines = captured.out.split(b"\n")[:-1]
    bad = [line for line in lines if line in BAD_MESSAGES]
    assert len(lines) - len(bad) == 3000
    assert len(bad) / 3000 == pytest.approx(0.2, abs=0.03)
    assert f"simulated 3000 events and {len(bad)} invalid messages" in captured.err.decode()


def test_without_bad_ratio_every_line_is_valid(tmp_path: Path) -> None:
    code, out = run(tmp_path, "--events", "3000")
    assert code == cli.EXIT_OK
    for line in out.read_bytes().splitlines():
        decode_event(line)


# --- pacing and usage ----------------------------------------------------------------


def test_rate_paces_wall_clock_traffic(tmp_path: Path) -> None:
    out = tmp_path / "paced.jsonl"
    argv = ["simulate", "--dry-run", "--rate", "2000", "--duration", "1", "--out", str(out)]
    began = time.time()
    assert cli.main(argv) == cli.EXIT_OK
    events = events_of(out)
    assert 1500 <= len(events) <= 2100
    first, last = (parse_ts(events[i]["occurred_at"]) for i in (0, -1))
    assert began * US_PER_SECOND - US_PER_SECOND < first <= last
    assert last - first >= 0.6 * US_PER_SECOND  # spread over the second, not one burst


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--contacts", "0"], "--contacts: must be >= 1"),
        (["--bad-ratio", "1"], "--bad-ratio: must be in [0, 1)"),
        (["--rate", "-5"], "--rate: must be >= 0"),
    ],
)
def test_bad_values_exit_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["simulate", "--dry-run", "--events", "1", *extra]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_an_unwritable_outcomes_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(tmp_path, "--events", "10", "--outcomes", str(tmp_path / "no" / "such"))
    assert code == cli.EXIT_FAILURE
    assert "cannot write" in capsys.readouterr().err


# --- outcomes ------------------------------------------------------------------------


def test_outcomes_format_and_timing(tmp_path: Path) -> None:
    outcomes = tmp_path / "outcomes.jsonl"
    code, out = run(tmp_path, "--events", "20000", "--contacts", "400", "--outcomes", str(outcomes))
    assert code == cli.EXIT_OK
    events = events_of(out)
    identified = {e["contact_id"] for e in events if e["type"] == "identify"}
    alias = {e["anonymous_id"]: e["contact_id"] for e in events if e["type"] == "identify"}
    last: dict[str, int] = {}
    for e in events:
        who = e.get("contact_id") or alias.get(e["anonymous_id"], "")
        last[who] = max(last.get(who, 0), parse_ts(e["occurred_at"]))
    rows = [json.loads(line) for line in outcomes.read_text().splitlines()]
    assert [r["contact_id"] for r in rows] == sorted(identified)  # one each, by contact
    kinds = Counter(r["outcome"] for r in rows)
    assert set(kinds) == {*GOOD_OUTCOMES, *BAD_OUTCOMES}
    low, high = OUTCOME_DELAY_DAYS
    for r in rows:
        assert list(r) == ["contact_id", "outcome", "occurred_at"]
        at = parse_ts(r["occurred_at"])
        assert r["occurred_at"] == format_ts(at)
        assert low * DAY_US <= at - last[r["contact_id"]] <= high * DAY_US


def test_outcome_names_follow_the_contacts_journey() -> None:
    traffic = Traffic(300, 5, parse_ts(START), 1.0)
    events = [json.loads(line) for _, _, line in traffic.batch(20_000)]
    seen = signals_by_contact(events)
    for outcome in traffic.outcomes():
        signals = seen[outcome.contact_id]
        if outcome.outcome == "converted":
            assert "checkout-started" in signals
        elif outcome.outcome == "won":
            assert "checkout-started" not in signals
        elif outcome.outcome == "churned":
            assert "unsubscribed" in signals
        else:
            assert outcome.outcome == "lost"
            assert "unsubscribed" not in signals


def test_outcomes_count_only_the_events_handed_out() -> None:
    # A run cut short in the middle of a form submission (form, identify, profile):
    # the contact is not identified yet, so it gets no outcome.
    start = parse_ts(START)
    full = Traffic(20, 2, start, 1.0).batch(400)
    cut = next(n for n, (kind, _, _) in enumerate(full) if kind == "form_submit") + 1
    traffic = Traffic(20, 2, start, 1.0)
    events = [json.loads(line) for _, _, line in traffic.batch(cut)]
    identified = {e["contact_id"] for e in events if e["type"] == "identify"}
    assert {o.contact_id for o in traffic.outcomes()} == identified


def test_the_planted_model_stays_a_probability() -> None:
    assert set(SIGNALS) == set(PLANTED_EFFECTS)
    for chosen in product([False, True], repeat=len(PLANTED_EFFECTS)):
        signals = [s for s, on in zip(PLANTED_EFFECTS, chosen, strict=True) if on]
        rate = expected_good_rate(signals)
        assert rate - (BASELINE_GOOD_RATE - BASELINE_RANGE[0]) >= 0.0
        assert rate + (BASELINE_RANGE[1] - BASELINE_GOOD_RATE) <= 1.0


def _least_squares(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Ordinary least squares by the normal equations (7 unknowns: no numpy needed)."""
    k = len(rows[0])
    m = [
        [sum(r[a] * r[b] for r in rows) for b in range(k)]
        + [sum(r[a] * y for r, y in zip(rows, ys, strict=True))]
        for a in range(k)
    ]
    for col in range(k):
        pivot = max(range(col, k), key=lambda row: abs(m[row][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for row in range(k):
            if row != col:
                f = m[row][col] / m[col][col]
                m[row] = [a - f * b for a, b in zip(m[row], m[col], strict=True)]
    return [m[i][k] / m[i][i] for i in range(k)]


@pytest.mark.slow
def test_the_planted_effects_are_in_the_data() -> None:
    traffic = Traffic(12_000, 3, parse_ts(START), 1.0)
    events = [json.loads(line) for _, _, line in traffic.batch(200_000)]
    seen = signals_by_contact(events)
    outcomes = list(traffic.outcomes())
    assert len(outcomes) > 7000
    good = [1.0 if o.outcome in GOOD_OUTCOMES else 0.0 for o in outcomes]
    names = list(PLANTED_EFFECTS)
    rows = [[1.0] + [float(s in seen[o.contact_id]) for s in names] for o in outcomes]

    # Keen people show several signals, so a plain comparison overstates each effect;
    # a regression on all six signals recovers the planted amounts.
    fitted = _least_squares(rows, good)
    assert fitted[0] == pytest.approx(BASELINE_GOOD_RATE, abs=0.03)
    for k, name in enumerate(names, start=1):
        support = sum(row[k] for row in rows)
        tolerance = 0.04 if support >= 1000 else 0.08
        assert fitted[k] == pytest.approx(PLANTED_EFFECTS[name], abs=tolerance), name

    # Contacts with a pricing visit convert measurably more than those without ...
    with_pricing = [g for g, row in zip(good, rows, strict=True) if row[1]]
    without = [g for g, row in zip(good, rows, strict=True) if not row[1]]
    assert sum(with_pricing) / len(with_pricing) - sum(without) / len(without) > 0.15
    # ... and by the planted amount among those who showed no other signal.
    alone = [g for g, row in zip(good, rows, strict=True) if row[1] and not any(row[2:])]
    none = [g for g, row in zip(good, rows, strict=True) if not any(row[1:])]
    assert min(len(alone), len(none)) > 300
    difference = sum(alone) / len(alone) - sum(none) / len(none)
    assert difference == pytest.approx(PLANTED_EFFECTS["pricing-visit"], abs=0.05)


class _Partition:
    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.error = None


class _Topic:
    def __init__(self, leaders: list[int]) -> None:
        self.error = None
        self.partitions = {i: _Partition(leader) for i, leader in enumerate(leaders)}


class _Metadata:
    def __init__(self, topics: dict[str, _Topic]) -> None:
        self.topics = topics


class _LeaderlessProducer:
    """A producer whose metadata shows ``topic`` without a leader for partition 1 until
    the ``ready``-th lookup of it; other topics are ready at once."""

    def __init__(self, topic: str, ready: int) -> None:
        self.topic, self.ready, self.calls = topic, ready, 0

    def list_topics(self, topic: str, timeout: float) -> _Metadata:
        if topic != self.topic:
            return _Metadata({topic: _Topic([0, 0])})
        self.calls += 1
        leader = 0 if self.calls >= self.ready else -1
        return _Metadata({topic: _Topic([0, leader])})


def test_simulate_waits_for_every_partition_to_have_a_leader() -> None:
    # A partition without a leader holds its records in librdkafka while the others go
    # out: the events would reach Kafka out of the order simulate gives them.
    producer = _LeaderlessProducer("t.profile", ready=3)
    assert await_leaders(producer, ["t.email", "t.profile"], timeout=10.0) == []
    assert producer.calls == 3


def test_simulate_names_the_topics_still_without_a_leader_after_the_wait() -> None:
    producer = _LeaderlessProducer("t.profile", ready=10**9)
    began = time.monotonic()
    assert await_leaders(producer, ["t.email", "t.profile"], timeout=0.3) == ["t.profile"]
    assert 0.3 <= time.monotonic() - began < 5.0


def test_simulate_fails_at_once_when_its_topics_have_no_leader(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Kafka down, or the topics not created: nothing could be delivered, so simulate
    says why and exits 1 before it produces anything (not after a 30 s flush)."""
    produced: list[object] = []

    class Leaderless(_LeaderlessProducer):
        def __init__(self, config: dict[str, object]) -> None:
            super().__init__("", ready=0)

        def list_topics(self, topic: str, timeout: float) -> _Metadata:
            return _Metadata({topic: _Topic([-1])})

        def produce(self, *args: object, **kwargs: object) -> None:
            produced.append(args)

    monkeypatch.setattr(confluent_kafka, "Producer", Leaderless)
    monkeypatch.setattr(simulate, "LEADER_WAIT", 0.2)
    monkeypatch.chdir(tmp_path)  # no scorestream.toml of the checkout
    code = cli.main(["simulate", "--events", "10", "--out", str(tmp_path / "events.jsonl")])
    assert code == cli.EXIT_FAILURE
    assert produced == []
    err = capsys.readouterr().err
    assert "no leader for" in err and "events.page_view" in err
    assert "scorestream topics apply" in err
