"""Plain-text rendering shared by every layer: Markdown tables (``summary.md`` of flrec compare, the
report, the demo's table) and durations (progress lines, the report)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric: bool = False) -> list[str]:
    """The lines of a Markdown table: header, separator, one line per row of already formatted cells.

    ``numeric`` right-aligns every column but the first (the row labels).

    >>> markdown_table(["method", "HR@10"], [["pop", "0.1000"]], numeric=True)
    ['| method | HR@10 |', '|---|---:|', '| pop | 0.1000 |']
    """
    sep = "|---|" + ("---:|" if numeric else "---|") * (len(head) - 1)
    return ["| " + " | ".join(head) + " |", sep, *("| " + " | ".join(r) + " |" for r in rows)]


def format_seconds(s: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
