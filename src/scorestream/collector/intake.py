"""From a request body to Kafka records: the collector's pure core.

Every event is validated by the engine's own :func:`decode_event`, exactly as the
worker will decode it, so an event the collector accepts is never sent to the DLQ for
its content. Before validation the collector may fill what a tracker leaves out
(``event_id``: a UUID; ``occurred_at``: the time received) and leaves out top-level
fields that are not part of an event; after it, the record gets ``received_at`` (kept
in Kafka, ignored by the worker) and, only when configured, the client's address.

A tracker may add ``sent_at``, its own clock when it sent the batch. The collector then
moves ``occurred_at`` by the difference between its clock and the browser's
(``received_at - sent_at``), so a visitor's wrong clock does not put events in the
future or the past (Snowplow's "derived timestamp"); ``sent_at`` itself is not kept.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from scorestream.engine.events import InvalidEvent, decode_event
from scorestream.engine.timeutil import TimeFormatError, format_ts, parse_ts
from scorestream.errors import ScorestreamError
from scorestream.pipeline.routing import topic_for

#: the most events one request may carry (spec: cli.md, Collector)
MAX_BATCH = 500


class BodyError(ScorestreamError):
    """The request body as a whole cannot be taken; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event, ready to produce: its topic (without prefix), key and value."""

    index: int
    event_id: str
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid event of the request and why."""

    index: int
    reason: str
    event_id: str | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(body: bytes) -> list[Any]:
    """The items of a body: one JSON object, or an array of up to :data:`MAX_BATCH`.

    Raises :class:`BodyError` (400 not JSON or empty, 413 too many events).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"body is not UTF-8 text: byte {exc.start} is invalid") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, list):
        raise BodyError(400, "body must be an event (JSON object) or an array of events")
    if not doc:
        raise BodyError(400, "empty batch: no events")
    if len(doc) > MAX_BATCH:
        raise BodyError(413, f"batch of {len(doc)} events: at most {MAX_BATCH} per request")
    return doc


#: the top-level fields of an input event; anything else a client sends is left out
FIELDS = ("event_id", "type", "contact_id", "anonymous_id", "occurred_at", "properties")

_last_received: tuple[int, str] = (-1, "")


def _received_text(received_us: int) -> str:
    # Every event of a request shares the time received: format it once per request.
    global _last_received
    if _last_received[0] != received_us:
        _last_received = (received_us, format_ts(received_us))
    return _last_received[1]


def prepare(
    item: Any,
    index: int,
    received_us: int,
    *,
    max_bytes: int,
    client_address: str | None = None,
) -> Accepted | Rejected:
    """Validate one item of a body and build its Kafka record.

    The record is the very JSON text the engine validated, with ``received_at`` (and
    ``client_address`` when given) appended.
    """
    if not isinstance(item, dict):
        return Rejected(index, "not a JSON object")
    obj = {name: item[name] for name in FIELDS if name in item}
    received = _received_text(received_us)
    if "event_id" not in obj:
        obj["event_id"] = uuid.uuid4().hex
    if "occurred_at" not in obj:
        obj["occurred_at"] = received
    event_id = obj["event_id"] if isinstance(obj["event_id"], str) else None
    sent_at = item.get("sent_at")
    if sent_at is not None:
        try:
            skew = received_us - parse_ts(sent_at)
        except TimeFormatError:
            return Rejected(index, "sent_at: expected an RFC 3339 timestamp with offset", event_id)
        try:
            occurred = parse_ts(obj["occurred_at"])
        except TimeFormatError:
            pass  # the validation below says what is wrong with it
        else:
            # An event cannot have happened after the collector received it.
            obj["occurred_at"] = format_ts(min(occurred + skew, received_us))
    try:
        text = json.dumps(obj, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # pragma: no cover - parsed JSON always dumps
        return Rejected(index, f"not serialisable: {exc}", event_id)
    try:
        event = decode_event(text, max_bytes=max_bytes)
    except InvalidEvent as exc:
        return Rejected(index, exc.reason, event_id)
    extra = f',"received_at":"{received}"'
    if client_address is not None:
        extra += ',"client_address":' + json.dumps(client_address)
    value = (text[:-1] + extra + "}").encode("ascii")  # json.dumps escapes non-ASCII
    if len(value) > max_bytes:
        return Rejected(index, f"too large: {len(value)} bytes > {max_bytes}", event.event_id)
    return Accepted(index, event.event_id, topic_for(event.type), event.key.encode(), value)
