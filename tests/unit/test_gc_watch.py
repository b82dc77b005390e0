"""The worker's garbage-collector pause metric."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from scorestream import metrics as metrics_mod
from scorestream.app.worker import watch_gc

NAME = "scorestream_gc_pause_seconds_total"


def test_collections_are_timed_per_generation() -> None:
    registry = CollectorRegistry()
    metrics = metrics_mod.create(registry)
    callbacks = list(gc.callbacks)
    watch_gc(metrics)
    try:
        assert registry.get_sample_value(NAME, {"generation": "2"}) == 0
        gc.collect(2)
        full = registry.get_sample_value(NAME, {"generation": "2"})
        assert full is not None and full > 0
        gc.collect(0)
        young = registry.get_sample_value(NAME, {"generation": "0"})
        assert young is not None and young > 0
        # a young collection adds nothing to the full ones' time
        assert registry.get_sample_value(NAME, {"generation": "2"}) == full
    finally:
        gc.callbacks[:] = callbacks
