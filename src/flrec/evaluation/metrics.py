"""Top-K metrics for a single held-out target per row (full ranking).

With ``rank`` the 1-based position of the target in the ranked list (``None`` if absent):

* ``HR@K   = 1[rank <= K]``
* ``NDCG@K = 1[rank <= K] / log2(rank + 1)`` — with one relevant item the ideal DCG is 1, so
  NDCG equals DCG. (LatentR3 writes ``1/log2(r + 2)`` with a 0-based ``r``; it is the same value.)

Both are averaged over rows. A row counts as a hit when the target's *title* appears in the
top-K titles (the generative-recommendation protocol: a generated title cannot tell apart items
that share it; :mod:`flrec.evaluation` also reports how many hits rely on shared titles).

Item level (``eval.protocol=item``), with ``m`` the number of catalogue items named by the
target's title:

* **item HR/NDCG@K** — the same formulas with ``rank`` = the 1-based position of the target
  *item* in a ranked list of items (titles split over their items:
  :func:`flrec.evaluation.analysis.expand_titles_to_items`; ID models rank items directly);
* **expected item HR/NDCG@K** (``item_metrics_expected``) — the title-level value divided by
  ``m``: the expectation when each recommended title stands for one of its ``m`` items chosen
  uniformly (:func:`flrec.evaluation.analysis.item_level_row_metric`). Equal to the title-level
  value on catalogues with unique titles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20)


def target_rank(ranked_titles: Sequence[str], target_title: str) -> int | None:
    """1-based rank of ``target_title`` in ``ranked_titles`` or ``None`` when it is missing."""
    for i, t in enumerate(ranked_titles):
        if t == target_title:
            return i + 1
    return None


def hit_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def ndcg_at(rank: int | None, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def metrics_from_ranks(ranks: Iterable[int | None], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean ``hr@K`` and ``ndcg@K`` over rows; ``{}`` values are 0.0 for an empty input."""
    ranks = list(ranks)
    n = max(len(ranks), 1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = sum(hit_at(r, k) for r in ranks) / n
        out[f"ndcg@{k}"] = sum(ndcg_at(r, k) for r in ranks) / n
    return out
