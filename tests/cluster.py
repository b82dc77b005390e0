"""A fake Kafka for pipeline tests: topic-partition logs, and processors reading them.

Each :class:`Member` is a processor owning some partitions (one "worker"); it reads its
topic-partitions from the logs in chunks, in an order a seeded random generator picks,
as a consumer would, and its high-water marks are the logs' ends. What a processor
sends to a partition it does not own is appended to that partition's repartition log.
Outputs (crossings, DLQ) are collected per member.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scorestream.engine.scorer import Crossing, Engine
from scorestream.pipeline.processor import Processor, Settings
from scorestream.pipeline.routing import INPUT_TOPICS, REPARTITION, partition_for, topic_for
from scorestream.pipeline.store import MemoryStore

Log = list[bytes | None]


@dataclass
class Cluster:
    """The logs of every topic-partition."""

    partitions: int = 6
    logs: dict[tuple[str, int], Log] = field(default_factory=dict)
    #: the consumer group generation: a member that joins (or rejoins) starts a new one
    generation: int = 0

    def log(self, topic: str, partition: int) -> Log:
        return self.logs.setdefault((topic, partition), [])

    def publish(self, raws: Iterable[dict[str, Any]]) -> None:
        """Events keyed and partitioned as the contract says, in the given order."""
        for raw in raws:
            key = raw.get("contact_id") or raw["anonymous_id"]
            self.publish_raw(topic_for(raw["type"]), partition_for(key, self.partitions), raw)

    def publish_raw(self, topic: str, partition: int, value: dict[str, Any] | bytes | None) -> None:
        data = json.dumps(value).encode() if isinstance(value, dict) else value
        self.log(topic, partition).append(data)

    def highwater(self, topic: str, partition: int) -> int:
        return len(self.logs.get((topic, partition), ()))


class Outputs:
    """A member's emitter: crossings and DLQ kept, repartition records into the logs."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.crossings: list[Crossing] = []
        self.dlq_records: list[dict[str, Any]] = []

    def crossing(self, crossing: Crossing) -> None:
        self.crossings.append(crossing)

    def dlq(self, record: dict[str, Any]) -> None:
        self.dlq_records.append(record)

    def repartition(self, partition: int, key: str, value: bytes) -> None:
        self.cluster.publish_raw(REPARTITION, partition, value)


class Member:
    """One processor owning ``partitions``, reading from the cluster."""

    def __init__(
        self,
        cluster: Cluster,
        engine: Engine,
        partitions: Iterable[int],
        settings: Settings | None = None,
        committed: dict[int, dict[str, int]] | None = None,
        stores: dict[int, MemoryStore] | None = None,
    ) -> None:
        self.cluster = cluster
        self.out = Outputs(cluster)
        self.proc = Processor(
            engine,
            cluster.partitions,
            self.out,
            highwater=cluster.highwater,
            # Frontier markers as often as a worker's pump runs: a member's clock moves
            # 1 ms per step.
            settings=settings or Settings(front_interval=0.002),
        )
        cluster.generation += 1  # a member joins: every member's assignment is new
        self.proc.set_generation(cluster.generation)
        self.stores = stores if stores is not None else {}
        committed = committed or {}
        self.position: dict[tuple[str, int], int] = {}
        for p in sorted(partitions):
            store = self.stores.setdefault(p, MemoryStore())
            start = committed.get(p, {})
            self.proc.assign(p, store, start)
            for topic in (*INPUT_TOPICS, REPARTITION):
                self.position[(topic, p)] = start.get(topic, 0)
        self.now = 1000.0
        self.proc.joined(self.now)

    def pending(self) -> list[tuple[str, int]]:
        """Topic-partitions with records not read yet."""
        return [tp for tp, pos in self.position.items() if pos < self.cluster.highwater(*tp)]

    def _tick(self) -> list[tuple[str, int]]:
        """The clock moves 1 ms, a new generation reaches the processor: what is unread."""
        self.now += 0.001
        if self.proc.generation != self.cluster.generation:
            self.proc.set_generation(self.cluster.generation)
            self.proc.joined(self.now)  # as the worker does after each assignment
        return self.pending()

    def _read(self, topic: str, p: int, count: int, run: bool) -> None:
        """Receive up to ``count`` records of a topic-partition (applying what each
        releases if ``run``)."""
        log = self.cluster.logs[(topic, p)]
        for _ in range(count):
            offset = self.position[(topic, p)]
            if offset >= len(log):
                break
            self.proc.receive(topic, p, offset, log[offset], self.now)
            self.position[(topic, p)] = offset + 1
            if run:
                self.proc.run(self.now)

    def step(self, rng: random.Random, most: int = 20) -> bool:
        """Read a chunk of one topic-partition (or just look again); False when idle."""
        todo = self._tick()
        if not todo:
            self.proc.refresh(self.now)
            self.proc.run(self.now)
            return False
        topic, p = rng.choice(todo)
        self._read(topic, p, rng.randrange(1, most + 1), run=True)
        if rng.random() < 0.3:
            self.proc.refresh(self.now)
            self.proc.run(self.now)
        self.proc.send_fronts(self.now)
        return True

    def fetch(self, rng: random.Random, most: int = 50) -> bool:
        """Read a chunk of every topic-partition with records, in a random order, and
        apply what is released, as a consumer's batch would; False when idle."""
        todo = self._tick()
        rng.shuffle(todo)
        for topic, p in todo:
            self._read(topic, p, rng.randrange(1, most + 1), run=False)
        self.proc.refresh(self.now)
        self.proc.run(self.now)
        self.proc.send_fronts(self.now)
        return bool(todo)


def run_members(members: list[Member], rng: random.Random, rounds: int = 1_000_000) -> None:
    """Let the members read in a random interleaving until every log is consumed."""
    for member in members:
        member.proc.refresh(member.now)
    idle = 0
    for _ in range(rounds):
        member = rng.choice(members)
        busy = member.step(rng)
        idle = 0 if busy else idle + 1
        if idle > 20 * len(members) and not any(m.pending() for m in members):
            for m in members:
                m.proc.refresh(m.now)
                m.proc.run(m.now)
            if not any(m.pending() for m in members):
                return
    raise AssertionError("the members did not finish")
