"""Helpers for integration tests against the real broker: worker processes, topics, waits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from scorestream.engine.events import event_from_dict
from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Engine
from scorestream.engine.timeutil import format_ts
from scorestream.offline import OfflineRun, score_lines
from scorestream.pipeline.routing import INPUT_TOPICS, REPARTITION, partition_for, topic_for

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(command: str, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m scorestream COMMAND ARGS`` in a session of its own (so a signal reaches
    its children too), output appended to ``log_path``, environment ``os.environ + env``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "scorestream", command, *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )


def stop_process(proc: subprocess.Popen[bytes], wait: float) -> int | None:
    """SIGTERM to the process group; SIGKILL if it has not exited within ``wait`` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a process log (for assertion messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """One sample of a Prometheus text page, e.g. ``("x_total", 'reason="busy"')``."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class WorkerProc:
    """One ``scorestream worker`` subprocess."""

    name: str
    bootstrap: str
    prefix: str
    state_dir: Path
    rules: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    #: arguments after ``scorestream worker``
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.name}.log"

    def start(self) -> WorkerProc:
        env = {
            "SCORESTREAM_BOOTSTRAP": self.bootstrap,
            "SCORESTREAM_TOPIC_PREFIX": self.prefix,
            "SCORESTREAM_APP_ID": f"{self.prefix}app",
            "SCORESTREAM_STATE_DIR": str(self.state_dir),
            "SCORESTREAM_WEB_PORT": str(self.port),
            "SCORESTREAM_RULES": str(self.rules),
            "SCORESTREAM_CHECKPOINT_INTERVAL": "0.3",
            "SCORESTREAM_TICK_INTERVAL": "0.2",
            **self.extra_env,
        }
        self.proc = spawn("worker", env, self.log_path, *self.args)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, Any]:
        # A worker started with an API token is asked with it (its /status needs it).
        token = self.extra_env.get("SCORESTREAM_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url(path), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited: {self.tail()}")
            try:
                status, body = self.get("/healthz")
                if status == 200 and body.get("status") == "ready":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready in {timeout}s: {self.tail()}")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        if code != 200:
            return {"ready": False, "partitions": {}}
        result: dict[str, Any] = body
        return result

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 40)

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def producer(bootstrap: str) -> Producer:
    # Idempotent: a retried batch must not land after later ones (order is the point).
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 2,
            "enable.idempotence": True,
        }
    )


def produce(
    bootstrap: str, prefix: str, raws: Iterable[dict[str, Any]], topic: str | None = None
) -> int:
    """Produce events keyed by contact (or anonymous) id to their topics; return the count."""
    p = producer(bootstrap)
    n = 0
    for raw in raws:
        key = (raw.get("contact_id") or raw.get("anonymous_id") or "").encode()
        p.produce(prefix + (topic or topic_for(raw["type"])), json.dumps(raw).encode(), key)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return n


def consumed_topics(prefix: str) -> list[str]:
    return [prefix + t for t in (*INPUT_TOPICS, REPARTITION)]


def high_watermarks(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False})
    try:
        out = {}
        for t in topics:
            for p in range(PARTITIONS):
                _, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
                out[(t, p)] = high
        return out
    finally:
        c.close()


def processed(workers: list[WorkerProc]) -> dict[tuple[str, int], int]:
    """Next offset to process per (topic, partition), over every running worker."""
    out: dict[tuple[str, int], int] = {}
    for w in workers:
        if w.proc is None or w.proc.poll() is not None:
            continue
        for p, info in w.status().get("partitions", {}).items():
            for topic, offset in info["applied"].items():
                out[(topic, int(p))] = max(out.get((topic, int(p)), 0), offset)
    return out


def wait_processed(
    bootstrap: str, prefix: str, workers: list[WorkerProc], timeout: float = 120.0
) -> None:
    """Wait until the workers have processed everything in the consumed topics (stable twice)."""
    topics = consumed_topics(prefix)
    deadline = time.monotonic() + timeout
    stable = 0
    while time.monotonic() < deadline:
        highs = high_watermarks(bootstrap, topics)
        done = processed(workers)
        if all(done.get(tp, 0) >= high for tp, high in highs.items()):
            stable += 1
            if stable >= 2:
                return
        else:
            stable = 0
        time.sleep(0.15)
    missing = {
        f"{t}/{p}": (processed(workers).get((t, p), 0), h)
        for (t, p), h in high_watermarks(bootstrap, topics).items()
        if processed(workers).get((t, p), 0) < h
    }
    raise AssertionError(
        f"not processed in {timeout}s: {missing}\n" + "\n".join(w.tail() for w in workers)
    )


def read_topic(
    bootstrap: str, topic: str, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes | None, int, int]]:
    """Every message of a topic: (key, value, partition, offset)."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {}
        assign = []
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        out: list[tuple[bytes | None, bytes | None, int, int]] = []
        if not assign:
            return out
        c.assign(assign)
        deadline = time.monotonic() + timeout
        remaining = dict(ends)
        while remaining and time.monotonic() < deadline:
            for msg in c.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                out.append((msg.key(), msg.value(), msg.partition(), msg.offset()))
                if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                    remaining.pop(msg.partition(), None)
        return out
    finally:
        c.close()


def crossings_by_id(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """Crossings read from the leads topic, de-duplicated by crossing_id (copies must agree)."""
    out: dict[str, dict[str, Any]] = {}
    for _, value, _, _ in read_topic(bootstrap, topic):
        assert value is not None
        doc = json.loads(value)
        seen = out.setdefault(doc["crossing_id"], doc)
        assert seen == doc, f"two different crossings with id {doc['crossing_id']}: {seen} / {doc}"
    return out


def heartbeat_keys(partitions: int = PARTITIONS) -> list[str]:
    """One key per partition, so that a heartbeat event moves every partition's clock."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < partitions:
        key = f"heartbeat-{i}"
        keys.setdefault(partition_for(key, partitions), key)
        i += 1
    return [keys[p] for p in range(partitions)]


def heartbeats(at_us: int, tag: str = "end") -> list[dict[str, Any]]:
    """Events (no rule scores them) that carry event time ``at_us`` into every partition."""
    return [
        {
            "event_id": f"hb-{tag}-{key}",
            "type": "heartbeat",
            "contact_id": key,
            "occurred_at": format_ts(at_us),
        }
        for key in heartbeat_keys()
    ]


def offline(rules_path: Path, raws: list[dict[str, Any]], at: int) -> OfflineRun:
    lines = (json.dumps(r).encode() for r in raws)
    return score_lines(Engine(load_rules(rules_path)), iter(lines), at)


def persons(raws: list[dict[str, Any]]) -> dict[str, str]:
    """Union of ids linked by identify: every id to a representative."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for raw in raws:
        ids = [raw[k] for k in ("contact_id", "anonymous_id") if raw.get(k)]
        for i in ids:
            find(i)
        if len(ids) == 2:
            parent[find(ids[0])] = find(ids[1])
    return {k: find(k) for k in parent}


def rounds(raws: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split a stream into rounds in which every person appears at most once.

    Produced round by round, waiting for each to be processed, every person's events are
    processed in stream order even though they travel on different topics.
    """
    who = persons(raws)
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    in_round: set[str] = set()
    for raw in raws:
        person = who[raw.get("contact_id") or raw["anonymous_id"]]
        if person in in_round:
            out.append(current)
            current, in_round = [], set()
        current.append(raw)
        in_round.add(person)
    if current:
        out.append(current)
    return out


def check_valid(raws: list[dict[str, Any]]) -> None:
    for raw in raws:
        event_from_dict(raw)
