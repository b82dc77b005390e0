"""The batch-observed histogram reads exactly like prometheus_client's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from scorestream import metrics as metrics_mod
from scorestream.metrics import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400)


def exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus_client adds a _created sample (the time it was made): not a count
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


# bounds themselves (value <= bound counts in that bucket), below the first (negative
# delays: events dated in the future), above the last, and everything between
values = st.lists(
    st.one_of(
        st.sampled_from([float(b) for b in BUCKETS]),
        st.floats(min_value=-1e3, max_value=1e6, allow_nan=False, allow_infinity=False),
    ),
    max_size=60,
)


@given(batches=st.lists(values, max_size=4))
def test_the_same_exposition_as_a_histogram_observed_one_by_one(
    batches: list[list[float]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "help", BUCKETS, ours)
    reference = Histogram("x_seconds", "help", buckets=BUCKETS, registry=theirs)
    for values_ in batches:
        batch.observe_many(values_)
        for value in values_:
            reference.observe(value)
    assert exposition(ours) == exposition(theirs)


def test_the_worker_metric_counts_a_batch() -> None:
    registry = CollectorRegistry()
    metrics = metrics_mod.create(registry)
    metrics.event_delay.observe_many([0.003, 0.1, 2.0, 1e6])
    metrics.event_delay.observe(0.01)
    name = "scorestream_event_delay_seconds"
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.005"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.01"}) == 2
    assert registry.get_sample_value(f"{name}_bucket", {"le": "5.0"}) == 4
    assert registry.get_sample_value(f"{name}_bucket", {"le": "+Inf"}) == 5
    assert registry.get_sample_value(f"{name}_count") == 5
    assert registry.get_sample_value(f"{name}_sum") == 0.003 + 0.1 + 2.0 + 1e6 + 0.01
