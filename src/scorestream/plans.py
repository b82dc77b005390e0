"""Published scoring plans: ``scorestream rules publish`` and what workers read.

A plan is published to the compacted ``scorestream.rules`` topic (one partition) as one
record per publication, so the topic keeps the history of plans (a plan changes every few
weeks: the topic stays tiny):

* key ``<effective_at µs, 20 digits>:<version>``;
* value JSON ``{"version", "effective_at", "published_at", "source", "plan"}`` with the
  plan's YAML text as published (``topics/schemas/rules.schema.json``).

**When a plan takes effect.** In event time: a worker scores events that happened at or
after ``effective_at`` with it, events before with the plan in effect before. The switch
is therefore the same point of the event-time merge in every partition, whatever the
worker's lag and whenever it read the plan, and a worker that restarts switches at the
same point again. ``rules publish`` sets ``effective_at`` a little ahead of the wall
clock (``--in``, 10 s by default) so that running workers have read the plan before live
events reach that time. A worker that reads a plan only after applying events past its
``effective_at`` (its consumer of the plan topic was cut off, say) switches at once and
says so (a *late* switch, logged and counted); those few events keep the old plan's
points.

The plan in effect at time ``t`` is the published one with the greatest ``effective_at``
at or before ``t``; before the first, the worker's own file (``SCORESTREAM_RULES``). Plans
are validated when published (an invalid plan is refused and nothing is written) and
again by every worker, which never runs a plan that does not validate: it logs the
reason, counts it and keeps its current plan.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorestream.engine.rules import RulesError, RuleSet, parse_rules
from scorestream.engine.timeutil import US_PER_SECOND, TimeFormatError, format_ts, parse_ts
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.settings import Settings

log = logging.getLogger("scorestream.plans")

#: the declared name of the plan topic
RULES_TOPIC = "scorestream.rules"
#: how far ahead of the wall clock ``rules publish`` dates a plan by default
DEFAULT_LEAD = 10.0


class PlanError(ValueError):
    """A plan record that is not a valid plan (the reason says why)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One published plan."""

    version: str
    effective_at: int
    published_at: int
    source: str
    text: str

    @property
    def key(self) -> bytes:
        """Its record key: plans sort by effective time, and each publication stays."""
        return f"{self.effective_at:020d}:{self.version}".encode()

    def encode(self) -> bytes:
        """The record value."""
        return json.dumps(
            {
                "version": self.version,
                "effective_at": format_ts(self.effective_at),
                "published_at": format_ts(self.published_at),
                "source": self.source,
                "plan": self.text,
            },
            separators=(",", ":"),
        ).encode()

    def rules(self) -> RuleSet:
        """The plan, validated and compiled; :class:`PlanError` if it does not validate
        or is not the version it claims to be."""
        try:
            rules = parse_rules(self.text, f"{RULES_TOPIC} ({self.source})")
        except RulesError as exc:
            raise PlanError(str(exc)) from None
        if rules.version != self.version:
            raise PlanError(
                f"the plan's version is {rules.version}, the record says {self.version}"
            )
        return rules


def decode_plan(value: bytes | None) -> Plan:
    """A plan record's value; :class:`PlanError` for anything else."""
    if value is None:
        raise PlanError("a tombstone, not a plan")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PlanError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError("not a JSON object")
    fields: dict[str, Any] = {}
    for name in ("version", "effective_at", "published_at", "source", "plan"):
        item = doc.get(name)
        if not isinstance(item, str):
            raise PlanError(f"field {name!r} missing or not a string")
        fields[name] = item
    try:
        effective_at = parse_ts(fields["effective_at"])
        published_at = parse_ts(fields["published_at"])
    except TimeFormatError as exc:
        raise PlanError(f"bad time: {exc}") from None
    return Plan(
        version=fields["version"],
        effective_at=effective_at,
        published_at=published_at,
        source=fields["source"],
        text=fields["plan"],
    )


def make_plan(path: str, effective_at: int, published_at: int) -> tuple[Plan, RuleSet]:
    """Read and validate a plan file for publication; :class:`UsageError` if invalid."""
    try:
        # Bytes as they are (no newline translation): the version is their hash.
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read rule file: {exc}") from None
    try:
        rules = parse_rules(text, path)
    except RulesError as exc:
        raise UsageError(str(exc)) from None
    plan = Plan(rules.version, effective_at, published_at, Path(path).name, text)
    return plan, rules


def publish_main(args: argparse.Namespace) -> int:
    """``scorestream rules publish PATH [--at T | --in SECONDS]``."""
    from confluent_kafka import Producer  # noqa: PLC0415 (the offline commands need no Kafka)

    from scorestream import clients  # noqa: PLC0415

    settings = Settings.load(config_file=args.config)
    now = int(time.time() * US_PER_SECOND)
    if args.at is not None:
        try:
            effective_at = parse_ts(args.at)
        except TimeFormatError as exc:
            raise UsageError(f"--at: {exc}") from None
    else:
        if args.lead < 0:
            raise UsageError(f"--in must be >= 0, not {args.lead}")
        effective_at = now + int(args.lead * US_PER_SECOND)
    plan, rules = make_plan(args.path, effective_at, now)
    topic = settings.topic(RULES_TOPIC)
    producer = Producer(clients.output_producer(settings))
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(topic, plan.encode(), plan.key, on_delivery=delivered)
    left = producer.flush(30)
    if left or failures:
        reason = failures[0] if failures else "no acknowledgement in 30 s"
        print(f"scorestream: publishing to {topic} failed: {reason}", flush=True)
        return EXIT_FAILURE
    models = ", ".join(m.name for m in rules.models)
    print(
        f"published {args.path} as {plan.version} to {topic} ({models}); "
        f"workers score events from {format_ts(effective_at)} on with it"
    )
    return EXIT_OK
