"""Aligned plain-text tables for the reports of the offline commands.

``rules diff`` and ``calibrate`` print tables meant to be read in a terminal; this is
the one place that lays them out, so both look alike.
"""

from __future__ import annotations

from collections.abc import Sequence


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 2, align: str = ""
) -> list[str]:
    """Lines of an aligned table.

    ``align`` has one letter per column, ``l`` or ``r``; columns it does not cover are
    left-aligned if first, else right-aligned: numbers read best right-aligned, and the
    first column holds names (rules, tiers). Trailing spaces are stripped, so the output
    diffs cleanly.
    """
    grid = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(header))]
    sides = [align[i] if i < len(align) else ("l" if i == 0 else "r") for i in range(len(header))]
    pad = " " * indent
    out = []
    for row in grid:
        cells = [
            cell.ljust(widths[i]) if sides[i] == "l" else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append((pad + "  ".join(cells)).rstrip())
    return out


def num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """A number for a table: at most ``digits`` decimals, no trailing zeros; ``-`` for None."""
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in {"-0", "+0"}:
        text = "+0" if sign else "0"
    return text


def pct(part: int, whole: int) -> str:
    """``part/whole`` as a whole percentage (``-`` when ``whole`` is 0)."""
    if whole == 0:
        return "-"
    return f"{100.0 * part / whole:.0f}%"
