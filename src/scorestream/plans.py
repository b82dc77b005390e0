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
from dataclasses import dataclass, field, replace
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


def _json_object(value: bytes | None, what: str) -> dict[str, Any]:
    """A record value that must be a JSON object; :class:`PlanError` saying why not."""
    if value is None:
        raise PlanError(f"a tombstone, not {what}")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PlanError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError("not a JSON object")
    return doc


def decode_plan(value: bytes | None) -> Plan:
    """A plan record's value; :class:`PlanError` for anything else."""
    doc = _json_object(value, "a plan")
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


#: key prefix of a rescore's control records on the plan topic
HANDOVER_PREFIX = "rescore:"
#: the states of a rescore's hand-over (the record with the generation's key changes
#: from one to the next; compaction keeps the last)
PENDING, READY, DONE, ABORTED = "pending", "ready", "done", "aborted"
HANDOVER_STATES = (PENDING, READY, DONE, ABORTED)


@dataclass(frozen=True, slots=True)
class Handover:
    """A ``scorestream rescore`` hand-over to the live workers (see :mod:`scorestream.rescore`).

    ``pending``: workers hold at event time ``at`` (nothing at or after it is scored under
    the plan being replaced). ``ready``: the rebuilt states are on the states topic,
    partition ``p`` at offsets ``ranges[p]``; they include the input topics up to
    ``cuts[p]`` (unprefixed topic -> first offset not included); ``clock`` is the
    rebuild's event time. Workers install them, go on from the cuts under the plan and
    report each partition (:class:`Swapped`). ``done``: every partition reported.
    ``aborted``: the rescore gave up; workers go on as before.
    """

    id: int
    state: str
    at: int
    version: str
    source: str
    text: str
    published_at: int
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    cuts: dict[int, dict[str, int]] = field(default_factory=dict)
    clock: int = 0

    @property
    def key(self) -> bytes:
        """One key per rescore: compaction keeps its latest state."""
        return f"{HANDOVER_PREFIX}{self.id:020d}".encode()

    def encode(self) -> bytes:
        """The record value."""
        doc: dict[str, Any] = {
            "kind": "rescore",
            "id": self.id,
            "state": self.state,
            "at": format_ts(self.at),
            "version": self.version,
            "source": self.source,
            "plan": self.text,
            "published_at": format_ts(self.published_at),
        }
        if self.ranges:
            doc["ranges"] = {str(p): list(r) for p, r in sorted(self.ranges.items())}
            doc["cuts"] = {str(p): c for p, c in sorted(self.cuts.items())}
            doc["clock"] = self.clock
        return json.dumps(doc, separators=(",", ":")).encode()

    def with_state(self, state: str, **changes: Any) -> Handover:
        """The same hand-over in another state."""
        return replace(self, state=state, **changes)

    def rules(self) -> RuleSet:
        """The plan, validated (:class:`PlanError` if not, or not the version it claims)."""
        return Plan(self.version, self.at, self.published_at, self.source, self.text).rules()


@dataclass(frozen=True, slots=True)
class Swapped:
    """A worker's report: partition ``partition`` took rescore ``id``'s states (checkpointed)."""

    id: int
    partition: int
    worker: str

    @property
    def key(self) -> bytes:
        """One key per rescore and partition."""
        return f"{HANDOVER_PREFIX}{self.id:020d}:swapped:{self.partition:05d}".encode()

    def encode(self) -> bytes:
        """The record value."""
        doc: dict[str, Any] = {
            "kind": "rescore-swapped",
            "id": self.id,
            "partition": self.partition,
            "worker": self.worker,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


Control = Plan | Handover | Swapped


def decode_control(key: bytes | None, value: bytes | None) -> Control:
    """A record of the plan topic: a plan, a rescore hand-over or a worker's report;
    :class:`PlanError` if it is none of them."""
    if not (key or b"").startswith(HANDOVER_PREFIX.encode()):
        return decode_plan(value)
    doc = _json_object(value, "a control record")
    try:
        if doc.get("kind") == "rescore-swapped":
            return Swapped(int(doc["id"]), int(doc["partition"]), str(doc.get("worker", "")))
        if doc.get("kind") != "rescore":
            raise PlanError(f"unknown kind {doc.get('kind')!r}")
        state = doc["state"]
        if state not in HANDOVER_STATES:
            raise PlanError(f"unknown rescore state {state!r}")
        ranges = {int(p): (int(r[0]), int(r[1])) for p, r in doc.get("ranges", {}).items()}
        cuts = {
            int(p): {str(t): int(o) for t, o in c.items()} for p, c in doc.get("cuts", {}).items()
        }
        if state == READY and (not ranges or set(ranges) != set(cuts)):
            raise PlanError("a ready rescore without ranges and cuts for every partition")
        return Handover(
            id=int(doc["id"]),
            state=state,
            at=parse_ts(str(doc["at"])),
            version=str(doc["version"]),
            source=str(doc["source"]),
            text=str(doc["plan"]),
            published_at=parse_ts(str(doc["published_at"])),
            ranges=ranges,
            cuts=cuts,
            clock=int(doc.get("clock", 0)),
        )
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, TimeFormatError) as exc:
        raise PlanError(f"not a valid rescore record: {exc!r}") from None


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


def deliver(
    producer: Any, topic: str, key: bytes, value: bytes, timeout: float = 30.0
) -> str | None:
    """Produce one record of the plan topic and wait for Kafka's acknowledgement;
    the reason it failed, or None."""
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(topic, value, key, on_delivery=delivered)
    if producer.flush(timeout) or failures:
        return failures[0] if failures else f"no acknowledgement in {timeout:.0f} s"
    return None


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
    reason = deliver(producer, topic, plan.key, plan.encode())
    if reason is not None:
        print(f"scorestream: publishing to {topic} failed: {reason}", flush=True)
        return EXIT_FAILURE
    models = ", ".join(m.name for m in rules.models)
    print(
        f"published {args.path} as {plan.version} to {topic} ({models}); "
        f"workers score events from {format_ts(effective_at)} on with it"
    )
    return EXIT_OK
