"""The fast path of event decoding, compiled with the hot modules (see ``setup.py``).

:func:`scorestream.engine.events.decode_event` first tries :class:`FastDecoder`: it
parses with the models' own JSON parser and applies the models' rules one by one; what
it does not plainly accept goes through the pydantic models, which give the precise
reason. So it can only be stricter than the models, never looser (a Hypothesis test
holds the two equal). It lives apart from the models because pydantic classes cannot be
compiled, while this code, compiled, takes about a third of the time it did interpreted.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic_core import from_json

from scorestream.engine.timeutil import TimeFormatError, parse_datetime, parse_utc, to_us

_FIELDS = ("event_id", "type", "contact_id", "anonymous_id", "occurred_at", "properties")
#: bits of a fields-set key (:attr:`FastDecoder._fields_sets`), one per name of ``_FIELDS``:
#: the three a fast-decoded event always has, and the three it may lack
_ALWAYS: Final = sum(1 << _FIELDS.index(name) for name in ("event_id", "type", "occurred_at"))
_CONTACT_BIT: Final = 1 << _FIELDS.index("contact_id")
_ANON_BIT: Final = 1 << _FIELDS.index("anonymous_id")
_PROPS_BIT: Final = 1 << _FIELDS.index("properties")
_CUSTOM_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
#: a property spec: name -> (accepted Python types, required)
Spec = dict[str, tuple[Any, bool]]
#: an event class and its well-known property checks as (name, accepted types, required)
_Known = tuple[type, list[tuple[str, tuple[type, ...], bool]]]


class FastDecoder:
    """Builds events without the models when they are plainly valid (None when unsure)."""

    def __init__(
        self,
        kinds: dict[str, str],
        class_of_kind: dict[str, type],
        custom: type,
        identify: type,
    ) -> None:
        #: event type -> its class and checks
        self._known: dict[str, _Known] = {}
        for etype, kind in kinds.items():
            cls = class_of_kind[kind]
            self._known[etype] = (cls, _specs(cls))
        self._custom: _Known = (custom, _specs(custom))
        self._identify = identify
        #: which of ``_FIELDS`` an object had (a bit each) -> pydantic's fields-set. One
        #: set per combination, shared: pydantic copies it before it changes it (frozen
        #: models never do), and a new set per event was 2 % of ``scorestream score``.
        self._fields_sets: dict[int, set[str]] = {}

    def decode(self, raw: bytes, max_bytes: int) -> Any:
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
        cls: Any = known[0]
        specs = known[1]
        contact = obj.get("contact_id")
        anon = obj.get("anonymous_id")
        if contact is not None and (type(contact) is not str or not 0 < len(contact) <= 256):
            return None
        if anon is not None and (type(anon) is not str or not 0 < len(anon) <= 256):
            return None
        identify = cls is self._identify
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
        has_props = "properties" in obj
        if has_props:
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
        # ``object.__new__`` itself: looking ``__new__`` up on a model class (through
        # pydantic's metaclass) cost as much as the allocation.
        event = _NEW(cls)
        # ``event_id``, ``type`` and ``occurred_at`` are strings here, so present; the ids
        # may be present as null.
        present = _ALWAYS
        if "contact_id" in obj:
            present |= _CONTACT_BIT
        if "anonymous_id" in obj:
            present |= _ANON_BIT
        if has_props:
            present |= _PROPS_BIT
        fields_set = self._fields_sets.get(present)
        if fields_set is None:
            fields_set = {name for i, name in enumerate(_FIELDS) if present >> i & 1}
            self._fields_sets[present] = fields_set
        # Frozen models refuse setattr; pydantic's own model_construct sets these through
        # object.__setattr__ too. Spelled out, not through an alias: mypyc compiles this
        # form to a direct generic set, without the slot wrapper and its argument tuples
        # (decoding 23,100 -> 18,700 instructions an event, callgrind of `score`).
        object.__setattr__(
            event,
            "__dict__",
            {
                "event_id": event_id,
                "type": etype,
                "contact_id": contact,
                "anonymous_id": anon,
                "occurred_at": moment,
                "properties": props,
                "key": contact if contact is not None else anon,
                "ts": ts,
            },
        )
        object.__setattr__(event, "__pydantic_fields_set__", fields_set)
        object.__setattr__(event, "__pydantic_extra__", None)
        object.__setattr__(event, "__pydantic_private__", None)
        return event


_NEW: Final[Any] = object.__new__


def _specs(cls: type) -> list[tuple[str, tuple[type, ...], bool]]:
    props: Spec = getattr(cls, "PROPS", {})
    out: list[tuple[str, tuple[type, ...], bool]] = []
    for name, (kinds, required) in props.items():
        out.append((name, kinds if isinstance(kinds, tuple) else (kinds,), required))
    return out
