"""Typed schema shared by every part of flrec.

* :class:`Catalogue` — item_id → title, and title → item_ids (published catalogues reuse titles,
  e.g. 185 CDs titles are shared by 649 items, so a generated title may name several items).
* :class:`Interaction` — one sliding-window row: a user's ≤ N previous items and the next one.
* :class:`RecDataset` — a catalogue plus named splits (``train``/``valid``/``test``) and a
  quirk report (known problems of published data that are kept and counted, never dropped).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS: tuple[str, ...] = ("train", "valid", "test")


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


@dataclass
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
