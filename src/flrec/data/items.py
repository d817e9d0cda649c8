"""Catalogue helpers between titles and items: how a ranked list of titles becomes a ranked list of
items (a title names ``m >= 1`` items) and the default weights that share a title among its items.

Used by the ranking (:mod:`flrec.decoding.ranker`), the evaluation's item protocol
(:mod:`flrec.evaluation.analysis`) and the recommenders alike, so it sits with the data.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

from flrec.data.schema import Catalogue, RecDataset
from flrec.errors import FlrecError

Ranked = list[tuple[str, float]]  # distinct titles, best first, with the method's score
ItemRanked = list[tuple[int, float]]  # item ids, best first, with scores


def expand_titles_to_items(
    ranked: Sequence[tuple[str, float]],
    catalogue: Catalogue,
    weight: Sequence[float] | np.ndarray,
    mode: str = "split",
    exclude: Collection[int] = (),
    k: int | None = None,
) -> list[tuple[int, float]]:
    """Turn a ranked list of titles into a ranked list of *items* (best first, with scores).

    A title names ``m >= 1`` catalogue items. Each item ``i`` of title ``y`` gets a share
    ``w_i / sum_{j in y} w_j`` of the title (``weight``: e.g. train popularity + 1, or an ID model's
    item probabilities; items in ``exclude`` — e.g. the history — are dropped before sharing):

    * ``split`` — ``score(i) = score(y) + log share(i)``: with log-probability title scores this is
      ``log P(y) + log P(i | y)``, so an item of a generic title shared by many items can fall below
      the single item of a slightly less likely title. Ties: title rank, then share, then item id.
    * ``assign`` — every item keeps its title's score and the titles' order; items within a title
      are ordered by share (then item id).

    A title all of whose items are excluded contributes nothing.
    """
    if mode not in ("split", "assign"):
        raise FlrecError(f"unknown item split mode {mode!r}; use split or assign")
    w = np.asarray(weight, dtype=np.float64)
    excl = set(exclude)
    entries: list[tuple[float, int, float, int]] = []  # (score, title rank, share, item)
    for rank, (title, score) in enumerate(ranked):
        items = [i for i in catalogue.item_ids(title) if i not in excl]
        if not items:
            continue
        ws = w[items]
        total = float(ws.sum())
        shares = ws / total if total > 0 else np.full(len(items), 1.0 / len(items))
        for i, sh in zip(items, shares.tolist(), strict=True):
            s = score + math.log(sh) if mode == "split" and sh > 0 else (score if mode == "assign" else -math.inf)
            entries.append((s, rank, sh, i))
    if mode == "split":
        entries.sort(key=lambda e: (-e[0], e[1], -e[2], e[3]))
    else:
        entries.sort(key=lambda e: (e[1], -e[2], e[3]))
    out = [(i, s) for s, _, _, i in entries]
    return out[:k] if k is not None else out


def item_popularity_weights(dataset: RecDataset, split: str = "train") -> np.ndarray:
    """``count + 1`` per item id (``split`` target frequency, add-one so unseen items can still be
    ordered): the default way to share a title among its items."""
    w = np.ones(len(dataset.catalogue), dtype=np.float64)
    for i, c in dataset.item_popularity(split).items():
        w[i] += c
    return w
