"""The README and the docs pages, read as one text (tests/ is on sys.path through tests/conftest.py).

README.md is short and links the pages under ``docs/`` that hold the rest (the full command tables, the
results, serving, ...). The tests that guard what the README prints (its commands, its Python examples,
its result tables, its links) read :func:`readme_text`: README.md, then every page it links, breadth
first in the order the links appear (the pages README.md links, then the pages those link, ...), then
any docs page that nothing links, sorted by path. Command blocks therefore run in that order.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# [text](target) and [text](target#anchor); http(s) and mailto links are not pages of this repository
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(page: Path) -> list[tuple[Path, str]]:
    """(resolved path, anchor) of every relative link of ``page``, in order; a folder stands for its index.md."""
    out = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page.resolve()
        if resolved.is_dir() and (resolved / "index.md").is_file():
            resolved = resolved / "index.md"
        out.append((resolved, anchor))
    return out


@cache
def pages() -> tuple[Path, ...]:
    """README.md, then the docs pages in link order (breadth first), then the unlinked ones sorted by path."""
    order, queue = [ROOT / "README.md"], [ROOT / "README.md"]
    while queue:
        page = queue.pop(0)
        for target, _ in links(page):
            if target.suffix == ".md" and DOCS in target.parents and target.is_file() and target not in order:
                order.append(target)
                queue.append(target)
    return (*order, *sorted(p for p in DOCS.rglob("*.md") if p.resolve() not in order))


def linked_pages() -> set[Path]:
    """The docs pages that README.md reaches through links (directly or through a page it links)."""
    linked, queue = set(), [ROOT / "README.md"]
    while queue:
        for target, _ in links(queue.pop(0)):
            if target.suffix == ".md" and DOCS in target.parents and target.is_file() and target not in linked:
                linked.add(target)
                queue.append(target)
    return linked


@cache
def readme_text() -> str:
    """README.md and the docs pages, concatenated in :func:`pages` order (what the README tests read)."""
    return "\n\n".join(p.read_text().rstrip("\n") for p in pages()) + "\n"


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of the Markdown headings of ``page`` (lower case, punctuation dropped, spaces to -)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    out = set()
    for title in re.findall(r"^#+ +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out
