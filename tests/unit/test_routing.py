"""Where a key lives: our murmur2 against the Kafka clients'."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from scorestream.pipeline.routing import partition_for


def _java(key: str, partitions: int) -> int:
    # aiokafka's is a port of the Java client's default partitioner.
    return (aiokafka_murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@given(st.text(max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_for_is_the_java_clients_partition(key: str, partitions: int) -> None:
    assert partition_for(key, partitions) == _java(key, partitions)
