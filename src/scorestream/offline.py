"""Offline commands: ``score``, ``explain`` and ``rules check`` (spec/cli.md).

They run the very same engine as the worker, on a JSONL file, with no Kafka.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from scorestream.engine.events import InvalidEvent, decode_event
from scorestream.engine.population import Population
from scorestream.engine.rules import RulesError, RuleSet, load_rules
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.timeutil import TimeFormatError, parse_ts
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.settings import Settings


@dataclass(slots=True)
class Reject:
    """An input line that is not a valid event."""

    line: int
    reason: str
    text: str


@dataclass(slots=True)
class OfflineRun:
    """Everything one offline scoring run produced."""

    population: Population
    at: int | None
    crossings: list[Crossing] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0
    after_at: int = 0

    def report(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready object per contact, sorted by contact id (the stdout lines)."""
        if self.at is None:
            return
        engine = self.population.engine
        for state in self.population:
            yield {
                "contact_id": state.key,
                "scores": engine.scores(state, self.at),
                "tiers": engine.tiers(state),
            }


def load_rules_or_usage(path: str) -> RuleSet:
    """Load a rule file; invalid rules are a usage error (exit 2) naming every problem."""
    try:
        return load_rules(path)
    except RulesError as exc:
        raise UsageError(str(exc)) from None


def score_lines(
    engine: Engine,
    lines: Iterator[bytes],
    at: int | None = None,
    max_bytes: int = 1_000_000,
) -> OfflineRun:
    """Score JSONL lines in order; evaluate every contact at ``at`` (default: latest event)."""
    population = Population(engine)
    run = OfflineRun(population, at)
    # Contact states hold no reference cycles, so reference counting frees everything;
    # the cyclic collector would only rescan the growing population (measured: ~20% of
    # the run). It is back on, with one collection, when scoring is done.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _score_into(run, population, lines, at, max_bytes)
    finally:
        if was_enabled:
            gc.enable()
    return run


def _score_into(
    run: OfflineRun,
    population: Population,
    lines: Iterator[bytes],
    at: int | None,
    max_bytes: int,
) -> None:
    latest: int | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            event = decode_event(line, max_bytes=max_bytes)
        except InvalidEvent as exc:
            run.rejects.append(Reject(number, exc.reason, _text(line)))
            continue
        if at is not None and event.ts > at:
            run.after_at += 1  # valid, but after the evaluation time: not part of "as of at"
            continue
        result = population.process(event)
        if result.status == "duplicate":
            run.duplicates += 1
        run.crossings.extend(result.crossings)
        latest = event.ts if latest is None or event.ts > latest else latest
    if run.at is None:
        run.at = latest
    if run.at is not None:
        run.crossings.extend(population.advance_all(run.at))
    run.crossings.sort(key=lambda c: c.at)  # stable: same-time crossings keep their order


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="backslashreplace")


def _open_events(path: str, stack: ExitStack) -> Iterator[bytes]:
    if path == "-":
        return iter(sys.stdin.buffer)
    try:
        handle: IO[bytes] = stack.enter_context(open(path, "rb"))  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{path}: cannot read events: {exc.strerror}") from None
    return iter(handle)


def _parse_at(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_ts(text)
    except TimeFormatError as exc:
        raise UsageError(f"--at: {exc}") from None


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def score_command(args: argparse.Namespace) -> int:
    """``scorestream score --rules PATH [--at T] [--crossings FILE] [--rejects FILE] EVENTS``."""
    settings = Settings.load(config_file=args.config)
    rules = load_rules_or_usage(args.rules)
    at = _parse_at(args.at)
    with ExitStack() as stack:
        lines = _open_events(args.events, stack)
        run = score_lines(Engine(rules), lines, at, settings.max_message_bytes)
    if args.crossings:
        try:
            with open(args.crossings, "w", encoding="utf-8") as fh:
                for crossing in run.crossings:
                    fh.write(_dump(crossing.to_dict()) + "\n")
        except OSError as exc:
            print(f"scorestream: {args.crossings}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    if args.rejects:
        try:
            with open(args.rejects, "w", encoding="utf-8") as fh:
                for r in run.rejects:
                    fh.write(_dump({"line": r.line, "reason": r.reason, "input": r.text}) + "\n")
        except OSError as exc:
            print(f"scorestream: {args.rejects}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    else:
        for r in run.rejects:
            print(f"line {r.line}: {r.reason}", file=sys.stderr)
    out = sys.stdout
    for row in run.report():
        out.write(_dump(row) + "\n")
    out.flush()
    if run.after_at:
        print(f"scorestream: {run.after_at} events after --at were not scored", file=sys.stderr)
    return EXIT_OK


def explain_command(args: argparse.Namespace) -> int:
    """``scorestream explain --rules PATH --contact ID [--at T] EVENTS``: one JSON document."""
    settings = Settings.load(config_file=args.config)
    rules = load_rules_or_usage(args.rules)
    at = _parse_at(args.at)
    with ExitStack() as stack:
        run = score_lines(
            Engine(rules), _open_events(args.events, stack), at, settings.max_message_bytes
        )
    population = run.population
    key = population.resolve(args.contact)
    state = population.states.get(key)
    if state is None or run.at is None:
        print(f"scorestream: no events for contact {args.contact!r}", file=sys.stderr)
        return EXIT_FAILURE
    doc = population.engine.explain(state, run.at)
    doc["crossings"] = [c.to_dict() for c in run.crossings if c.contact_id == key]
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return EXIT_OK


def rules_check_command(args: argparse.Namespace) -> int:
    """``scorestream rules check PATH...``: validate every file, print summaries."""
    problems: list[str] = []
    for path in args.paths:
        try:
            rules = load_rules(path)
        except RulesError as exc:
            problems.extend(exc.problems)
            continue
        print(rules.summary())
    if problems:
        raise UsageError("invalid rules:\n" + "\n".join(problems))
    return EXIT_OK
