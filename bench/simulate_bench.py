"""``scorestream simulate`` as fast as it goes, against bare write loops on the same sink.

    .venv/bin/python bench/simulate_bench.py [--events 500000]
                                            [--contacts 10000,100000,1000000]
                                            [--bootstrap 127.0.0.1:9092] [--no-kafka]

For each population it runs the real command in a subprocess and times it from start
to exit (interpreter start, imports and the final Kafka flush included):

* file:  ``scorestream simulate --dry-run --rate 0 --events N --contacts P --seed 1
  --start 2026-03-01T00:00:00Z --out FILE``
* kafka: the same without ``--dry-run``/``--out``, to fresh topics (``simbench-<id>-``,
  created with the declarations in ``topics/``, deleted at the end), with the producer
  settings of ``clients.event_producer``.

and in the same run its baseline, on the same sink, with the very lines the command wrote
(so the same sizes, keys and topics), timed in this process around the loop only:

* file:  ``for line in lines: fh.write(line)`` into a new file;
* kafka: ``producer.produce(topic, line, key)`` per line (poll on a full queue), then
  one flush, with the same producer settings.

The ratio is simulate's events/s over the baseline's: 1.0 would mean generating costs
nothing. The machine has 2 cores shared with the broker, so Kafka figures vary between
runs more than file figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream import clients  # noqa: E402
from scorestream.pipeline.routing import topic_for  # noqa: E402
from scorestream.settings import Settings  # noqa: E402
from scorestream.topics import apply, delete_prefixed, load_declarations  # noqa: E402

START = "2026-03-01T00:00:00Z"


def run_simulate(args: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``scorestream simulate ARGS`` to its exit (exit 0 checked)."""
    cmd = [sys.executable, "-m", "scorestream", "simulate", *args]
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr}")
    return took


def file_baseline(lines: list[bytes], path: Path) -> float:
    """Seconds of a bare loop writing ``lines`` to a new file."""
    began = time.perf_counter()
    with open(path, "wb") as fh:
        write = fh.write
        for line in lines:
            write(line)
    took = time.perf_counter() - began
    path.unlink()
    return took


def kafka_baseline(messages: list[tuple[str, bytes, bytes]], settings: Settings) -> float:
    """Seconds of a bare produce loop of ``(topic, key, value)`` and one flush."""
    producer = Producer(clients.event_producer(settings))
    producer.list_topics(timeout=10)  # connected before the clock starts
    produce, poll = producer.produce, producer.poll
    began = time.perf_counter()
    for topic, key, value in messages:
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.1)
    left = producer.flush(60)
    took = time.perf_counter() - began
    if left:
        raise SystemExit(f"bare producer: {left} events not delivered")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="events per measurement")
    parser.add_argument(
        "--contacts", default="10000,100000,1000000", help="populations, comma-separated"
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--no-kafka", action="store_true", help="only the file sink")
    args = parser.parse_args()
    populations = [int(p) for p in args.contacts.split(",")]
    n = args.events

    prefix = f"simbench-{uuid.uuid4().hex[:8]}-"
    settings = Settings(bootstrap=args.bootstrap, topic_prefix=prefix)
    env = {
        **os.environ,
        "SCORESTREAM_BOOTSTRAP": args.bootstrap,
        "SCORESTREAM_TOPIC_PREFIX": prefix,
        "PYTHONPATH": str(ROOT / "src"),
    }
    if not args.no_kafka:
        apply(load_declarations(ROOT / "topics"), settings)
    rows: list[tuple[int, str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="simbench-") as tmpdir:
            out = Path(tmpdir) / "events.jsonl"
            for people in populations:
                common = ["--rate", "0", "--events", str(n), "--contacts", str(people)]
                common += ["--seed", "1", "--start", START]
                took = run_simulate([*common, "--dry-run", "--out", str(out)], env)
                lines = out.read_bytes().splitlines(keepends=True)
                out.unlink()
                if len(lines) != n:
                    raise SystemExit(f"expected {n} lines, the file has {len(lines)}")
                rows.append((people, "file", n / took, n / file_baseline(lines, out)))
                if args.no_kafka:
                    continue
                messages = []
                for line in lines:
                    ev = json.loads(line)
                    key = (ev.get("contact_id") or ev["anonymous_id"]).encode()
                    topic = settings.topic(topic_for(ev["type"]))
                    messages.append((topic, key, line.rstrip(b"\n")))
                del lines
                took = run_simulate(common, env)
                rows.append((people, "kafka", n / took, n / kafka_baseline(messages, settings)))
    finally:
        if not args.no_kafka:
            delete_prefixed(settings)

    print(f"scorestream simulate, {n:,} events per measurement, --rate 0, seed 1")
    print(f"{'contacts':>9} {'sink':<6} {'simulate ev/s':>14} {'baseline ev/s':>14} {'ratio':>6}")
    for people, sink, rate, base in rows:
        print(f"{people:>9,} {sink:<6} {rate:>14,.0f} {base:>14,.0f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
