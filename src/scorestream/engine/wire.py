"""Event objects and the fast path of event decoding, compiled with the hot modules
(see ``setup.py``).

:func:`scorestream.engine.events.decode_event` first tries :class:`FastDecoder`: it
parses with the models' own JSON parser and applies the models' rules one by one; what
it does not plainly accept goes through the pydantic models, which give the precise
reason. So it can only be stricter than the models, never looser (a Hypothesis test
holds the two equal). It lives apart from the models because pydantic classes cannot be
compiled, while this code, compiled, takes about a third of the time it did interpreted.

Either way the result is an :class:`Event` of this module, not a pydantic model: the
models validate, these classes carry. A compiled class reads its fields from the
object itself; a pydantic model's every read went through its class's ``__getattr__``
hook and the instance ``__dict__`` (12 reads an event, about 350 instructions each,
4 % of ``scorestream score``), and cost a dict of its own per event.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar, Final

from pydantic_core import from_json

from scorestream.engine.timeutil import TimeFormatError, parse_datetime, parse_utc, to_us

_CUSTOM_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
#: well-known properties: name -> (accepted Python types, required)
PropSpec = dict[str, tuple[type | tuple[type, ...], bool]]
#: an event class and its well-known property checks as (name, accepted types, required)
_Known = tuple["type[Event]", list[tuple[str, tuple[type, ...], bool]]]


class Event:
    """A valid input event (spec/events.md). Built only by decoding (``decode_event``).

    Treat as immutable: the pipeline shares one event between records (a forward keeps
    its event), and ``mypy`` refuses assignments to its fields (``Final``).
    """

    __slots__ = (
        "anonymous_id",
        "contact_id",
        "event_id",
        "key",
        "occurred_at",
        "properties",
        "ts",
        "type",
    )

    #: well-known properties of this type
    PROPS: ClassVar[PropSpec] = {}

    def __init__(
        self,
        event_id: str,
        type: str,
        contact_id: str | None,
        anonymous_id: str | None,
        occurred_at: datetime,
        properties: dict[str, Any],
        ts: int,
    ) -> None:
        self.event_id: Final = event_id
        self.type: Final = type
        self.contact_id: Final = contact_id
        self.anonymous_id: Final = anonymous_id
        #: the time as given (an aware datetime, its offset kept)
        self.occurred_at: Final = occurred_at
        self.properties: Final = properties
        #: routing key: the contact id, or the anonymous id when there is none
        self.key: Final[str] = (
            contact_id if contact_id is not None else anonymous_id if anonymous_id else ""
        )
        #: event time, integer microseconds since the epoch
        self.ts: Final = ts

    @property
    def anonymous(self) -> bool:
        """True when the event names no contact, only a tracker cookie."""
        return self.contact_id is None

    def fields(self) -> tuple[Any, ...]:
        """Every field, in the contract's order (equality compares these)."""
        return (
            self.event_id,
            self.type,
            self.contact_id,
            self.anonymous_id,
            self.occurred_at,
            self.properties,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event) or type(other) is not type(self):
            return NotImplemented
        return self.fields() == other.fields()

    # Equal events need not hash alike by identity, and ``properties`` is a dict:
    # events are not hashable (nor were the frozen models holding a dict).
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_id={self.event_id!r}, type={self.type!r}, "
            f"contact_id={self.contact_id!r}, anonymous_id={self.anonymous_id!r}, "
            f"occurred_at={self.occurred_at!r}, properties={self.properties!r})"
        )


class PageView(Event):
    """A page view on a tracked website."""

    __slots__ = ()
    PROPS = {
        "url": (str, True),
        "title": (str, False),
        "referrer": (str, False),
        "utm_source": (str, False),
        "utm_medium": (str, False),
        "utm_campaign": (str, False),
    }


class EmailEvent(Event):
    """An e-mail delivery, open, click, unsubscribe or bounce."""

    __slots__ = ()
    PROPS = {"campaign_id": (str, False), "message_id": (str, False), "link_url": (str, False)}


class FormSubmit(Event):
    """A submitted web form."""

    __slots__ = ()
    PROPS = {"form_id": (str, True), "fields": (dict, False)}


class CartEvent(Event):
    """A shop event: cart, product views, checkout, purchase, abandonment."""

    __slots__ = ()
    PROPS = {
        "product_id": (str, False),
        "category": (str, False),
        "value": ((int, float), False),
        "currency": (str, False),
    }


class ProfileUpdate(Event):
    """New values of contact attributes (``null`` removes an attribute)."""

    __slots__ = ()
    PROPS = {"attributes": (dict, True)}

    @property
    def attributes(self) -> dict[str, Any]:
        """The attribute changes carried by this event."""
        value: dict[str, Any] = self.properties["attributes"]
        return value


class Identify(Event):
    """The anonymous visitor is now known as the contact."""

    __slots__ = ()


class CustomEvent(Event):
    """Any other event type (subscription_renewed, app_download, ...): free-form."""

    __slots__ = ()


class FastDecoder:
    """Builds events without the models when they are plainly valid (None when unsure)."""

    def __init__(self, kinds: dict[str, str], class_of_kind: dict[str, type[Event]]) -> None:
        #: event type -> its class and checks
        self._known: dict[str, _Known] = {}
        for etype, kind in kinds.items():
            cls = class_of_kind[kind]
            self._known[etype] = (cls, _specs(cls))
        self._custom: _Known = (CustomEvent, _specs(CustomEvent))

    def decode(self, raw: bytes, max_bytes: int) -> Event | None:
        """The event, or None if the models must decide.

        Among what they decide: a line over ``max_bytes``, and one that holds ``NaN`` or
        ``Infinity`` as a number (not JSON, though the parser takes them by default).
        """
        if len(raw) > max_bytes:
            return None
        try:
            # Refusing NaN and Infinity in the parser replaces two scans of every line for
            # their letters (2,800 instructions an event, 2.7 % of ``scorestream score``).
            # Only keys go through the parser's string cache: values (an event id is new
            # every time) only churned it. Measured, alternating runs of `score` on the
            # same 200,000 events: 1.035 x CPU (median of 10; 1.04 x with 10,000 people).
            obj = from_json(raw, allow_inf_nan=False, cache_strings="keys")
        except ValueError:
            return None
        if type(obj) is not dict:
            return None
        event_id = obj.get("event_id")
        etype = obj.get("type")
        if type(event_id) is not str:
            return None
        if not 0 < len(event_id) <= 128:
            return None
        if type(etype) is not str:
            return None
        known = self._known.get(etype)
        if known is None:
            if _CUSTOM_TYPE.fullmatch(etype) is None:
                return None
            known = self._custom
        cls = known[0]
        specs = known[1]
        contact = obj.get("contact_id")
        anon = obj.get("anonymous_id")
        if contact is not None and (type(contact) is not str or not 0 < len(contact) <= 256):
            return None
        if anon is not None and (type(anon) is not str or not 0 < len(anon) <= 256):
            return None
        identify = cls is Identify
        if contact is None and (anon is None or identify):
            return None
        if identify and anon is None:
            return None
        occurred = obj.get("occurred_at")
        if type(occurred) is not str:
            return None
        parsed = parse_utc(occurred)
        if parsed is not None:
            moment, ts = parsed
        else:  # an offset, a lower-case letter, more fraction digits: the full parser
            try:
                moment = parse_datetime(occurred)
            except TimeFormatError:
                return None
            ts = to_us(moment)
        if "properties" in obj:
            props = obj["properties"]
            if type(props) is not dict:
                return None
        else:
            props = {}
        for name, kinds, required in specs:
            if name not in props:
                if required:
                    return None
                continue
            value = props[name]
            # bool is an int subclass: a number property must not accept true/false.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                return None
        return cls(event_id, etype, contact, anon, moment, props, ts)


def _specs(cls: type[Event]) -> list[tuple[str, tuple[type, ...], bool]]:
    props: PropSpec = cls.PROPS
    out: list[tuple[str, tuple[type, ...], bool]] = []
    for name, (kinds, required) in props.items():
        out.append((name, kinds if isinstance(kinds, tuple) else (kinds,), required))
    return out
