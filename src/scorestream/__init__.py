"""scorestream: real-time, explainable lead scoring on Kafka event streams."""

from __future__ import annotations

import warnings
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


def _compiled_files() -> list[Path]:
    """The mypyc-built extension modules beside the sources (see setup.py)."""
    return [*_HERE.glob("*/*.cpython-*.so"), *_HERE.parent.glob("scorestream__mypyc.*.so")]


def compiled() -> bool:
    """Whether the hot modules run compiled (mypyc) rather than as pure Python."""
    from scorestream.engine import scorer  # noqa: PLC0415 (after the stale check below)

    return not scorer.__file__.endswith(".py")


def _drop_stale_compiled() -> None:
    """In a checkout, compiled modules older than their sources would run old code.

    Extension modules win over ``.py`` files on import, and the compiled modules call
    each other directly: one stale module makes the whole group wrong. So if any source
    is newer than its compiled module, every compiled module is removed (the sources
    run, slower) and a warning says so; ``make setup`` builds them again. Installed
    wheels (no ``pyproject.toml`` two levels up) are left alone.
    """
    if not (_HERE.parent.parent / "pyproject.toml").is_file():
        return
    built = _compiled_files()
    stale = False
    for lib in built:
        source = lib.with_name(lib.name.split(".", 1)[0] + ".py")
        if source.is_file() and source.stat().st_mtime > lib.stat().st_mtime:
            stale = True
            break
    if stale:
        for lib in built:
            lib.unlink(missing_ok=True)
        warnings.warn(
            "scorestream: compiled modules were older than their sources and were removed; "
            "running pure Python (`make setup` compiles them again)",
            RuntimeWarning,
            stacklevel=2,
        )


_drop_stale_compiled()
