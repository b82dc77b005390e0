"""The worker's reader of the plan topic (see :mod:`scorestream.plans`).

Every worker reads the whole ``scorestream.rules`` topic (one partition, no consumer
group: each worker needs every plan), once to its end before it scores anything, then
every second for new plans. Each plan is validated; a valid one is handed to the
processor with its effective time, an invalid one is logged and counted and never runs.
A topic that cannot be read (missing, Kafka away) is retried; meanwhile the worker keeps
the plans it has.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition

from scorestream import clients
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import format_ts
from scorestream.plans import RULES_TOPIC, Handover, Plan, PlanError, Swapped, decode_control
from scorestream.settings import Settings

log = logging.getLogger("scorestream.plans")


#: empty polls of 0.5 s at start-up before going on without reaching the end
START_POLLS = 20


class PlanWatcher:
    """Reads new plan records; :meth:`poll` returns the valid ones and counts the rest."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(RULES_TOPIC)
        self.settings = settings
        self.position = 0
        self.rejected = 0
        self._consumer: Consumer | None = None
        self._warned = False
        #: rescore hand-overs (with their plan) and workers' reports read since the last
        #: take_control(), in topic order
        self.handovers: list[tuple[Handover, Engine]] = []
        self.reports: list[Swapped] = []

    def _open(self) -> Consumer:
        if self._consumer is None:
            group = f"{self.settings.app_id}-plans-{uuid.uuid4().hex[:8]}"
            consumer = Consumer(clients.reader(self.settings, group))
            consumer.assign([TopicPartition(self.topic, 0, self.position)])
            self._consumer = consumer
        return self._consumer

    def poll(self, to_end: bool = False) -> list[tuple[Plan, Engine]]:
        """New valid plans since the last call. ``to_end``: read up to the topic's end
        first (start-up), rather than what has arrived."""
        try:
            consumer = self._open()
            end = self.position
            if to_end:
                tp = TopicPartition(self.topic, 0)
                _, end = clients.watermarks(consumer, tp, 10)
            found: list[tuple[Plan, Engine]] = []
            empty = 0
            while True:
                batch = consumer.consume(num_messages=100, timeout=0.5 if to_end else 0.0)
                for msg in batch:
                    if msg.error():
                        raise KafkaException(msg.error())
                    self.position = (msg.offset() or 0) + 1
                    accepted = self._accept(msg.key(), msg.value(), msg.offset() or 0)
                    if accepted is not None:
                        found.append(accepted)
                if batch:
                    empty = 0
                    continue
                if not to_end or self.position >= end:
                    break
                # Compaction can leave the end beyond the last record (a removed
                # tombstone): the consumer's position then passes it with nothing read.
                (at,) = consumer.position([TopicPartition(self.topic, 0)])
                if at.offset >= end:
                    self.position = at.offset
                    break
                empty += 1
                if empty >= START_POLLS:
                    log.warning(
                        "%s: nothing read up to offset %d in %.0f s; going on with the plans read",
                        self.topic,
                        end,
                        START_POLLS * 0.5,
                    )
                    break
        except KafkaException as exc:
            if not self._warned:
                log.warning("cannot read %s (%s): keeping the current plan", self.topic, exc)
                self._warned = True
            self.close()
            return []
        self._warned = False
        return found

    def _accept(
        self, key: bytes | None, value: bytes | None, offset: int
    ) -> tuple[Plan, Engine] | None:
        try:
            record = decode_control(key, value)
            if isinstance(record, Swapped):
                self.reports.append(record)
                return None
            rules = record.rules()
        except PlanError as exc:
            self.rejected += 1
            log.error("%s offset %d: refused, not a valid plan: %s", self.topic, offset, exc)
            return None
        if isinstance(record, Handover):
            self.handovers.append((record, Engine(rules)))
            return None
        log.info(
            "plan %s (%s, published %s) takes effect at %s",
            record.version,
            record.source,
            format_ts(record.published_at),
            format_ts(record.effective_at),
        )
        return record, Engine(rules)

    def take_control(self) -> tuple[list[tuple[Handover, Engine]], list[Swapped]]:
        """Rescore hand-overs and reports read since the last call."""
        handovers, self.handovers = self.handovers, []
        reports, self.reports = self.reports, []
        return handovers, reports

    def close(self) -> None:
        """Close the consumer (a later poll opens a new one where this one was)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
