"""``partition_state`` reads aiokafka's fetch states through private attributes of Faust
and aiokafka: these tests hold those names to the installed versions, with a real
aiokafka consumer (not started) behind a stand-in for Faust's consumer thread."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from scorestream.app.worker import partition_state


def _faust_consumer(aio: AIOKafkaConsumer | None) -> SimpleNamespace:
    # Faust's consumer holds its thread in ``_thread``, the thread the aiokafka consumer
    # in ``_consumer`` (declared on the class, None until the thread starts).
    assert "_consumer" in AIOKafkaConsumerThread.__annotations__
    return SimpleNamespace(_thread=SimpleNamespace(_consumer=aio))


def test_reads_position_highwater_and_poll_time_of_an_assigned_partition() -> None:
    async def scenario() -> None:
        aio = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        aio.assign([TopicPartition("t", 0), TopicPartition("t", 3)])
        tp_state = aio._subscription.subscription.assignment.state_value(TopicPartition("t", 3))
        tp_state.seek(17)
        tp_state.highwater = 42
        tp_state.timestamp = 1_700_000_000_123
        consumer = _faust_consumer(aio)

        state = partition_state(consumer, "t", 3)
        assert state is tp_state
        assert (state.position, state.highwater, state.timestamp) == (17, 42, 1_700_000_000_123)
        # assigned, never fetched: known, with nothing in it yet
        fresh = partition_state(consumer, "t", 0)
        assert fresh is not None and fresh.highwater is None and not fresh.has_valid_position
        # not assigned
        assert partition_state(consumer, "t", 1) is None
        assert partition_state(consumer, "u", 3) is None
        await aio.stop()

    asyncio.run(scenario())


def test_none_without_a_consumer_or_an_assignment() -> None:
    assert partition_state(_faust_consumer(None), "t", 0) is None

    async def scenario() -> None:
        aio = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # not subscribed
        assert partition_state(_faust_consumer(aio), "t", 0) is None
        aio.subscribe(["t"])  # subscribed, not yet assigned by the group
        assert partition_state(_faust_consumer(aio), "t", 0) is None
        await aio.stop()

    asyncio.run(scenario())
