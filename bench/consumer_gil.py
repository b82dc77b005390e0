"""Record delivery under a busy main thread: three ways of consuming, same load.

    .venv/bin/python bench/consumer_gil.py [--rate 5000] [--seconds 15] [--work-us 100]
        [--repeat 2]

Why: at 5,000 events/s the worker's consumer thread (aiokafka inside Faust's consumer
thread) was active in about a third of py-spy's samples but held the GIL in about 2 %:
it waits for the GIL that the processing holds, and every fetch needs it several times.
This asks, before the worker's consumption path is rebuilt (README, *Benchmarks*), how
soon a record reaches the processing thread with

* ``aiokafka-thread``: aiokafka in a thread of its own with its own event loop, batches
  handed over through a queue (Faust's shape, the worker's today);
* ``aiokafka-loop``: aiokafka in the processing thread's event loop, no second thread
  (fetches are served only between batches);
* ``librdkafka``: confluent-kafka, whose fetching runs in librdkafka's C threads
  without the GIL; the processing thread takes batches with ``consume``.

Each client is a process of its own. Its main thread spends ``--work-us`` of pure-Python
CPU per record with the GIL held, as the worker's processing does. This process
publishes ``--rate`` events/s over 36 partitions (6 topics x 6, as the worker's input
topics), each value starting with its send time. Printed per client and run: delivery
latency (send to the main thread having the record) p50 and p99, the client's CPU per
record, and the p99 against ``aiokafka-thread`` in the same run. Needs the local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioPartition
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from worker_bench import _percentiles

PARTITIONS = 6
TOPICS = 6
#: seconds of traffic before latencies count (clients settle, the broker warms up)
WARMUP = 3.0
CLIENTS = ("aiokafka-thread", "aiokafka-loop", "librdkafka")


def busy(seconds: float) -> None:
    """Pure-Python CPU with the GIL held (released only at the interpreter's switches)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Recorder:
    """Latencies of records the main thread has, once past the warm-up."""

    def __init__(self, work: float, started: float) -> None:
        self.work = work
        self.count_after = started + WARMUP
        self.latencies: list[float] = []
        self.records = 0

    def take(self, values: list[bytes]) -> None:
        now = time.time()
        for value in values:
            sent = float(value[:17])
            if sent >= self.count_after:
                self.latencies.append(now - sent)
            self.records += 1
        busy(self.work * len(values))


def run_client(kind: str, bootstrap: str, topics: list[str], args: argparse.Namespace) -> None:
    """One client: takes records until ``stop`` exists, then writes its figures."""
    ready, stop, result = Path(args.ready), Path(args.stop), Path(args.result)
    rec = Recorder(args.work_us / 1e6, float(args.t0))
    cpu0 = time.process_time()
    if kind == "librdkafka":
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"gil-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 200,
                "fetch.min.bytes": 1,
            }
        )
        consumer.assign(
            [TopicPartition(t, p, OFFSET_END) for t in topics for p in range(PARTITIONS)]
        )
        consumer.consume(1, timeout=2.0)  # joins the fetchers before "ready"
        ready.touch()
        while not stop.exists():
            # consume(n, timeout) waits for n records or the timeout: wait for one, then
            # take what is there without waiting (as a fetched batch is taken)
            first = consumer.poll(0.1)
            if first is None:
                continue
            msgs = [first, *consumer.consume(999, timeout=0)]
            rec.take([m.value() for m in msgs if m.error() is None])
        consumer.close()
    else:

        async def open_consumer() -> Any:
            c = AIOKafkaConsumer(
                bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=200
            )
            await c.start()
            c.assign([AioPartition(t, p) for t in topics for p in range(PARTITIONS)])
            await c.seek_to_end()
            return c

        if kind == "aiokafka-loop":

            async def main() -> None:
                c = await open_consumer()
                ready.touch()
                while not stop.exists():
                    batches = await c.getmany(timeout_ms=100)
                    rec.take([r.value for b in batches.values() for r in b])
                await c.stop()

            asyncio.run(main())
        else:
            handed: queue.Queue[list[bytes] | None] = queue.Queue()
            done = threading.Event()

            def fetch_thread() -> None:
                async def main() -> None:
                    c = await open_consumer()
                    ready.touch()
                    while not done.is_set():
                        batches = await c.getmany(timeout_ms=100)
                        if batches:
                            handed.put([r.value for b in batches.values() for r in b])
                    await c.stop()

                asyncio.run(main())
                handed.put(None)

            thread = threading.Thread(target=fetch_thread)
            thread.start()
            while not stop.exists():
                try:
                    values = handed.get(timeout=0.1)
                except queue.Empty:
                    continue
                if values:
                    rec.take(values)
            done.set()
            thread.join()
    cpu = time.process_time() - cpu0
    result.write_text(json.dumps({"latencies": rec.latencies, "records": rec.records, "cpu": cpu}))


def produce(bootstrap: str, topics: list[str], rate: float, seconds: float) -> None:
    """``rate`` events/s for ``seconds``, round-robin over the topics, send time first."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    pad = b" " * 200  # about the size of a simulated event
    total = int(rate * seconds)
    began = time.monotonic()
    for i in range(total):
        producer.produce(
            topics[i % len(topics)], f"{time.time():.6f}".encode() + pad, str(i).encode()
        )
        if i % 64 == 0:
            producer.poll(0)
        ahead = began + (i + 1) / rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
    producer.flush(30)


def measure(kind: str, bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    prefix = f"bench-gil-{uuid.uuid4().hex[:6]}-"
    topics = [f"{prefix}t{i}" for i in range(TOPICS)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        future.result()
    time.sleep(1.0)  # leaders elected before anyone reads
    with tempfile.TemporaryDirectory() as tmp:
        files = {n: str(Path(tmp) / n) for n in ("ready", "stop", "result")}
        t0 = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                kind,
                "--bootstrap",
                bootstrap,
                "--topics",
                ",".join(topics),
                "--work-us",
                str(args.work_us),
                "--t0",
                str(t0),
                *(f"--{n}={p}" for n, p in files.items()),
            ]
        )
        try:
            deadline = time.monotonic() + 60
            while not Path(files["ready"]).exists():
                assert proc.poll() is None and time.monotonic() < deadline, "client not ready"
                time.sleep(0.05)
            # the client counts latencies from WARMUP after its t0: start sending now
            produce(bootstrap, topics, args.rate, WARMUP - (time.time() - t0) + args.seconds)
            time.sleep(1.0)
            Path(files["stop"]).touch()
            proc.wait(60)
            doc = json.loads(Path(files["result"]).read_text())
        finally:
            if proc.poll() is None:
                proc.kill()
            for future in admin.delete_topics(topics).values():
                future.result()
    q = _percentiles(doc["latencies"])
    return {
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "cpu_us_per_record": doc["cpu"] / max(1, doc["records"]) * 1e6,
        "records": doc["records"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--work-us",
        type=float,
        default=100.0,
        help="pure-Python CPU per record in the main thread (the worker: about 100 live)",
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SCORESTREAM_BOOTSTRAP", "127.0.0.1:9092")
    )
    # the client process's own arguments
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--topics", help=argparse.SUPPRESS)
    parser.add_argument("--t0", help=argparse.SUPPRESS)
    for name in ("ready", "stop", "result"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run_client(args.client, args.bootstrap, args.topics.split(","), args)
        return
    print(
        f"{args.rate:,.0f} events/s over {TOPICS * PARTITIONS} partitions, "
        f"{args.work_us:g} us of Python per record in the main thread, "
        f"{args.seconds:g} s per run"
    )
    print(f"{'run':>3} {'client':<16} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/rec':>11} {'p99 x':>6}")
    for run in range(1, args.repeat + 1):
        base = None
        for kind in CLIENTS:
            r = measure(kind, args.bootstrap, args)
            base = base or r["p99_ms"]
            print(
                f"{run:>3} {kind:<16} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                f"{r['cpu_us_per_record']:>11.1f} {r['p99_ms'] / base:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
