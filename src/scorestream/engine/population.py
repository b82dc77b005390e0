"""Many contacts in one place: routing, identity merges and aliases around the :class:`Engine`.

This is the single-process form of what the live worker does across partitions: the
offline ``scorestream score`` drives it directly, and the worker makes the same
:class:`Engine` calls in the same per-contact order (see ``scorestream.app.processor``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from scorestream.engine.events import AnyEvent, Identify
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.state import ContactState


@dataclass(slots=True)
class Result:
    """What processing one event did."""

    status: str  # "applied" | "duplicate"
    key: str
    crossings: list[Crossing] = field(default_factory=list)


class Population:
    """Contact states keyed by id, with anonymous ids that were identified as aliases."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.states: dict[str, ContactState] = {}
        self.aliases: dict[str, str] = {}

    def resolve(self, key: str) -> str:
        """Follow aliases: an identified anonymous id refers to its contact."""
        seen = 0
        while key in self.aliases and seen < 64:  # chains are short; the bound stops cycles
            key = self.aliases[key]
            seen += 1
        return key

    def state_for(self, key: str, anonymous: bool) -> ContactState:
        """The state of ``key``, created on first use."""
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = self.engine.new_state(key, anonymous)
        return state

    def process(self, event: AnyEvent) -> Result:
        """Route and score one event."""
        engine = self.engine
        if isinstance(event, Identify):
            assert event.contact_id is not None and event.anonymous_id is not None
            contact = self.resolve(event.contact_id)
            state = self.state_for(contact, anonymous=False)
            outcome = engine.apply(state, event)
            result = Result(outcome.status, contact, outcome.crossings)
            if outcome.status != "applied":
                return result
            anon = event.anonymous_id
            if anon == contact or self.resolve(anon) == contact:
                return result
            if anon in self.aliases:
                # Already merged into another contact: from now on it refers to this one;
                # what it earned stays with the first contact.
                self.aliases[anon] = contact
                return result
            other = self.states.pop(anon, None)
            if other is not None:
                result.crossings.extend(engine.merge(state, other, event.ts, event.event_id))
            self.aliases[anon] = contact
            return result
        key = event.key
        if key in self.aliases:
            key = self.resolve(key)
        states = self.states
        if key in states:
            state = states[key]
        else:
            state = states[key] = engine.new_state(key, event.contact_id is None)
        outcome = engine.apply(state, event)
        return Result(outcome.status, key, outcome.crossings)

    def advance_all(self, t: int) -> list[Crossing]:
        """Let time pass to ``t`` for every contact (timers, expiry, decay crossings)."""
        crossings: list[Crossing] = []
        for key in sorted(self.states):
            crossings.extend(self.engine.advance(self.states[key], t))
        return crossings

    def __iter__(self) -> Iterator[ContactState]:
        for key in sorted(self.states):
            yield self.states[key]
