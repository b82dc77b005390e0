"""The one entry point, ``scorestream``, and its subcommands.

Exit codes (spec/cli.md): 0 success, 2 bad usage or invalid rules/config (with a
message naming what is wrong), 1 any other failure. Command modules are imported
lazily so that ``scorestream score`` never pays for importing Faust.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from scorestream.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from scorestream.settings import ConfigError, describe

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "entry",
    "main",
]


Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """A handler that imports ``module:function`` only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        func: Handler = getattr(importlib.import_module(module_name), func_name)
        return func(args)

    return run


def _partitions_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="partitions of the input topics the events would be read from "
        "(default: as declared in SCORESTREAM_TOPICS_DIR, else 6); it decides the order "
        "of events that are out of time order in the file, as it does in the worker",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the README and tests)."""
    parser = argparse.ArgumentParser(
        prog="scorestream",
        description="Real-time, explainable lead scoring on Kafka event streams.",
        epilog="settings (environment variables):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file of settings (same names, lower case)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "worker",
        help="run the streaming service (Faust worker, HTTP API, /metrics)",
        description="Consume the event topics, keep per-contact scores, emit sales-ready leads.",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes on this host, sharing the partitions through the "
        "consumer group (process i serves HTTP on WEB_PORT+i and keeps its state under "
        "STATE_DIR/wI); restarted if one dies",
    )
    p.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=_lazy("scorestream.app.worker:main"))

    p = sub.add_parser(
        "score",
        help="score a JSONL file of events offline with the same engine",
        description="Offline scoring of a JSONL file (- for stdin), no Kafka needed.",
    )
    p.add_argument("--rules", required=True, metavar="PATH", help="scoring plan (YAML)")
    p.add_argument(
        "--at", metavar="T", help="evaluate at this RFC 3339 time (default: latest event)"
    )
    _partitions_option(p)
    p.add_argument("--crossings", metavar="FILE", help="write every threshold crossing here")
    p.add_argument("--rejects", metavar="FILE", help="write invalid input lines here")
    p.add_argument("events", metavar="EVENTS", help="JSONL file of events, or - for stdin")
    p.set_defaults(handler=_lazy("scorestream.offline:score_command"), batch=True)

    p = sub.add_parser(
        "explain",
        help="why is a contact's score what it is (offline, from a JSONL file)",
        description="Per-rule points after decay and the recent ledger of one contact.",
    )
    p.add_argument("--rules", required=True, metavar="PATH", help="scoring plan (YAML)")
    p.add_argument(
        "--at", metavar="T", help="evaluate at this RFC 3339 time (default: latest event)"
    )
    _partitions_option(p)
    p.add_argument("--contact", required=True, metavar="ID", help="contact (or anonymous) id")
    p.add_argument("events", metavar="EVENTS", help="JSONL file of events, or - for stdin")
    p.set_defaults(handler=_lazy("scorestream.offline:explain_command"), batch=True)

    rules = sub.add_parser("rules", help="work with scoring plans")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)
    p = rules_sub.add_parser(
        "check",
        help="validate rule files and print a summary",
        description="Validate rule files; print a summary of models, rules and thresholds.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="rule files")
    p.set_defaults(handler=_lazy("scorestream.offline:rules_check_command"))
    p = rules_sub.add_parser(
        "diff",
        help="what a plan change would do: score the same events under two plans, compare",
        description="Score EVENTS under OLD and under NEW (as `score` does) and report, per "
        "model: contacts whose tier changes (a from -> to table), crossings that appear or "
        "disappear, and the rules whose total points move most. Models in only one plan are "
        "reported as added or removed.",
    )
    p.add_argument("old", metavar="OLD", help="the plan in use (YAML)")
    p.add_argument("new", metavar="NEW", help="the plan to compare it with (YAML)")
    p.add_argument("events", metavar="EVENTS", help="JSONL file of events, or - for stdin")
    p.add_argument(
        "--at", metavar="T", help="evaluate at this RFC 3339 time (default: latest event)"
    )
    _partitions_option(p)
    p.add_argument(
        "--top", type=int, default=10, metavar="N", help="rules listed per model (default 10)"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=5,
        metavar="N",
        help="example crossings shown per model and direction (default 5)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.set_defaults(handler=_lazy("scorestream.whatif:diff_command"), batch=True)
    p = rules_sub.add_parser(
        "publish",
        help="validate a plan and publish it to running workers (no restart)",
        description="Validate PATH and write it to the compacted scorestream.rules topic. "
        "Running workers score events that happen at or after its effective time with it "
        "(the same point of the event-time order in every partition). An invalid plan is "
        "refused (exit 2) and nothing is written.",
    )
    p.add_argument("path", metavar="PATH", help="the plan (YAML)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="T", help="effective time, RFC 3339 (default: now + --in)")
    when.add_argument(
        "--in",
        dest="lead",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="effective this many seconds from now, so running workers have read the plan "
        "before live events reach that time (default 10)",
    )
    p.set_defaults(handler=_lazy("scorestream.plans:publish_main"))

    p = sub.add_parser(
        "calibrate",
        help="suggest rule points and thresholds from known outcomes (won, lost, ...)",
        description="Score EVENTS under the plan; for each outcome (a JSONL line "
        '{"contact_id", "outcome", "occurred_at"}) look at the rules that fired in the '
        "window before it and at the score just before it. Report per rule how often it "
        "fired before good and bad outcomes, its lift and log-odds ratio and suggested "
        "points; per model the thresholds that best separate good from bad. --out writes "
        "the plan with the suggested points and threshold.",
    )
    p.add_argument("--rules", required=True, metavar="PATH", help="scoring plan (YAML)")
    p.add_argument(
        "--outcomes",
        required=True,
        metavar="FILE",
        help='JSONL of {"contact_id", "outcome", "occurred_at"} (- for stdin)',
    )
    p.add_argument("events", metavar="EVENTS", help="JSONL file of events, or - for stdin")
    p.add_argument(
        "--window",
        default="30d",
        metavar="D",
        help="a rule counts as fired when it awarded points within D before the outcome "
        "(default 30d)",
    )
    p.add_argument(
        "--good",
        default="won,converted",
        metavar="LIST",
        help="comma-separated outcomes that are good (default won,converted)",
    )
    p.add_argument(
        "--bad",
        default="lost,churned",
        metavar="LIST",
        help="comma-separated outcomes that are bad (default lost,churned); others are "
        "ignored and counted",
    )
    p.add_argument(
        "--min-support",
        type=int,
        default=10,
        metavar="N",
        help="a rule needs to have fired before at least N outcomes to get suggested points "
        "(default 10); below, its points are kept",
    )
    p.add_argument(
        "--best",
        choices=("separation", "f1"),
        default="separation",
        help="how the best cut is chosen: the largest gap between the shares of good and "
        "bad outcomes at or above it (Youden's J, the default), or the highest F1",
    )
    _partitions_option(p)
    p.add_argument("--out", metavar="PLAN", help="write the suggested plan (YAML) here")
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.set_defaults(handler=_lazy("scorestream.calibrate:calibrate_command"))

    p = sub.add_parser(
        "rescore",
        help="rebuild every contact's state from the event topics' history under a plan "
        "and hand the states over to the live workers",
        description="Read the retained history of the six input topics through the "
        "worker's own processor at bulk speed and rebuild every contact's state under "
        "the plan; then announce a hand-over point on the plan topic (--in seconds "
        "ahead), read live traffic on up to it, write the rebuilt states to the "
        "scorestream.rescore topic and let the running workers take them: they send a "
        'record with "reason": "rules_changed" for every contact whose tier moves, '
        "score with the plan from then on, and read on from where the rebuild stopped, "
        "so no event is lost or counted twice. --dry-run only rebuilds and compares "
        "with the states on contacts.scores. Progress goes to stderr.",
    )
    p.add_argument(
        "--rules", metavar="PATH", help="scoring plan (YAML; default: SCORESTREAM_RULES)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="rebuild and report only; nothing is written to Kafka",
    )
    p.add_argument("--out", metavar="FILE", help="--dry-run: write the rules_changed records here")
    p.add_argument(
        "--scores",
        metavar="FILE",
        help="--dry-run: write every rebuilt contact's scores and tiers here, one line per "
        "contact as `scorestream score` prints them",
    )
    p.add_argument(
        "--in",
        dest="lead",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how far ahead of the end of the bulk rebuild the hand-over point is "
        "(workers must read the announcement before it; default 10)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long after the hand-over point the rebuild still reads (covers clock "
        "differences between hosts; default 2)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for every partition's worker to take the states (default 300)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="abort a hand-over another rescore left open, instead of refusing to start",
    )
    p.set_defaults(handler=_lazy("scorestream.rescore:rescore_command"))

    topics = sub.add_parser("topics", help="manage the declared Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", metavar="SUBCOMMAND", required=True)
    p = topics_sub.add_parser(
        "apply",
        help="create or update the topics declared in topics/",
        description="Create missing topics and report (and where Kafka allows, fix) differences.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    p.set_defaults(handler=_lazy("scorestream.topics:apply_command"))

    p = sub.add_parser(
        "simulate",
        help="publish realistic synthetic traffic to the event topics",
        description="Publish synthetic visitors, campaigns and carts to the event topics.",
    )
    p.add_argument(
        "--rate", type=float, default=200.0, help="events per second (0 = as fast as possible)"
    )
    p.add_argument(
        "--events", type=int, default=0, help="stop after this many events (0 = no limit)"
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = no limit)"
    )
    p.add_argument("--contacts", type=int, default=500, help="number of distinct people")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same traffic)")
    p.add_argument(
        "--bad-ratio",
        type=float,
        default=0.0,
        help="share of extra, deliberately invalid messages (also written to --out)",
    )
    p.add_argument("--out", metavar="FILE", help="also write every event as JSONL to FILE")
    p.add_argument(
        "--outcomes",
        metavar="FILE",
        help="at the end, write an outcome (won, lost, converted, churned) per identified "
        "contact as JSONL to FILE; planted effects of behaviour (for calibrate)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="write to --out (or stdout) only, no Kafka"
    )
    p.add_argument(
        "--start",
        metavar="T",
        help="simulated event time of the first event (RFC 3339); default: the wall clock",
    )
    p.set_defaults(handler=_lazy("scorestream.simulate:simulate_command"))

    p = sub.add_parser(
        "leads",
        help="print sales-ready leads as they arrive on the leads topic",
        description="Consume leads.sales_ready and print one line per crossing.",
    )
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest lead")
    p.add_argument("--max", type=int, default=0, help="stop after this many leads (0 = no limit)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many idle seconds")
    p.set_defaults(handler=_lazy("scorestream.leads:leads_command"))

    p = sub.add_parser(
        "board",
        help="serve the lead board for sales people (a web page)",
        description="Serve the lead board on SCORESTREAM_BOARD_HOST:BOARD_PORT: the hottest "
        "contacts per model, crossings as they arrive, search, one contact's history and "
        "explanation. Reads contacts.scores and leads.sales_ready, and a worker's API.",
    )
    p.set_defaults(handler=_lazy("scorestream.board.server:board_command"))

    p = sub.add_parser(
        "collect",
        help="the HTTP collector for website trackers (serves tracker.js)",
        description="Take events over HTTP (POST /v1/events), validate them like the worker, "
        "produce them to Kafka (acks=all) and answer once Kafka has them. Serves tracker.js, "
        "/metrics and /healthz on SCORESTREAM_COLLECTOR_HOST:COLLECTOR_PORT; sites and write "
        "keys come from SCORESTREAM_COLLECTOR_SITES.",
    )
    p.set_defaults(handler=_lazy("scorestream.collector.app:collect_command"))

    broker = sub.add_parser("broker", help="a local single-node Kafka for development and tests")
    broker_sub = broker.add_subparsers(dest="broker_command", metavar="SUBCOMMAND", required=True)
    for name, text in (
        ("fetch", "download the Kafka jars into the local cache (once)"),
        (
            "start",
            "fetch Kafka (once), format storage, start it in the background, wait until ready",
        ),
        ("stop", "stop the local broker"),
        ("status", "say whether the local broker runs and accepts connections"),
    ):
        p = broker_sub.add_parser(name, help=text, description=text)
        p.set_defaults(handler=_lazy(f"scorestream.broker:{name}_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    return _run(argv, restore_gc=True)[0]


def entry() -> NoReturn:
    """The ``scorestream`` program: :func:`main`, then end the process with its code.

    The offline commands (``score``, ``explain``, ``rules diff``) end holding every
    contact state they built. Freeing them one by one, after the cyclic collector has
    walked them, took about a tenth of a ``score`` run of 200,000 events. Those commands
    keep the collector off (contact states hold no reference cycles) and leave what
    they built in ``args.keep``; the process then ends once the output is flushed,
    without that teardown. Their files are closed by then; nothing else is left to do.
    """
    code, args = _run(None, restore_gc=False)
    if args is None or not getattr(args, "batch", False):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: the output did not all arrive
        code = code or EXIT_FAILURE
    os._exit(code)


def _run(argv: Sequence[str] | None, restore_gc: bool) -> tuple[int, argparse.Namespace | None]:
    """The exit code, and the parsed arguments (None if parsing ended the command).

    ``restore_gc``: turn the collector back on after a batch command if it was on (see
    :func:`entry`). Not when the process ends next: it would first walk every state built.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0), None
    batch = bool(getattr(args, "batch", False))
    collecting = gc.isenabled()
    if batch:
        gc.disable()
    try:
        return int(args.handler(args)), args
    except (UsageError, ConfigError) as exc:
        print(f"scorestream: {exc}", file=sys.stderr)
        return EXIT_USAGE, args
    except KeyboardInterrupt:
        return EXIT_FAILURE, args
    except BrokenPipeError:
        return EXIT_FAILURE, args
    finally:
        if batch and restore_gc and collecting:
            gc.enable()
