"""The board's in-memory view of the published outputs, bounded whatever the traffic.

* :class:`TopIndex`: the highest scores of one model as an **exact prefix** of the
  ranking of every contact, in memory bounded by ``capacity`` (not by the number of
  contacts). It keeps the contacts above a ``floor`` that bounds every contact it does
  not keep. A contact whose score falls to the floor or below leaves; when more than
  ``capacity`` are kept, the lowest leaves and the floor rises to it. Whatever it keeps
  is then, in order, the true top of the ranking (by score, then contact id). It can
  only run short (fewer kept than the board shows) after many kept contacts fell;
  :meth:`Board.needs_rebuild` then asks for the compacted topic to be read again into
  a fresh index.
* per contact, a short history of the scores the board has seen (``contacts.scores``
  records, one per checkpoint in which the contact changed, and crossings), for the
  contact page's chart: the most recent ``history_contacts`` contacts, ``history_points``
  points each;
* the most recent crossings, for the live list.

Pure Python, no I/O: the server feeds it records and reads answers from it, all on its
event loop.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: kept candidates per model, as a multiple of the contacts shown
KEEP_FACTOR = 10
HISTORY_CONTACTS = 20_000
HISTORY_POINTS = 200
RECENT_CROSSINGS = 200
#: crossing ids remembered to drop redeliveries (outputs are at-least-once)
SEEN_CROSSINGS = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One contact's score in one model, as of its latest ``contacts.scores`` record."""

    contact_id: str
    score: float
    tier: str | None
    updated_at: str

    def as_json(self) -> dict[str, Any]:
        """The entry as the board's API shows it."""
        return {
            "contact_id": self.contact_id,
            "score": self.score,
            "tier": self.tier,
            "updated_at": self.updated_at,
        }


class _Later(str):
    """A contact id that sorts in reverse, so that a min-heap pops the lowest rank first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


def _above(score: float, cid: str, floor: tuple[float, str] | None) -> bool:
    """True when (score, cid) ranks above ``floor``: higher score, or equal and smaller id."""
    if floor is None:
        return True
    return score > floor[0] or (score == floor[0] and cid < floor[1])


class TopIndex:
    """The top of one model's ranking, exact, in memory bounded by ``capacity``.

    The ranking is a total order: by score, then by contact id (as shown), so equal
    scores never make the kept set ambiguous.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        #: every contact not kept ranks (as of its latest record) at or below this
        #: (score, contact id) position; None: every contact seen is kept
        self.floor: tuple[float, str] | None = None
        self.members: dict[str, Entry] = {}
        # A lazy min-heap by rank: entries whose score is no longer the member's are
        # skipped when popped, and the heap is rebuilt when it grows.
        self._heap: list[tuple[float, _Later]] = []

    def update(self, entry: Entry) -> bool:
        """Apply a contact's new score; True if the kept set or a kept score changed."""
        cid = entry.contact_id
        if not _above(entry.score, cid, self.floor):
            # Now bounded by the floor like every other contact not kept.
            return self.members.pop(cid, None) is not None
        before = self.members.get(cid)
        self.members[cid] = entry
        heapq.heappush(self._heap, (entry.score, _Later(cid)))
        if len(self.members) > self.capacity:
            self._evict()
        elif len(self._heap) > 4 * self.capacity + 64:
            self._heap = [(e.score, _Later(c)) for c, e in self.members.items()]
            heapq.heapify(self._heap)
        return before != entry

    def _evict(self) -> None:
        while len(self.members) > self.capacity:
            score, cid = heapq.heappop(self._heap)
            current = self.members.get(cid)
            if current is None or current.score != score:
                continue  # stale heap entry
            del self.members[cid]
            # Every member ranks above the floor, so the lowest one leaving raises it.
            self.floor = (score, str(cid))

    def top(self, n: int) -> list[Entry]:
        """The ``n`` highest (fewer if fewer are kept), highest first, ties by contact id."""
        return sorted(self.members.values(), key=lambda e: (-e.score, e.contact_id))[:n]

    def exact(self, n: int) -> bool:
        """True when :meth:`top` ``(n)`` is the true top ``n`` of every contact seen."""
        return self.floor is None or len(self.members) >= n


@dataclass(frozen=True, slots=True)
class Point:
    """A score of one model at one event time, as the board saw it."""

    at: str
    model: str
    score: float
    kind: str  # "score" (a contacts.scores record) or "up"/"down" (a crossing)
    threshold: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The point as the board's API shows it."""
        return {
            "at": self.at,
            "model": self.model,
            "score": self.score,
            "kind": self.kind,
            "threshold": self.threshold,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class Board:
    """Top lists, histories and recent crossings built from the two output topics."""

    def __init__(
        self,
        top: int,
        *,
        keep: int | None = None,
        history_contacts: int = HISTORY_CONTACTS,
        history_points: int = HISTORY_POINTS,
        recent: int = RECENT_CROSSINGS,
    ) -> None:
        if top < 1:
            raise ValueError("top must be >= 1")
        self.top_n = top
        self.keep = keep if keep is not None else KEEP_FACTOR * top
        self.tops: dict[str, TopIndex] = {}
        self.history_contacts = history_contacts
        self.history_points = history_points
        self.history: OrderedDict[str, deque[Point]] = OrderedDict()
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.scores_read = 0
        self.crossings_read = 0
        self.rebuilds = 0
        # While the compacted topic is read again: the fresh index and where it ends.
        self._shadow: dict[str, TopIndex] | None = None
        self._shadow_left: dict[int, int] = {}

    # ------------------------------------------------------------------ input

    def apply_score(self, doc: Mapping[str, Any], partition: int = 0, offset: int = 0) -> bool:
        """Apply one ``contacts.scores`` record; True if a shown top list may have changed."""
        cid = doc.get("contact_id")
        scores = doc.get("scores")
        if not isinstance(cid, str) or not isinstance(scores, Mapping):
            return False
        self.scores_read += 1
        tiers = doc.get("tiers") if isinstance(doc.get("tiers"), Mapping) else {}
        assert isinstance(tiers, Mapping)
        at = str(doc.get("updated_at", ""))
        rebuilding = self._shadow is not None
        tops = self._shadow if self._shadow is not None else self.tops
        changed = False
        # Anonymous visitors are not people sales can call, and an identified visitor's
        # last record stays on the compacted topic forever: keep them off the top lists.
        known = doc.get("anonymous") is not True
        for model, value in scores.items():
            score = _number(value)
            if score is None:
                continue
            tier = tiers.get(model)
            if known:
                index = tops.get(model)
                if index is None:
                    index = tops[model] = TopIndex(self.keep)
                changed |= index.update(
                    Entry(cid, score, tier if isinstance(tier, str) else None, at)
                )
            if not rebuilding:
                self._remember(cid, Point(at, str(model), score, "score"))
        if rebuilding:
            self._shadow_progress(partition, offset)
            return False
        return changed

    def apply_crossing(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        """Apply one ``leads.sales_ready`` record; the crossing to show, or None (repeat)."""
        cid = doc.get("contact_id")
        model = doc.get("model")
        score = _number(doc.get("score"))
        if not isinstance(cid, str) or not isinstance(model, str) or score is None:
            return None
        self.crossings_read += 1
        crossing_id = doc.get("crossing_id")
        if isinstance(crossing_id, str):
            if crossing_id in self._seen:
                return None  # a redelivery: same id, same content
            self._seen[crossing_id] = None
            if len(self._seen) > SEEN_CROSSINGS:
                self._seen.popitem(last=False)
        direction = str(doc.get("direction", "?"))
        threshold = doc.get("threshold")
        at = str(doc.get("occurred_at", ""))
        previous = _number(doc.get("previous_score"))
        if previous is not None:
            self._remember(cid, Point(at, model, previous, "score"))
        self._remember(
            cid,
            Point(at, model, score, direction, threshold if isinstance(threshold, str) else None),
        )
        shown = {
            key: doc.get(key)
            for key in (
                "crossing_id",
                "contact_id",
                "model",
                "threshold",
                "direction",
                "score",
                "previous_score",
                "occurred_at",
                "top_contributors",
                "anonymous",
            )
        }
        self.recent.append(shown)
        return shown

    def _remember(self, cid: str, point: Point) -> None:
        points = self.history.get(cid)
        if points is None:
            points = self.history[cid] = deque(maxlen=self.history_points)
            if len(self.history) > self.history_contacts:
                self.history.popitem(last=False)
        else:
            self.history.move_to_end(cid)
            if points and points[-1] == point:
                return
        points.append(point)

    # ------------------------------------------------------------------ rebuild

    def needs_rebuild(self) -> bool:
        """True when a top list ran short and the compacted topic must be read again."""
        return self._shadow is None and any(
            not index.exact(self.top_n) for index in self.tops.values()
        )

    def begin_rebuild(self, ends: Mapping[int, int]) -> None:
        """The compacted topic is read again from its start up to ``ends`` (per partition).

        Records up to there fill a fresh index; the current one keeps answering until
        the fresh one has read everything, then replaces it.
        """
        self._shadow = {}
        self._shadow_left = {p: end for p, end in ends.items() if end > 0}
        self.rebuilds += 1
        if not self._shadow_left:
            self._finish_rebuild()

    def rebuilding(self) -> bool:
        """True while the compacted topic is being read again."""
        return self._shadow is not None

    def _shadow_progress(self, partition: int, offset: int) -> None:
        end = self._shadow_left.get(partition)
        if end is not None and offset + 1 >= end:
            del self._shadow_left[partition]
        if not self._shadow_left:
            self._finish_rebuild()

    def _finish_rebuild(self) -> None:
        assert self._shadow is not None
        self.tops = self._shadow
        self._shadow = None

    # ------------------------------------------------------------------ answers

    def top_lists(self) -> dict[str, Any]:
        """Per model, the hottest known contacts, and whether each list is exact."""
        models = sorted(self.tops)
        return {
            "models": {m: [e.as_json() for e in self.tops[m].top(self.top_n)] for m in models},
            "exact": {m: self.tops[m].exact(self.top_n) for m in models},
        }

    def crossings(self, contact_id: str | None = None) -> list[dict[str, Any]]:
        """Recent crossings, newest first (of one contact if given)."""
        return [c for c in reversed(self.recent) if contact_id in (None, c.get("contact_id"))]

    def contact_history(self, contact_id: str) -> list[dict[str, Any]]:
        """The points the board has seen for one contact, oldest first."""
        return [p.as_json() for p in self.history.get(contact_id, ())]

    def suggest(self, text: str, limit: int = 10) -> list[str]:
        """Contact ids the board knows that contain ``text`` (case-insensitive)."""
        needle = text.strip().lower()
        if not needle:
            return []
        found: dict[str, None] = {}
        pools: Iterable[Iterable[str]] = (
            *(index.members for index in self.tops.values()),
            reversed(self.history),
        )
        for pool in pools:
            for cid in pool:
                if needle in cid.lower():
                    found[cid] = None
                    if len(found) >= limit * 5:
                        break
        # an exact match first, then ids that start with the text, then the rest
        return sorted(
            found, key=lambda c: (c.lower() != needle, not c.lower().startswith(needle), c)
        )[:limit]
