"""The root of every error scorestream raises on purpose.

It lives in the engine, the lowest layer, because nothing in ``scorestream.engine`` may
import the rest of the package; every other module's errors derive from it too (see
:mod:`scorestream.errors`), so a caller can catch the project's failures in one place
and still tell them apart.
"""

from __future__ import annotations


class ScorestreamError(Exception):
    """Base class of the errors scorestream raises for known failures."""
