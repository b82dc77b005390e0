"""Exit codes and the error that maps to "bad usage or invalid rules/config" (exit 2)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage or invalid rules/config: the command exits 2 with this message."""
