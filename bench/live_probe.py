"""One worker alone under steady live traffic: latency, its CPU, and what the merge waited.

    .venv/bin/python bench/live_probe.py [RATE] [LINGER_MS]   # default 5000 events/s, 20 s, 5 ms

Needs the local broker. Starts ``scorestream worker`` on fresh topics (nothing to
catch up), sends RATE events/s with ``worker_bench.latency`` (every 8th event completes a
probe contact's fourth pricing visit), samples the worker's CPU every 2 s, and prints
the merge's waiting time and the late events from its ``/metrics``. A diagnosis tool,
not a comparison: it says whether a worker that misses a latency goal is short of CPU
or waiting in the event-time merge.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import worker_bench as wb
from scorestream.settings import Settings
from scorestream.topics import apply, delete_prefixed, load_declarations


def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 5000.0
    linger = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    bootstrap = os.environ.get("SCORESTREAM_BOOTSTRAP", "127.0.0.1:9092")
    prefix = f"live-{uuid.uuid4().hex[:6]}-"
    settings = Settings(bootstrap=bootstrap, topic_prefix=prefix)
    apply(load_declarations(wb.ROOT / "topics"), settings)
    tmp = Path(tempfile.mkdtemp())
    proc = wb.start_worker(bootstrap, prefix, tmp, 6099)
    try:
        while not wb.status(6099).get("partitions"):
            time.sleep(0.5)
        time.sleep(2)
        samples: list[dict[str, float]] = []
        done = threading.Event()

        def meter() -> dict[str, float]:
            own = os.times()
            busy, _ = wb.machine()
            return {
                "worker": wb.cpu_of(proc.pid),
                "broker": wb.cpu_of(cmdline=b"kafka.Kafka"),
                "producer": own.user + own.system,  # this process: producer and reader
                "machine": busy,
            }

        def sample() -> None:
            before = meter()
            began = time.time()
            while not done.wait(2.0):
                after = meter()
                now = time.time()
                samples.append({n: round((after[n] - before[n]) / (now - began), 2) for n in after})
                before, began = after, now

        threading.Thread(target=sample, daemon=True).start()
        result = wb.latency(bootstrap, prefix, rate, 20, linger_ms=linger)
        done.set()
        print(json.dumps(result))
        print("CPU (cores) every 2 s:", samples)
        steady = samples[1:-1] or samples  # the first and last spans include set-up and drain
        print(
            "mean CPU while sending (cores):",
            {n: round(sum(x[n] for x in steady) / len(steady), 2) for n in steady[0]},
        )
        rss = [
            line.split()[1]
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        ]
        print("worker resident memory (kB):", rss[0] if rss else "?")
        with urllib.request.urlopen("http://127.0.0.1:6099/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(
                    (
                        "scorestream_merge_wait_seconds_total",
                        "scorestream_late_events_total",
                        "scorestream_gc_pause_seconds_total",
                    )
                ):
                    print(line)
    finally:
        wb.stop(proc)
        delete_prefixed(settings)


if __name__ == "__main__":
    main()
