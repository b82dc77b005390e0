"""The bulk phase of ``scorestream rescore`` against a bare consumer on the same topics.

    .venv/bin/python bench/rescore_bench.py [--events 1000000] [--contacts 50000]

Needs the local broker (`scorestream broker start`). Pre-loads simulated traffic into
fresh topics with a unique prefix (the declared topics of ``topics/``, deleted at the
end), then, in the same run and in turn:

* baseline: a bare confluent-kafka loop over the six input topics to their ends, in
  batches of 10,000, ``json.loads`` of every value — the ceiling of any bulk rebuild
  in Python;
* rescore: the command's bulk path (``scorestream.rescore.rebuild``: the same kind of
  consumer, every message through the worker's processor and the event-time merge,
  in-memory states, the B2B plan), evaluated at the newest event as ``score`` does.

Prints events/s of each, the ratio rescore / baseline, and what 10 million events would
take at each rate.

Then the hand-over's own cost, which the workers wait for (they hold from the hand-over
point until they have taken their states), each against a baseline in the same run:

* writing every rebuilt state to ``scorestream.rescore`` (``rescore.write_states``)
  against a bare producer writing the same bytes;
* reading them back and installing them over a state per contact (``Processor.install``
  into in-memory stores, the worker's path without Faust and RocksDB) against a bare
  consume loop over them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream.engine.rules import load_rules  # noqa: E402
from scorestream.engine.scorer import Engine  # noqa: E402
from scorestream.engine.timeutil import US_PER_SECOND  # noqa: E402
from scorestream.pipeline.processor import Processor  # noqa: E402
from scorestream.pipeline.records import MIN_TS  # noqa: E402
from scorestream.pipeline.routing import (  # noqa: E402
    INPUT_TOPICS,
    RESCORE_STATES,
    topic_for,
)
from scorestream.pipeline.store import MemoryStore, decode_value  # noqa: E402
from scorestream.rescore import rebuild, write_states  # noqa: E402
from scorestream.settings import Settings  # noqa: E402
from scorestream.simulate import Traffic  # noqa: E402
from scorestream.topics import apply, delete_prefixed, load_declarations  # noqa: E402

TEN_MILLION = 10_000_000


def preload(bootstrap: str, prefix: str, events: int, contacts: int) -> int:
    """Produce ``events`` simulated events keyed as the input contract says; return count."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "enable.idempotence": True,  # order per contact is the point
        }
    )
    start = int(time.time() * US_PER_SECOND) - events * 10_000
    traffic = Traffic(contacts, seed=4, start_us=start, rate=100.0)
    topics: dict[str, str] = {}
    sent = 0
    while sent < events:
        batch = traffic.batch(min(10_000, events - sent))
        for kind, key, line in batch:
            topic = topics.get(kind)
            if topic is None:
                topic = topics[kind] = prefix + topic_for(kind)
            while True:
                try:
                    producer.produce(topic, line, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        sent += len(batch)
    assert producer.flush(120) == 0
    return sent


def baseline(bootstrap: str, prefix: str) -> tuple[float, int]:
    """Events/s of a bare consume loop with json.loads per value, and the events read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    topics = [prefix + t for t in INPUT_TOPICS]
    meta = consumer.list_topics(timeout=10)
    tps = [TopicPartition(t, p) for t in topics for p in meta.topics[t].partitions]
    ends = {
        (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps
    }
    total = sum(ends.values())
    started = time.perf_counter()
    consumer.assign([TopicPartition(tp.topic, tp.partition, 0) for tp in tps])
    n = 0
    loads = json.loads
    while n < total:
        for msg in consumer.consume(num_messages=10_000, timeout=0.2):
            loads(msg.value() or b"")
            n += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed, n


class _Nothing:
    """An emitter that drops everything (the install sends nothing in this bench)."""

    def crossing(self, crossing: object) -> None:
        return None

    def dlq(self, record: object) -> None:
        return None

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        return None


def _read(bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]]) -> dict[int, list[bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    out: dict[int, list[bytes]] = {p: [] for p in ranges}
    left = {p: end for p, (start, end) in ranges.items() if end > start}
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in left])
    while left:
        for msg in consumer.consume(num_messages=10_000, timeout=0.2):
            p = msg.partition() or 0
            if p in left and (msg.offset() or 0) < left[p]:
                out[p].append(msg.value() or b"")
                if (msg.offset() or 0) + 1 >= left[p]:
                    del left[p]
    consumer.close()
    return out


def handover(bootstrap: str, settings: Settings, processor: Processor) -> None:
    """The hand-over's write and read+install, each against a bare client."""
    topic = settings.topic(RESCORE_STATES)
    began = time.perf_counter()
    ranges = write_states(processor, settings, 1)
    wrote = time.perf_counter() - began
    states = sum(end - start for start, end in ranges.values())

    began = time.perf_counter()
    read = _read(bootstrap, topic, ranges)
    bare_read = time.perf_counter() - began
    size = sum(len(v) for values in read.values() for v in values)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000}
        | {"compression.type": "lz4", "enable.idempotence": True}
    )
    began = time.perf_counter()
    for p, values in read.items():
        for value in values:
            while True:
                try:
                    producer.produce(topic, value, b"k", partition=p)
                    break
                except BufferError:
                    producer.poll(0.05)
    producer.flush(60)
    bare_write = time.perf_counter() - began

    # The worker has a state for every contact already: install once (not timed) so the
    # timed install replaces stored states, as a worker's does.
    target = Processor(processor.engine, len(ranges), _Nothing(), highwater=lambda t, p: 0)
    cache = max(1000, settings.cache_contacts // len(ranges))  # the worker's cache size
    for p in ranges:
        target.assign(p, MemoryStore(cache_size=cache), {})
        target.install(p, [decode_value(v) for v in read[p]], {}, {}, 1, MIN_TS)
        store = target.parts[p].store
        keys = target.take_dirty(p)
        store.write([(k.encode(), target.encode(p, k)[0]) for k in keys], {})
        store.settle(keys, written=True)
        store.drop_cache()  # stored as bytes, as in RocksDB: the install decodes them
    began = time.perf_counter()
    for p, values in _read(bootstrap, topic, ranges).items():
        target.install(p, [decode_value(v) for v in values], {}, {}, 2, MIN_TS)
    installed = time.perf_counter() - began

    print(f"hand-over: {states:,} states, {size / 1e6:,.1f} MB")
    print(f"{'hand-over step':<52}{'states/s':>10}{'x baseline':>12}{'10M states':>12}")
    for name, seconds, base in (
        ("baseline: bare producer, same bytes", bare_write, bare_write),
        ("write_states (rescore)", wrote, bare_write),
        ("baseline: bare consume of the states", bare_read, bare_read),
        ("read + decode + Processor.install (worker)", installed, bare_read),
    ):
        rate = states / seconds
        print(f"{name:<52}{rate:>10,.0f}{base / seconds:>12.2f}{_minutes(TEN_MILLION / rate):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SCORESTREAM_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--rules", default=str(ROOT / "rules" / "b2b.yaml"))
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    settings = Settings(bootstrap=args.bootstrap, topic_prefix=prefix, app_id=f"{prefix}app")
    apply(load_declarations(ROOT / "topics"), settings)
    try:
        began = time.perf_counter()
        n = preload(args.bootstrap, prefix, args.events, args.contacts)
        print(
            f"{n:,} events of simulated traffic ({args.contacts:,} people) pre-loaded into "
            f"{prefix}* (6 partitions each) in {time.perf_counter() - began:.0f} s"
        )
        base, read = baseline(args.bootstrap, prefix)
        result = rebuild(Engine(load_rules(args.rules)), settings)
        assert read == n and result.messages == n, (read, result.messages, n)
        contacts = sum(1 for _ in result.processor.states())
        print(f"{'bulk read':<52}{'events/s':>10}{'x baseline':>12}{'10M events':>12}")
        for name, rate in (
            ("baseline: confluent-kafka consume + json.loads", base),
            ("rescore bulk path (processor, merge, B2B plan)", result.rate),
        ):
            print(f"{name:<52}{rate:>10,.0f}{rate / base:>12.2f}{_minutes(TEN_MILLION / rate):>12}")
        print(
            f"rescore: {contacts:,} contacts rebuilt, {result.history_crossings:,} crossings "
            f"replayed, {result.invalid:,} invalid"
        )
        handover(args.bootstrap, settings, result.processor)
    finally:
        delete_prefixed(settings)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    main()
