"""Where a contact's state lives, and the internal messages that move work there.

A contact's state lives in partition ``murmur2(key) % N`` — the Java client's default
partitioner (librdkafka: ``partitioner=murmur2_random``). Events that arrive in another
partition (a producer with a different partitioner, an identified anonymous id) are
forwarded there through the ``scorestream.repartition`` topic, so all of a contact's
events meet in one place whatever the producers do.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=262_144)
def _hash(key: str) -> int:
    return int(murmur2(key.encode("utf-8")) & 0x7FFFFFFF)


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key, as the Java default partitioner computes it."""
    return _hash(key) % partitions


Kind = Literal["event", "merge_request", "merge_state"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message on the repartition topic.

    * ``event``: a valid input event (``payload`` = its original bytes) to be scored for
      ``to``, which lives in this partition;
    * ``merge_request``: ``identify`` was seen for ``to``; the partition of ``anon`` must
      hand over the anonymous state;
    * ``merge_state``: the anonymous state (``payload`` = state bytes) for ``to``.
    """

    kind: Kind
    to: str
    anon: str = ""
    at: int = 0
    merge_id: str = ""
    payload: bytes = b""

    def encode(self) -> bytes:
        """JSON bytes (payload in base64)."""
        doc: dict[str, Any] = {"k": self.kind, "to": self.to}
        if self.anon:
            doc["anon"] = self.anon
        if self.at:
            doc["at"] = self.at
        if self.merge_id:
            doc["id"] = self.merge_id
        if self.payload:
            doc["p"] = base64.b64encode(self.payload).decode("ascii")
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Inverse of :meth:`encode`; ValueError on anything else."""
        try:
            doc = json.loads(data)
            kind = doc["k"]
            if kind not in ("event", "merge_request", "merge_state"):
                raise ValueError(f"unknown envelope kind {kind!r}")
            return cls(
                kind=kind,
                to=str(doc["to"]),
                anon=str(doc.get("anon", "")),
                at=int(doc.get("at", 0)),
                merge_id=str(doc.get("id", "")),
                payload=base64.b64decode(doc["p"]) if "p" in doc else b"",
            )
        except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a repartition envelope: {exc}") from None
