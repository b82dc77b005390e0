"""Where a contact lives, and which topic carries which event type.

A contact's state lives in partition ``murmur2(key) % N`` — the Java client's default
partitioner (librdkafka: ``partitioner=murmur2_random``), so a producer keyed as the
contract says puts every event of a contact where its state is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from scorestream.engine.events import KNOWN_TYPES

if TYPE_CHECKING:  # mypyc's native 64-bit integer; only annotations name it
    from mypy_extensions import i64

#: Input topics in their tie order: events of equal ``occurred_at`` on different topics
#: are applied in this order (who a contact is before what it does at the same instant).
INPUT_TOPICS: tuple[str, ...] = (
    "contacts.profile",
    "events.page_view",
    "events.email",
    "events.form",
    "events.cart",
    "events.custom",
)
REPARTITION = "scorestream.repartition"
CHANGELOG = "scorestream.state-changelog"
RESCORE_STATES = "scorestream.rescore"
LEADS = "leads.sales_ready"
SCORES = "contacts.scores"
DLQ = "events.dlq"

_TOPIC_OF_KIND = {
    "page_view": "events.page_view",
    "email": "events.email",
    "form_submit": "events.form",
    "cart": "events.cart",
    "profile_update": "contacts.profile",
    "identify": "contacts.profile",
}


#: murmur2's multiplier
_M: Final = 0x5BD1E995


def topic_for(event_type: str) -> str:
    """The input topic of an event type (spec: events.md), without prefix."""
    return _TOPIC_OF_KIND.get(KNOWN_TYPES.get(event_type, ""), "events.custom")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (32-bit, seed 0x9747B28C), as the Java client computes it."""
    # ``i64`` (a plain int when interpreted) lets compiled code keep every value in a
    # machine word: a 32-bit value times the 31-bit constant stays below 2**63, so the
    # masks alone give the 32-bit products, interpreted or compiled alike. With ``int``,
    # mypyc multiplies in machine words only below 2**30 and fell back to
    # arbitrary-precision products here (partition_for 166 -> 63 ns, microbenchmark).
    length: i64 = len(data)
    h: i64 = (0x9747B28C ^ length) & 0xFFFFFFFF
    end: i64 = length - (length & 3)
    i: i64 = 0
    while i < end:
        k: i64 = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
        i += 4
    rest: i64 = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key, as Kafka's Java default partitioner computes it."""
    # Hashed every time, not looked up in a cache of hashes. Compiled, murmur2 over a
    # typical id costs about what a warm lookup does, and a table of every key seen is
    # cold by the time a key comes back (perf of `score`: partition_for with the cache
    # took 5 % of the samples, mostly in the dict lookup).
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
