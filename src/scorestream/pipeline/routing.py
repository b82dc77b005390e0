"""Where a contact lives, and which topic carries which event type.

A contact's state lives in partition ``murmur2(key) % N`` — the Java client's default
partitioner (librdkafka: ``partitioner=murmur2_random``), so a producer keyed as the
contract says puts every event of a contact where its state is.
"""

from __future__ import annotations

from scorestream.engine.events import KNOWN_TYPES

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


def topic_for(event_type: str) -> str:
    """The input topic of an event type (spec: events.md), without prefix."""
    return _TOPIC_OF_KIND.get(KNOWN_TYPES.get(event_type, ""), "events.custom")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (32-bit, seed 0x9747B28C), as the Java client computes it."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - (length & 3)
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = _mul_m(k)
        k ^= k >> 24
        k = _mul_m(k)
        h = _mul_m(h) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = _mul_m(h)
    h ^= h >> 13
    h = _mul_m(h)
    h ^= h >> 15
    return h


def _mul_m(x: int) -> int:
    """``(x * 0x5BD1E995) & 0xFFFFFFFF`` for a 32-bit ``x``, from 16-bit halves.

    Compiled code multiplies in machine words only when both factors are below 2**30;
    otherwise it falls back to arbitrary-precision integers (measured: 800 instructions
    a product, 8 products per 4 bytes of key). Halves of ``x`` and of the constant
    keep every product small; the high halves' product only reaches bits 32 and up.
    """
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * 0xE995 + (((hi * 0xE995 + lo * 0x5BD1) & 0xFFFF) << 16)) & 0xFFFFFFFF


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key, as Kafka's Java default partitioner computes it."""
    # Hashed every time, not looked up in a cache of hashes. Compiled, murmur2 over a
    # typical id costs about what a warm lookup does, and a table of every key seen is
    # cold by the time a key comes back (perf of `score`: partition_for with the cache
    # took 5 % of the samples, mostly in the dict lookup).
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
