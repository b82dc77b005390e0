"""The worker's garbage-collector pause metric."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from scorestream import metrics as metrics_mod
from scorestream.app.worker import GcWatch

NAME = "scorestream_gc_pause_seconds_total"


def test_collections_are_timed_per_generation() -> None:
    registry = CollectorRegistry()
    metrics = metrics_mod.create(registry)
    watch = GcWatch()
    try:
        gc.collect(2)
        # nothing reaches the metric before an export (the callback takes no locks)
        assert registry.get_sample_value(NAME, {"generation": "2"}) is None
        watch.export(metrics)
        full = registry.get_sample_value(NAME, {"generation": "2"})
        assert full is not None and full > 0
        assert watch.pending[2] == 0.0
        gc.collect(0)
        watch.export(metrics)
        young = registry.get_sample_value(NAME, {"generation": "0"})
        assert young is not None and young > 0
        # a young collection adds nothing to the full ones' time
        assert registry.get_sample_value(NAME, {"generation": "2"}) == full
    finally:
        watch.close()
    assert watch._callback not in gc.callbacks
