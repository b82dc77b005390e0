"""Prometheus metrics of the worker, bundled; every metric takes ``registry=``.

Tests build a fresh :class:`CollectorRegistry` and read values back with
``registry.get_sample_value(...)``. Names follow ``scorestream_<thing>_<unit>``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: how prometheus_client writes a bucket bound (untyped there)
_go_float = cast(Callable[[float], str], floatToGoString)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
_CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BatchHistogram(Collector):
    """A histogram observed a batch at a time, exposed like prometheus_client's own.

    ``Histogram.observe`` takes a lock and costs about 2 µs; the worker observes the
    delay of every event it applies, which made that one metric several per cent of
    its work per event. Observed from one thread (the worker's event loop); a scrape
    from another thread may see a batch half counted, never a count lost.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = sorted(float(b) for b in buckets)
        #: one count per bucket (value <= bound), then the values above every bound
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        """Count every value of ``values`` (one pass, no lock)."""
        counts = self._counts
        bounds = self._bounds
        total = self._sum  # added one value at a time, as Histogram does: the same sum
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self._sum = total

    def observe(self, value: float) -> None:
        """Count one value."""
        self.observe_many((value,))

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The metric's name and help (for the registry's duplicate check)."""
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Cumulative buckets, ``+Inf``, count and sum, as prometheus_client writes them."""
        counts = list(self._counts)
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self._bounds, counts, strict=False):
            running += count
            buckets.append((_go_float(bound), running))
        buckets.append(("+Inf", running + counts[-1]))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


class Metrics(NamedTuple):
    """All metrics of one worker."""

    registry: CollectorRegistry
    events: Counter
    dlq: Counter
    crossings: Counter
    processing: Histogram
    event_delay: BatchHistogram
    checkpoints: Counter
    checkpoint_seconds: Histogram
    checkpoint_records: Counter
    checkpoint_blocking: Histogram
    recovery_seconds: Histogram
    recovered_records: Counter
    timers_fired: Counter
    contacts_cached: Gauge
    partitions: Gauge
    watermark: Gauge
    consumer_lag: Gauge
    ready: Gauge
    loop_lag: Histogram
    merge_buffered: Gauge
    merge_wait: Counter
    late_events: Counter
    merge_stalls: Counter
    merge_frontier_passes: Counter
    merge_rereads: Counter
    identify_awaited: Gauge
    identify_timeouts: Counter
    gc_frozen: Gauge
    gc_pauses: Counter
    rules_info: Gauge
    rules_switches: Counter
    rules_rejected: Counter
    rescore_holding: Gauge
    rescore_installs: Counter
    rules_changed: Counter


def create(registry: CollectorRegistry | None = None) -> Metrics:
    """Create the worker's metrics in ``registry`` (a new one by default)."""
    reg = registry if registry is not None else CollectorRegistry()
    return Metrics(
        registry=reg,
        events=Counter(
            "scorestream_events_total",
            "Input messages by topic and outcome "
            "(applied, duplicate, invalid, forwarded, replayed, internal, clock, error)",
            ["topic", "outcome"],
            registry=reg,
        ),
        dlq=Counter(
            "scorestream_dlq_total",
            "Messages sent to the dead-letter topic, by source topic",
            ["topic"],
            registry=reg,
        ),
        crossings=Counter(
            "scorestream_crossings_total",
            "Threshold crossings emitted",
            ["model", "threshold", "direction"],
            registry=reg,
        ),
        processing=Histogram(
            "scorestream_processing_seconds",
            "Time to process one input message",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ),
        event_delay=BatchHistogram(
            "scorestream_event_delay_seconds",
            "Wall-clock time between an event's occurred_at and its processing",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
            registry=reg,
        ),
        checkpoints=Counter(
            "scorestream_checkpoints_total",
            "State checkpoints by result (ok, not_committed)",
            ["result"],
            registry=reg,
        ),
        checkpoint_seconds=Histogram(
            "scorestream_checkpoint_seconds",
            "Duration of a checkpoint (changelog flush, offset commit, RocksDB write)",
            buckets=_CHECKPOINT_BUCKETS,
            registry=reg,
        ),
        checkpoint_blocking=Histogram(
            "scorestream_checkpoint_blocking_seconds",
            "Part of a checkpoint during which no message is processed (snapshot, local write)",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ),
        checkpoint_records=Counter(
            "scorestream_checkpoint_records_total",
            "Contact states written to the changelog",
            registry=reg,
        ),
        recovery_seconds=Histogram(
            "scorestream_recovery_seconds",
            "Duration of a partition's state recovery",
            buckets=_CHECKPOINT_BUCKETS,
            registry=reg,
        ),
        recovered_records=Counter(
            "scorestream_recovered_records_total",
            "Changelog records read during recovery",
            registry=reg,
        ),
        timers_fired=Counter(
            "scorestream_timer_sweeps_total",
            "Idle contacts advanced by the timer/decay sweep",
            registry=reg,
        ),
        contacts_cached=Gauge(
            "scorestream_contacts_cached",
            "Contact states held in memory",
            registry=reg,
        ),
        partitions=Gauge(
            "scorestream_partitions_assigned",
            "Partitions this worker owns",
            registry=reg,
        ),
        watermark=Gauge(
            "scorestream_watermark_seconds",
            "Event time up to which idle contacts have been advanced (Unix seconds)",
            registry=reg,
        ),
        consumer_lag=Gauge(
            "scorestream_consumer_lag_messages",
            "Messages not yet processed (log end offset - next offset to process)",
            ["topic", "partition"],
            registry=reg,
        ),
        loop_lag=Histogram(
            "scorestream_loop_lag_seconds",
            "How late a 50 ms sleep on the worker's event loop wakes up (stalls delay everything)",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ),
        ready=Gauge(
            "scorestream_ready",
            "1 when the worker has recovered its partitions and is processing",
            registry=reg,
        ),
        merge_buffered=Gauge(
            "scorestream_merge_buffered_messages",
            "Messages read and waiting in the event-time merge",
            registry=reg,
        ),
        merge_wait=Counter(
            "scorestream_merge_wait_seconds",
            "Time the merge held buffered messages back, by reason: an input topic with "
            "unread records (input), records of another worker not read yet (peer), a "
            "poll of an empty input after the next message came (poll), an identity "
            "hand-over before a plan switch (handover)",
            ["reason"],
            registry=reg,
        ),
        late_events=Counter(
            "scorestream_late_events",
            "Events applied after newer events of their partition (they reached Kafka late)",
            registry=reg,
        ),
        merge_stalls=Counter(
            "scorestream_merge_stalls",
            "Inputs given up waiting for because their end offset never arrived "
            "(transaction markers)",
            registry=reg,
        ),
        merge_frontier_passes=Counter(
            "scorestream_merge_frontier_passes",
            "Records released while a repartition input was behind its end, below the "
            "frontier the other workers promised",
            registry=reg,
        ),
        merge_rereads=Counter(
            "scorestream_merge_rereads",
            "Inputs read again from the offset the merge expected, after the consumer had "
            "gone past records it never delivered",
            registry=reg,
        ),
        identify_awaited=Gauge(
            "scorestream_identify_awaited",
            "Anonymous states awaited from partitions on other workers",
            registry=reg,
        ),
        identify_timeouts=Counter(
            "scorestream_identify_timeouts",
            "Anonymous states not received within IDENTIFY_WAIT (merged late when they come)",
            registry=reg,
        ),
        gc_frozen=Gauge(
            "scorestream_gc_frozen_objects",
            "Objects moved out of the cyclic garbage collector's scans (long-lived state)",
            registry=reg,
        ),
        gc_pauses=Counter(
            "scorestream_gc_pause_seconds",
            "Seconds the cyclic garbage collector held the process, per generation",
            ["generation"],
            registry=reg,
        ),
        rules_info=Gauge(
            "scorestream_rules_info",
            "1 for the plan the worker scores with now, 0 for plans it scored with before",
            ["version"],
            registry=reg,
        ),
        rules_switches=Counter(
            "scorestream_rules_switches",
            "Switches to a published plan; late: the plan was read after events past its "
            "effective time had been applied with the previous one",
            ["late"],
            registry=reg,
        ),
        rules_rejected=Counter(
            "scorestream_rules_rejected",
            "Records of the plan topic refused because they are not a valid plan",
            registry=reg,
        ),
        rescore_holding=Gauge(
            "scorestream_rescore_holding",
            "Event time (seconds) the worker holds at for a rescore hand-over; 0 when not held",
            registry=reg,
        ),
        rescore_installs=Counter(
            "scorestream_rescore_installs",
            "Partitions that took a rescore's rebuilt states",
            registry=reg,
        ),
        rules_changed=Counter(
            "scorestream_rules_changed",
            "Tier changes sent as rules_changed records when rebuilt states were taken",
            ["model"],
            registry=reg,
        ),
    )
