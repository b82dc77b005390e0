"""Checkpoints and changelog recovery, with the Kafka clients passed in.

A checkpoint makes what the processor did durable, in an order that survives a crash
between any two steps (``kill -9`` included):

1. **snapshot**: the offsets every owned partition's states include
   (:meth:`Processor.commit_offsets`) and the keys of the states changed since the last
   checkpoint;
2. per chunk of those states: encode them as they are now and take a **barrier** of the
   producer; once every record produced before that barrier (each crossing, DLQ and
   repartition record) is acknowledged — so a state never claims an event whose outputs
   could still be lost — produce the chunk's changelog records (headers: the consumer
   generation) and ``contacts.scores`` records. Chunks are encoded while the earlier
   barriers settle, and events go on being applied between chunks;
3. flush: the changelog has every state;
4. **commit** the snapshot's offsets;
5. write the states to the local store with the changelog position they correspond to.

A crash before 4 replays from the previous commit: states already in the changelog
skip what they include (their marks), the rest is applied again, in the same order, with
the same outputs. Between 4 and 5 the local store is behind the changelog, which
recovery reads.

Recovery (:func:`recover`) is a function from changelog records to a store: it applies
them from the store's last position, skipping records of a worker that had already lost
the partition (an older consumer generation after a newer one).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from scorestream.engine.errors import ScorestreamError
from scorestream.pipeline.processor import Processor
from scorestream.pipeline.store import StateStore

#: contacts encoded between two yields to the event loop (about 1-2 ms of encoding: the
#: loop's longest pause during a checkpoint, which is what messages wait behind)
CHUNK = 100
#: after each chunk, the event loop's time before the next, as a multiple of the chunk's
PACE = 1.0
#: records buffered in the merge from which a checkpoint is not paced (a backlog; live
#: traffic at 5,000 events/s kept at most 800 there)
PACE_BELOW = 2000
#: states written to the local store per batch at the end of a checkpoint
LOCAL_WRITE_CHUNK = 250
GENERATION_HEADER = "g"


class CheckpointError(ScorestreamError):
    """Kafka did not acknowledge a checkpoint's records: nothing was committed."""


class Producer(Protocol):
    """The checkpoint's view of the producer (the worker's outputs share it)."""

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue a record (never blocks for long)."""

    def barrier(self) -> int:
        """A token for every record produced so far (and none produced later)."""

    def settled(self, token: int) -> bool:
        """Whether every record before ``token`` is acknowledged (never waits)."""

    async def settle(self, token: int) -> None:
        """Wait until every record before ``token`` is acknowledged; raise
        CheckpointError if one failed or they take too long."""

    async def flush(self) -> None:
        """Wait until every record produced so far is acknowledged (a :meth:`settle` of
        a :meth:`barrier` taken now); raise CheckpointError if not."""

    def changelog_end(self, partition: int) -> int:
        """Next changelog offset after the records of ours acknowledged so far."""


class Committer(Protocol):
    """Commits consumer offsets (the consumer group's, with its generation)."""

    async def commit(self, offsets: Mapping[int, Mapping[str, int]]) -> bool:
        """Commit per partition the offsets of unprefixed topics; False if it lost them."""

    def generation(self) -> int:
        """The consumer group generation this worker's assignment belongs to."""


@dataclass(slots=True)
class CheckpointStats:
    """What one checkpoint did."""

    records: int = 0
    committed: bool = True
    #: seconds the event loop was held (snapshot, encoding, local writes)
    blocking: float = 0.0


class Checkpointer:
    """Runs the checkpoint steps for a processor over its stores."""

    def __init__(
        self,
        processor: Processor,
        producer: Producer,
        committer: Committer,
        changelog_topic: str,
        scores_topic: str,
        clock: Callable[[], float],
        chunk: int = CHUNK,
        flowing: Callable[[], bool] | None = None,
    ) -> None:
        self.processor = processor
        self.producer = producer
        self.committer = committer
        self.changelog_topic = changelog_topic
        self.scores_topic = scores_topic
        self.clock = clock
        self.chunk = chunk
        #: whether messages are coming in now (the worker: a batch came moments ago);
        #: None: always taken as flowing
        self.flowing = flowing

    async def run(self) -> CheckpointStats:
        """One checkpoint of every owned partition (see the module docstring)."""
        proc = self.processor
        clock = self.clock
        stats = CheckpointStats()
        began = clock()
        parts = sorted(proc.parts)
        offsets = proc.commit_offsets()
        keys = {p: proc.take_dirty(p) for p in parts}
        marks = {p: self.producer.changelog_end(p) for p in parts}
        stores: dict[int, StateStore] = {p: proc.parts[p].store for p in parts}
        header = [(GENERATION_HEADER, str(self.committer.generation()).encode())]
        encoded: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in parts}
        stats.blocking += clock() - began
        # Chunks encoded, each with the barrier taken right after it: its records may go
        # once everything produced before the barrier is acknowledged.
        waiting: deque[tuple[int, int, list[tuple[bytes, bytes, bytes | None]]]] = deque()
        producer = self.producer

        def send_settled() -> None:
            while waiting and producer.settled(waiting[0][0]):
                _, p, chunk = waiting.popleft()
                for raw_key, value, score in chunk:
                    producer.produce(self.changelog_topic, raw_key, value, p, header)
                    if score is not None:
                        producer.produce(self.scores_topic, raw_key, score)
                    encoded[p].append((raw_key, value))

        try:
            for p in parts:
                todo = keys[p]
                for i in range(0, len(todo), self.chunk):
                    began = clock()
                    chunk = []
                    for key in todo[i : i + self.chunk]:
                        value, score = proc.encode(p, key)
                        chunk.append((key.encode(), value, score))
                    # Outputs first: these states may claim events whose crossings were
                    # produced a moment ago. Only those need acknowledging, not what is
                    # produced later (under load, waiting for an empty queue took
                    # seconds per checkpoint).
                    waiting.append((producer.barrier(), p, chunk))
                    send_settled()
                    spent = clock() - began
                    stats.blocking += spent
                    # Paced while messages flow and the merge holds no backlog: the event
                    # loop gets at least as long as the chunk took before the next one.
                    # Encoded back to back, a checkpoint's chunks held the batches that
                    # arrived meanwhile behind all of them (p99 at 5,000 events/s 300
                    # against 255 ms in nine alternating pairs). Not under a backlog:
                    # every turn of the loop is then a full batch, and a paced checkpoint
                    # committed nothing until the backlog was applied. Nor when nothing
                    # comes in (a backlog just applied): pacing then only delays the
                    # commit (the checkpoint after a 100,000-event backlog took 0.67 s
                    # for 5,800 states, each chunk followed by such a pause).
                    live = proc.merger.buffered < PACE_BELOW and (
                        self.flowing is None or self.flowing()
                    )
                    await asyncio.sleep(spent * PACE if live else 0)
            while waiting:
                await producer.settle(waiting[0][0])
                send_settled()
            await producer.flush()
        except BaseException:
            for p in parts:
                stores[p].settle(keys[p], written=False)
            raise
        stats.records = sum(len(v) for v in encoded.values())
        committed = await self.committer.commit({p: offsets[p] for p in parts})
        if not committed:
            # A rebalance took the partitions: the changelog is ahead of the committed
            # offsets (the marks handle that); the states stay dirty for the local write.
            for p in parts:
                stores[p].settle(keys[p], written=False)
            stats.committed = False
            return stats
        for p in parts:
            items = encoded[p]
            meta = {
                "changelog_offset": marks[p],
                "offsets": offsets[p],
                "generation": self.committer.generation(),
            }
            for i in range(0, max(len(items), 1), LOCAL_WRITE_CHUNK):
                began = clock()
                stores[p].write(items[i : i + LOCAL_WRITE_CHUNK], meta)
                stats.blocking += clock() - began
                await asyncio.sleep(0)
            stores[p].settle(keys[p], written=True)
        return stats


#: (offset, key, value or None for a tombstone, generation): what recovery reads
RawRecord = tuple[int, bytes, bytes | None, int]


class ChangelogRecord(NamedTuple):
    """One record of the state changelog topic (the named form of a :data:`RawRecord`)."""

    offset: int
    key: bytes
    value: bytes | None
    generation: int


def recover(
    store: StateStore,
    records: Iterable[RawRecord],
    end: int,
    batch: int = 5000,
) -> int:
    """Apply changelog records (those at or after the store's position) up to ``end``.

    ``records`` must start at or before :func:`recovery_start` and come in offset order.
    Records written by a worker that had already lost the partition (a generation older
    than one seen before) are skipped. Returns how many records were applied.
    """
    start = recovery_start(store)
    applied = 0
    newest_generation = int(store.meta().get("generation", -1))
    pending: list[tuple[bytes, bytes | None]] = []
    position = start
    for offset, key, value, generation in records:
        if offset < start:
            continue
        position = offset + 1
        if generation < newest_generation:
            continue  # a zombie's write: the partition had already moved on
        newest_generation = generation
        pending.append((key, value))
        if len(pending) >= batch:
            meta = {"changelog_offset": position, "generation": newest_generation}
            store.apply_changelog(pending, meta)
            applied += len(pending)
            pending = []
        if position >= end:
            break
    if pending or position > start:
        meta = {"changelog_offset": max(position, start), "generation": newest_generation}
        store.apply_changelog(pending, meta)
        applied += len(pending)
        # Before anything else is written: recovery's writes may have skipped the log.
        # (Only when it wrote: an up-to-date store at assignment needs no flush.)
        store.sync()
    if applied:
        store.drop_cache()
    return applied


def recovery_start(store: StateStore) -> int:
    """The changelog offset a store's recovery reads from."""
    return int(store.meta().get("changelog_offset", 0))
