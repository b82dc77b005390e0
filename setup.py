"""Build hook for the compiled modules; everything else is in ``pyproject.toml``.

With ``SCORESTREAM_COMPILE=1`` the hot modules (the engine's scorer, state, conditions
and time helpers; the pipeline's records, routing, merge, processor and offline feed) are
compiled with mypyc, which the code's ``mypy --strict`` typing makes possible:

    SCORESTREAM_COMPILE=1 python setup.py build_ext --inplace   # make setup does this
    SCORESTREAM_COMPILE=1 pip wheel --no-build-isolation .      # the Dockerfile does this

Without it the package is pure Python, the same code: ``make test`` runs the suite
against the compiled build and the unit, property and golden tests once more against the
pure sources (``scripts/test-pure``).
"""

from __future__ import annotations

import os

from setuptools import setup

#: the modules compiled (pure Python elsewhere); order does not matter
COMPILED = [
    "src/scorestream/engine/scorer.py",
    "src/scorestream/engine/state.py",
    "src/scorestream/engine/conditions.py",
    "src/scorestream/engine/timeutil.py",
    "src/scorestream/engine/wire.py",
    "src/scorestream/engine/plan.py",
    "src/scorestream/pipeline/records.py",
    "src/scorestream/pipeline/routing.py",
    "src/scorestream/pipeline/merge.py",
    "src/scorestream/pipeline/processor.py",
    "src/scorestream/pipeline/feed.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("SCORESTREAM_COMPILE") != "1":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (only when compiling)

    options = ["--strict", "--ignore-missing-imports", "--python-version", "3.11"]
    return list(mypycify([*options, *COMPILED], opt_level="3", group_name="scorestream"))


setup(ext_modules=ext_modules())
