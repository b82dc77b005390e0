"""The board's index: exact top lists in bounded memory, histories, recent crossings."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream.board.index import Board, Entry, TopIndex


def ranking(latest: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(latest.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


@settings(max_examples=200, deadline=None)
@given(
    updates=st.lists(
        st.tuples(st.integers(0, 40), st.integers(-5, 30).map(float)), min_size=1, max_size=300
    ),
    capacity=st.integers(1, 12),
)
def test_what_the_index_keeps_is_the_true_top_of_every_contact(
    updates: list[tuple[int, float]], capacity: int
) -> None:
    """Invariant: the kept contacts, in order, are a prefix of the full ranking."""
    index = TopIndex(capacity)
    latest: dict[str, float] = {}
    for number, score in updates:
        cid = f"c-{number}"
        latest[cid] = score
        index.update(Entry(cid, score, None, "t"))
        assert len(index.members) <= capacity
        kept = [(e.contact_id, e.score) for e in index.top(capacity)]
        assert kept == ranking(latest, len(kept))
        floor = index.floor
        for c, s in latest.items():
            if c not in index.members:
                assert floor is not None and (s < floor[0] or (s == floor[0] and c >= floor[1]))
        if index.exact(capacity):
            assert kept == ranking(latest, capacity)


def test_memory_stays_bounded_under_many_updates() -> None:
    index = TopIndex(50)
    rng = random.Random(7)
    for i in range(50_000):
        index.update(Entry(f"c-{rng.randrange(20_000)}", rng.random() * 1000, None, str(i)))
    assert len(index.members) <= 50
    assert len(index._heap) <= 4 * 50 + 64 + 1


def score_doc(cid: str, engagement: float, *, anonymous: bool = False, at: str = "t") -> Any:
    return {
        "contact_id": cid,
        "scores": {"engagement": engagement, "fit": 10.0},
        "tiers": {"engagement": "mql" if engagement >= 50 else None, "fit": None},
        "updated_at": at,
        "anonymous": anonymous,
    }


def crossing_doc(cid: str, n: int, score: float, previous: float) -> dict[str, Any]:
    return {
        "crossing_id": f"{cid}:engagement:mql:{n}",
        "contact_id": cid,
        "model": "engagement",
        "threshold": "mql",
        "direction": "up" if score > previous else "down",
        "score": score,
        "previous_score": previous,
        "occurred_at": f"2026-03-01T10:0{n}:00Z",
        "top_contributors": [{"rule_id": "pricing-visit", "points": score}],
        "anonymous": False,
    }


def test_the_board_ranks_known_contacts_per_model_and_leaves_visitors_out() -> None:
    board = Board(top=2)
    assert board.apply_score(score_doc("c-1", 30.0))
    assert board.apply_score(score_doc("c-2", 80.0))
    assert board.apply_score(score_doc("c-3", 55.0))
    assert not board.apply_score(score_doc("anon-9", 500.0, anonymous=True))
    assert board.apply_score(score_doc("c-1", 90.0))  # a later record replaces the earlier
    lists = board.top_lists()
    assert [e["contact_id"] for e in lists["models"]["engagement"]] == ["c-1", "c-2"]
    assert lists["models"]["engagement"][0] == {
        "contact_id": "c-1",
        "score": 90.0,
        "tier": "mql",
        "updated_at": "t",
    }
    assert lists["exact"] == {"engagement": True, "fit": True}
    assert not board.apply_score({"contact_id": "c-4"})  # not a scores record: ignored


def test_crossings_are_shown_once_and_join_the_contact_s_history() -> None:
    board = Board(top=5)
    board.apply_score(score_doc("c-1", 40.0, at="2026-03-01T09:59:00Z"))
    first = board.apply_crossing(crossing_doc("c-1", 1, 60.0, 40.0))
    assert first is not None and first["crossing_id"] == "c-1:engagement:mql:1"
    assert board.apply_crossing(crossing_doc("c-1", 1, 60.0, 40.0)) is None  # redelivery
    board.apply_crossing(crossing_doc("c-2", 2, 70.0, 45.0))
    assert [c["contact_id"] for c in board.crossings()] == ["c-2", "c-1"]
    assert [c["contact_id"] for c in board.crossings("c-1")] == ["c-1"]
    history = board.contact_history("c-1")
    assert [(p["model"], p["score"], p["kind"]) for p in history] == [
        ("engagement", 40.0, "score"),
        ("fit", 10.0, "score"),
        ("engagement", 40.0, "score"),  # the score before the crossing, at its time
        ("engagement", 60.0, "up"),
    ]
    assert history[-1]["threshold"] == "mql"


def test_histories_are_bounded_per_contact_and_in_number_of_contacts() -> None:
    board = Board(top=5, history_contacts=3, history_points=4)
    for i in range(10):
        board.apply_score(score_doc("c-1", float(i), at=str(i)))
    for cid in ("c-2", "c-3", "c-4"):
        board.apply_score(score_doc(cid, 1.0))
    assert board.contact_history("c-1") == []  # the least recently seen left
    assert len(board.history) == 3
    assert all(len(points) <= 4 for points in board.history.values())


def test_a_short_top_list_is_rebuilt_from_a_new_reading_of_the_topic() -> None:
    board = Board(top=2, keep=2)
    for cid, score in (("c-1", 90.0), ("c-2", 80.0), ("c-3", 70.0)):
        board.apply_score(score_doc(cid, score), partition=0)
    assert not board.needs_rebuild()
    board.apply_score(score_doc("c-1", 1.0), partition=0)  # falls below the floor (70)
    assert board.needs_rebuild()  # only c-2 is known to be in the top 2
    # The compacted topic read again: partition 0 holds the latest record of each.
    board.begin_rebuild({0: 3, 1: 0})
    assert board.rebuilding() and not board.needs_rebuild()
    board.apply_score(score_doc("c-2", 80.0), partition=0, offset=0)
    board.apply_score(score_doc("c-3", 70.0), partition=0, offset=1)
    assert board.rebuilding()
    board.apply_score(score_doc("c-1", 1.0), partition=0, offset=2)
    assert not board.rebuilding()
    assert [e["contact_id"] for e in board.top_lists()["models"]["engagement"]] == ["c-2", "c-3"]
    assert board.top_lists()["exact"]["engagement"]


def test_search_suggests_known_ids_best_match_first() -> None:
    board = Board(top=5)
    for cid in ("c-10", "c-1", "ac-1", "c-100"):
        board.apply_score(score_doc(cid, 5.0))
    assert board.suggest("C-1") == ["c-1", "c-10", "c-100", "ac-1"]
    assert board.suggest("  ") == []
    assert board.suggest("zz") == []
