"""Event-time merge of a worker's inputs: which record to apply next, and when to wait.

Kafka Streams keeps, per task, a queue per input partition and always processes the
record with the smallest timestamp among the queue heads (``PartitionGroup``); when a
queue is empty it waits only while the partition may still hold data (KIP-353, KIP-695).
This is the same idea, over every partition a worker owns at once:

* one FIFO **queue** per consumed input topic-partition, and per partition one queue per
  *sender* partition for records that come from other partitions (identity hand-overs,
  forwarded events) — delivered in memory when the sender is local, through the
  repartition topic when it is not;
* the queue heads sit in one heap ordered by merge key
  (:mod:`scorestream.pipeline.records`); :meth:`Merger.pop` releases the smallest head;
* nothing is released while a **source** (a consumed topic-partition) is blocking: an
  input queue that is empty while Kafka still holds unread records for it (its
  high-water mark is beyond what was received), a repartition partition with unread
  records, or, with ``idle`` > 0, an input that emptied less than ``idle`` seconds ago;
* a caught-up input is only as current as the consumer's last look at it: a record is
  released past an empty, caught-up input only once that input was polled (its
  high-water mark fetched) no earlier than the record was handed to the merge. Otherwise
  a record of another input that reached Kafka while this one waited in the consumer's
  buffers (a worker lagging live producers) could be overtaken. An input not polled for
  ``poll_stale`` seconds while the consumer polled others (it does not fetch that one)
  is not waited for, nor one not polled for ``POLL_STUCK_SECONDS`` (the consumer is
  stuck); a consumer that polled nothing for less than that is only short of CPU;
* records awaited from a partition on another worker (identity hand-overs) are
  **expected**: the processor holds back only the identified contact's later records
  until the answer comes (or ``expect_wait`` passes); the release as a whole waits for
  them only at a **barrier** (a plan switch: no record at or past it is released while a
  hand-over before it is still on its way).

Records with the smallest key are released first across all partitions; a record that
arrives after larger keys were released (it was not in Kafka yet) is applied when it
arrives and counted as late by the processor.

Pure: the caller passes the clock (``now``, seconds), a function giving a
topic-partition's high-water mark as the consumer last saw it and, live, one giving
when it last saw it (:attr:`Merger.polled`; offline nothing is polled: every input is
read to its end).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from scorestream.pipeline.records import Key, Record, stream_id

#: (topic, partition) -> high-water mark (next offset to be written), None if unknown
HighWater = Callable[[str, int], int | None]

#: Seconds a source may stay behind its high-water mark with nothing arriving before the
#: merge asks for it to be read again from the offset it expects (the consumer lost a
#: message: seen with Faust around rebalances); if a second wait brings nothing either,
#: the remaining offsets hold no records (transaction markers) and it stops blocking.
STALL_SECONDS = 2.0
#: ... unless the consumer's own position (the next offset it will hand over) is still
#: at the offset the merge expects: then it has lost nothing and is only slow, and the
#: re-read waits this many times as long.
SLOW_FETCH_FACTOR = 5
#: A consumer past the offset expected has handed the records over: they may still be
#: on their way to the merge (returned by aiokafka, the drain not yet resumed: seen on a
#: busy worker, right after a source was starved for the stall time), or lost. Lost
#: only once it has stayed past it this long.
AHEAD_SECONDS = 1.0
#: How much older than a record's arrival in the merge the last poll of an empty input
#: may be (ms) for the record to pass it. 0: the record waits for the next poll, one
#: fetch round trip while records flow, up to the fetch wait on a quiet stream. With 10
#: (the record passes a poll made just before, as for a worker that keeps up) the soak
#: with two workers differed from ``score`` in 0, 619 and 118 crossings of about 4,200,
#: against 8, 8 and 3 with 0: records reach Kafka across partitions a few ms out of the
#: producer's order, and the extra poll catches them.
FRESH_SLACK_MS = 0
#: Why the release waited (``Merger.waits``): records in Kafka not read yet from an input
#: topic; from the repartition topic (another worker's hand-overs, forwards, frontier
#: markers); a poll of an empty input made after the head was fetched (see
#: ``FRESH_SLACK_MS``); a hand-over before a plan switch (the barrier).
WAIT_INPUT = "input"
WAIT_PEER = "peer"
WAIT_POLL = "poll"
WAIT_HANDOVER = "handover"
WAIT_REASONS = (WAIT_INPUT, WAIT_PEER, WAIT_POLL, WAIT_HANDOVER)
#: Default of ``Merger.poll_stale``: well above a fetch's wait at the broker
POLL_STALE_SECONDS = 1.0
#: A consumer that has polled no input for this long (s) is taken as stuck rather than
#: short of CPU: the inputs it has not polled since are not waited for (soaks on a busy
#: 2-core machine logged checkpoints of up to 2.3 s and event-loop stalls of 0.4 s).
POLL_STUCK_SECONDS = 10.0
#: ``Merger.polled`` of a source nobody polls: never stale
_NEVER = 1 << 62


def _unknown_position(topic: str, partition: int) -> int | None:
    return None


class Queue:
    """One merge input: records in arrival (= Kafka, or sender release) order."""

    __slots__ = ("items", "label", "partition", "source", "top")

    def __init__(self, partition: int, label: str, source: Source | None) -> None:
        self.items: deque[Record] = deque()
        self.partition = partition
        self.label = label
        #: the largest key released from this queue so far
        self.top: Key = _CLOSED
        #: the consumed topic-partition feeding this queue alone (None: peer queue)
        self.source = source

    def __repr__(self) -> str:
        return f"Queue({self.partition}, {self.label!r}, {len(self.items)})"


class Source:
    """A consumed topic-partition: how far it was received, and whether it may block."""

    __slots__ = (
        "ahead_since",
        "arrivals",
        "blocking",
        "bound",
        "fetched_at",
        "fronts",
        "gap_at",
        "idle_until",
        "lag_since",
        "last_arrival",
        "name",
        "partition",
        "queue",
        "rank",
        "received",
        "reread_at",
        "skipped_at",
        "stream",
        "topic",
        "unmarked",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        received: int,
        queue: Queue | None,
        name: str = "",
        rank: int = 0,
    ) -> None:
        self.topic = topic
        #: the topic's declared name (without prefix) and tie rank
        self.name = name or topic
        self.rank = rank
        self.partition = partition
        #: the stream of every event read from here (see scorestream.pipeline.records):
        #: made once, not per record. Input topics only: records read from the
        #: repartition topic carry their own, and rank 0 would name the profile topic's.
        self.stream = stream_id(partition, partition, rank) if queue is not None else ""
        #: next offset expected from Kafka
        self.received = received
        #: the queue this source alone feeds (input topics); None for the repartition topic
        self.queue = queue
        self.blocking = False
        #: with an idle wait: when an emptied, caught-up input stops blocking
        self.idle_until = 0.0
        #: when the source last started to block for unread records (stall detection)
        self.lag_since = 0.0
        self.last_arrival = 0.0
        #: the high-water mark at which a re-read was asked for / offsets were given up
        self.reread_at = -1
        self.skipped_at = -1
        #: an offset that came when an earlier one was expected (accepted if it comes again)
        self.gap_at = -1
        #: since when the consumer's position has been past ``received`` (0: it is not)
        self.ahead_since = 0.0
        #: when the records queued last reached the merge (ms, on the clock of
        #: Merger.polled; 0: not tracked)
        self.fetched_at = 0
        #: when the queued records reached the merge, oldest first: [ms, how many of
        #: them] per batch (see Merger.fetched): an empty input must have been polled
        #: since the head's batch came for the head to pass it
        self.arrivals: deque[list[int]] = deque()
        #: records queued since the last batch was marked in ``arrivals``
        self.unmarked = 0
        #: repartition topic: per sending partition on another worker, the frontier
        #: of the newest marker it sent here in this generation, and the smallest of
        #: them once every such partition has sent one (see Merger.front)
        self.fronts: dict[int, Key] = {}
        self.bound: Key | None = None

    def __repr__(self) -> str:
        return f"Source({self.topic}[{self.partition}]@{self.received}, blocking={self.blocking})"


@dataclass(slots=True)
class Expected:
    """A record awaited from a partition on another worker."""

    key: Key
    token: str
    deadline: float


class Merger:
    """The queues and sources of the partitions a worker owns, and the release order."""

    def __init__(
        self,
        highwater: HighWater,
        idle: float = 0.0,
        expect_wait: float = 30.0,
    ) -> None:
        self.highwater = highwater
        #: (topic, partition) -> the consumer's position (next offset it hands over),
        #: None if unknown; the worker sets it (see SLOW_FETCH_FACTOR)
        self.position: HighWater = _unknown_position
        #: (topic, partition) -> when the consumer last polled it (ms; its high-water mark
        #: is from then), None if unknown or not tracked; the worker sets it
        self.polled: HighWater = _unknown_position
        #: seconds after which an input the consumer has not polled, while it polled
        #: others, is not waited for (paused, or the consumer is stuck on it); the worker
        #: sets it from its fetch wait
        self.poll_stale = POLL_STALE_SECONDS
        #: the consumer's newest poll of any input (ms), as last looked at; 0: unknown
        self._newest_poll = 0
        #: live, look at the empty inputs again (:meth:`look_again`) every this many
        #: releases: the consumer's thread fetches meanwhile, and a long run of releases
        #: (a worker catching up) would otherwise pass records fetched for an input that
        #: looked caught up when the run began. 0: never (offline, or the caller looks).
        self.look_every = 0
        self._until_look = 0
        #: live, a record passes an empty, caught-up input only after a poll of it made
        #: once the record reached the merge (see :meth:`fetched`). False: at once, as far
        #: as the high-water marks allow (``SCORESTREAM_MERGE_FRESH_POLL``): lower latency,
        #: but an event reaching Kafka while a newer one of its contact waits in the
        #: consumer's buffers can be applied after it.
        self.fresh_polls = True
        #: the oldest poll time of the empty, caught-up sources (see :meth:`fetched`)
        self._fresh = _NEVER
        #: the head waits for an empty source to be polled again
        self._stale = False
        self.idle = idle
        self.expect_wait = expect_wait
        # Entries lead with the key's event time: two heads rarely share it, so most heap
        # comparisons are one int comparison rather than two nested tuple ones.
        self._heap: list[tuple[int, Key, int, Queue, Record]] = []
        self._seq = 0
        self.sources: dict[tuple[str, int], Source] = {}
        self.peers: dict[tuple[int, int, bool], Queue] = {}
        self._blocking: set[Source] = set()
        #: sources that emptied and are looked at only when something waits to be released
        self._unchecked: set[Source] = set()
        self._expected: dict[str, Expected] = {}
        self._expected_min: Key | None = None
        #: records in all queues
        self.buffered = 0
        #: seconds during which records waited, by reason (see WAIT_REASONS; ``waited``
        #: is their sum), and how many times a wait for each reason began (a wait whose
        #: reason changes counts for both)
        self.waits: dict[str, float] = dict.fromkeys(WAIT_REASONS, 0.0)
        self.wait_counts: dict[str, int] = dict.fromkeys(WAIT_REASONS, 0)
        self._wait_began: float | None = None
        self._wait_reason = ""
        #: releases that went past an expected record that never came (timed out)
        self.expect_timeouts = 0
        #: sources that stopped blocking because their high-water mark never arrived
        self.stalls = 0
        #: sources to read again from their ``received`` offset (see STALL_SECONDS)
        self.rereads: list[Source] = []
        #: nothing at or beyond this key is released (a rescore hand-over; None: no hold)
        self.hold: Key | None = None
        #: nothing at or beyond this key is released while an expected record is
        #: awaited (a plan switch; None: expected records never hold the release)
        self.barrier: Key | None = None
        #: for the record :meth:`pop` returned last, the largest key released so far
        #: from its input queue, its own included (its own key for a peer queue): an
        #: input queue is FIFO, so the record comes after all of these in the order of
        #: the whole stream; a contact awaiting a hand-over compares it with the
        #: answer's key (see ``Processor``)
        self.last: Key = _CLOSED
        #: when :meth:`refresh` last ran, and since when it has run without a gap longer
        #: than STALL_SECONDS: a source counts as quiet only while the merge was looking
        self._looked = 0.0
        self._watching_since = 0.0
        #: the largest key released so far (see :meth:`front`)
        self.high: Key = _CLOSED
        #: the consumer group generation this worker's assignment is from, and the
        #: partitions other workers own in it (the processor sets both)
        self.generation = 0
        self.remote: tuple[int, ...] = ()
        #: releases that went past a repartition input behind its end, below its bound
        self.passed = 0

    # ------------------------------------------------------------------ topology

    def add_partition(
        self,
        partition: int,
        topics: Iterable[tuple[str, str]],
        repartition: tuple[str, str],
        start: dict[str, int],
    ) -> None:
        """Start merging a partition's input topics (from the ``start`` offsets).

        Topics are (real name, declared name) pairs, input topics in tie-rank order;
        ``start`` is keyed by declared name.
        """
        for rank, (topic, name) in enumerate(topics):
            queue = Queue(partition, topic, None)
            source = Source(topic, partition, start.get(name, 0), queue, name, rank)
            queue.source = source
            self.sources[(topic, partition)] = source
            source.blocking = True  # nothing is known until the consumer has fetched once
            self._blocking.add(source)
        real, name = repartition
        rep = Source(real, partition, start.get(name, 0), None, name)
        rep.blocking = True
        self._blocking.add(rep)
        self.sources[(real, partition)] = rep

    def remove_partition(self, partition: int) -> list[Record]:
        """Stop merging a partition; return its peer queues' records (oldest first)."""
        left: list[Record] = []
        for key in [k for k in self.sources if k[1] == partition]:
            source = self.sources.pop(key)
            self._blocking.discard(source)
            self._unchecked.discard(source)
            if source.queue is not None:
                self.buffered -= len(source.queue.items)
        for pair in [k for k in self.peers if k[0] == partition]:
            queue = self.peers.pop(pair)
            left.extend(queue.items)
            self.buffered -= len(queue.items)
        self._heap = [entry for entry in self._heap if entry[3].partition != partition]
        heapq.heapify(self._heap)
        return left

    def peer(self, partition: int, sender: int, kafka: bool = False) -> Queue:
        """The queue of ``partition`` for records released by ``sender``.

        Records that came through Kafka (``kafka``) have a queue of their own, apart
        from those this worker's own ``sender`` hands over in memory: after a rebalance
        the repartition topic still holds records a previous owner of ``sender`` sent,
        often ahead of the replay, and one queue for both held a record made in memory
        behind a Kafka record with a later key (the contact's events between the two
        were applied before its hand-over; found by a kill -9 soak with two workers).
        """
        pair = (partition, sender, kafka)
        queue = self.peers.get(pair)
        if queue is None:
            label = f"from {sender} through Kafka" if kafka else f"from {sender}"
            queue = self.peers[pair] = Queue(partition, label, None)
        return queue

    # ------------------------------------------------------------------ input

    def push(self, queue: Queue, record: Record) -> None:
        """Append a record to a queue (its head enters the heap)."""
        items = queue.items
        items.append(record)
        record.part = queue.partition
        self.buffered += 1
        source = queue.source
        if source is not None:
            source.unmarked += 1
        if len(items) == 1:
            self._seq += 1
            key = record.key
            heapq.heappush(self._heap, (key[0], key, self._seq, queue, record))

    def insert(self, queue: Queue, record: Record) -> None:
        """Put a record into a queue in key order (records from other workers).

        Another worker's records come in its order of release, which is not ours when it
        runs ahead: ordered by key, an identity hand-over it answers late still goes
        before the later records it sent first.
        """
        items = queue.items
        record.part = queue.partition
        self.buffered += 1
        key = record.key
        if not items or items[-1].key <= key:
            items.append(record)
            if len(items) > 1:
                return
        else:
            at = len(items) - 1
            while at > 0 and items[at - 1].key > key:
                at -= 1
            items.insert(at, record)
            if at > 0:
                return
        # A new head: the heap entry of the old one (if any) is stale from now on.
        self._seq += 1
        heapq.heappush(self._heap, (key[0], key, self._seq, queue, record))

    def in_order(self, source: Source, offset: int) -> bool:
        """Whether a message at ``offset`` is the next one of ``source``.

        An earlier offset is a redelivery (already read). A later one skips offsets:
        possibly a stale message from before a rebalance while the ones before it were
        lost, so the source is read again from the offset expected; if that brings the
        same offset again, the skipped offsets hold no records and it is taken.
        """
        received = source.received
        if offset == received:
            return True
        if offset < received:
            return False
        if source.gap_at == offset:
            source.gap_at = -1
            return True
        source.gap_at = offset
        self.rereads.append(source)
        return False

    def arrived(self, source: Source, offset: int, now: float) -> None:
        """A message at ``offset`` was read from ``source`` (pushed, or handled at once)."""
        source.received = offset + 1
        source.last_arrival = now
        source.ahead_since = 0.0
        queue = source.queue
        if queue is not None and queue.items:
            self._unchecked.discard(source)
        if source.blocking and (queue is None or queue.items):
            self._check(source, now)

    # ------------------------------------------------------------------ release

    def pop(self, now: float) -> Record | None:
        """The next record to apply, or None if the gate is closed or nothing is buffered."""
        heap = self._heap
        while heap:
            entry = heap[0]
            items = entry[3].items
            if items and items[0] is entry[4]:
                break
            heapq.heappop(heap)  # stale: its record was overtaken by an inserted one
        else:
            self._stale = False
            self._not_waiting(now)
            return None
        if self._unchecked:
            # Something waits to be released: now it matters whether an input that emptied
            # still has records in Kafka (looked at lazily: the usual emptied input gets
            # its next message before anything else waits).
            for emptied in self._unchecked:
                self._check(emptied, now)
            self._unchecked.clear()
        if self.look_every:
            self._until_look -= 1
            if self._until_look <= 0:
                self._until_look = self.look_every
                self.look_again(now)
        _, key, _, queue, _ = heap[0]
        passing = False
        if self._blocking:
            if not self._passable(key):
                self._waiting(self._blocking_reason(), now)
                return None
            passing = True
        if self._at_barrier(key):
            self._waiting(WAIT_HANDOVER, now)
            return None
        hold = self.hold
        if hold is not None and key >= hold:
            return None  # held for a hand-over: not waiting for any input
        source = queue.source
        if source is not None and _arrival(source) > self._fresh:
            # An empty input was last polled before this record was fetched: what reached
            # Kafka on it meanwhile is unknown. Wait for the consumer's next look at it.
            self._stale = True
            self._waiting(WAIT_POLL, now)
            return None
        self._stale = False
        if self._wait_began is not None:
            self._not_waiting(now)
        if passing:
            self.passed += 1
        record = items.popleft()
        self.buffered -= 1
        if source is not None:
            _released(source)
        key = record.key
        if queue.source is None or key > queue.top:
            # Peer queues are kept in key order (insert), not in arrival order.
            queue.top = key
            self.last = key
        else:
            self.last = queue.top
        if key > self.high:  # noqa: PLR1730 (max() is a call per release)
            self.high = key
        if items:
            self._seq += 1
            head = items[0]
            key = head.key
            heapq.heapreplace(heap, (key[0], key, self._seq, queue, head))
        else:
            heapq.heappop(heap)
            if source is not None:
                self._emptied(source, now)
        return record

    def _passable(self, key: Key) -> bool:
        """Whether the head ``key`` may go past every blocking source: only repartition
        inputs block, and the head (with everything released before it) is below each
        one's bound, so nothing it has not read yet comes before the head."""
        top = key if key > self.high else self.high
        for source in self._blocking:
            bound = source.bound
            if bound is None or top >= bound:
                return False
        return True

    def set_generation(self, generation: int, remote: Iterable[int]) -> None:
        """The assignment changed: what senders promised before no longer holds."""
        remote = tuple(sorted(remote))
        if generation != self.generation or remote != self.remote:
            self.generation = generation
            self.remote = remote
            for source in self.sources.values():
                source.fronts.clear()
                source.bound = None

    def front(self, source: Source, sender: int, generation: int, frontier: Key | None) -> None:
        """A frontier marker from partition ``sender`` came through the repartition
        ``source``: what its worker promised when it sent the marker.

        The sender's frontier is a key that every record it releases from then on
        follows in the order of the whole stream (the key the record it was applying
        came after, or that of a parked record that may send, if smaller; see
        ``Processor._frontier``). Kafka keeps a partition's records in the order sent,
        so what ``source`` still holds from ``sender`` comes at or after that frontier.
        Once every partition on another worker has sent one in this generation, the
        smallest of their frontiers bounds what the unread records of ``source`` hold:
        records before it may be released although ``source`` is behind its end (two
        workers on a backlog otherwise wait for each other's records at every turn;
        Kafka Streams has no such bound and waits, or gives up after
        ``max.task.idle.ms``).

        A marker of another generation (its sender's owner may have changed, and a new
        owner replays from older offsets), or from a partition this worker owns, voids
        what was known: the source blocks, as it would without frontiers, until every
        sender has sent again. Workers flush what they sent before they give partitions
        up, so records of an older generation come before those of the next one in the
        topic.
        """
        if frontier is None or generation != self.generation or sender not in self.remote:
            if source.fronts or source.bound is not None:
                source.fronts.clear()
                source.bound = None
            return
        fronts = source.fronts
        fronts[sender] = frontier
        bound: Key | None = None
        if len(fronts) >= len(self.remote):
            for partition in self.remote:
                front = fronts.get(partition)
                if front is None:
                    bound = None
                    break
                if bound is None or front < bound:
                    bound = front
        source.bound = bound

    def input_floor(self) -> Key | None:
        """A key every record released from an input queue from now on comes after in
        the order of the whole stream; None if none is known.

        An input queue is FIFO and a record it releases comes after the largest key
        released from it before (``Queue.top``), so its next record, queued or still in
        Kafka or not even produced yet, comes at or after that key, or after its head's
        key if that is larger. A worker whose frontier ignored this (the newest key
        released, across queues) promised more than it could keep live: an input read
        to its end got records older than what other inputs had released, and what
        they caused reached the other workers below the frontier already sent. An input
        that has released nothing and has nothing in Kafka bounds nothing (an unused
        topic would otherwise hold every frontier at the start); a record that reaches
        it later is a late event for this worker too (docs/rules.md).
        """
        floor: Key | None = None
        for source in self.sources.values():
            queue = source.queue
            if queue is None:
                continue
            bound = queue.top
            if queue.items:
                head = queue.items[0].key
                bound = max(bound, head)
            elif bound == _CLOSED:
                high = self.highwater(source.topic, source.partition)
                if high is not None and high <= source.received:
                    continue
                return None  # unread records of unknown keys
            if floor is None or bound < floor:
                floor = bound
        return floor

    def _at_barrier(self, key: Key) -> bool:
        expected = self._expected_min
        if expected is None or key <= expected:
            return False
        barrier = self.barrier
        return barrier is not None and key >= barrier

    def head(self) -> Key | None:
        """The key that would be released next (ignoring the gate)."""
        heads = [q.items[0].key for q in self._queues() if q.items]
        return min(heads) if heads else None

    def _queues(self) -> Iterator[Queue]:
        for source in self.sources.values():
            if source.queue is not None:
                yield source.queue
        yield from self.peers.values()

    def gate(self) -> Key | None:
        """Up to which key records may be released now (None: no limit; MIN: none)."""
        if self._blocking or self._unchecked:
            return _CLOSED
        expected, hold = self._expected_min, self.hold
        if hold is None:
            return expected
        return hold if expected is None or hold < expected else expected

    def _blocking_reason(self) -> str:
        """Why blocking sources hold the release: records of another worker (a
        repartition partition) count before unread input records."""
        for source in self._blocking:
            if source.queue is None:
                return WAIT_PEER
        return WAIT_INPUT

    def _waiting(self, reason: str, now: float) -> None:
        """The release is held for ``reason`` (one of WAIT_REASONS) at ``now``."""
        began = self._wait_began
        if began is None or reason != self._wait_reason:
            if began is not None:
                # the wait goes on for another reason: the time so far goes to the first
                self._end_wait(began, now)
            self._wait_began = now
            self._wait_reason = reason
            self.wait_counts[reason] += 1

    def _not_waiting(self, now: float) -> None:
        began = self._wait_began
        if began is not None:
            self._end_wait(began, now)
            self._wait_began = None

    def _end_wait(self, began: float, now: float) -> None:
        spent = now - began
        if spent > 0.0:
            self.waits[self._wait_reason] += spent

    # ------------------------------------------------------------------ sources

    def _emptied(self, source: Source, now: float) -> None:
        if self.idle > 0:
            source.idle_until = now + self.idle
        self._unchecked.add(source)
        polled = self.polled(source.topic, source.partition)
        if polled is not None and self._poll_floor(now) <= polled < self._fresh:
            self._fresh = polled

    def fetched(self, source: Source, polled: int | None) -> None:
        """Records were just queued for ``source`` at ``polled`` (ms, the clock of
        :attr:`polled`): they are released only past empty sources polled since (see
        :meth:`look_again`).

        Each batch keeps its own time: a record waits for polls made after *it* came,
        not after the source's newest batch. With one time per source, the head of a
        busy input waited for a poll after every later batch of that input as well,
        and kept waiting while batches kept coming (traced at 1,000 events/s: the
        longer a record waited, the more batches of its own input had come meanwhile).
        """
        count = source.unmarked
        source.unmarked = 0
        if polled is not None and self.fresh_polls:
            polled -= FRESH_SLACK_MS
            source.fetched_at = max(source.fetched_at, polled)
            if count:
                arrivals = source.arrivals
                if arrivals and arrivals[-1][0] >= polled:
                    arrivals[-1][1] += count  # same time (or a clock step back): one mark
                else:
                    arrivals.append([polled, count])

    def look_again(self, now: float) -> None:
        """Look at the empty, caught-up sources again before releasing what was just
        queued: their high-water marks (records fetched for them but not handed over yet
        make them block) and how current they are (their last poll times)."""
        fresh = _NEVER
        polled = self.polled
        check = self._check
        unchecked = self._unchecked
        # The poll time first, the high-water mark after it: the mark is then at least as
        # recent as that poll (the consumer's thread may answer in between).
        empty: list[tuple[Source, int | None]] = []
        newest = 0
        for source in self.sources.values():
            at = polled(source.topic, source.partition)
            if at is not None and at > newest:
                newest = at
            queue = source.queue
            if not source.blocking and (queue is None or not queue.items):
                empty.append((source, at))
        self._newest_poll = newest
        floor = self._poll_floor(now)
        for source, at in empty:
            unchecked.discard(source)
            if check(source, now):
                continue
            if at is not None and floor <= at < fresh:
                fresh = at
        self._fresh = fresh

    def _poll_floor(self, now: float) -> int:
        """The oldest poll time (ms) that still counts: an input polled before it is
        one the consumer does not fetch, and is not waited for (``poll_stale``).

        Counted back from the consumer's newest poll of any input, not from now: a
        consumer that polls nothing (its thread short of CPU while this one works
        through a batch: event-loop stalls of 0.25 - 0.4 s and checkpoints of 1 - 2 s
        were logged in soaks on a busy 2-core machine) has not stopped fetching one
        input, and what it has not looked at may hold older records. One that has polled
        nothing for ``POLL_STUCK_SECONDS`` is taken as stuck: the release goes on.
        """
        newest = self._newest_poll
        now_ms = int(now * 1000)
        floor = (newest if 0 < newest < now_ms else now_ms) - int(self.poll_stale * 1000)
        return max(floor, now_ms - int(POLL_STUCK_SECONDS * 1000))

    def _check(self, source: Source, now: float) -> bool:
        """Decide whether ``source`` blocks the release of buffered records (returned)."""
        queue = source.queue
        if queue is not None and queue.items:
            blocking = False
        else:
            high = self.highwater(source.topic, source.partition)
            if high is None:
                blocking = True  # never fetched: it may hold anything
            elif high > source.received and high != source.skipped_at:
                # Records are in Kafka but not here yet: wait for them. If nothing comes
                # for a while, ask for a re-read from the offset expected; if that brings
                # nothing either, what is left holds no records (transaction markers).
                if not source.blocking or source.lag_since == 0.0:
                    source.lag_since = now
                quiet_since = max(source.lag_since, source.last_arrival, self._watching_since)
                blocking = True
                if self._stalled(source, now - quiet_since, now):
                    if source.reread_at != high:
                        source.reread_at = high
                        source.lag_since = now
                        source.ahead_since = 0.0
                        self.rereads.append(source)
                    else:
                        source.skipped_at = high
                        blocking = False
                        self.stalls += 1
            else:
                blocking = queue is not None and now < source.idle_until
        if not blocking:
            source.lag_since = 0.0
            source.ahead_since = 0.0
        if blocking != source.blocking:
            source.blocking = blocking
            if blocking:
                self._blocking.add(source)
            else:
                self._blocking.discard(source)
        return blocking

    def _stalled(self, source: Source, quiet: float, now: float) -> bool:
        """Whether a source behind its end and quiet for ``quiet`` seconds is stuck.

        The consumer's position decides how long it may stay quiet: unknown, the stall
        time; still at the offset expected, SLOW_FETCH_FACTOR times that; past it, the
        stall time and then AHEAD_SECONDS of staying past it.
        """
        if quiet < STALL_SECONDS:
            return False
        position = self.position(source.topic, source.partition)
        if position is None:
            return True
        if position <= source.received:
            # Not handed over yet (its fetching lags, e.g. a worker short of CPU on a
            # backlog): a re-read would throw away what it has fetched.
            source.ahead_since = 0.0
            return quiet >= STALL_SECONDS * SLOW_FETCH_FACTOR
        # Handed over: possibly still on its way to the merge, so it must stay past.
        if source.ahead_since == 0.0:
            source.ahead_since = now
        return now - source.ahead_since >= AHEAD_SECONDS

    def rewind(self, source: Source, offset: int) -> None:
        """Read an input again from ``offset``: what its queue holds is dropped.

        The records dropped come again from Kafka (the consumer is asked to seek, like a
        re-read); a rescore hand-over uses this to apply, on the rebuilt states, what
        follows the point the rebuild stopped at.
        """
        queue = source.queue
        if queue is not None:
            queue.top = _CLOSED
            if queue.items:
                self.buffered -= len(queue.items)
                queue.items.clear()  # its heap entry is stale from now on (pop skips it)
        source.arrivals.clear()
        source.unmarked = 0
        source.received = offset
        source.gap_at = -1
        source.reread_at = -1
        source.skipped_at = -1
        source.lag_since = 0.0
        source.ahead_since = 0.0
        self._unchecked.discard(source)
        if not source.blocking:
            source.blocking = True  # until the consumer has read from the new position
            self._blocking.add(source)
        self.rereads.append(source)

    def take_rereads(self) -> list[Source]:
        """Sources the consumer should read again from their ``received`` offset."""
        rereads, self.rereads = self.rereads, []
        # Once each: every refused record of a stale batch asks (a batch of 226 such
        # records after a rebalance once made as many seeks, each rereading what the
        # one before had brought).
        return list(dict.fromkeys(rereads))

    def refresh(self, now: float) -> None:
        """Look again at every source (new high-water marks) and at expected records.

        The worker calls this at least every few tens of milliseconds while it runs; a
        longer gap than STALL_SECONDS means the process itself stood still (stopped,
        swapped out, an event loop stalled): time that passed then is not a source
        being quiet, so stall detection counts from the first look after it.
        """
        if now - self._looked > STALL_SECONDS:
            self._watching_since = now
        self._looked = now
        for source in self.sources.values():
            queue = source.queue
            if source.blocking or (queue is not None and queue.items):
                self._check(source, now)  # the empty, caught-up ones: in look_again
        self._unchecked.clear()
        self.look_again(now)
        if self._expected:
            for token in [t for t, e in self._expected.items() if e.deadline <= now]:
                del self._expected[token]
                self.expect_timeouts += 1
            self._expected_min = min((e.key for e in self._expected.values()), default=None)

    @property
    def waited(self) -> float:
        """Seconds during which records waited for a blocking source or an expected
        record, whatever the reason."""
        return sum(self.waits.values())

    @property
    def blocked(self) -> bool:
        """Whether some source blocks the release now (or has not been looked at since
        it emptied)."""
        return bool(self._blocking or self._unchecked or self._stale)

    @property
    def waiting_for_poll(self) -> bool:
        """Whether the head waits for a poll of an empty input made after it came."""
        return self._stale

    @property
    def blocking(self) -> list[Source]:
        """Sources the release waits for now (as last looked at)."""
        return sorted(self._blocking, key=lambda s: (s.partition, s.topic))

    # ------------------------------------------------------------------ expected records

    def expect(self, token: str, key: Key, now: float) -> None:
        """A record with ``key`` is awaited until :meth:`fulfil` (or ``expect_wait`` passes):
        nothing past the :attr:`barrier` is released, and the watermark stays before it."""
        self._expected[token] = Expected(key, token, now + self.expect_wait)
        if self._expected_min is None or key < self._expected_min:
            self._expected_min = key

    def fulfil(self, token: str) -> None:
        """The expected record arrived."""
        if self._expected.pop(token, None) is not None:
            self._expected_min = min((e.key for e in self._expected.values()), default=None)

    @property
    def expected(self) -> int:
        """How many records from other workers are awaited."""
        return len(self._expected)


_CLOSED: Key = (-(1 << 63), 0, 0, 0, 0)


def _arrival(source: Source) -> int:
    """When the head of ``source``'s queue reached the merge (ms; 0: not tracked).

    Records queued without a batch time (the per-message path, offline) fall back to
    the source's newest batch time, the stricter choice; so does any miscount (a mark
    left by records that went another way only makes later records wait longer)."""
    arrivals = source.arrivals
    return arrivals[0][0] if arrivals else source.fetched_at


def _released(source: Source) -> None:
    """The head of ``source``'s queue was released: it leaves its batch's mark."""
    arrivals = source.arrivals
    if arrivals:
        mark = arrivals[0]
        mark[1] -= 1
        if mark[1] <= 0:
            arrivals.popleft()
    elif source.unmarked:
        source.unmarked -= 1
