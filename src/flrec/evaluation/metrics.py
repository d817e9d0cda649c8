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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# Every list of cut-offs K lives here (one per use, so none changes behind another's back).
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20)  # metrics_from_ranks' default
EVAL_KS: tuple[int, ...] = (1, 3, 5, 10)  # flrec evaluate / compare / demo (the tables need @5 and @10)
ID_VALID_KS: tuple[int, ...] = (5, 10)  # ID models' per-epoch validation (early stopping on NDCG@10)
TUNE_KS: tuple[int, ...] = (1, 5, 10)  # tune-decoding reports these and the K it tunes for


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


def metrics_from_rank_tensor(ranks: Tensor, ks: Sequence[int] = ID_VALID_KS) -> dict[str, float]:
    """:func:`metrics_from_ranks` for a tensor of 1-based ranks (ID models: every target has a rank).

    Vectorised (tens of thousands of validation rows per epoch); the same HR/NDCG formulas, reduced
    in float64 by torch, so the last bits may differ from the Python sum.
    """
    import torch  # lazy: the rest of this module is plain Python

    out: dict[str, float] = {}
    r = ranks.double()
    for k in ks:
        hit = r <= k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 1), 0.0).mean().item()
    return out
