"""The collector's own Prometheus metrics, bundled; every metric takes ``registry=``."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: reasons of ``scorestream_collector_rejected_total``
REASONS = ("invalid", "rate_limited", "busy", "unavailable")


class CollectorMetrics(NamedTuple):
    """All metrics of one collector."""

    registry: CollectorRegistry
    accepted: Counter
    rejected: Counter
    requests: Counter
    produce_seconds: Histogram
    in_flight: Gauge
    kafka_writable: Gauge


def create(registry: CollectorRegistry | None = None) -> CollectorMetrics:
    """Create the collector's metrics in ``registry`` (a new one by default)."""
    reg = registry if registry is not None else CollectorRegistry()
    metrics = CollectorMetrics(
        registry=reg,
        accepted=Counter(
            "scorestream_collector_accepted_total",
            "Events acknowledged by Kafka and answered as accepted, by site",
            ["site"],
            registry=reg,
        ),
        rejected=Counter(
            "scorestream_collector_rejected_total",
            "Events not accepted, by reason: invalid (the event itself), rate_limited (429), "
            "busy (503: too many events in flight), unavailable (503: Kafka did not take it)",
            ["reason"],
            registry=reg,
        ),
        requests=Counter(
            "scorestream_collector_requests_total",
            "Event requests by HTTP status code",
            ["code"],
            registry=reg,
        ),
        produce_seconds=Histogram(
            "scorestream_collector_produce_seconds",
            "Time from producing a request's events to Kafka's last acknowledgement",
            buckets=_PRODUCE_BUCKETS,
            registry=reg,
        ),
        in_flight=Gauge(
            "scorestream_collector_in_flight_events",
            "Events produced and not yet acknowledged by Kafka",
            registry=reg,
        ),
        kafka_writable=Gauge(
            "scorestream_collector_kafka_writable",
            "1 while Kafka takes writes, 0 while the collector answers 503",
            registry=reg,
        ),
    )
    for reason in REASONS:
        metrics.rejected.labels(reason)  # every reason visible from the start, at 0
    return metrics
