"""The HTTP collector on loopback: events/s and latency, against a bare producer loop.

    .venv/bin/python bench/collector_bench.py [--events 40000] [--single 6000]
                                             [--concurrency 16] [--seconds 30]

Needs the local broker (`scorestream broker start`). Each run creates fresh topics with a
unique prefix, starts `scorestream collect` on a free loopback port, and deletes the
topics at the end. The load is bounded: a fixed number of events, and at most
``--seconds`` per phase. Phases, in one run, on the same events (simulated traffic):

* single events: ``--single`` requests of one event each, ``--concurrency`` at a time;
* batches of 20: ``--events`` events in requests of 20, ``--concurrency`` at a time;
* baseline: a bare confluent-kafka producer loop with the collector's producer settings
  (acks=all, idempotent, murmur2) producing the same events' JSON, then one flush.

A request's latency is from sending it to having read the answer (which the collector
gives only after Kafka acknowledged every event). The client runs on the same 2-core
machine as the collector and the broker, and takes its share of the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream import clients  # noqa: E402
from scorestream.pipeline.routing import topic_for  # noqa: E402
from scorestream.settings import Settings  # noqa: E402
from scorestream.simulate import Traffic  # noqa: E402
from scorestream.topics import apply, delete_prefixed, load_declarations  # noqa: E402

KEY = "wk_bench_0123456789"
BATCH = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def traffic(n: int) -> list[dict[str, Any]]:
    """``n`` simulated events as a tracker would send them (no occurred_at: server time)."""
    out = []
    for ev in Traffic(people=2000, seed=7, start_us=None, rate=0):
        ev.pop("occurred_at", None)
        out.append(ev)
        if len(out) == n:
            return out
    return out


def start_collector(
    settings: Settings, sites: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SCORESTREAM_BOOTSTRAP": settings.bootstrap,
        "SCORESTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "SCORESTREAM_COLLECTOR_PORT": str(port),
        "SCORESTREAM_COLLECTOR_SITES": str(sites),
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scorestream", "collect"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the collector did not get ready in 30 s")


async def load(
    url: str, bodies: list[bytes], counts: list[int], concurrency: int, seconds: float
) -> tuple[int, float, list[float], dict[int, int]]:
    """Send the bodies, ``concurrency`` at a time; (events acknowledged, s, latencies, codes)."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    accepted = 0
    next_index = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal next_index, accepted
            while next_index < len(bodies) and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                async with session.post(
                    url, data=bodies[i], headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    latencies.append(time.perf_counter() - started)
                    codes[resp.status] = codes.get(resp.status, 0) + 1
                    if resp.status == 200:
                        accepted += counts[i]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, elapsed, latencies, codes


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def bare_producer(settings: Settings, events: list[dict[str, Any]], seconds: float) -> float:
    """Events/s of a bare producer loop with the collector's settings (including encoding)."""
    conf = clients.collector_producer(settings)
    conf.pop("statistics.interval.ms")
    producer = Producer(conf)
    producer.produce(settings.topic("events.custom"), b"{}", b"warm-up")
    producer.flush(30)
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    sent = 0
    for ev in events:
        key = (ev.get("contact_id") or ev["anonymous_id"]).encode()
        value = json.dumps(ev, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(settings.topic(topic_for(ev["type"])), value, key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        sent += 1
        if time.monotonic() > deadline:
            break
    left = producer.flush(60)
    if left:
        raise SystemExit(f"bare producer: {left} events not delivered")
    return sent / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events sent in batches of 20")
    parser.add_argument("--single", type=int, default=6_000, help="events sent one per request")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per phase")
    args = parser.parse_args()

    base = Settings.load()
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    settings = Settings(
        bootstrap=base.bootstrap, topic_prefix=prefix, topics_dir=str(ROOT / "topics")
    )
    apply(load_declarations(ROOT / "topics"), settings)
    tmp = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    sites = tmp / "sites.yaml"
    sites.write_text(
        json.dumps(
            {
                "sites": [
                    {
                        "name": "bench",
                        "write_key": KEY,
                        "origins": ["http://127.0.0.1"],
                        "rate_limit": {"events_per_second": 1e9, "burst": 1_000_000_000},
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    proc = start_collector(settings, sites, port, tmp / "collector.log")
    url = f"http://127.0.0.1:{port}/v1/events?key={KEY}"
    events = traffic(args.events + args.single)
    try:
        singles = events[: args.single]
        batched = events[args.single :]
        warm = [json.dumps(e).encode() for e in singles[:200]]
        asyncio.run(load(url, warm, [1] * len(warm), args.concurrency, 10))

        bodies = [json.dumps(e).encode() for e in singles]
        one = asyncio.run(load(url, bodies, [1] * len(bodies), args.concurrency, args.seconds))
        chunks = [batched[i : i + BATCH] for i in range(0, len(batched), BATCH)]
        bodies = [json.dumps(c).encode() for c in chunks]
        many = asyncio.run(
            load(url, bodies, [len(c) for c in chunks], args.concurrency, args.seconds)
        )
        bare = bare_producer(settings, batched, args.seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        delete_prefixed(settings)

    print(f"collector on loopback, concurrency {args.concurrency}, acks=all")
    print(f"{'load':<28} {'events':>7} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7}  answers")
    rates = {}
    for name, (n, secs, lat, codes) in (("single events", one), (f"batches of {BATCH}", many)):
        rates[name] = n / secs
        print(
            f"{name:<28} {n:>7} {n / secs:>9.0f} {pct(lat, 0.5):>7.1f} {pct(lat, 0.99):>7.1f}"
            f"  {dict(sorted(codes.items()))}"
        )
    print(f"{'bare producer loop':<28} {len(batched):>7} {bare:>9.0f}")
    batch_rate = rates[f"batches of {BATCH}"]
    p99 = pct(many[2], 0.99)
    print(
        f"goal: batches >= 5,000 events/s with p99 < 50 ms: "
        f"{'met' if batch_rate >= 5000 and p99 < 50 else 'NOT met'} "
        f"({batch_rate:.0f} events/s, p99 {p99:.1f} ms)"
    )
    ratio = batch_rate / bare
    print(
        f"goal: collector >= 0.5 x bare producer: {'met' if ratio >= 0.5 else 'NOT met'} "
        f"({ratio:.2f} x)"
    )


if __name__ == "__main__":
    main()
