"""A JSONL file into the processor, as a worker would have read it from its topics.

``scorestream score`` (and ``explain``, ``rules diff`` and ``calibrate`` through
:func:`scorestream.offline.score_lines`) reads events here: per topic-partition in
file order, each event at the next offset of its topic and the partition of its key.
Compiled with the hot modules (see ``setup.py``): this loop runs once per event, and
interpreted it cost about as much as the merge.
"""

from __future__ import annotations

from collections.abc import Iterable

from scorestream.engine.events import InvalidEvent, decode_event
from scorestream.engine.wire import FastDecoder
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.routing import partition_for, topic_for


class Fed:
    """What :func:`feed` read besides the events it queued."""

    def __init__(self) -> None:
        #: (line number, reason, the line) of every line that is not a valid event
        self.rejects: list[tuple[int, str, bytes]] = []
        #: valid events dated after the evaluation time (not queued)
        self.after_at = 0
        #: the newest event time queued
        self.latest: int | None = None


def feed(
    processor: Processor,
    lines: Iterable[bytes],
    fast: FastDecoder,
    at: int | None,
    max_bytes: int,
    partitions: int,
) -> Fed:
    """Queue every valid event of ``lines`` in ``processor`` (nothing is applied yet).

    ``fast`` is :mod:`scorestream.engine.events`' own fast decoder. Every line goes to
    it first, and what it declines to :func:`decode_event`, which tries it again and
    then the models: the same event or the same reason as :func:`decode_event` alone,
    one interpreted call fewer for a valid line.
    """
    fed = Fed()
    offsets: dict[tuple[str, int], int] = {}
    number = 0
    for raw in lines:
        number += 1
        line = raw.rstrip(b"\r\n")
        # ``isspace`` tests the same ASCII whitespace ``strip`` removes, without copying
        # the line.
        if not line or line.isspace():
            continue
        event = fast.decode(line, max_bytes)
        if event is None:
            try:
                event = decode_event(line, max_bytes=max_bytes)
            except InvalidEvent as exc:
                fed.rejects.append((number, exc.reason, line))
                continue
        ts: int = event.ts
        if at is not None and ts > at:
            fed.after_at += 1  # valid, but after the evaluation time: not part of "as of at"
            continue
        topic = topic_for(event.type)
        partition = partition_for(event.key, partitions)
        where = (topic, partition)
        offset = offsets.get(where, 0)
        offsets[where] = offset + 1
        processor.receive_event(topic, partition, offset, event, line, 0.0)
        if fed.latest is None or ts > fed.latest:
            fed.latest = ts
    return fed
