"""Input events (spec/events.md), decoded from bytes in one place.

:func:`decode_event` is the only way bytes become an event; every failure is an
:class:`InvalidEvent` whose ``reason`` says precisely what is wrong, so the worker can
put it in the DLQ and ``scorestream score`` in the rejects file.

The rules are pydantic models here (strict, frozen, one per event kind); the events
themselves are the compiled classes of :mod:`scorestream.engine.wire` (:class:`Event`
and one subclass per kind, re-exported here), built by its fast decoder or from a
validated model.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from scorestream.engine.errors import ScorestreamError
from scorestream.engine.timeutil import TimeFormatError, parse_datetime, to_us
from scorestream.engine.wire import (
    CartEvent,
    CustomEvent,
    EmailEvent,
    Event,
    FastDecoder,
    FormSubmit,
    Identify,
    PageView,
    ProfileUpdate,
    PropSpec,
)

__all__ = [
    "CART_TYPES",
    "EMAIL_TYPES",
    "KNOWN_TYPES",
    "AnyEvent",
    "CartEvent",
    "CustomEvent",
    "EmailEvent",
    "Event",
    "FormSubmit",
    "Identify",
    "InvalidEvent",
    "PageView",
    "ProfileUpdate",
    "decode_event",
    "event_from_dict",
    "event_to_dict",
]

EmailType = Literal["email_sent", "email_open", "email_click", "email_unsubscribe", "email_bounce"]
CartType = Literal[
    "cart_add",
    "cart_remove",
    "product_review_view",
    "product_compare",
    "checkout_start",
    "purchase",
    "cart_abandon",
]
EMAIL_TYPES: tuple[str, ...] = get_args(EmailType)
CART_TYPES: tuple[str, ...] = get_args(CartType)
#: Event types with a fixed meaning; any other well-formed type is a custom event.
KNOWN_TYPES: dict[str, str] = {
    "page_view": "page_view",
    **{t: "email" for t in EMAIL_TYPES},
    "form_submit": "form_submit",
    **{t: "cart" for t in CART_TYPES},
    "profile_update": "profile_update",
    "identify": "identify",
}

TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
DEFAULT_MAX_BYTES = 1_000_000

StrictStr = Annotated[str, Strict()]
Id = Annotated[str, Strict(), Field(min_length=1, max_length=256)]
Timestamp = Annotated[AwareDatetime, Field()]


class InvalidEvent(ScorestreamError, ValueError):
    """An input that is not a valid event; ``reason`` is the human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_props(props: dict[str, Any], spec: PropSpec) -> None:
    """Type-check well-known properties; ``spec`` maps name to (types, required)."""
    for name, (kinds, required) in spec.items():
        if name not in props:
            if required:
                raise PydanticCustomError(
                    "missing_property", "properties.{name}: required", {"name": name}
                )
            continue
        value = props[name]
        # bool is an int subclass: a number property must not accept true/false.
        if not isinstance(value, kinds) or (
            isinstance(value, bool) and bool not in _as_tuple(kinds)
        ):
            raise PydanticCustomError(
                "property_type",
                "properties.{name}: expected {kind}, got {got}",
                {"name": name, "kind": _kind_name(kinds), "got": _json_kind(value)},
            )


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {str: "string", dict: "object", int: "number", float: "number", list: "array"}
    return " or ".join(sorted({names.get(k, k.__name__) for k in _as_tuple(kinds)}))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


#: an event class (spelled out here: inside the models, ``type`` names their field)
EventClass = type[Event]


class _EventBase(BaseModel):
    """The rules shared by every event type (the event built from it: :func:`_native`)."""

    # defer_build: the validators are built on first use, not at import. Most events are
    # built by the fast decoder without them, and `scorestream score` started 25 ms
    # sooner (of about 60 ms this module took to import).
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, defer_build=True)

    event_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)]
    type: Annotated[str, Strict(), Field(pattern=TYPE_PATTERN)]
    contact_id: Id | None = None
    anonymous_id: Id | None = None
    occurred_at: Timestamp
    properties: dict[str, Any] = Field(default_factory=dict)

    #: the event class this model validates for (its ``PROPS`` are checked here)
    EVENT: ClassVar[EventClass] = CustomEvent

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # pydantic alone also takes "1772360100", "2026-03-01T10:15Z" or "+0200" offsets
        if isinstance(value, str):
            try:
                return parse_datetime(value)
            except TimeFormatError:
                raise PydanticCustomError(
                    "rfc3339",
                    "expected an RFC 3339 timestamp with offset, e.g. 2026-03-01T10:15:00Z",
                    {},
                ) from None
        return value

    @model_validator(mode="after")
    def _finish(self) -> _EventBase:
        if self.contact_id is None and self.anonymous_id is None:
            raise PydanticCustomError(
                "missing_identity", "one of contact_id or anonymous_id is required", {}
            )
        if self.EVENT.PROPS:
            _check_props(self.properties, self.EVENT.PROPS)
        self._check_specific()
        return self

    def _check_specific(self) -> None:
        """Per-type checks beyond property types."""


class _PageViewModel(_EventBase):
    type: Literal["page_view"]
    EVENT = PageView


class _EmailModel(_EventBase):
    type: EmailType
    EVENT = EmailEvent


class _FormSubmitModel(_EventBase):
    type: Literal["form_submit"]
    EVENT = FormSubmit


class _CartModel(_EventBase):
    type: CartType
    EVENT = CartEvent


class _ProfileUpdateModel(_EventBase):
    type: Literal["profile_update"]
    EVENT = ProfileUpdate


class _IdentifyModel(_EventBase):
    type: Literal["identify"]
    EVENT = Identify

    def _check_specific(self) -> None:
        if self.contact_id is None or self.anonymous_id is None:
            raise PydanticCustomError(
                "identify_ids", "identify needs both contact_id and anonymous_id", {}
            )


class _CustomModel(_EventBase):
    EVENT = CustomEvent


def _native(model: _EventBase) -> Event:
    """The event a validated model describes."""
    return model.EVENT(
        model.event_id,
        model.type,
        model.contact_id,
        model.anonymous_id,
        model.occurred_at,
        model.properties,
        to_us(model.occurred_at),
    )


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(kind, str):
        return KNOWN_TYPES.get(kind, "custom")
    return "custom"  # the custom model then reports the missing or ill-typed `type`


_Model = Annotated[
    Annotated[_PageViewModel, Tag("page_view")]
    | Annotated[_EmailModel, Tag("email")]
    | Annotated[_FormSubmitModel, Tag("form_submit")]
    | Annotated[_CartModel, Tag("cart")]
    | Annotated[_ProfileUpdateModel, Tag("profile_update")]
    | Annotated[_IdentifyModel, Tag("identify")]
    | Annotated[_CustomModel, Tag("custom")],
    Discriminator(_tag),
]
#: any event (the classes of :mod:`scorestream.engine.wire` all derive from :class:`Event`)
AnyEvent = Event

#: the models' validator: the precise reason for what the fast decoder declined
_ADAPTER: TypeAdapter[_EventBase] = TypeAdapter(_Model, config=ConfigDict(defer_build=True))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        # drop the union tag from the location: it is an implementation detail
        loc = [str(p) for p in err["loc"] if p not in _TAGS]
        where = ".".join(loc)
        msg = err["msg"]
        kind = err["type"]
        if kind == "missing":
            parts.append(f"missing field: {where}")
        elif kind in {"missing_property", "property_type", "missing_identity", "identify_ids"}:
            parts.append(msg)
        elif kind == "json_invalid":
            parts.append(f"not valid JSON: {err.get('ctx', {}).get('error', msg)}")
        elif kind == "model_type" and not where:
            parts.append("not a JSON object")
        else:
            parts.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


_TAGS = {"page_view", "email", "form_submit", "cart", "profile_update", "identify", "custom"}


def decode_event(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEvent:
    """Bytes (UTF-8 JSON) to a validated event, or :class:`InvalidEvent` with the reason."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    size = len(raw)
    if size > max_bytes:
        raise InvalidEvent(f"too large: {size} bytes > {max_bytes}")
    event = _fast(raw, max_bytes)
    if event is not None:
        return event
    # Not sure: the models decide, and say precisely what is wrong.
    if raw.find(b"NaN") >= 0 or raw.find(b"Infinity") >= 0:
        # The JSON parser accepts these non-JSON literals; a strict parse tells apart a
        # literal from the same letters inside a string.
        try:
            json.loads(raw, parse_constant=_reject_constant)
        except ValueError as exc:
            raise InvalidEvent(f"not valid JSON: {exc}") from None
    try:
        return _native(_ADAPTER.validate_json(raw))
    except ValidationError as exc:
        if isinstance(raw, bytes | bytearray):
            try:
                bytes(raw).decode("utf-8")
            except UnicodeDecodeError as bad:
                raise InvalidEvent(f"not UTF-8 text: byte {bad.start} is invalid") from None
        raise InvalidEvent(_describe(exc)) from None


_CLASS_OF_KIND: dict[str, type[Event]] = {
    "page_view": PageView,
    "email": EmailEvent,
    "form_submit": FormSubmit,
    "cart": CartEvent,
    "profile_update": ProfileUpdate,
    "identify": Identify,
}
#: the fast path's decoder (see :func:`_fast`); offline feeding calls it directly
FAST_DECODER = FastDecoder(KNOWN_TYPES, _CLASS_OF_KIND)


def _fast(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEvent | None:
    """The event, built without the models when it is plainly valid; None when unsure.

    Validation through pydantic costs about 16 µs an event, most of the offline scoring
    time. This path (:mod:`scorestream.engine.wire`, compiled) parses with the same JSON
    parser (``pydantic_core.from_json``) and applies the models' rules one by one (the
    same property checks; the same timestamp parser, with the common ``...Z`` form read by
    :func:`~scorestream.engine.timeutil.parse_utc`); whatever it does not accept goes
    through the models, which give the precise reason — so it can only be stricter,
    never looser. A Hypothesis test holds the two paths equal
    (``tests/properties/test_event_properties.py``).
    """
    return FAST_DECODER.decode(raw, max_bytes)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def event_from_dict(obj: dict[str, Any]) -> AnyEvent:
    """Validate an already-parsed JSON object (tests, simulation)."""
    # Through JSON on purpose: the same strict rules as the wire (timestamps are strings).
    return decode_event(json.dumps(obj), max_bytes=1 << 62)


def event_to_dict(event: AnyEvent) -> dict[str, Any]:
    """The wire form of an event (inverse of :func:`event_from_dict`)."""
    out: dict[str, Any] = {"event_id": event.event_id, "type": event.type}
    if event.contact_id is not None:
        out["contact_id"] = event.contact_id
    if event.anonymous_id is not None:
        out["anonymous_id"] = event.anonymous_id
    out["occurred_at"] = _iso(event.occurred_at)
    if event.properties:
        out["properties"] = event.properties
    return out


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
