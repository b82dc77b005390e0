"""Exit codes and the project's error types, all under one root.

:class:`ScorestreamError` is defined in the engine (the lowest layer, which may import
nothing else of the package) and re-exported here; every module's own errors derive
from it. :class:`UsageError` maps to exit code 2 ("bad usage or invalid rules/config").
"""

from __future__ import annotations

from scorestream.engine.errors import ScorestreamError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "KafkaFailure",
    "ScorestreamError",
    "UsageError",
]


class UsageError(ScorestreamError):
    """Bad usage or invalid rules/config: the command exits 2 with this message."""


class KafkaFailure(ScorestreamError):
    """Kafka did not do what was needed (unreachable, refused a write, lost a record)."""
