"""Typed schema shared by every part of flrec.

* :class:`Catalogue` — item_id → title, and title → item_ids (published catalogues reuse titles,
  e.g. 185 CDs titles are shared by 649 items, so a generated title may name several items).
* :class:`Interaction` — one sliding-window row: a user's ≤ N previous items and the next one.
* :class:`RecDataset` — a catalogue plus named splits (``train``/``valid``/``test``) and a
  quirk report (known problems of published data that are kept and counted, never dropped).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# The token that ends every prompt (flrec.data.prompts re-exports it). Defined here because
# prompts imports torch and the data layer must not.
THOUGHT_TOKEN = "<|Thought|>"
# Special-token-shaped strings (<|endoftext|>, <|im_end|>, <|eot_id|>, </s>): tokenizers turn them
# into control tokens, so a title holding one would end generation or the prompt early.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>|</s>")


def title_problem(title: object) -> str | None:
    """Why ``title`` cannot be a catalogue title, or None if it can.

    The one rule shared by every converter (at conversion) and the D3 reader (at reading), so that
    whatever flrec writes, flrec reads: a non-empty single-line string without the thought token or another
    special-token string such as ``<|endoftext|>`` (the tokenizer would read it as a control token).
    """
    if not isinstance(title, str):
        return f"title must be text, got {type(title).__name__}"
    if not title.strip():
        return "title is empty; give every item a non-empty title"
    if "\n" in title or "\r" in title:
        return "title contains a line break; put each title on one line"
    if "\x00" in title:
        return "title contains a NUL character; remove it"
    if THOUGHT_TOKEN in title:
        return f"title contains the reserved token {THOUGHT_TOKEN}; remove it from the title"
    special = SPECIAL_TOKEN.search(title)
    if special:
        return f"title contains the special token {special.group()!r}; remove it from the title"
    return None


@dataclass
class Catalogue:
    """All items of a dataset. ``titles[i]`` is the title of item id ``i`` (ids are 0..n-1)."""

    titles: list[str]

    def __post_init__(self) -> None:
        self._by_title: dict[str, list[int]] = {}
        for i, t in enumerate(self.titles):
            self._by_title.setdefault(t, []).append(i)

    def __len__(self) -> int:
        return len(self.titles)

    def title(self, item_id: int) -> str:
        return self.titles[item_id]

    def item_ids(self, title: str) -> list[int]:
        """Every item id carrying ``title`` (empty list if none)."""
        return self._by_title.get(title, [])

    @property
    def unique_titles(self) -> list[str]:
        """Distinct titles in first-appearance order (the decoding vocabulary)."""
        return list(self._by_title)

    def colliding_titles(self) -> dict[str, list[int]]:
        """Titles shared by more than one item id."""
        return {t: ids for t, ids in self._by_title.items() if len(ids) > 1}


@dataclass(slots=True)  # slots: a million rows in memory cost ~100 MB less
class Interaction:
    """One row: ``history`` items (oldest first) and the ``target`` item that followed."""

    user: str
    history: list[int]
    target: int
    history_timestamps: list[int] = field(default_factory=list)
    timestamp: int = 0
    history_ratings: list[float] = field(default_factory=list)
    rating: float = 0.0
    # Optional raw identifiers (e.g. Amazon ASINs) carried through for round-tripping.
    history_raw: list[str] = field(default_factory=list)
    target_raw: str = ""


@dataclass
class RecDataset:
    """A catalogue, splits of interactions, a name and a domain word for prompts."""

    catalogue: Catalogue
    splits: dict[str, list[Interaction]]
    name: str = "dataset"
    domain: str = "item"  # e.g. "CD", "movie", "office product"; used in the prompt
    root: Path | None = None
    quirks: dict[str, int] = field(default_factory=dict)
    # What a converter dropped, filtered or ignored on the way here (see flrec.data.convert).
    report: dict = field(default_factory=dict, compare=False)
    # Values derived from the splits (e.g. duplicate counts), each stored with the list it was
    # computed from and reused only while ds.splits still holds that very list at that length.
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, split: str) -> list[Interaction]:
        return self.splits[split]

    def item_popularity(self, split: str = "train") -> Counter:
        """Target frequency per item id in ``split`` (history occurrences are not counted)."""
        c: Counter = Counter()
        for r in self.splits.get(split, []):
            c[r.target] += 1
        return c

    def history_titles(self, row: Interaction) -> list[str]:
        return [self.catalogue.titles[i] for i in row.history]

    def original_item_ids(self) -> list[str | None] | None:
        """The user's own id of every item (``item_asin``/``item_asins`` of the D3 files: the ids of the
        converted files, Amazon ASINs), by flrec's item index; None when the rows carry none."""
        ids: list[str | None] = [None] * len(self.catalogue)
        for rows in self.splits.values():
            for r in rows:
                if r.target_raw and 0 <= r.target < len(ids):
                    ids[r.target] = r.target_raw
                for i, raw in zip(r.history, r.history_raw, strict=False):
                    if raw and ids[i] is None:
                        ids[i] = raw
        return ids if any(i is not None for i in ids) else None
