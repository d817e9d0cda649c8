"""Markdown tables: the one renderer behind ``summary.md`` (flrec compare, the report) and the demo's table."""

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
