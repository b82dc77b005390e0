"""Live worker throughput against Faust baselines and a quix-streams peer on the same
broker and topics, and end-to-end latency at steady rates (event produced -> crossing
consumed).

    .venv/bin/python bench/worker_bench.py [--events 60000] [--rates 1000,1000,1000,5000]
        [--seconds 20] [--no-processes] [--rounds 3] [--steady-events 400000]

Needs the local broker (`scorestream broker start`). Every run uses fresh topics with a
unique prefix and deletes them at the end. Throughput figures are events per second from
the first to the last input event; the comparison that matters is the ratio, measured
in the same run against:

* a no-op Faust agent (counts events; Faust's own ceiling here);
* a Faust agent writing a RocksDB table once per event (the textbook design; each write
  is a changelog record);
* a quix-streams 3.28 app running this project's engine per message with its state in
  quix's RocksDB store (``bench/quix_peer.py``, in ``.venv-peer``: ``make bench`` makes
  it; skipped with a note if it is missing);
* and ``scorestream worker --processes 2`` against one process (more workers per host):
  from the start over the backlog (the second process's join and the rebalance
  included), and in ``--rounds`` rounds on fresh backlogs with both groups settled
  (``--steady-events`` each, 400,000 by default: a round then lasts 7 - 17 s. With
  100,000 (2 - 4 s a round, the default until the twenty-second session) a round's start
  (the first fetch of every partition) and end (the checkpoint after the last event)
  were much of it, and two processes left the machine partly idle: 1.33 - 1.78 of 2
  cores busy, against 1.81 - 1.95 with 400,000). The groups
  are frozen while a backlog is produced, and then apply it one after the other (the
  first alternates), the other frozen, so the figures are processing rates that do not
  compete. A round's rate runs until the group has committed the whole backlog, that is
  until a checkpoint made it durable (checkpoint work still owed when the last event is
  applied belongs to the same events; the rate to the last event applied is printed
  too). For each round it prints
  the cores used by the workers (the process and its descendants), the broker and
  itself, how busy the machine was (``/proc``), the CPU per event, and the ratio the
  machine's CPU allows: the cores left to two processes beside the broker and the
  benchmark, over the cores one process used.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream.engine.timeutil import US_PER_SECOND, format_ts  # noqa: E402
from scorestream.pipeline.routing import INPUT_TOPICS, topic_for  # noqa: E402
from scorestream.settings import Settings  # noqa: E402
from scorestream.simulate import Traffic  # noqa: E402
from scorestream.topics import apply, delete_prefixed, load_declarations  # noqa: E402

PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) " (OSError if it is gone)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_seconds(pid: str) -> float:
    """CPU seconds (user + system) one process has used so far."""
    return _ticks(_stat(pid)) / TICK


def _stats() -> dict[str, list[str]]:
    stats = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stats[pid] = _stat(pid)
            except OSError:
                continue  # gone meanwhile
    return stats


def _tree(stats: dict[str, list[str]], root: int) -> set[str]:
    """A process and its descendants (the supervisor starts its workers in sessions of
    their own, so a process group does not reach them)."""
    children: dict[str, list[str]] = {}
    for pid, fields in stats.items():
        children.setdefault(fields[1], []).append(pid)  # ppid
    chosen: set[str] = set()
    todo = [str(root)]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in chosen:
            chosen.add(pid)
            todo.extend(children.get(pid, ()))
    return chosen


def cpu_of(root: int | None = None, cmdline: bytes = b"") -> float:
    """CPU seconds (user + system) of a process and its descendants, or of the
    processes whose command line holds ``cmdline``."""
    stats = _stats()
    if root is not None:
        chosen = _tree(stats, root)
    else:
        chosen = set()
        for pid in stats:
            try:
                if cmdline in Path(f"/proc/{pid}/cmdline").read_bytes():
                    chosen.add(pid)
            except OSError:
                continue
    return sum(_ticks(stats[p]) for p in chosen) / TICK


def signal_tree(root: int, signum: int) -> None:
    """Send ``signum`` to a process and all its descendants."""
    for pid in _tree(_stats(), root):
        try:
            os.kill(int(pid), signum)
        except ProcessLookupError:
            continue  # gone meanwhile


def machine() -> tuple[float, float]:
    """(busy, all) CPU seconds of the machine since boot, summed over cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


class CpuMeter:
    """Cores used by the workers, the broker, this benchmark and the machine over a span."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.start = self._sample()

    def _sample(self) -> tuple[float, ...]:
        own = os.times()
        busy, total = machine()
        return (
            time.monotonic(),
            cpu_of(self.pgid),
            cpu_of(cmdline=b"kafka.Kafka"),
            own.user + own.system,
            busy,
            total,
        )

    def usage(self) -> dict[str, float]:
        """Cores used since the start: workers, broker, benchmark, machine busy, cores."""
        end = self._sample()
        wall, workers, broker, bench, busy, total = (
            b - a for a, b in zip(self.start, end, strict=True)
        )
        wall = max(wall, 1e-9)
        return {
            "workers": workers / wall,
            "broker": broker / wall,
            "bench": bench / wall,
            "busy": busy / wall,
            "cores": total / wall,
        }

    def report(self) -> str:
        u = self.usage()
        return (
            f"workers {u['workers']:.2f} cores, broker {u['broker']:.2f}, "
            f"benchmark {u['bench']:.2f}, machine {u['busy']:.2f} of {u['cores']:.0f} busy"
        )


def produce_all(bootstrap: str, prefix: str, events: list[dict[str, Any]]) -> None:
    # Idempotent: a retried batch must not land after later ones (order matters).
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "enable.idempotence": True,
        }
    )
    for i, ev in enumerate(events):
        key = (ev.get("contact_id") or ev["anonymous_id"]).encode()
        while True:
            try:
                p.produce(prefix + topic_for(ev["type"]), json.dumps(ev).encode(), key)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def run_baseline(command: list[str], env: dict[str, str], n: int, result: Path) -> float:
    """Run a baseline consumer to its end; its rate from the first to the last event it
    saw, as it wrote them to ``result``."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    doc = json.loads(result.read_text())
    return float(n / (doc["done"] - doc["first"]))


def run_faust(mode: str, bootstrap: str, prefix: str, n: int, tmp: Path) -> float:
    result = tmp / f"{mode}.json"
    env = {
        **os.environ,
        "BENCH_TOPICS": ",".join(prefix + t for t in INPUT_TOPICS),
        "BENCH_N": str(n),
        "BENCH_MODE": mode,
        "BENCH_RESULT": str(result),
        "BENCH_BOOTSTRAP": bootstrap,
        "BENCH_APP": f"{prefix}{mode}",
        "BENCH_STATE": str(tmp / f"faust-{mode}"),
    }
    command = [PYTHON, str(ROOT / "bench" / "faust_baseline.py"), "worker", "-l", "warn"]
    return run_baseline(command, env, n, result)


def run_quix(bootstrap: str, prefix: str, n: int, tmp: Path) -> float | None:
    """The quix-streams peer's rate, or None if its virtualenv is missing."""
    python = ROOT / ".venv-peer" / "bin" / "python"
    if not python.exists():
        return None
    result = tmp / "quix.json"
    env = {
        **os.environ,
        "BENCH_TOPICS": ",".join(prefix + t for t in INPUT_TOPICS),
        "BENCH_N": str(n),
        "BENCH_RESULT": str(result),
        "BENCH_BOOTSTRAP": bootstrap,
        "BENCH_APP": f"{prefix}quix",
        "BENCH_STATE": str(tmp / "quix-state"),
        "BENCH_RULES": str(ROOT / "rules" / "b2b.yaml"),
    }
    return run_baseline([str(python), str(ROOT / "bench" / "quix_peer.py")], env, n, result)


def status(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except OSError:
        return {"partitions": {}}


def input_progress(port: int, prefix: str) -> int:
    """Input events the worker has applied (offsets released by its merge)."""
    return _progress(status(port), prefix)


def _progress(doc: dict[str, Any], prefix: str) -> int:
    inputs = {prefix + t for t in INPUT_TOPICS}
    return sum(
        offset
        for info in doc.get("partitions", {}).values()
        for topic, offset in info["applied"].items()
        if topic in inputs
    )


def received_progress(port: int, prefix: str) -> tuple[int, int]:
    """(events applied, events applied or taken in: decoded and waiting in the merge)."""
    doc = status(port)
    applied = _progress(doc, prefix)
    return applied, applied + doc.get("merge", {}).get("buffered", 0)


def start_worker(
    bootstrap: str, prefix: str, tmp: Path, port: int, processes: int = 1
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SCORESTREAM_BOOTSTRAP": bootstrap,
        "SCORESTREAM_TOPIC_PREFIX": prefix,
        # a group (and state) of its own per process count: each run reads the backlog
        "SCORESTREAM_APP_ID": f"{prefix}worker{processes}",
        "SCORESTREAM_STATE_DIR": str(tmp / f"worker-state-{processes}"),
        "SCORESTREAM_WEB_PORT": str(port),
        "SCORESTREAM_RULES": str(ROOT / "rules" / "b2b.yaml"),
        "SCORESTREAM_LOG_LEVEL": "warning",
        # outlasts the freezes of settled_rounds(): no rebalance in the measurement
        "SCORESTREAM_SESSION_TIMEOUT": "60",
    }
    with open(tmp / "worker.log", "ab") as log:
        return subprocess.Popen(
            [PYTHON, "-m", "scorestream", "worker", "--processes", str(processes)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_worker(
    bootstrap: str, prefix: str, n: int, tmp: Path, port: int, processes: int = 1
) -> tuple[float, Any]:
    """The worker's rate over the backlog of ``n`` events, from its start of work."""
    proc = start_worker(bootstrap, prefix, tmp, port, processes)
    first = done = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts = [received_progress(port + i, prefix) for i in range(processes)]
        progress = sum(applied for applied, _ in counts)
        now = time.time()
        # The last time nothing was taken in yet: a busy worker answers /status late, so
        # the first answer showing progress can come long after work began. Counted from
        # the first event applied instead (until 2026-11-27), the rate left out the
        # decoding of what the merge took in before it could release anything: on a
        # fresh backlog, much of it (the merge waits for a record of every input).
        if sum(taken for _, taken in counts) == 0:
            first = now
        if progress >= n:
            done = now
            break
        time.sleep(0.02)
    assert first is not None and done is not None, (tmp / "worker.log").read_text()[-3000:]
    return n / max(done - first, 1e-3), proc


def settled(ports: list[int], prefix: str, n: int) -> bool:
    """Every process owns partitions, together all six, and all ``n`` events are applied."""
    owned = [status(port).get("partitions", {}) for port in ports]
    parts = [p for o in owned for p in o]
    total = sum(input_progress(port, prefix) for port in ports)
    return all(owned) and sorted(parts) == [str(i) for i in range(6)] and total >= n


def wait_settled(ports: list[int], prefix: str, n: int) -> None:
    """Until every process owns partitions, together all six, ``n`` events are applied,
    and that has held for 3 s."""
    deadline = time.monotonic() + 300
    stable_since = None
    while True:
        assert time.monotonic() < deadline, "the workers never settled"
        if settled(ports, prefix, n):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 3:
                return
        else:
            stable_since = None
        time.sleep(0.2)


def freeze(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker and, with ``--processes``, the workers it supervises."""
    signal_tree(proc.pid, signal.SIGSTOP)


def thaw(proc: subprocess.Popen[bytes]) -> None:
    signal_tree(proc.pid, signal.SIGCONT)


def committed(consumer: Consumer, prefix: str) -> int:
    """Input offsets ``consumer``'s group has committed, summed over partitions.

    The worker commits only what a checkpoint made durable (its changelog written), so
    this counts events whose processing is finished, checkpoint included.
    """
    parts = [TopicPartition(prefix + t, p) for t in INPUT_TOPICS for p in range(6)]
    return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))


def catch_up(
    proc: subprocess.Popen[bytes],
    ports: list[int],
    prefix: str,
    target: int,
    count: int,
    group: str,
    bootstrap: str,
) -> tuple[float, dict[str, float]]:
    """Thaw a frozen group with ``count`` events waiting, time it until all ``target``
    events are applied and until their checkpoint is committed, freeze it again:
    (events/s to durable, cores used meanwhile, plus ``applied_rate``).

    Durable is the fair end: when the last event is applied, the checkpoints that
    include it are still to come, and one process may owe more of that work than two.
    """
    thaw(proc)
    began = time.time()
    meter = CpuMeter(proc.pid)
    deadline = time.monotonic() + 300
    while sum(input_progress(port, prefix) for port in ports) < target:
        assert time.monotonic() < deadline, "the workers did not apply the fresh backlog"
        time.sleep(0.02)
    applied = time.time() - began
    # one reader of the group's commits, never joining it (made after the clock started,
    # so its set-up counts against neither group more than the other)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        while committed(reader, prefix) < target:
            assert time.monotonic() < deadline, "the workers did not commit the fresh backlog"
            time.sleep(0.05)
    finally:
        reader.close()
    rate = count / (time.time() - began)
    usage = meter.usage()
    freeze(proc)
    usage["applied_rate"] = count / applied
    return rate, usage


def settled_rounds(
    groups: dict[int, tuple[subprocess.Popen[bytes], list[int]]],
    bootstrap: str,
    prefix: str,
    done: int,
    backlog: Callable[[], list[dict[str, Any]]],
    rounds: int,
) -> list[dict[int, tuple[float, dict[str, float]]]]:
    """One process against two on the same fresh backlogs, in turn, with the groups
    settled (no rebalance in the measurement).

    Both groups (``processes -> (supervisor, web ports)``) are frozen (SIGSTOP) while a
    backlog is produced, so it is all in Kafka when one goes on; each then applies it
    alone while the other stays frozen, so neither takes CPU from the other. Which group
    goes first alternates between rounds, so a drift of the machine over the rounds
    (the broker warming up, a neighbour's load) does not favour one. The workers' session
    timeout (60 s here) outlasts the freezes, so no rebalance follows.
    """
    results = []
    for index in range(rounds):
        extra = backlog()
        produce_all(bootstrap, prefix, extra)
        done += len(extra)
        order = sorted(groups) if index % 2 == 0 else sorted(groups, reverse=True)
        result = {}
        for processes in order:
            proc, ports = groups[processes]
            group = f"{prefix}worker{processes}"
            result[processes] = catch_up(proc, ports, prefix, done, len(extra), group, bootstrap)
        results.append(result)
    return results


def describe_round(index: int, result: dict[int, tuple[float, dict[str, float]]]) -> str:
    """A round's figures, with the ratio the CPU left to two processes would allow at one
    process's CPU per event (a ratio above it means the two spent less per event)."""
    (one, u1), (two, u2) = result[1], result[2]
    # If two processes spent per event the CPU one process does, they could go at most
    # as much faster as the cores they could get (all but the broker's and this
    # benchmark's share during their phase) exceed the cores one process used.
    ceiling = (u2["cores"] - u2["broker"] - u2["bench"]) / max(u1["workers"], 1e-9)
    return (
        f"  round {index + 1}: one process {one:,.0f} events/s ({u1['workers']:.2f} cores, "
        f"{u1['workers'] / one * 1e6:.0f} us per event; broker {u1['broker']:.2f}), "
        f"two processes {two:,.0f} ({u2['workers']:.2f} cores, "
        f"{u2['workers'] / two * 1e6:.0f} us per event; broker {u2['broker']:.2f}, "
        f"machine {u2['busy']:.2f} of {u2['cores']:.0f} busy): ratio {two / one:.2f}; "
        f"at one process's CPU per event the cores left would allow {ceiling:.2f}; "
        f"to the last event applied (checkpoints left owing) "
        f"{u1['applied_rate']:,.0f} and {u2['applied_rate']:,.0f}, "
        f"ratio {u2['applied_rate'] / u1['applied_rate']:.2f}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(90)


def _percentiles(values: list[float]) -> list[float]:
    """The 99 percentile cut points of ``values`` (NaN with fewer than two)."""
    if len(values) < 2:
        return [float("nan")] * 99
    # "inclusive": within the samples (the default extrapolates past the largest when
    # there are few, as at 20 events/s: a p99 above the max was printed)
    return statistics.quantiles(values, n=100, method="inclusive")


def latency(
    bootstrap: str,
    prefix: str,
    rate: float,
    seconds: float,
    linger_ms: float = 5.0,
    seed: int = 99,
) -> dict[str, float]:
    """Steady traffic at ``rate``; every 8th event completes a probe contact's 4th pricing
    visit (15 x 4 = 60 >= mql 50): produce-to-consume time of that crossing, from just
    before the produce call (so a producer's linger counts). The background traffic's
    ``seed`` must differ between runs: a run with an earlier run's seed sends its event
    ids again, and the worker drops them as duplicates."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    produced: list[float] = []
    stop = threading.Event()
    leads = prefix + "leads.sales_ready"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{prefix}lat", "enable.auto.commit": False}
    )
    parts = []
    for p in range(6):
        _, high = consumer.get_watermark_offsets(TopicPartition(leads, p), timeout=10)
        parts.append(TopicPartition(leads, p, high))
    consumer.assign(parts)

    def consume() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.05)  # one at a time: consume(n) would wait to fill a batch
            if msg is not None:
                if msg.error():
                    continue
                got = time.time()
                doc = json.loads(msg.value())
                t0 = sent.get(doc["contact_id"])
                if t0 is not None and doc["threshold"] == "mql" and doc["direction"] == "up":
                    latencies.append(got - t0)
                    # the crossing's timestamp is when the worker produced it: the part
                    # of the latency up to the worker's produce call
                    produced.append(msg.timestamp()[1] / 1000 - t0)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    prod = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": linger_ms,
            "enable.idempotence": True,
        }
    )
    total = int(rate * seconds)
    # The load generator shares this 2-core machine with the broker and the worker (in a
    # deployment the trackers run elsewhere), so it does as little per event as it can:
    # events generated and serialised before the clock starts, each with a placeholder
    # for its occurred_at, which is stamped at send time from a per-second prefix.
    placeholder = "@@occurred_at@@"
    background = []
    for ev in Traffic(3000, seed=seed, start_us=None, rate=rate):
        ev["occurred_at"] = placeholder
        head, tail = json.dumps(ev).encode().split(placeholder.encode())
        key = (ev.get("contact_id") or ev["anonymous_id"]).encode()
        background.append((prefix + topic_for(ev["type"]), key, head, tail))
        if len(background) >= total // 2 + 1:
            break
    views = prefix + topic_for("page_view")
    second, stamp = -1, ""
    produce, poll = prod.produce, prod.poll
    began = time.monotonic()
    contact, done = "", 4
    for i in range(total):
        now = time.time()
        if int(now) != second:
            second = int(now)
            stamp = format_ts(second * US_PER_SECOND)[:-1]  # "...:ss" without the "Z"
        occurred = f"{stamp}.{int((now - second) * US_PER_SECOND):06d}Z"
        if i % 2 == 0:
            if done == 4:
                contact, done = f"probe-{uuid.uuid4().hex[:10]}", 0
            value = (
                f'{{"event_id": "{contact}-{done}", "type": "page_view", '
                f'"contact_id": "{contact}", "occurred_at": "{occurred}", '
                f'"properties": {{"url": "/pricing"}}}}'
            ).encode()
            done += 1
            if done == 4:
                sent[contact] = now
            produce(views, value, contact.encode())
        else:
            topic, key, head, tail = background[i // 2]
            produce(topic, head + occurred.encode() + tail, key)
        if i % 64 == 0:
            poll(0)
        # Paced against the schedule, sleeping only when a millisecond ahead of it: a
        # sleep per event caps a Python loop near 1,000 events/s.
        ahead = began + (i + 1) / rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
    sending = time.monotonic() - began
    prod.flush(30)
    time.sleep(3)
    try:
        with urllib.request.urlopen("http://127.0.0.1:6099/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(
                    (
                        "scorestream_event_delay_seconds_bucket",
                        "scorestream_checkpoint_blocking_seconds",
                        "scorestream_loop_lag_seconds",
                    )
                ):
                    print("   ", line)
    except OSError:
        pass
    stop.set()
    reader.join(5)
    consumer.close()
    q = _percentiles(latencies)
    qp = _percentiles(produced)
    return {
        "samples": len(latencies),
        "expected": len(sent),
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        # to the worker's produce call (the rest is the output's linger, the broker and
        # the reader's fetch)
        "p50_produced_ms": round(qp[49] * 1000, 1),
        "p99_produced_ms": round(qp[98] * 1000, 1),
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "achieved_rate": total / sending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument(
        "--rates",
        default="1000,1000,1000,5000",
        help="comma-separated steady rates (events/s) for the latency runs, one after another",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--linger",
        type=float,
        default=5.0,
        help="linger.ms of the latency phases' producer (5: librdkafka's default; the "
        "time it lingers counts in the latency)",
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SCORESTREAM_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--keep-log", metavar="FILE", help="copy the worker's log here")
    parser.add_argument(
        "--processes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run `scorestream worker --processes 2` on the same backlog",
    )
    parser.add_argument(
        "--steady-events",
        type=int,
        default=400_000,
        help="fresh backlog produced while the settled workers are frozen (steady rate)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="settled rounds, each a fresh backlog applied by one process and by two in "
        "turn (the first alternates)",
    )
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    settings = Settings(bootstrap=args.bootstrap, topic_prefix=prefix)
    apply(load_declarations(ROOT / "topics"), settings)
    now = int(time.time() * US_PER_SECOND)
    traffic = Traffic(5000, seed=3, start_us=now - args.events * 10_000, rate=100.0)
    events = []
    for ev in traffic:
        events.append(ev)
        if len(events) >= args.events:
            break
    produce_all(args.bootstrap, prefix, events)
    n = len(events)
    newest = [now]
    made = [0]

    def fresh(count: int) -> list[dict[str, Any]]:
        """``count`` events of the same people, newer than everything before and ending
        about now (10,000 a second of event time), as a backlog after an outage would.

        A seed of its own per backlog: with one seed for all, every backlog after the
        first carried the first one's event ids, which the workers dropped as duplicates
        (cheaply), so rounds after the first measured mostly dedupe (until 2026-11-27).
        """
        rate = 10_000.0
        span = int(count / rate * US_PER_SECOND)
        start = max(int(time.time() * US_PER_SECOND) - span, newest[0] + 1)
        made[0] += 1
        out = []
        for ev in Traffic(5000, seed=3 + made[0], start_us=start, rate=rate):
            out.append(ev)
            if len(out) >= count:
                break
        newest[0] = start + span
        return out

    print(f"{n} events of simulated traffic pre-loaded into {prefix}* (6 partitions each)")
    worker = pair = None
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            noop = run_faust("noop", args.bootstrap, prefix, n, tmp)
            table = run_faust("table", args.bootstrap, prefix, n, tmp)
            quix = run_quix(args.bootstrap, prefix, n, tmp)
            two = None
            if args.processes:
                two, pair = run_worker(args.bootstrap, prefix, n, tmp, 6097, processes=2)
                wait_settled([6097, 6098], prefix, n)
                freeze(pair)
            ours, worker = run_worker(args.bootstrap, prefix, n, tmp, 6099)
            wait_settled([6099], prefix, n)
            freeze(worker)
            groups = {1: (worker, [6099])}
            if pair is not None:
                groups[2] = (pair, [6097, 6098])
            rounds = settled_rounds(
                groups,
                args.bootstrap,
                prefix,
                n,
                lambda: fresh(args.steady_events),
                args.rounds,
            )
            thaw(worker)
            if pair is not None:
                thaw(pair)
                stop(pair)
                pair = None
            print(f"{'consumer':<52}{'events/s':>10}{'x no-op':>10}")
            rows = [
                ("Faust no-op agent", noop),
                ("Faust agent + RocksDB table write per event", table),
                ("quix-streams 3.28 app running the engine (peer)", quix),
                ("scorestream worker (B2B plan, checkpoints)", ours),
            ]
            for name, rate in rows:
                if rate is None:
                    print(f"{name:<52}{'skipped: no .venv-peer (make bench)':>20}")
                else:
                    print(f"{name:<52}{rate:>10,.0f}{rate / noop:>10.2f}")
            if two is not None:
                print(f"{'scorestream worker --processes 2':<52}{two:>10,.0f}{two / noop:>10.2f}")
                print(
                    f"two processes / one process from start (rebalance included): {two / ours:.2f}"
                )
            print(
                f"settled backlogs of {args.steady_events:,} events, the groups in turn "
                "(rate, worker cores and CPU per event, broker cores):"
            )
            for index, result in enumerate(rounds):
                if 2 in result:
                    print(describe_round(index, result))
                else:
                    rate, use = result[1]
                    print(
                        f"  round {index + 1}: one process {rate:,.0f} events/s "
                        f"({use['workers']:.2f} cores; broker {use['broker']:.2f})"
                    )
            if two is not None:
                ratios = sorted(r[2][0] / r[1][0] for r in rounds)
                print(
                    "two processes / one process, settled, to durable: "
                    + ", ".join(f"{x:.2f}" for x in ratios)
                    + f" (median {statistics.median(ratios):.2f})"
                )
                applied = sorted(r[2][1]["applied_rate"] / r[1][1]["applied_rate"] for r in rounds)
                print(
                    "  to the last event applied: "
                    + ", ".join(f"{x:.2f}" for x in applied)
                    + f" (median {statistics.median(applied):.2f})"
                )
            if quix is not None:
                print(f"scorestream worker / quix-streams peer: {ours / quix:.2f}")
            rates = [float(r) for r in args.rates.split(",") if r.strip()]
            for run, rate in enumerate(rates):
                lat = latency(args.bootstrap, prefix, rate, args.seconds, args.linger, 99 + run)
                print(
                    f"latency at {lat['achieved_rate']:,.0f} events/s for {args.seconds:.0f} s: "
                    f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                    f"max {lat['max_ms']:.1f} ms "
                    f"({lat['samples']} of {lat['expected']} crossings seen)"
                )
        finally:
            # Thawed first: a frozen worker would not act on the SIGTERM (a failure
            # during the rounds left both groups stopped, the pair for good).
            for proc in (pair, worker):
                if proc is not None:
                    thaw(proc)
                    stop(proc)
            if args.keep_log and (tmp / "worker.log").exists():
                Path(args.keep_log).write_bytes((tmp / "worker.log").read_bytes())
            delete_prefixed(settings)
            # quix-streams names its changelog topics changelog__<app id>--...
            delete_prefixed(replace(settings, topic_prefix=f"changelog__{prefix}"))


if __name__ == "__main__":
    main()
