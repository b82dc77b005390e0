"""Recovery of a worker that lost its disk: changelog -> RocksDB, then the timer index.

    .venv/bin/python bench/recovery_bench.py [--contacts 150000] [--partitions 6]

Needs the local broker (`scorestream broker start`). Fills a fresh changelog topic with
one record per contact (real states: simulated B2B traffic scored by the engine, cycled
to reach ``--contacts`` keys; about 10% of them with something due), written as the
worker's checkpoints write it (see :func:`fill`), then, in the same run and in turn,
with the worker's GC thresholds:

* baseline: a bare confluent-kafka loop reading every partition of that topic (the
  records' keys, values and headers touched);
* the same bare loop reading the partitions one after another, as the worker recovers
  them (faster here than all at once): the ceiling of the worker's recovery;
* the worker's recovery of every partition as it does at assignment (its changelog
  reader, ``recover`` into a fresh RocksDB store per partition, then the timer index
  the processor rebuilds from the store), partitions one after another;
* the same with the partitions recovered in parallel threads (the worker does not:
  it was slower here).

Prints contacts/s for each and the ratio to the baseline, and the memory a contact
decoded into the worker's cache takes (tracemalloc, bytes per cached contact).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream import clients  # noqa: E402
from scorestream.app.kafka import Offsets, Topology  # noqa: E402
from scorestream.app.rocks import RocksStore  # noqa: E402
from scorestream.app.worker import GC_THRESHOLDS  # noqa: E402
from scorestream.engine.rules import load_rules  # noqa: E402
from scorestream.engine.scorer import Engine  # noqa: E402
from scorestream.engine.state import ContactState  # noqa: E402
from scorestream.engine.timeutil import parse_ts  # noqa: E402
from scorestream.offline import score_lines  # noqa: E402
from scorestream.pipeline.checkpoint import CHUNK, GENERATION_HEADER, recover  # noqa: E402
from scorestream.pipeline.routing import partition_for  # noqa: E402
from scorestream.pipeline.store import decode_value, encode_value  # noqa: E402
from scorestream.settings import Settings  # noqa: E402
from scorestream.simulate import Traffic  # noqa: E402

CHANGELOG = "scorestream.state-changelog"


def sample_states(rules_path: Path) -> list[ContactState]:
    traffic = Traffic(10_000, seed=5, start_us=parse_ts("2026-03-01T00:00:00Z"), rate=2.0)
    lines = []
    for ev in traffic:
        lines.append(json.dumps(ev, separators=(",", ":")).encode())
        if len(lines) >= 200_000:
            break
    return list(score_lines(Engine(load_rules(rules_path)), iter(lines)).processor.states())


def fill(bootstrap: str, topic: str, partitions: int, contacts: int) -> int:
    """Write the changelog as a worker's checkpoints write it.

    The worker's producer settings (lz4 batches), and per checkpoint chunk of
    ``CHUNK`` states of one partition a flush before the next: so the topic holds record
    batches of the size recovery meets in production. (Produced slowly with a linger
    instead, the batches were about 30 records and uncompressed, and reading them cost a
    bare consumer three times as much as batches of hundreds.)
    """
    states = sample_states(ROOT / "rules" / "b2b.yaml")
    values = [s.to_bytes() for s in states]
    producer = Producer(clients.output_producer(Settings(bootstrap=bootstrap)))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(partitions)}
    size = 0
    for i in range(contacts):
        key = f"c-{i:09d}".encode()
        due = -1 if i % 10 else 1_800_000_000_000_000 + i  # 10% with a timer due
        value = due.to_bytes(8, "big", signed=True) + values[i % len(values)]
        size += len(value)
        by_partition[partition_for(key.decode(), partitions)].append((key, value))
    header = [(GENERATION_HEADER, b"1")]
    for p, items in by_partition.items():
        for start in range(0, len(items), CHUNK):
            assert producer.flush(60) == 0
            for key, value in items[start : start + CHUNK]:
                producer.produce(topic, value, key, partition=p, headers=header)
    assert producer.flush(120) == 0
    return size // contacts


def baseline(bootstrap: str, topic: str, partitions: int, serial: bool) -> float:
    """A bare consume loop over the topic: every partition at once, or one after another
    (as the worker recovers them; one consumer, watermark lookups not timed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    groups = [[p] for p in range(partitions)] if serial else [list(range(partitions))]
    n, touched, elapsed = 0, 0, 0.0
    for group in groups:
        total = sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in group
        )
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in group])
        got = 0
        while got < total:
            for msg in consumer.consume(num_messages=min(5000, total - got), timeout=0.1):
                touched += len(msg.key() or b"") + len(msg.value() or b"")
                touched += len(msg.headers() or ())
                got += 1
        elapsed += time.perf_counter() - started
        consumer.unassign()
        n += got
    consumer.close()
    return n / elapsed


def recover_one(settings: Settings, topo: Topology, root: Path, p: int) -> tuple[int, int]:
    store = RocksStore(root / f"p{p}", cache_size=1_000_000)
    offsets = Offsets(settings, topo)
    records, end = offsets.changelog(p, 0)
    n = recover(store, records, end)
    due = sum(1 for _ in store.dues())  # the processor's timer index rebuild
    store.close()
    return n, due


def worker_recovery(
    settings: Settings, topo: Topology, partitions: int, parallel: bool
) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if parallel:
            with ThreadPoolExecutor(partitions) as pool:
                results = list(
                    pool.map(lambda p: recover_one(settings, topo, Path(tmp), p), range(partitions))
                )
        else:
            results = [recover_one(settings, topo, Path(tmp), p) for p in range(partitions)]
        elapsed = time.perf_counter() - started
    n = sum(r[0] for r in results)
    return n / elapsed, sum(r[1] for r in results)


def cache_cost(values: list[bytes]) -> float:
    """Bytes allocated per state decoded and held as objects (the worker's contact cache)."""
    gc.collect()
    tracemalloc.start()
    held = [decode_value(v) for v in values]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(held) == len(values)
    return float(size / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=150_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SCORESTREAM_BOOTSTRAP", "127.0.0.1:9092")
    )
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    topic = prefix + CHANGELOG
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result()
    try:
        mean = fill(args.bootstrap, topic, args.partitions, args.contacts)
        print(
            f"{args.contacts:,} contact states ({mean:,} bytes on average) in {topic}, "
            f"{args.partitions} partitions"
        )
        settings = Settings(bootstrap=args.bootstrap, topic_prefix=prefix)
        topo = Topology(prefix, args.partitions)
        # The worker's collector thresholds (its process sets them at start-up).
        gc.set_threshold(*GC_THRESHOLDS)
        base = baseline(args.bootstrap, topic, args.partitions, serial=False)
        base_serial = baseline(args.bootstrap, topic, args.partitions, serial=True)
        serial, due = worker_recovery(settings, topo, args.partitions, parallel=False)
        para, _ = worker_recovery(settings, topo, args.partitions, parallel=True)
        print(f"{'recovery':<58}{'contacts/s':>12}{'x baseline':>12}")
        for name, rate in (
            ("baseline: confluent-kafka consume loop", base),
            ("bare loop, partitions one after another", base_serial),
            ("worker: changelog -> RocksDB + timer index, one by one", serial),
            ("worker: the same, partitions in parallel threads", para),
        ):
            print(f"{name:<58}{rate:>12,.0f}{rate / base:>12.2f}")
        print(f"timer index: {due:,} contacts with something due")
        states = sample_states(ROOT / "rules" / "b2b.yaml")
        values = [encode_value(s, None) for s in states]
        print(
            f"a cached contact costs {cache_cost(values):,.0f} bytes of Python objects "
            f"({len(values):,} states decoded; {sum(map(len, values)) / len(values):,.0f} "
            f"bytes each encoded)"
        )
    finally:
        for f in admin.delete_topics([topic]).values():
            f.result()


if __name__ == "__main__":
    main()
