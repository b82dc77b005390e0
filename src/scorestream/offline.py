"""Offline commands: ``score``, ``explain`` and ``rules check`` (docs/cli.md).

They run the worker's own :class:`~scorestream.pipeline.processor.Processor` over a JSONL
file, with an in-memory store per partition and no Kafka. The file is read as if it had
been published to the input topics (each event to the topic of its type, keyed by its
contact or anonymous id, partitioned as Kafka's Java client does) and the worker had
then consumed that backlog: per topic-partition in file order, across them in
event-time order. So ``score`` gives what a worker gives on the same events.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scorestream.engine.events import FAST_DECODER
from scorestream.engine.rules import RulesError, RuleSet, load_rules
from scorestream.engine.scorer import Crossing, Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import TimeFormatError, parse_ts
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.pipeline.feed import feed
from scorestream.pipeline.processor import INTERNAL_ERROR, Processor
from scorestream.pipeline.processor import Settings as ProcessorSettings
from scorestream.pipeline.routing import INPUT_TOPICS
from scorestream.pipeline.store import ScratchStore
from scorestream.settings import Settings

#: partitions of the input topics when no declaration says otherwise
DEFAULT_PARTITIONS = 6


@dataclass(slots=True)
class Reject:
    """An input line that is not a valid event."""

    line: int
    reason: str
    text: str


class _Collect:
    """The offline emitter: crossings into a list; nothing else may leave."""

    def __init__(self) -> None:
        self.crossings: list[Crossing] = []
        self.errors: list[dict[str, Any]] = []

    def crossing(self, crossing: Crossing) -> None:
        self.crossings.append(crossing)

    def dlq(self, record: dict[str, Any]) -> None:
        # Valid events only reach the processor: this is an internal error, kept to report.
        self.errors.append(record)

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        raise AssertionError(f"offline processor owns every partition (asked for {partition})")


@dataclass(slots=True)
class OfflineRun:
    """Everything one offline scoring run produced."""

    processor: Processor
    at: int | None
    crossings: list[Crossing] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    #: the DLQ records of events that hit an internal error (a bug); each is also in
    #: ``rejects`` with its line
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    after_at: int = 0

    @property
    def internal(self) -> int:
        """How many events hit an internal error."""
        return len(self.errors)

    @property
    def engine(self) -> Engine:
        """The engine the run scored with."""
        return self.processor.engine

    def report(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready object per contact, sorted by contact id (the stdout lines)."""
        if self.at is None:
            return
        engine = self.engine
        for state in self.processor.states():
            yield score_row(engine, state, self.at)


def score_row(engine: Engine, state: ContactState, at: int) -> dict[str, Any]:
    """A contact's line of ``scorestream score``: its scores at ``at`` and its tiers."""
    return {
        "contact_id": state.key,
        "scores": engine.scores(state, at),
        "tiers": engine.tiers(state),
    }


def load_rules_or_usage(path: str) -> RuleSet:
    """Load a rule file; invalid rules are a usage error (exit 2) naming every problem."""
    try:
        return load_rules(path)
    except RulesError as exc:
        raise UsageError(str(exc)) from None


def declared_partitions(settings: Settings) -> int:
    """The partition count of the declared input topics (the default without declarations)."""
    folder = Path(settings.topics_dir)
    if not (folder / f"{INPUT_TOPICS[0]}.yaml").is_file():
        return DEFAULT_PARTITIONS
    from scorestream.topics import load_declarations  # noqa: PLC0415 (only when needed)

    for decl in load_declarations(folder):
        if decl.name == INPUT_TOPICS[0]:
            return decl.partitions
    return DEFAULT_PARTITIONS


def score_lines(
    engine: Engine,
    lines: Iterator[bytes],
    at: int | None = None,
    max_bytes: int = 1_000_000,
    partitions: int = DEFAULT_PARTITIONS,
) -> OfflineRun:
    """Score JSONL lines as the worker would score them from Kafka; evaluate at ``at``."""
    collect = _Collect()
    processor = Processor(
        engine,
        partitions,
        collect,
        highwater=_caught_up,
        settings=ProcessorSettings(max_bytes=max_bytes, schedule=False),
    )
    for number in range(partitions):
        processor.assign(number, ScratchStore(), {})
    run = OfflineRun(processor, at)
    # Contact states hold no reference cycles, so reference counting frees everything;
    # the cyclic collector would only rescan the growing population (measured: ~20% of
    # the run). It is back on when scoring is done.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _score_into(run, collect, lines, at, max_bytes, partitions)
    finally:
        if was_enabled:
            gc.enable()
    run.crossings = collect.crossings
    run.errors = collect.errors
    run.crossings.sort(key=lambda c: c.at)  # stable: same-time crossings keep their order
    return run


def _caught_up(topic: str, partition: int) -> int:
    """Offline every topic-partition is wholly read before anything is released."""
    return 0


def _score_into(
    run: OfflineRun,
    collect: _Collect,
    lines: Iterator[bytes],
    at: int | None,
    max_bytes: int,
    partitions: int,
) -> None:
    processor = run.processor
    fed = feed(processor, lines, FAST_DECODER, at, max_bytes, partitions)
    run.rejects.extend(Reject(number, reason, _text(line)) for number, reason, line in fed.rejects)
    run.after_at += fed.after_at
    latest = fed.latest
    # Everything is in: the merge releases it in the order a worker would.
    processor.refresh(0.0)
    processor.run(0.0)
    # An event the worker would have put in the DLQ with an internal error (a bug) is
    # reported like an invalid line: its line number (0 when the record was work passed
    # between partitions, which has no line of its own), the reason, the event.
    for error in collect.errors:
        line = fed.line_of(error["topic"], error["partition"], error["offset"])
        run.rejects.append(Reject(line or 0, error["error"], error.get("payload", "")))
    if collect.errors:
        run.rejects.sort(key=lambda r: r.line)
    run.duplicates = sum(
        n for (_, outcome), n in processor.counts.items() if outcome == "duplicate"
    )
    if run.at is None:
        run.at = latest
    if run.at is not None:
        processor.advance_all(run.at)


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="backslashreplace")


def open_events(path: str, stack: ExitStack) -> Iterator[bytes]:
    """The lines of an events file (``-``: stdin), closed with ``stack``; unreadable: exit 2."""
    if path == "-":
        return iter(sys.stdin.buffer)
    try:
        handle: IO[bytes] = stack.enter_context(open(path, "rb"))  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{path}: cannot read events: {exc.strerror}") from None
    return iter(handle)


def rereadable_events(path: str, stack: ExitStack) -> Callable[[], Iterator[bytes]]:
    """A function that gives the lines of an events file afresh on every call.

    For commands that score the same events more than once (``rules diff``): a file is
    opened again for each pass, so it is never all in memory; stdin can be read only
    once, so it is kept. The file is opened at once, so an unreadable one fails (exit 2)
    before any scoring starts.
    """
    if path == "-":
        kept = list(sys.stdin.buffer)
        return lambda: iter(kept)
    first: list[Iterator[bytes]] = [open_events(path, stack)]

    def lines() -> Iterator[bytes]:
        return first.pop() if first else open_events(path, stack)

    return lines


def load_plans_or_usage(paths: Iterable[str]) -> list[RuleSet]:
    """Load several rule files; if any is invalid, exit 2 naming every problem of every file.

    The message is the one of ``rules check`` (``invalid rules:`` and one line per
    problem, each naming the file, the rule and the YAML path).
    """
    plans: list[RuleSet] = []
    problems: list[str] = []
    for path in paths:
        try:
            plans.append(load_rules(path))
        except RulesError as exc:
            problems.extend(exc.problems)
    if problems:
        raise UsageError("invalid rules:\n" + "\n".join(problems))
    return plans


def parse_at(text: str | None) -> int | None:
    """The ``--at`` option in microseconds (None when not given); a bad one is exit 2."""
    if text is None:
        return None
    try:
        return parse_ts(text)
    except TimeFormatError as exc:
        raise UsageError(f"--at: {exc}") from None


def dump_line(obj: Any) -> str:
    """One JSONL line as the offline commands print them."""
    return _LINE_ENCODER.encode(obj)


#: ``json.dumps`` with these options builds a new encoder for every call (about half of
#: the cost of a line of ``score``'s report); one encoder serves every line the same.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def score_command(args: argparse.Namespace) -> int:
    """``scorestream score --rules PATH [--at T] [--crossings FILE] [--rejects FILE] EVENTS``."""
    settings = Settings.load(config_file=args.config)
    rules = load_rules_or_usage(args.rules)
    at = parse_at(args.at)
    partitions = partitions_option(args, settings)
    with ExitStack() as stack:
        lines = open_events(args.events, stack)
        run = score_lines(Engine(rules), lines, at, settings.max_message_bytes, partitions)
    args.keep = run  # freed by the caller, or not at all when the process ends (cli.entry)
    if args.crossings:
        try:
            with open(args.crossings, "w", encoding="utf-8") as fh:
                for crossing in run.crossings:
                    fh.write(dump_line(crossing.to_dict()) + "\n")
        except OSError as exc:
            print(f"scorestream: {args.crossings}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    if args.rejects:
        try:
            with open(args.rejects, "w", encoding="utf-8") as fh:
                for r in run.rejects:
                    fh.write(
                        dump_line({"line": r.line, "reason": r.reason, "input": r.text}) + "\n"
                    )
        except OSError as exc:
            print(f"scorestream: {args.rejects}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    else:
        for r in run.rejects:
            print(f"line {r.line}: {r.reason}", file=sys.stderr)
    out = sys.stdout
    for row in run.report():
        out.write(dump_line(row) + "\n")
    out.flush()
    if run.after_at:
        print(f"scorestream: {run.after_at} events after --at were not scored", file=sys.stderr)
    return internal_failures(run, listed=True)


def internal_failures(run: OfflineRun, listed: bool = False) -> int:
    """Say on stderr how many events hit an internal error (a fault of ours, which the
    worker would have put in the DLQ), each with its line unless ``listed`` elsewhere;
    the exit code: 1 if any did, else 0."""
    if not run.internal:
        return EXIT_OK
    where = "their lines and reasons are with the rejects" if listed else "listed below"
    print(
        f"scorestream: {run.internal} events hit an internal error, so the results may "
        f"lack their effects (a bug; {where})",
        file=sys.stderr,
    )
    if not listed:
        for r in run.rejects:
            if r.reason.startswith(INTERNAL_ERROR):
                print(f"line {r.line}: {r.reason}", file=sys.stderr)
    return EXIT_FAILURE


def explain_command(args: argparse.Namespace) -> int:
    """``scorestream explain --rules PATH --contact ID [--at T] EVENTS``: one JSON document."""
    settings = Settings.load(config_file=args.config)
    rules = load_rules_or_usage(args.rules)
    at = parse_at(args.at)
    partitions = partitions_option(args, settings)
    with ExitStack() as stack:
        run = score_lines(
            Engine(rules),
            open_events(args.events, stack),
            at,
            settings.max_message_bytes,
            partitions,
        )
    args.keep = run  # see score_command
    state = run.processor.resolve(args.contact)
    if state is None or run.at is None:
        print(f"scorestream: no events for contact {args.contact!r}", file=sys.stderr)
        return EXIT_FAILURE
    doc = run.engine.explain(state, run.at)
    doc["crossings"] = [c.to_dict() for c in run.crossings if c.contact_id == state.key]
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return internal_failures(run)


def partitions_option(args: argparse.Namespace, settings: Settings) -> int:
    """The ``--partitions`` option, or the declared partition count when it is not given."""
    given: int | None = getattr(args, "partitions", None)
    if given is None:
        return declared_partitions(settings)
    if given < 1:
        raise UsageError("--partitions: must be >= 1")
    return given


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
