"""The compiled form of a scoring plan's models and rules (built by :mod:`.rules`).

Apart from the loader because these classes are read for every event: compiled with the
hot modules (``setup.py``), the engine reads their fields as C struct members instead of
through Python attribute lookups. Frozen: a plan never changes once loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scorestream.engine.conditions import Predicate, lookup


@dataclass(frozen=True)
class Threshold:
    """A threshold with hysteresis. Compared against the reported (rounded) score."""

    name: str
    enter: float
    exit: float
    #: raw-score boundaries: reported score >= enter  <=>  raw >= enter_bound
    enter_bound: float
    exit_bound: float


@dataclass(frozen=True)
class EventRule:
    """A compiled event rule."""

    model: str
    id: str
    event: str
    match: Callable[[Mapping[str, Any]], bool] | None
    fixed: float | None
    per: tuple[tuple[str, ...], float, float | None] | None
    limit_count: int | None
    limit_per: int | None  # microseconds; None with a count means "ever"
    unless_event: str | None
    unless_within: int  # microseconds
    unless_match: tuple[tuple[str, ...], ...]

    def points_for(self, props: Mapping[str, Any]) -> float | None:
        """Points this rule awards for the event, or None (missing or non-numeric value)."""
        if self.fixed is not None:
            return self.fixed
        assert self.per is not None
        parts, factor, cap = self.per
        value = lookup(props, parts)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        points = float(value) * factor
        if cap is not None and abs(points) > cap:
            points = math.copysign(cap, points)
        return points


@dataclass(frozen=True)
class AttributeRule:
    """A compiled attribute (demographic/firmographic) rule."""

    model: str
    id: str
    attribute: str
    test: Predicate
    points: float


@dataclass(frozen=True)
class Model:
    """A compiled model: its decay, clamps, thresholds and rules (sorted by id)."""

    name: str
    decay: Literal["none", "half_life", "expire_after"]
    decay_us: int
    min_score: float | None
    max_score: float | None
    thresholds: tuple[Threshold, ...]
    event_rules: tuple[EventRule, ...]
    attribute_rules: tuple[AttributeRule, ...]
