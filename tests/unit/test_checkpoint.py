"""The exactly-once core without Kafka: a crash at every step of a checkpoint.

A fake Kafka keeps durable logs (input topics, changelog, leads, DLQ) and committed
offsets; what the producer queued but did not flush when the "process" dies is lost,
except a prefix per topic-partition (an idempotent producer delivers in order). A
checkpoint's wait for a producer barrier delivers only what was queued before the
barrier, and records go on being applied while a checkpoint runs, as in the worker.
The local store survives the crash, as a disk would. After the crash a new processor
recovers each partition from its store and the changelog, reads the inputs again from
the committed offsets and finishes. Its states and the crossings in the leads log must
equal those of a run that never crashed.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from scorestream.engine.rules import load_rules
from scorestream.engine.scorer import Crossing, Engine
from scorestream.pipeline import checkpoint as checkpoint_mod
from scorestream.pipeline.checkpoint import (
    ChangelogRecord,
    Checkpointer,
    CheckpointError,
    recover,
    recovery_start,
)
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.routing import INPUT_TOPICS, partition_for, topic_for
from scorestream.pipeline.store import MemoryStore
from traffic import journeys

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "tests" / "plans" / "parity.yaml")
N = 6
CHANGELOG = "changelog"
SCORES = "scores"
LEADS = "leads"


class Crash(BaseException):
    """The process died (a BaseException: nothing in the pipeline may catch it)."""


class FakeKafka:
    def __init__(self, inputs: dict[tuple[str, int], list[bytes]]) -> None:
        self.logs: dict[tuple[str, int], list[tuple[bytes | None, bytes, int]]] = {}
        self.inputs = inputs
        self.committed: dict[int, dict[str, int]] = {}
        self.generation = 1

    def log(self, topic: str, partition: int) -> list[tuple[bytes | None, bytes, int]]:
        return self.logs.setdefault((topic, partition), [])


class FakeClient:
    """Producer (and the processor's emitter) and committer of one process's life."""

    def __init__(self, kafka: FakeKafka, crash_at: int | None, rng: random.Random) -> None:
        self.kafka = kafka
        self.crash_at = crash_at
        self.rng = rng
        self.steps = 0
        self.queued: list[tuple[str, int, bytes | None, bytes]] = []
        self.delivered = 0  # records queued before this many are in Kafka
        self.dead = False

    def step(self) -> None:
        if self.dead:
            # Whatever else was about to run (another task in the same turn of the event
            # loop) dies with the process.
            raise Crash("already dead")
        self.steps += 1
        if self.crash_at is not None and self.steps == self.crash_at:
            self.die()
            raise Crash(f"died at step {self.steps}")

    def die(self) -> None:
        """Of what was queued, a prefix per topic-partition reached Kafka."""
        by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        for topic, p, key, value in self.queued:
            by_tp.setdefault((topic, p), []).append((key, value))
        for (topic, p), records in by_tp.items():
            for key, value in records[: self.rng.randrange(len(records) + 1)]:
                self.kafka.log(topic, p).append((key, value, self.kafka.generation))
        self.queued.clear()
        self.dead = True

    # -- emitter

    def crossing(self, crossing: Crossing) -> None:
        self.step()
        self.queued.append(
            (LEADS, 0, crossing.crossing_id.encode(), json.dumps(crossing.to_dict()).encode())
        )

    def dlq(self, record: dict[str, Any]) -> None:
        self.queued.append(("dlq", 0, None, json.dumps(record).encode()))

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        raise AssertionError("one process owns every partition here")

    # -- producer

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.step()
        self.queued.append((topic, max(partition, 0), key, value))

    def barrier(self) -> int:
        return self.delivered + len(self.queued)

    def settled(self, token: int) -> bool:
        return token <= self.delivered

    async def settle(self, token: int) -> None:
        """Deliver what was queued before ``token``; later records stay at risk."""
        self.step()
        count = max(0, token - self.delivered)
        for topic, p, key, value in self.queued[:count]:
            self.kafka.log(topic, p).append((key, value, self.kafka.generation))
        del self.queued[:count]
        self.delivered += count

    async def flush(self) -> None:
        await self.settle(self.barrier())

    def changelog_end(self, partition: int) -> int:
        return len(self.kafka.log(CHANGELOG, partition))

    # -- committer

    async def commit(self, offsets: Mapping[int, Mapping[str, int]]) -> bool:
        self.step()
        for p, per in offsets.items():
            self.kafka.committed[p] = dict(per)
        return True

    def generation(self) -> int:
        return self.kafka.generation


class Disk:
    """The local stores' bytes, surviving a crash."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}

    def store(self, p: int) -> MemoryStore:
        store = MemoryStore()
        store._data = self.data.setdefault(p, {})  # the same bytes as before the crash
        return store


class Life:
    """One run of the process: recover, read from the committed offsets, checkpoint."""

    def __init__(self, kafka: FakeKafka, disk: Disk, crash_at: int | None, seed: int) -> None:
        self.kafka = kafka
        self.client = FakeClient(kafka, crash_at, random.Random(seed))
        self.between = random.Random(seed * 7919)  # records applied between checkpoint steps
        self.proc = Processor(Engine(RULES), N, self.client, highwater=self.highwater)
        for p in range(N):
            store = disk.store(p)
            changelog = kafka.log(CHANGELOG, p)
            start = recovery_start(store)
            records = (
                ChangelogRecord(off, key or b"", value, gen)
                for off, (key, value, gen) in enumerate(changelog)
                if off >= start
            )
            recover(store, records, len(changelog))
            self.proc.assign(p, store, kafka.committed.get(p, {}))
        self.positions = {
            (t, p): self.kafka.committed.get(p, {}).get(t, 0)
            for t in INPUT_TOPICS
            for p in range(N)
        }
        self.checkpointer = Checkpointer(
            self.proc, self.client, self.client, CHANGELOG, SCORES, clock=lambda: 0.0, chunk=7
        )

    def highwater(self, topic: str, partition: int) -> int:
        return len(self.kafka.inputs.get((topic, partition), ()))

    def load(self) -> None:
        """Read every input log from the committed offsets (it is all in Kafka: a backlog)."""
        for (topic, p), log in self.kafka.inputs.items():
            for offset in range(self.positions[(topic, p)], len(log)):
                self.proc.receive(topic, p, offset, log[offset], 0.0)
        self.proc.refresh(0.0)

    def work(self, most: int = 0) -> None:
        """Apply ``most`` records (all if 0): checkpoints then come at any point, also
        while in-memory hand-overs wait."""
        self.proc.run(0.0, limit=most)

    def checkpoint(self) -> None:
        """A checkpoint, with records applied whenever it waits (the worker's event loop)."""

        async def run() -> None:
            task = asyncio.ensure_future(self.checkpointer.run())
            while not task.done():
                self.proc.run(0.0, limit=self.between.randrange(1, 8))
                await asyncio.sleep(0)
            task.result()

        asyncio.run(run())


def inputs(seed: int) -> dict[tuple[str, int], list[bytes]]:
    logs: dict[tuple[str, int], list[bytes]] = {(t, p): [] for t in INPUT_TOPICS for p in range(N)}
    for raw in journeys(40, seed=seed):
        key = raw.get("contact_id") or raw["anonymous_id"]
        logs[(topic_for(raw["type"]), partition_for(key, N))].append(json.dumps(raw).encode())
    return logs


def outcome(kafka: FakeKafka, life: Life) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Final states (bytes) and the crossings in the leads log (one content per id)."""
    states = {s.key: s.to_bytes() for s in life.proc.states()}
    crossings: dict[str, bytes] = {}
    for key, value, _ in kafka.log(LEADS, 0):
        assert key is not None
        assert crossings.setdefault(key.decode(), value) == value, "two contents for one id"
    return states, crossings


def scenario(seed: int, crash_at: int | None) -> tuple[dict[str, bytes], dict[str, bytes], int]:
    """Apply some, checkpoint, apply more, checkpoint (crashing at ``crash_at``), apply
    more, die; recover and finish. Return states, crossings and the steps of the crashing
    part of the first life."""
    kafka = FakeKafka(inputs(seed))
    disk = Disk()
    rng = random.Random(seed)
    first = Life(kafka, disk, None, seed)
    first.load()
    first.work(rng.randrange(100, 300))
    first.checkpoint()
    first.client.steps = 0
    first.client.crash_at = crash_at
    steps = 0
    try:
        first.work(rng.randrange(100, 300))
        first.checkpoint()
        first.work(rng.randrange(100, 300))
        steps = first.client.steps
        first.client.die()  # kill -9 after the checkpoint: anything queued is at risk
    except Crash:
        pass
    kafka.generation += 1
    second = Life(kafka, disk, None, seed + 1)
    second.load()
    second.work()
    second.checkpoint()
    states, crossings = outcome(kafka, second)
    return states, crossings, steps


@pytest.mark.parametrize("seed", [1, 2])
def test_a_crash_at_any_step_changes_nothing(seed: int) -> None:
    reference_states, reference_crossings, steps = scenario(seed, None)
    assert steps > 20 and reference_crossings
    for crash_at in range(1, steps + 1):
        states, crossings, _ = scenario(seed, crash_at)
        assert states == reference_states, f"states differ after a crash at step {crash_at}"
        assert crossings == reference_crossings, f"crossings differ, crash at step {crash_at}"


def test_a_failed_flush_keeps_the_states_dirty_and_commits_nothing() -> None:
    kafka = FakeKafka(inputs(3))
    life = Life(kafka, Disk(), None, 3)
    life.load()
    life.work(200)

    async def refuse() -> None:
        raise CheckpointError("Kafka did not acknowledge 3 records")

    life.client.flush = refuse  # type: ignore[method-assign]
    with pytest.raises(CheckpointError):
        life.checkpoint()
    assert kafka.committed == {}
    assert any(life.proc.parts[p].store.dirty for p in range(N))  # type: ignore[attr-defined]


def test_recovery_skips_a_zombie_writer() -> None:
    store = MemoryStore()
    records = [
        ChangelogRecord(0, b"c-1", b"new-owner-1", 5),
        ChangelogRecord(1, b"c-1", b"old-owner", 4),  # written after it lost the partition
        ChangelogRecord(2, b"c-2", b"new-owner-2", 5),
    ]
    assert recover(store, iter(records), 3) == 2
    assert store.get_raw(b"c-1") == b"new-owner-1"
    assert recovery_start(store) == 3
    # The next recovery starts after what was read, and remembers the generation.
    assert recover(store, iter([ChangelogRecord(3, b"c-1", b"zombie", 4)]), 4) == 0
    assert store.get_raw(b"c-1") == b"new-owner-1"


@pytest.mark.parametrize(
    ("backlog", "flowing", "paced"),
    [
        (False, None, True),
        (True, None, False),
        (False, True, True),
        # nothing comes in (a backlog just applied): nothing to make room for
        (False, False, False),
        (True, True, False),
    ],
)
def test_chunks_are_paced_only_while_messages_flow_without_a_backlog(
    backlog: bool, flowing: bool | None, paced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = FakeKafka(inputs(4))
    life = Life(kafka, Disk(), None, 4)
    life.load()
    life.work(300)
    ticks = iter(range(1_000_000))
    life.checkpointer.clock = lambda: next(ticks) * 0.001  # 1 ms per reading
    if flowing is not None:
        life.checkpointer.flowing = lambda: flowing
    if backlog:
        life.proc.merger.buffered = checkpoint_mod.PACE_BELOW
    else:
        assert life.proc.merger.buffered < checkpoint_mod.PACE_BELOW
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(checkpoint_mod.asyncio, "sleep", sleep)
    asyncio.run(life.checkpointer.run())
    chunks = [s for s in slept if s > 0]
    if not paced:
        assert not chunks  # every chunk goes on at once
    else:
        # each chunk took one reading of the clock (1 ms): the loop gets as long again
        assert len(chunks) >= 5 and all(s == pytest.approx(0.001) for s in chunks)
