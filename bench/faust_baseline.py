"""Reference Faust agents for bench/worker_bench.py (run as a separate process).

    BENCH_TOPICS=a,b BENCH_N=60000 BENCH_MODE=noop BENCH_RESULT=out.json \\
        python bench/faust_baseline.py worker -l warn

``noop``: an agent that only counts events (Faust's own ceiling on this machine).
``table``: the textbook design, a Faust table on RocksDB written once per event (every
write sends a changelog record). The result file gets the timestamps of the first and the
N-th event, and the process stops itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

TOPICS = os.environ["BENCH_TOPICS"].split(",")
N = int(os.environ["BENCH_N"])
MODE = os.environ.get("BENCH_MODE", "noop")
RESULT = Path(os.environ["BENCH_RESULT"])
STATE = os.environ.get("BENCH_STATE", "/tmp/scorestream-bench-faust")

app = faust.App(
    os.environ.get("BENCH_APP", f"bench-{MODE}-{os.getpid()}"),
    broker=f"kafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:9092')}",
    store="rocksdb://" if MODE == "table" else "memory://",
    datadir=STATE,
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "6")),
)
source = app.topic(*TOPICS, key_serializer="raw", value_serializer="raw")
table = app.Table("scores", default=int, partitions=int(os.environ.get("BENCH_PARTITIONS", "6")))
progress: dict[str, Any] = {"n": 0, "first": None}


@app.agent(source, concurrency=1)
async def count(stream: Any) -> None:
    async for event in stream.events():
        if progress["first"] is None:
            progress["first"] = time.time()
        if MODE == "table":
            key = event.key or b""
            table[key] = table[key] + 1
        progress["n"] += 1
        if progress["n"] == N:
            RESULT.write_text(json.dumps({"first": progress["first"], "done": time.time(), "n": N}))
            print("bench: done", file=sys.stderr, flush=True)
            os._exit(0)


if __name__ == "__main__":
    app.main()
