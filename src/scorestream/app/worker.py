"""``scorestream worker``: the Faust adapter around the pipeline.

Thin on purpose. Faust (aiokafka transport) provides the consumer group, the
co-partitioning assignment, the agent that delivers messages, timers and the web
server. Everything else is the pipeline's, wired here:

* every consumed message goes to :meth:`Processor.receive` (queued per topic-partition)
  and :meth:`Processor.run` applies what the event-time merge releases; a small task
  looks again at what the merge waits for (high-water marks of empty inputs, hand-overs
  awaited from other workers) every few milliseconds while it waits;
* a timer runs :class:`~scorestream.pipeline.checkpoint.Checkpointer` every
  ``checkpoint_interval`` seconds (and before partitions are revoked, and at shutdown);
  another advances idle contacts (:meth:`Processor.tick`);
* on assignment each partition's RocksDB store is brought up to the changelog's end
  (:func:`~scorestream.pipeline.checkpoint.recover`) before anything is processed.

The input topics are consumed with ``acks=False``: Faust never commits on its own, so
the committed offsets are always a checkpoint's, and Faust's seek-to-committed on
assignment resumes where the recovered states need it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.sensors.monitor import Monitor
from faust.types import TP

import scorestream
from scorestream import clients
from scorestream import metrics as metrics_mod
from scorestream.access import check_bind
from scorestream.app.handover import HandoverAgent
from scorestream.app.kafka import FaustCommitter, Offsets, Outputs, Topology
from scorestream.app.planwatch import PlanWatcher
from scorestream.app.processes import supervise
from scorestream.app.rocks import RocksStore
from scorestream.app.web import add_views
from scorestream.engine.rules import RulesError, RuleSet, load_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import US_PER_SECOND, format_ts
from scorestream.errors import EXIT_FAILURE, KafkaFailure, UsageError
from scorestream.pipeline import merge
from scorestream.pipeline.checkpoint import (
    PACE_BELOW,
    Checkpointer,
    CheckpointError,
    recover,
    recovery_start,
)
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.processor import Settings as ProcessorSettings
from scorestream.pipeline.records import MIN_TS
from scorestream.pipeline.routing import INPUT_TOPICS, REPARTITION, SCORES
from scorestream.plans import Plan
from scorestream.settings import Settings

log = logging.getLogger("scorestream.worker")

#: records applied per call before the event loop gets a turn
RUN_LIMIT = 2000
#: releases between two looks at the merge's empty inputs within a run (see
#: Merger.look_every): a soak with two workers caught 93 releases past inputs whose
#: high-water mark had risen during a run of 2,000
LOOK_EVERY = 200
#: most records taken from the consumer at once
FETCH_BATCH = 2000
#: seconds between moves of long-lived objects out of the cyclic GC's scans
FREEZE_EVERY = 30.0
#: gc.set_threshold for the worker. CPython's (700, 10, 10) ran the young collection about
#: 36 times a second at 5,000 events/s and a full one every 2-5 s (each 0.05-0.27 s, since
#: the states cached since the last freeze are scanned): 6-10 % of the time, in pauses the
#: latency tail waits behind. With these: 1 % and no full collection in 20 s, p50 and p99
#: at 5,000 events/s down by a fifth to a third (README, Benchmarks). Young cyclic garbage is
#: still collected by the first two generations; what reaches the oldest is frozen with
#: the rest at the next freeze (FREEZE_EVERY), as before (scorestream_gc_frozen_objects).
GC_THRESHOLDS = (20_000, 50, 100)
#: seconds between reads of the plan topic, and while a rescore hand-over is open
PLANS_EVERY = 1.0
PLANS_FAST = 0.2
#: seconds between frontier markers, while the frontier moves (SCORESTREAM_MERGE_FRONTIERS;
#: 0.01 was no different on backlogs of two workers)
FRONT_INTERVAL = 0.05
#: seconds since the last fetched batch during which messages count as flowing
#: (Runtime.flowing): at 1,000 events/s batches come every few milliseconds
FLOWING_SECONDS = 0.25
#: how often the merge looks again at what it waits for, while it waits (seconds)
PUMP_WAITING = 0.003
PUMP_IDLE = 0.05


def _event_time(us: int) -> str | None:
    """An event time for ``/status`` (None for the keys below every event's time)."""
    return format_ts(us) if us > MIN_TS else None


def partition_state(consumer: Any, topic: str, partition: int) -> Any:
    """aiokafka's fetch state of one partition of the current assignment (its position,
    high-water mark and last poll time), or None when there is none (the consumer is
    starting or rebalancing, or the partition is not assigned).

    ``consumer`` is Faust's consumer, whose thread holds the aiokafka consumer. Read
    through private attributes of both, without a call into the consumer's thread: the
    merge asks for these several thousand times a second (every input on every batch
    and every pump), and the public path (Faust's ``highwater``, aiokafka's assertions
    and properties, a ``TopicPartition`` built per call) was 15 % of the main thread's
    time at 1,000 events/s (py-spy). aiokafka keys the states by ``TopicPartition``, a
    named tuple, so a plain ``(topic, partition)`` finds them. A unit test holds these
    attribute names to the installed aiokafka.
    """
    try:
        states = consumer._thread._consumer._subscription._subscription._assignment._tp_state
    except AttributeError:  # no consumer, subscription or assignment (yet)
        return None
    return states.get((topic, partition))


class QuietMonitor(Monitor):
    """Faust's monitor without its per-message bookkeeping.

    Faust records timings for every message and stream event (for its own web stats,
    which we do not serve); that costs several percent of the worker's CPU. Our metrics
    are in :mod:`scorestream.metrics`. Rebalance, commit and send hooks stay as Faust has them.
    """

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        return None


class BacklogWatch:
    """Tells when the merge has just applied a backlog: it held ``PACE_BELOW`` records
    or more (live traffic at 5,000 events/s kept at most 800 there) and now holds none."""

    def __init__(self) -> None:
        self.held = False

    def drained(self, buffered: int) -> bool:
        """Whether the backlog has just been applied, given what the merge buffers now
        (once per backlog)."""
        if buffered >= PACE_BELOW:
            self.held = True
        elif buffered == 0 and self.held:
            self.held = False
            return True
        return False


class Runtime:
    """One worker process: settings, pipeline, Kafka edges, Faust app."""

    def __init__(self, settings: Settings, rules: RuleSet, topology: Topology) -> None:
        self.settings = s = settings
        self.topology = topology
        self.metrics = metrics_mod.create()
        self.engine = Engine(rules)
        self.outputs = Outputs(settings, topology, self.metrics)
        self.offsets = Offsets(settings, topology)
        self.processor = Processor(
            self.engine,
            topology.partitions,
            self.outputs,
            highwater=self._highwater,
            settings=ProcessorSettings(
                max_bytes=s.max_message_bytes,
                lateness=s.lateness,
                idle_timeout=s.idle_timeout,
                live_horizon=s.live_horizon,
                merge_idle=s.merge_idle,
                identify_wait=s.identify_wait,
                front_interval=FRONT_INTERVAL if s.merge_frontiers else 0.0,
            ),
            topics=topology.real,
        )
        # The merge tells a consumer that lost records from one that is only slow or
        # whose records are still on their way (see merge.STALL_SECONDS).
        self.processor.merger.position = self._position
        self.processor.merger.polled = self._polled
        #: set when a batch leaves records waiting in the merge: the pump looks again soon
        self.wake_pump = asyncio.Event()
        self.processor.merger.look_every = LOOK_EVERY
        self.processor.merger.fresh_polls = self.settings.merge_fresh_poll
        self.processor.merger.poll_stale = max(
            merge.POLL_STALE_SECONDS, 5 * self.settings.fetch_max_wait_ms / 1000
        )
        self.stores: dict[int, RocksStore] = {}
        self.state_root = Path(s.state_dir) / s.app_id
        self.ready = False
        self._ckpt_lock = asyncio.Lock()
        #: when the last fetched batch came (time.time(); see flowing())
        self._batch_at = 0.0
        self._backlog = BacklogWatch()
        #: set when a backlog has just been applied: a checkpoint then runs at once
        self.drained = asyncio.Event()
        self._paused: set[TP] = set()
        self._frozen = False
        #: the collector's pause timer (set by main; None in tests that build a Runtime)
        self.gc_watch: GcWatch | None = None
        self._frozen_at = time.monotonic()
        self._exported = {"late": 0, "timeouts": 0, "stalls": 0, "passed": 0}
        #: merge wait seconds by reason already exported
        self._waited: dict[str, float] = {}
        self._exported_rejected = 0
        self.metrics.rules_info.labels(rules.version).set(1)
        self._versions = {rules.version}
        self.handover = HandoverAgent(
            self.processor, self.outputs, self.offsets, topology, self.metrics, s.rescore_hold
        )
        # Published plans, read to the end before anything is scored (scorestream.plans).
        self.plans = PlanWatcher(s)
        self._schedule_plans(self.plans.poll(to_end=True))
        self.app = self._build_app()
        self.checkpointer = Checkpointer(
            self.processor,
            self.outputs,
            FaustCommitter(self.app, topology),
            topology.real("scorestream.state-changelog"),
            topology.real(SCORES),
            clock=time.perf_counter,
            flowing=self.flowing,
        )

    # ------------------------------------------------------------------ processing

    def _highwater(self, topic: str, partition: int) -> int | None:
        """aiokafka's high-water mark of a partition (from its last fetch response), read
        like :meth:`_position`. None when unknown."""
        state = partition_state(self.app.consumer, topic, partition)
        if state is None:
            return None
        value = state.highwater
        return None if value is None else int(value)

    def _aiokafka(self) -> Any:
        """The aiokafka consumer inside Faust's consumer thread (private to both: the
        callers handle its absence)."""
        return self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]

    def _position(self, topic: str, partition: int) -> int | None:
        """aiokafka's position of a partition: the next offset it will hand over.

        Read from its subscription state without a call into its thread (an int
        attribute: a stale value only makes the merge's stall check wait or re-read a
        little sooner or later). None when unknown.
        """
        state = partition_state(self.app.consumer, topic, partition)
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def _polled(self, topic: str, partition: int) -> int | None:
        """When aiokafka last had a fetch response for a partition (ms; its high-water
        mark is from then), read like :meth:`_position`. None when unknown."""
        state = partition_state(self.app.consumer, topic, partition)
        if state is None:
            return None
        value = state.timestamp
        return None if value is None else int(value)

    def on_message(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        """Called by the agent for every message, in partition order."""
        start = time.perf_counter()
        now = time.time()
        proc = self.processor
        source = proc.receive(topic, partition, offset, value, now)
        if (
            source is not None
            and source.queue is not None
            and len(source.queue.items) >= self.settings.merge_buffer
        ):
            self._pause(TP(topic, partition))
        proc.run(now, RUN_LIMIT)
        self._observe_delays(now)
        self.metrics.processing.observe(time.perf_counter() - start)

    async def drain(self, fetcher: Any) -> None:
        """Take fetched batches from Faust's consumer straight into the pipeline.

        Replaces Faust's ``Consumer._drain_messages``, which hands every message through
        an awaited callback, the conductor, a channel and a stream to the agent: profiled
        here (py-spy, 60,000 messages), that per-message machinery was most of the
        worker's event-loop time and our processing about a fifth of it. Faust still
        owns the group, the co-partitioning assignment, rebalances, flow control, timers
        and the web server; only the per-message hand-off is ours. A batch fetched across
        a rebalance is dropped and the consumer sent back to the committed offsets, as
        Faust's own ``getmany`` does; the merge refuses anything out of order anyway.
        """
        consumer: Any = self.app.consumer
        consumer_stopped = consumer._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        while not (consumer_stopped() or fetcher_stopped()):
            generation = self.app.consumer_generation_id
            records, _ = await consumer._wait_next_records(1.0)
            await asyncio.sleep(0)
            if not records or consumer.should_stop:
                continue
            if not consumer.flow_active or self.app.consumer_generation_id != generation:
                # Said, so that a re-read that follows can be told apart from a loss
                # inside the consumer.
                log.warning(
                    "dropped a fetched batch of %d records from %d partitions (%s)",
                    sum(len(batch) for batch in records.values()),
                    len(records),
                    "flow stopped" if not consumer.flow_active else "new generation",
                )
                try:
                    await consumer.perform_seek()
                except IllegalStateError as exc:
                    # The assignment changed while the seek ran (a soak crashed the
                    # worker here): the new one seeks to its committed offsets itself,
                    # and the merge reads again whatever comes out of order.
                    log.warning("seek after the dropped batch not done: %s", exc)
                continue
            self.on_batch(records)

    def on_batch(self, records: Any) -> None:
        """Queue a fetched batch (topic-partition -> records) and apply what is released."""
        start = time.perf_counter()
        now = time.time()
        proc = self.processor
        if proc.holding is not None:
            self.handover.freeze_check(now)
        receive = proc.receive
        limit = self.settings.merge_buffer
        count = 0
        merger = proc.merger
        # When the records reached the merge, on aiokafka's clock for its polls (ms):
        # what reached Kafka while they waited in the consumer's buffers is fetched first.
        now_ms = int(now * 1000)
        for tp, batch in records.items():
            topic = tp.topic
            partition = tp.partition
            source = None
            for record in batch:
                source = receive(topic, partition, record.offset, record.value, now)
            count += len(batch)
            if source is not None:
                merger.fetched(source, now_ms)
                if source.queue is not None and len(source.queue.items) >= limit:
                    self._pause(TP(topic, partition))
        self._batch_at = now
        merger.look_again(now)
        proc.run(now, RUN_LIMIT)
        self._note_backlog()
        proc.send_fronts(now)
        if self.waiting():
            self.wake_pump.set()
        self._observe_delays(now)
        self.metrics.processing.observe((time.perf_counter() - start) / max(1, count))
        self.outputs.poll()

    def flowing(self) -> bool:
        """Whether messages are coming in: a fetched batch came less than
        ``FLOWING_SECONDS`` ago (checkpoints pace their chunks only then)."""
        return time.time() - self._batch_at < FLOWING_SECONDS

    def _note_backlog(self) -> None:
        """After a backlog is applied, checkpoint at once rather than at the next tick.

        The checkpoint that was due while the backlog was being applied took its snapshot
        early on, so without this the backlog became durable only one timer interval
        and one checkpoint later (1.0 - 2.0 s after the last event of a 100,000-event
        backlog on one process, measured; 0.3 - 0.5 s with it).
        """
        if self._backlog.drained(self.processor.merger.buffered):
            self.drained.set()

    def _observe_delays(self, now: float) -> None:
        times = self.processor.take_applied_times()
        if times:
            self.metrics.event_delay.observe_many([now - ts / US_PER_SECOND for ts in times])

    async def pump(self) -> None:
        """Look again at what the merge waits for; apply what it then releases."""
        now = time.time()
        proc = self.processor
        if proc.holding is not None:
            self.handover.freeze_check(now)
        proc.refresh(now)
        proc.run(now, RUN_LIMIT * 5)
        self._note_backlog()
        proc.send_fronts(now)
        self._observe_delays(now)
        if self._paused:
            self._resume_drained()
        for source in proc.merger.take_rereads():
            # The consumer went past records the merge never got, or delivered a later
            # offset first (Faust, around rebalances): read again from the offset expected.
            log.warning(
                "%s[%d]: records from offset %d did not arrive in order (%s; consumer "
                "position %s, end offset %s); reading again",
                source.topic,
                source.partition,
                source.received,
                f"offset {source.gap_at} came first" if source.gap_at >= 0 else "none came",
                proc.merger.position(source.topic, source.partition),
                proc.merger.highwater(source.topic, source.partition),
            )
            self.metrics.merge_rereads.inc()
            await self._seek(TP(source.topic, source.partition), source.received)
        self.outputs.poll()

    async def _seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset``, in the consumer's own thread.

        Faust's ``Consumer.seek`` calls aiokafka's ``seek`` from the calling thread while
        aiokafka's fetcher may be handing out records in the consumer thread; the two
        raced once in a benchmark (``KeyError`` in ``Fetcher.fetched_records``, which
        crashed the worker). Run in that thread, the seek happens between fetches.
        """
        consumer: Any = self.app.consumer
        thread = consumer._thread
        await thread.call_thread(thread.seek, tp, offset)
        consumer._read_offset[tp] = offset if offset else None

    def _pause(self, tp: TP) -> None:
        if tp not in self._paused:
            self._paused.add(tp)
            self.app.consumer.pause_partitions([tp])

    def _resume_drained(self) -> None:
        limit = self.settings.merge_buffer // 2
        drained = []
        for tp in self._paused:
            source = self.processor.source(tp.topic, tp.partition)
            if source is None or source.queue is None or len(source.queue.items) <= limit:
                drained.append(tp)
        if drained:
            self._paused.difference_update(drained)
            self.app.consumer.resume_partitions(drained)

    def _schedule_plans(self, found: list[tuple[Plan, Engine]]) -> None:
        for plan, engine in found:
            self.processor.schedule_plan(plan.effective_at, engine)
        handovers, reports = self.plans.take_control()
        for handover, engine in handovers:
            self.handover.take(handover, engine)
        self.handover.reported(reports)
        self._note_switches()

    async def install_rescore(self) -> None:
        """Take a ready rescore's rebuilt states in every owned partition."""
        async with self._ckpt_lock:
            handover = self.handover.begin()
            if handover is None:
                return
            # The states about to be replaced are made durable first: a worker that dies
            # during the install installs again after its restart over the very same
            # states, so its rules_changed records come again with the same content.
            began = time.perf_counter()
            await self._checkpoint()
            log.info("rescore %d: checkpointed in %.2f s", handover.id, time.perf_counter() - began)
            parts = sorted(self.processor.parts)
            loop = asyncio.get_running_loop()
            began = time.perf_counter()
            try:
                loaded = await loop.run_in_executor(None, self.handover.load, handover, parts)
            except Exception as exc:  # Kafka away: stay frozen, nothing is lost; retry
                self.handover.retry(handover, repr(exc))
                return
            changes = self.handover.install(handover, loaded)
            self._note_switches()
            log.info(
                "rescore %d: took the rebuilt states of partitions %s in %.2f s, %d tier "
                "changes sent",
                handover.id,
                parts,
                time.perf_counter() - began,
                changes,
            )

    def watch_plans(self) -> list[tuple[Plan, Engine]]:
        """New plans from the plan topic (runs in a thread; Kafka I/O)."""
        return self.plans.poll()

    def _note_switches(self) -> None:
        proc = self.processor
        m = self.metrics
        m.rules_rejected.inc(self.plans.rejected - self._exported_rejected)
        self._exported_rejected = self.plans.rejected
        for version, at, late in proc.take_switches():
            for shown in self._versions:
                m.rules_info.labels(shown).set(0)
            m.rules_info.labels(version).set(1)
            self._versions.add(version)
            m.rules_switches.labels("true" if late else "false").inc()
            if late:
                log.warning(
                    "switched to plan %s late: events after %s had been applied with the "
                    "previous plan before the plan was read",
                    version,
                    format_ts(at),
                )
            else:
                log.info("switched to plan %s at %s (event time)", version, format_ts(at))

    def waiting(self) -> bool:
        """Records wait in the merge for something (a fetch, a hand-over)."""
        merger = self.processor.merger
        return merger.buffered > 0 and (merger.blocked or merger.expected > 0)

    def tick(self) -> None:
        """Timers and decay of idle contacts; tell other workers our stream time."""
        now = time.time()
        proc = self.processor
        self.handover.hold_expired()
        touched = proc.tick(now)
        if touched:
            self.metrics.timers_fired.inc(touched)
        self._note_switches()
        newest = proc.clock_due(now)
        if newest is not None:
            proc.send_clock(newest)
        self.export_metrics()

    def export_metrics(self) -> None:
        """Bring the Prometheus metrics up to date with the processor's counters."""
        proc = self.processor
        m = self.metrics
        if self.gc_watch is not None:
            self.gc_watch.export(m)
        for (topic, outcome), n in proc.take_counts().items():
            m.events.labels(self.topology.real(topic), outcome).inc(n)
        merger = proc.merger
        seen = self._exported
        m.late_events.inc(proc.late - seen["late"])
        waited = self._waited
        for reason, spent in merger.waits.items():
            before = waited.get(reason, 0.0)
            if spent > before:
                m.merge_wait.labels(reason).inc(spent - before)
                waited[reason] = spent
        m.identify_timeouts.inc(merger.expect_timeouts - seen["timeouts"])
        m.merge_stalls.inc(merger.stalls - seen["stalls"])
        m.merge_frontier_passes.inc(merger.passed - seen["passed"])
        seen.update(
            late=proc.late,
            timeouts=merger.expect_timeouts,
            stalls=merger.stalls,
            passed=merger.passed,
        )
        m.merge_buffered.set(merger.buffered)
        m.identify_awaited.set(merger.expected)
        if proc.watermark > MIN_TS:
            m.watermark.set(proc.watermark / US_PER_SECOND)
        m.contacts_cached.set(sum(s.cached for s in self.stores.values()))

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows."""
        proc = self.processor
        real = self.topology.real
        parts: dict[str, Any] = {}
        for number, part in proc.parts.items():
            applied = {real(t): off for t, off in part.released.items()}
            rep = proc.source(real(REPARTITION), number)
            applied[real(REPARTITION)] = rep.received if rep is not None else 0
            parts[str(number)] = {
                "applied": applied,
                "scheduled": len(part.scheduled),
                "newest": part.newest,
            }
        merger = proc.merger
        return {
            "ready": self.ready,
            "compiled": scorestream.compiled(),
            "partitions": parts,
            "watermark": proc.watermark if proc.watermark > MIN_TS else None,
            "merge": {
                # SCORESTREAM_MERGE_FRESH_POLL: false gives up exact order for events that
                # reach Kafka a few ms out of order (docs/rules.md); visible to ops here
                "fresh_polls": merger.fresh_polls,
                # SCORESTREAM_MERGE_FRONTIERS: markers sent to other workers (Merger.front)
                "frontiers": proc.settings.front_interval > 0,
                "buffered": merger.buffered,
                "waiting_for": [
                    {
                        "source": f"{s.topic}[{s.partition}]",
                        "received": s.received,
                        "end": merger.highwater(s.topic, s.partition),
                        # the consumer's next offset to hand over: at "received", it
                        # is still fetching; beyond it, records are on their way or lost
                        "consumer_position": merger.position(s.topic, s.partition),
                        # a repartition input: records before this key pass it (the
                        # other workers' smallest frontier; Merger.front)
                        "frontier": None if s.bound is None else _event_time(s.bound[0]),
                    }
                    for s in merger.blocking
                ],
                "released_up_to": _event_time(merger.high[0]),
                "waiting_for_a_poll": merger.waiting_for_poll,
                # since start, by reason (as the metric): seconds the release waited,
                # and how many times it began to wait
                "waited": {
                    reason: {"seconds": round(spent, 3), "times": merger.wait_counts[reason]}
                    for reason, spent in merger.waits.items()
                },
                "handovers_awaited": merger.expected,
                "contacts_awaiting": proc.awaiting,
                "records_parked": proc.parked,
            },
            "rules_version": proc.engine.rules.version,
            # read back from aiokafka's fetcher: shows that the setting took (None:
            # the consumer is not running, or it is not one this worker can tune)
            "consumer": {"fetch_max_wait_ms": self._fetch_wait()},
            "rescore": self.handover.status(),
            "plans_pending": [
                {"version": version, "effective_at": format_ts(at)}
                for at, version in proc.pending_plans()
            ],
        }

    # ------------------------------------------------------------------ checkpoints

    async def checkpoint(self) -> None:
        """Make everything processed so far durable (serialised with rebalances)."""
        async with self._ckpt_lock:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        if not self.processor.parts:
            return
        start = time.perf_counter()
        stats = await self.checkpointer.run()
        m = self.metrics
        m.checkpoint_blocking.observe(stats.blocking)
        m.checkpoint_records.inc(stats.records)
        if not stats.committed:
            m.checkpoints.labels("not_committed").inc()
            return
        m.checkpoints.labels("ok").inc()
        self.handover.report(set(self.processor.parts))
        m.checkpoint_seconds.observe(time.perf_counter() - start)
        now = time.monotonic()
        if now - self._frozen_at >= FREEZE_EVERY:
            # What lived through checkpoints mostly lives on (contact states): move it out
            # of the cyclic collector's way, so full collections scan what is new since
            # then instead of the whole population (their pauses were the latency tail).
            # States hold no reference cycles (refcounting frees them); a cyclic object
            # frozen alive that dies later is not reclaimed, so the young generations are
            # collected first, it happens at most every FREEZE_EVERY seconds, and
            # scorestream_gc_frozen_objects shows the frozen count.
            gc.collect(1)
            gc.freeze()
            self._frozen_at = now
            m.gc_frozen.set(gc.get_freeze_count())

    # ------------------------------------------------------------------ rebalancing

    async def on_revoked(self, revoked: Iterable[TP]) -> None:
        """Before partitions go: checkpoint everything, then let them go."""
        self.ready = False
        self.metrics.ready.set(0)
        # Lag of partitions this worker may no longer own must not linger in the gauge.
        self.metrics.consumer_lag.clear()
        async with self._ckpt_lock:
            await self._checkpoint()
            self.processor.revoke(list(self.processor.parts))
            self._paused.clear()
            # What the revoke sent on (and everything before) reaches Kafka before this
            # worker rejoins, so before anything sent in the next generation: receivers
            # rely on that order (Merger.front).
            try:
                await self.outputs.flush()
            except CheckpointError as exc:
                log.warning("flush before the rebalance failed: %s", exc)
        self.metrics.partitions.set(0)

    async def on_assigned(self, assignment: Iterable[TP]) -> None:
        """After assignment, before Faust resumes fetching: recover our partitions."""
        async with self._ckpt_lock:  # never while a checkpoint is using the stores
            await self._on_assigned(assignment)

    async def _on_assigned(self, assignment: Iterable[TP]) -> None:
        topo = self.topology
        consumed = set(topo.consumed)
        mine = {tp.partition for tp in assignment if tp.topic in consumed}
        have = {(tp.topic, tp.partition) for tp in assignment}
        split = sorted(p for p in mine if any((t, p) not in have for t in consumed))
        if split:
            # Would split a contact's events between workers: refuse rather than corrupt.
            raise RuntimeError(f"partitions {split} are not co-partitioned in this assignment")
        if self.processor.parts:
            self.processor.revoke(list(self.processor.parts))
        # Before the partitions: their repartition inputs trust only what other
        # workers sent in this generation (Merger.front).
        self.processor.set_generation(self.app.consumer_generation_id)
        for p in list(self.stores):
            if p not in mine:
                self.stores.pop(p).close()
        loop = asyncio.get_running_loop()
        committed = await loop.run_in_executor(None, self.offsets.committed, sorted(mine))
        # One partition after another: in threads side by side they were 0.8x as fast
        # here (bench/recovery_bench.py; the GIL, on 2 cores).
        for p in sorted(mine):
            began = time.perf_counter()
            store, n = await loop.run_in_executor(None, self._recover, p)
            self.stores[p] = store
            self.processor.assign(p, store, committed[p])
            took = time.perf_counter() - began
            self.metrics.recovery_seconds.observe(took)
            self.metrics.recovered_records.inc(n)
            if n:
                log.info("partition %d: recovered %d changelog records in %.2f s", p, n, took)
        handover = self.handover.assigned(sorted(mine))
        if handover is not None:
            # A rescore hand-over is open: these partitions take its states too (those
            # already taken before stay; what follows the cut is read again).
            loaded = await loop.run_in_executor(None, self.handover.load, handover, sorted(mine))
            self.handover.install(handover, loaded)
        self.metrics.partitions.set(len(mine))
        self.processor.joined(time.time())
        self._tune_fetcher()
        if not self._frozen:
            # Everything alive now (modules, Faust's services, recovered states) lives as
            # long as the process: keep it out of the cyclic GC's full collections, whose
            # pauses were the tail of our latency. Once only: later cycles stay collectable.
            gc.collect()
            gc.freeze()
            self._frozen = True
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: partitions %s", sorted(mine))

    def _tune_fetcher(self) -> None:
        """Bound the broker's wait for a fetch at ``fetch_max_wait_ms`` (Faust fixes 1.5 s).

        aiokafka sends nothing to a broker while a fetch to it is in flight, and after
        ``prefetch_backoff`` (0.1 s) of records not yet taken it fetches only the other
        partitions. When those are all quiet, the broker holds that fetch for the whole
        wait, and every busy partition waits behind it. Traced at 5,000 events/s: fetches
        of just 12 of 42 partitions (a lone worker's repartition topic and an unused event
        type) came back empty after 1.5 s, with no batch meanwhile, and the p99 went to
        2 s. Set on the fetcher after start: it reads the value for every request it
        builds.
        """
        try:
            self._aiokafka()._fetcher._fetch_max_wait_ms = self.settings.fetch_max_wait_ms
        except AttributeError:  # another aiokafka or Faust: keep their wait, but say so
            log.warning("could not set the consumer's fetch wait; Faust's 1.5 s applies")

    def _fetch_wait(self) -> int | None:
        """The fetch wait aiokafka's fetcher uses now (see :meth:`_tune_fetcher`)."""
        try:
            return int(self._aiokafka()._fetcher._fetch_max_wait_ms)
        except Exception:  # not started, restarting, or another aiokafka: unknown
            return None

    def _recover(self, partition: int) -> tuple[RocksStore, int]:
        """Bring a partition's RocksDB up to the changelog's end (runs in a thread)."""
        store = self.stores.get(partition)
        if store is None:
            s = self.settings
            store = RocksStore(
                self.state_root / f"p{partition}",
                block_cache_mb=s.rocksdb_block_cache_mb,
                cache_size=max(1000, s.cache_contacts // max(1, self.topology.partitions)),
            )
        records, end = self.offsets.changelog(partition, recovery_start(store))
        n = recover(store, records, end)
        self.outputs.saw_changelog_end(partition, end)
        return store, n

    # ------------------------------------------------------------------ Faust app

    def _build_app(self) -> faust.App:
        s = self.settings
        (Path(s.state_dir) / "faust").mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.app_id,
            broker=clients.faust_brokers(s),
            broker_credentials=clients.faust_credentials(s),
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=s.heartbeat_interval,
            store="memory://",
            datadir=str(Path(s.state_dir) / "faust"),
            web_enabled=True,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            canonical_url=f"http://{s.web_host}:{s.web_port}",
            web_tables_enabled=False,
            # Faust's own pages (/router, /graph, /stats) would answer without the API
            # token; we serve only our views.
            web_router_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            topic_disable_leader=True,
            Monitor=QuietMonitor,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=FETCH_BATCH,
            # Not for standbys (we have no Faust tables): with 0, Faust falls back to
            # aiokafka's round-robin assignor, which does not keep partition p of every
            # topic on one worker. Faust's own assignor co-partitions them.
            table_standby_replicas=1,
            stream_wait_empty=False,
            logging_config=None,
        )
        runtime = self
        channel = app.topic(
            *self.topology.consumed,
            key_serializer="raw",
            value_serializer="raw",
            acks=False,
        )

        # The agent subscribes the worker to the topics (Faust's assignment and
        # rebalancing are built on it); the messages themselves reach the pipeline in
        # batches through Runtime.drain, which replaces Faust's per-message drain.
        @app.agent(channel, concurrency=1, name="score")
        async def score(stream: Any) -> None:
            on_message = runtime.on_message
            async for event in stream.events():
                msg = event.message
                on_message(msg.topic, msg.partition, msg.offset, msg.value)

        consumer: Any = app.consumer
        consumer._drain_messages = runtime.drain

        # faust's decorators are untyped; going through Any keeps mypy strict elsewhere
        timer: Any = app.timer

        async def checkpoint() -> None:
            if runtime.ready:
                await runtime.checkpoint()

        timer(s.checkpoint_interval)(checkpoint)

        async def checkpoint_drained() -> None:
            while True:
                await runtime.drained.wait()
                runtime.drained.clear()
                if runtime.ready:
                    await runtime.checkpoint()

        task: Any = app.task
        task(checkpoint_drained)

        async def tick() -> None:
            if runtime.ready:
                runtime.tick()

        timer(s.tick_interval)(tick)

        async def lag() -> None:
            if runtime.ready:
                await asyncio.get_running_loop().run_in_executor(None, runtime.update_lag)

        timer(10.0)(lag)

        polled = [0.0]

        async def plans() -> None:
            # Every second; every PLANS_FAST seconds while a rescore hand-over is open,
            # since the workers hold until they have read that its states are ready.
            now = time.monotonic()
            if runtime.handover.current is None and now - polled[0] < PLANS_EVERY:
                return
            polled[0] = now
            found = await asyncio.get_running_loop().run_in_executor(None, runtime.watch_plans)
            runtime._schedule_plans(found)
            if runtime.handover.install_due:
                await runtime.install_rescore()

        timer(PLANS_FAST)(plans)

        async def pump() -> None:
            wake = runtime.wake_pump
            while True:
                if runtime.waiting():
                    await asyncio.sleep(PUMP_WAITING)
                else:
                    # Idle: slow, unless a batch left records waiting (for a fresher poll
                    # of an empty input, say): then look again in PUMP_WAITING, not in up
                    # to PUMP_IDLE (measured: +50 ms on every crossing at 20 events/s).
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), PUMP_IDLE)
                if runtime.ready:
                    await runtime.pump()

        async def watch_loop() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.05)
                late = time.perf_counter() - before - 0.05
                runtime.metrics.loop_lag.observe(max(0.0, late))
                if late > 0.2:
                    log.warning("event loop stalled for %.0f ms", late * 1000)

        app.task(pump)
        app.task(watch_loop)

        signals: Any = app

        async def revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            await runtime.on_revoked(revoked)

        signals.on_partitions_revoked.connect(revoked)

        async def complete(sender: Any, **kwargs: Any) -> None:
            await runtime.on_assigned(sender.consumer.assignment())

        signals.on_rebalance_complete.connect(complete)

        async def shutdown(sender: Any, **kwargs: Any) -> None:
            if runtime.processor.parts:
                await runtime.checkpoint()
            for store in runtime.stores.values():
                store.close()
            runtime.stores.clear()

        signals.on_before_shutdown.connect(shutdown)

        add_views(app, runtime)
        return app

    def update_lag(self) -> None:
        """Consumer lag per consumed partition (end offset - next offset to apply)."""
        real = self.topology.real
        for number, part in list(self.processor.parts.items()):
            for topic in INPUT_TOPICS:
                try:
                    high = self.offsets.end(real(topic), number)
                except Exception:  # a slow broker must not stop the worker
                    continue
                lag = max(0, high - part.released.get(topic, 0))
                self.metrics.consumer_lag.labels(real(topic), str(number)).set(lag)


class GcWatch:
    """Times the cyclic collector's pauses per generation (scorestream_gc_pause_seconds).

    The callback only adds to plain floats: a Prometheus counter takes a lock, and a
    collection can start while this thread holds that very lock (a scrape reading it).
    :meth:`export` moves the sums to the metric (the worker's tick, every second).
    """

    def __init__(self) -> None:
        self.pending = [0.0, 0.0, 0.0]
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pending[info["generation"]] += time.perf_counter() - self._began

    def export(self, metrics: metrics_mod.Metrics) -> None:
        """Add the pauses timed since the last export to the metric."""
        for generation, seconds in enumerate(self.pending):
            if seconds:
                self.pending[generation] -= seconds
                metrics.gc_pauses.labels(str(generation)).inc(seconds)

    def close(self) -> None:
        """Stop timing."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


def main(args: argparse.Namespace) -> int:
    """Run the worker until interrupted."""
    settings = Settings.load(config_file=args.config)
    # Before anything else: an API open to the network must not even start.
    check_bind(settings.web_host, settings, "worker")
    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        raise UsageError(str(exc)) from None
    processes = getattr(args, "processes", 1)
    if processes != 1:
        # Checked above once for all: every process gets the same rules and bind rule.
        return supervise(settings, processes, args.config)
    index = getattr(args, "process_index", None)
    label = "" if index is None else f" w{index}"
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s{label} %(name)s: %(message)s",
    )
    try:
        topology = Topology.discover(settings)
    except KafkaFailure as exc:
        print(f"scorestream: {exc}", flush=True)
        return EXIT_FAILURE
    gc.set_threshold(*GC_THRESHOLDS)
    runtime = Runtime(settings, rules, topology)
    runtime.gc_watch = GcWatch()
    log.info(
        "rules %s (%s), %d partitions, HTTP on %s:%d, %s",
        settings.rules,
        rules.version,
        topology.partitions,
        settings.web_host,
        settings.web_port,
        "compiled engine" if scorestream.compiled() else "pure-Python engine",
    )
    if not settings.merge_fresh_poll:
        log.warning(
            "SCORESTREAM_MERGE_FRESH_POLL=false: events that reach Kafka while a newer "
            "event of their contact waits here may be applied after it (not as `score`)"
        )
    worker = faust.Worker(runtime.app, loglevel=settings.log_level.upper(), logfile=None)
    # At level warning or above, Faust's start-up spinner sets the root logger to DEBUG
    # (so that every log record turns it) and leaves it there: every debug call of
    # aiokafka, Faust and mode then built a record (a stack walk included) that the
    # handler dropped. py-spy at 5,000 events/s: a fifth of the consumer thread's busy
    # time, one record per partition per fetch. Without the spinner the root logger keeps
    # the level set above.
    worker.spinner = None
    code = EXIT_FAILURE
    try:
        worker.execute_from_commandline()  # runs until stopped, then raises SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    # Faust has stopped (our last checkpoint ran in on_before_shutdown). Seen here: its
    # consumer thread can outlive the app and keep the interpreter from exiting, so leave
    # without waiting for non-daemon threads.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
