"""Where a key lives: our murmur2 against the Kafka clients', and its hash cache."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from scorestream.pipeline import routing
from scorestream.pipeline.routing import partition_for


def _java(key: str, partitions: int) -> int:
    # aiokafka's is a port of the Java client's default partitioner.
    return (aiokafka_murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@given(st.text(max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_for_is_the_java_clients_partition(key: str, partitions: int) -> None:
    assert partition_for(key, partitions) == _java(key, partitions)
    # A second call is served from the cache and must not differ.
    assert partition_for(key, partitions) == _java(key, partitions)


def test_the_hash_cache_stays_bounded_and_right_after_it_is_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "_HASHES_MAX", 3)
    routing._HASHES.clear()
    keys = [f"c-{i}" for i in range(10)]
    for _ in range(2):
        for key in keys:
            assert partition_for(key, 6) == _java(key, 6)
            assert len(routing._HASHES) <= 3
    routing._HASHES.clear()
