"""The worker's side of a ``scorestream rescore`` hand-over (see :mod:`scorestream.rescore`).

The rescore announces itself on the plan topic (:class:`~scorestream.plans.Handover`):

* **pending**, with a point ``at`` in event time and wall-clock time: from then on the
  worker releases nothing at or after ``at`` from the merge, and once the wall clock
  reaches ``at`` it releases nothing at all (it *freezes*), so that everything it applied
  under the plan being replaced is within what the rescore reads (the rescore cuts after
  ``at`` plus a grace, with every record Kafka had by then);
* **ready**, with the rebuilt states' ranges on the states topic, the cut of every
  partition and the rebuild's clock: the worker reads its partitions' states, takes them
  (:meth:`Processor.install`), sends a ``rules_changed`` record for every contact whose
  tier the new plan moves, switches to the plan for good and reads on from the cuts. A
  partition assigned later while the hand-over is still open is installed the same way
  when it is taken. After the next checkpoint that includes a partition's new states,
  the worker reports it (:class:`~scorestream.plans.Swapped`);
* **done** (every partition reported) or **aborted**: nothing more to do; a worker that
  starts after *done* just scores with the plan.

A worker that holds for longer than ``SCORESTREAM_RESCORE_HOLD`` without the states goes
on under its current plan and takes them if they come (its earlier crossings under the
old plan then stand beside the new plan's for the same events).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from scorestream.app.kafka import Offsets, Outputs, Topology
from scorestream.engine.scorer import Engine
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import US_PER_SECOND, format_ts
from scorestream.metrics import Metrics
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.records import MIN_TS
from scorestream.pipeline.routing import LEADS, RESCORE_STATES
from scorestream.pipeline.store import decode_value
from scorestream.plans import ABORTED, DONE, PENDING, READY, RULES_TOPIC, Handover, Swapped
from scorestream.rescore import TierChange, rules_changed_record, tier_order, top_contributors

log = logging.getLogger("scorestream.rescore")


class HandoverAgent:
    """Follows rescore hand-overs for one worker process."""

    def __init__(
        self,
        processor: Processor,
        outputs: Outputs,
        offsets: Offsets,
        topology: Topology,
        metrics: Metrics,
        hold_limit: float,
    ) -> None:
        self.processor = processor
        self.outputs = outputs
        self.offsets = offsets
        self.topology = topology
        self.metrics = metrics
        self.hold_limit = hold_limit
        #: the open hand-over (pending or ready) and its plan
        self.current: Handover | None = None
        self.engine: Engine | None = None
        #: rescores finished (done or aborted): their later records change nothing
        self.finished: set[int] = set()
        #: the hand-over whose states this worker takes (every partition it owns, and
        #: each one it is assigned while the hand-over is open)
        self.installed: Handover | None = None
        #: the plan before it (what a tier change is measured against)
        self.previous: Engine | None = None
        self.install_due = False
        self.frozen = False
        self._held_since: float | None = None
        self._gave_up: set[int] = set()
        #: partitions installed and not yet reported
        self.to_report: set[int] = set()
        #: partitions reported per rescore (by any worker)
        self._reported: dict[int, set[int]] = {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------ control records

    def take(self, handover: Handover, engine: Engine) -> None:
        """A control record of the plan topic, in topic order."""
        hid = handover.id
        if hid in self.finished:
            return
        current = self.current
        if current is not None and hid < current.id:
            return  # superseded by a later rescore
        proc = self.processor
        if handover.state in (DONE, ABORTED):
            self.finished.add(hid)
            if current is not None and current.id == hid:
                self.current = None
                self.install_due = False
                self._release()
            if handover.state == DONE:
                # Its plan scores the whole history now; a worker starting after the
                # hand-over has nothing to install (every partition reported).
                proc.rebase(engine, handover.at)
                if self.installed is not None and self.installed.id == hid:
                    self.installed = None
            else:
                log.warning("rescore %d was aborted: going on under the current plan", hid)
            return
        self.current = handover
        self.engine = engine
        if handover.state == PENDING:
            if (proc.newest is None or proc.newest < handover.at) and hid not in self._gave_up:
                proc.hold(handover.at)
                self._held_since = time.monotonic()
                self.metrics.rescore_holding.set(handover.at / US_PER_SECOND)
                log.info(
                    "rescore %d pending: holding at %s for its states (plan %s)",
                    hid,
                    format_ts(handover.at),
                    handover.version,
                )
            else:
                log.warning(
                    "rescore %d pending at %s, but events after it were applied already: "
                    "its states will be taken when they come",
                    hid,
                    format_ts(handover.at),
                )
        elif handover.state == READY:
            installed = self.installed
            if installed is not None and installed.id == hid:
                return  # taken here already
            self.install_due = True
            log.info("rescore %d ready: taking its states (plan %s)", hid, handover.version)
            # Nothing more under the old plan until the states are in: a worker that
            # (re)starts while the hand-over is open would otherwise score events past
            # the cut under it, and again under the new plan after the install.
            proc.hold(MIN_TS)
            self.frozen = True
            self._held_since = time.monotonic()
            self.metrics.rescore_holding.set(handover.at / US_PER_SECOND)

    def freeze_check(self, now: float) -> None:
        """At the hand-over's wall-clock time, stop releasing anything (see the module)."""
        current = self.current
        if (
            current is None
            or self.frozen
            or current.state != PENDING
            or self.processor.holding is None
            or now * US_PER_SECOND < current.at
        ):
            return
        self.processor.hold(MIN_TS)
        self.frozen = True
        log.info("rescore %d: frozen at the hand-over time, waiting for the states", current.id)

    def hold_expired(self) -> None:
        """Give up holding after ``hold_limit`` seconds without the states."""
        current = self.current
        if self._held_since is None or current is None or current.state == READY:
            return
        if time.monotonic() - self._held_since < self.hold_limit:
            return
        log.warning(
            "rescore %d: no states after %.0f s of holding; going on under the current plan",
            current.id,
            self.hold_limit,
        )
        self._gave_up.add(current.id)
        self._release()

    def _release(self) -> None:
        self.processor.hold(None)
        self.frozen = False
        self._held_since = None
        self.metrics.rescore_holding.set(0)

    # ------------------------------------------------------------------ installing

    def begin(self) -> Handover | None:
        """The ready hand-over to install now, with the plan switched (None: nothing)."""
        current = self.current
        engine = self.engine
        if not self.install_due or current is None or engine is None:
            return None
        self.install_due = False
        self.previous = self.processor.engine
        self.installed = current
        return current

    def retry(self, handover: Handover, reason: str) -> None:
        """The states could not be read: stay frozen and try again at the next poll."""
        log.error(
            "rescore %d: cannot read the rebuilt states (%s); trying again", handover.id, reason
        )
        self.install_due = True

    def load(self, handover: Handover, partitions: list[int]) -> dict[int, list[ContactState]]:
        """Read the rebuilt states of ``partitions`` (runs in a thread: Kafka I/O)."""
        topic = self.topology.real(RESCORE_STATES)
        out: dict[int, list[ContactState]] = {}
        for p in partitions:
            start, end = handover.ranges[p]
            records, _ = self.offsets.read_range(topic, p, start, end)
            out[p] = [decode_value(value) for _, _, value, _ in records if value is not None]
        return out

    def install(self, handover: Handover, loaded: dict[int, list[ContactState]]) -> int:
        """Take the loaded states of owned partitions; returns the tier changes sent."""
        proc = self.processor
        engine = self.engine
        assert engine is not None
        previous = self.previous or proc.engine
        proc.rebase(engine, handover.at)
        engine = proc.engine
        changes = 0
        for p, states in sorted(loaded.items()):
            if p not in proc.parts:
                continue
            replaced = proc.install(
                p, states, handover.cuts[p], handover.cuts, handover.id, handover.clock
            )
            for old, new in replaced:
                changes += self._rules_changed(previous, engine, old, new, handover)
            self.to_report.add(p)
            self.metrics.rescore_installs.inc()
            log.info(
                "rescore %d: partition %d took %d rebuilt states (plan %s), reading on "
                "from offsets %s",
                handover.id,
                p,
                len(states),
                handover.version,
                handover.cuts[p],
            )
        self._release()
        return changes

    def _rules_changed(
        self,
        previous: Engine,
        engine: Engine,
        old: ContactState | None,
        new: ContactState,
        handover: Handover,
    ) -> int:
        if new.alias is not None or new.clock is None:
            return 0
        before = previous.tiers(old) if old is not None and old.alias is None else {}
        after = engine.tiers(new)
        at = new.clock
        sent = 0
        for model in engine.rules.models:
            name = model.name
            if before.get(name) == after.get(name):
                continue
            # A contact the worker had no state for had scored nothing.
            prior = 0.0
            if old is not None and old.alias is None and old.clock is not None:
                prior = previous.scores(old, old.clock).get(name, 0.0)
            change = TierChange(
                new.key,
                name,
                before.get(name),
                after.get(name),
                engine.scores(new, at)[name],
                prior,
                new.anonymous,
                _full_version(previous, old),
            )
            record = rules_changed_record(
                change,
                tier_order(model),
                at,
                engine.rules.version,
                top_contributors(engine, new, name, at),
            )
            self.outputs.produce(
                self.topology.real(LEADS), new.key.encode(), json.dumps(record).encode()
            )
            self.metrics.rules_changed.labels(name).inc()
            sent += 1
        return sent

    def assigned(self, partitions: list[int]) -> Handover | None:
        """The hand-over whose states newly assigned partitions must take, if any."""
        installed = self.installed
        if installed is None or installed.id in self.finished or not partitions:
            return None
        return installed

    # ------------------------------------------------------------------ reports

    def report(self, committed: set[int]) -> None:
        """After a committed checkpoint: report the installed partitions it included."""
        installed = self.installed
        done = self.to_report & committed
        if not done or installed is None:
            return
        topic = self.topology.real(RULES_TOPIC)
        for p in sorted(done):
            swapped = Swapped(installed.id, p, self.worker)
            self.outputs.produce(topic, swapped.key, swapped.encode())
        self.to_report -= done
        self.outputs.poll()

    def reported(self, reports: list[Swapped]) -> Handover | None:
        """Workers' reports read from the plan topic. Once every partition has reported
        the open hand-over, close it (``done``) on the topic and here: the rescore does
        too, but it may have stopped waiting, and an open hand-over makes every rebalance
        read its partitions again from the cut. Returns the record written, if any."""
        for report in reports:
            self._reported.setdefault(report.id, set()).add(report.partition)
        current = self.current
        if current is None or current.state != READY:
            return None
        if self._reported.get(current.id, set()) < set(range(self.topology.partitions)):
            return None
        done = current.with_state(DONE)
        self.outputs.produce(self.topology.real(RULES_TOPIC), done.key, done.encode())
        self.outputs.poll()
        log.info("rescore %d: every partition took the states; closing it", current.id)
        assert self.engine is not None  # set with current
        self.take(done, self.engine)
        return done

    def status(self) -> dict[str, Any] | None:
        """What ``/status`` shows of the open hand-over."""
        current = self.current
        if current is None:
            return None
        return {
            "id": current.id,
            "state": current.state,
            "at": format_ts(current.at),
            "version": current.version,
            "holding": self.processor.holding is not None,
            "frozen": self.frozen,
        }


def _full_version(previous: Engine, old: ContactState | None) -> str | None:
    """The plan version an old state was scored under (states keep a prefix of it)."""
    if old is None or old.rules_version is None:
        return None
    full = previous.rules.version
    return full if full.startswith(old.rules_version) else old.rules_version
