"""``scorestream leads``: print threshold crossings as they arrive on ``leads.sales_ready``.

A plain consumer that assigns itself every partition of the topic (no consumer group,
no commits), at the end or at the beginning, and prints one human line per crossing::

    UP    c-42  engagement/sales_ready  88.0 -> 103.5  at 2026-03-01T10:15:00Z  top: ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from scorestream import clients
from scorestream.errors import ScorestreamError, UsageError
from scorestream.settings import Settings

LEADS_TOPIC = "leads.sales_ready"
METADATA_TIMEOUT = 15.0
TOP_CONTRIBUTORS = 3

_kafka_log = logging.getLogger("scorestream.leads.librdkafka")


class LeadsError(ScorestreamError):
    """The leads topic cannot be read; the message says why."""


def _number(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else str(value)


def format_lead(lead: Mapping[str, Any]) -> str:
    """One human line for one crossing (a ``leads.sales_ready`` message)."""
    direction = str(lead.get("direction", "?")).upper()
    contact = str(lead.get("contact_id", "?"))
    if lead.get("anonymous") is True:
        contact += " (anonymous)"
    where = f"{lead.get('model', '?')}/{lead.get('threshold', '?')}"
    scores = f"{_number(lead.get('previous_score'))} -> {_number(lead.get('score'))}"
    line = f"{direction:<5} {contact}  {where}  {scores}  at {lead.get('occurred_at', '?')}"
    contributors = lead.get("top_contributors")
    if isinstance(contributors, list) and contributors:
        tops = []
        for item in contributors[:TOP_CONTRIBUTORS]:
            if isinstance(item, Mapping):
                points = item.get("points")
                shown = f"{points:+.1f}" if isinstance(points, int | float) else str(points)
                tops.append(f"{item.get('rule_id', '?')} {shown}")
        if tops:
            line += "  top: " + ", ".join(tops)
    return line


def follow_leads(
    settings: Settings,
    *,
    from_beginning: bool = False,
    max_leads: int = 0,
    idle_timeout: float = 0.0,
    emit: Callable[[str], None] = print,
) -> int:
    """Print crossings until ``max_leads`` (0: no limit) or ``idle_timeout`` idle seconds.

    Returns the number of leads printed. Messages that are not crossings are reported
    through ``emit`` and skipped. Raises :class:`LeadsError` if the topic cannot be read.
    """
    from confluent_kafka import (  # noqa: PLC0415 (slow import)
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaException,
        TopicPartition,
    )

    topic = settings.topic(LEADS_TOPIC)
    # A fresh group id: this reader is never joined nor committed.
    group = f"scorestream-leads-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(clients.reader(settings, group, _kafka_log))
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
        except KafkaException as exc:
            raise LeadsError(
                f"cannot reach Kafka at {settings.bootstrap} within {METADATA_TIMEOUT:.0f} s: "
                f"{exc.args[0].str()}"
            ) from None
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise LeadsError(f"topic {topic} does not exist (run `scorestream topics apply`)")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(info.partitions)])
        count = 0
        last = time.monotonic()
        while max_leads <= 0 or count < max_leads:
            if idle_timeout > 0 and time.monotonic() - last >= idle_timeout:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            last = time.monotonic()
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise LeadsError(f"consumer failed: {error.str()}")
                print(f"scorestream: {error.str()}", file=sys.stderr)
                continue
            try:
                lead = json.loads(msg.value() or b"")
            except ValueError as exc:
                emit(f"?     not JSON at {topic}[{msg.partition()}]@{msg.offset()}: {exc}")
                continue
            if not isinstance(lead, dict):
                emit(f"?     not a JSON object at {topic}[{msg.partition()}]@{msg.offset()}")
                continue
            emit(format_lead(lead))
            count += 1
        return count
    finally:
        consumer.close()


def leads_command(args: argparse.Namespace) -> int:
    """``scorestream leads``: print sales-ready leads as they arrive."""
    if args.max < 0:
        raise UsageError("--max: must be >= 0")
    if args.timeout < 0:
        raise UsageError("--timeout: must be >= 0")
    settings = Settings.load(config_file=getattr(args, "config", None))

    def emit(line: str) -> None:
        print(line, flush=True)

    try:
        follow_leads(
            settings,
            from_beginning=bool(args.from_beginning),
            max_leads=int(args.max),
            idle_timeout=float(args.timeout),
            emit=emit,
        )
    except LeadsError as exc:
        print(f"scorestream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0  # Ctrl-C: the consumer was closed by follow_leads
    return 0
