"""Statistics over per-row evaluation records: paired t-tests, seed summaries, popularity groups,
and the item-level view of title rankings (:func:`~flrec.data.items.expand_titles_to_items`).

A *record* is one line of ``ranks.jsonl`` written by :func:`flrec.experiments.runner.evaluate`:
at least ``{"row": int, "rank": int | None}``. Every comparison pairs rows by their ``row`` index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from flrec.data.items import expand_titles_to_items, item_popularity_weights
from flrec.data.schema import Catalogue, RecDataset
from flrec.errors import FlrecError
from flrec.evaluation.metrics import hit_at, metrics_from_ranks, ndcg_at

POPULAR_FRACTION = 0.2  # the paper's RQ5 split: top 20% of items by train frequency are "popular"
GROUPS = ("popular", "unpopular")  # the popularity groups of an evaluation summary (``popularity``)


def _metric_fn(metric: str):
    name, _, k = metric.partition("@")
    if name not in ("hr", "ndcg") or not k.isdigit() or int(k) < 1:
        raise FlrecError(f"unknown metric '{metric}'; use hr@K or ndcg@K (e.g. ndcg@10)")
    fn = hit_at if name == "hr" else ndcg_at
    kk = int(k)
    return lambda rank: fn(rank, kk)


def per_row_metric(records: Iterable[Mapping], metric: str = "ndcg@10", rank_key: str = "rank") -> dict[int, float]:
    """``{row index: metric value}`` from evaluation records (``metric`` is ``hr@K`` / ``ndcg@K``).

    ``rank_key="item_rank"`` reads the item-level rank (records of ``eval.protocol=item``).
    """
    fn = _metric_fn(metric)
    out: dict[int, float] = {}
    for r in records:
        row = int(r["row"])
        if row in out:
            raise FlrecError(f"row {row} appears twice in the evaluation records; re-run the evaluation")
        if rank_key not in r:
            raise FlrecError(f"row {row} has no '{rank_key}'; re-run the evaluation with eval.protocol=item")
        out[row] = fn(r[rank_key])
    return out


def item_level_row_metric(
    records: Iterable[Mapping], catalogue: Catalogue, metric: str = "ndcg@10"
) -> dict[int, float]:
    """Per-row ``metric`` with a hit on a title shared by ``m`` catalogue items credited ``1/m``.

    Title-level hits (the generative protocol) cannot tell items that share a title apart, which
    flatters a generator that keeps proposing a generic title ("Greatest Hits" names many CDs).
    ``value / m`` is the expected item-level value if each recommended title stood for one of its
    ``m`` items chosen uniformly; for catalogues with unique titles it equals ``metric``.
    """
    base = per_row_metric(records, metric)
    out = {}
    for r in records:
        m = len(catalogue.item_ids(r["target_title"]))
        if m == 0:
            raise FlrecError(f"row {r['row']}: target title {r['target_title']!r} is not in the catalogue; "
                             "evaluate against the dataset the records came from")
        out[int(r["row"])] = base[int(r["row"])] / m
    return out


def paired_ttest_values(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Paired t-test of per-row values ``a`` vs ``b`` (same row keys); positive ``t`` means a > b.

    Degenerate cases are answered instead of returning NaN: identical values give ``t=0, p=1``;
    a constant non-zero difference has no variance to test against, so ``t=None, p=0``; fewer
    than two rows give ``t=None, p=None``.
    """
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise FlrecError(
            f"paired t-test needs the same rows on both sides; {len(only)} rows differ (first: row {only[0]}); "
            "evaluate both methods on the same split and limit"
        )
    rows = sorted(a)
    xa = np.array([a[r] for r in rows], dtype=np.float64)
    xb = np.array([b[r] for r in rows], dtype=np.float64)
    n = len(rows)
    diff = xa - xb
    mean_diff = float(diff.mean()) if n else 0.0
    if n < 2:
        return {"t": None, "p_value": None, "n": n, "mean_diff": mean_diff}
    if np.all(diff == diff[0]):  # zero variance: scipy would return NaN
        if diff[0] == 0:
            return {"t": 0.0, "p_value": 1.0, "n": n, "mean_diff": 0.0}
        return {"t": None, "p_value": 0.0, "n": n, "mean_diff": mean_diff}
    res = stats.ttest_rel(xa, xb)
    return {"t": float(res.statistic), "p_value": float(res.pvalue), "n": n, "mean_diff": mean_diff}


def paired_ttest(ranks_a: Iterable[Mapping], ranks_b: Iterable[Mapping], metric: str = "ndcg@10") -> dict:
    """Paired t-test of ``metric`` per row between two evaluations of the same rows.

    Returns ``{"t", "p_value", "n", "mean_diff"}`` (``mean_diff`` = mean of a − b); see
    :func:`paired_ttest_values` for the degenerate cases.
    """
    return paired_ttest_values(per_row_metric(ranks_a, metric), per_row_metric(ranks_b, metric))


def summarise_seeds(values: Sequence[float]) -> dict[str, float]:
    """Mean and *sample* standard deviation (ddof=1) over seeds; one seed gives ``std=0.0``.

    Sample std because the seeds are a sample of training randomness and the ± in results tables
    estimates its spread (``numpy.std`` defaults to the population std, which understates it).
    """
    if not values:
        raise FlrecError("summarise_seeds needs at least one value (did every seed fail?)")
    x = np.asarray(values, dtype=np.float64)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std}


def relative_improvement(a: float, b: float) -> float | None:
    """Relative improvement of ``a`` over ``b`` in percent, ``(a - b) / b * 100``; ``None`` if ``b == 0``."""
    if b == 0:
        return 0.0 if a == 0 else None
    return (a - b) / b * 100.0


def popular_items(dataset: RecDataset, fraction: float = POPULAR_FRACTION, split: str = "train") -> np.ndarray:
    """Boolean mask over item ids: the top ``fraction`` of the catalogue by ``split`` target frequency.

    ``ceil(fraction * n_items)`` items are popular; ties are broken by item id (deterministic),
    and items never seen as a ``split`` target are never popular.
    """
    n = len(dataset.catalogue)
    counts = np.zeros(n, dtype=np.int64)
    pop = dataset.item_popularity(split)
    if pop:
        ids = np.fromiter(pop.keys(), dtype=np.int64, count=len(pop))
        counts[ids] = np.fromiter(pop.values(), dtype=np.int64, count=len(pop))
    order = np.lexsort((np.arange(n), -counts))  # by count desc, then id asc
    mask = np.zeros(n, dtype=bool)
    mask[order[: math.ceil(fraction * n)]] = True
    return mask & (counts > 0)


def average_groups(cell_summaries: list[dict]) -> dict | None:
    """Seed-mean group metrics ``{group: {"n_rows", metric: mean}}`` of evaluation summaries (None if
    any lacks ``popularity``)."""
    pops = [s.get("popularity") for s in cell_summaries]
    if not pops or any(p is None for p in pops):
        return None
    out: dict = {"popular_fraction": pops[0].get("popular_fraction")}
    for g in GROUPS:
        keys = [k for k in pops[0][g] if k != "n_rows"]
        out[g] = {"n_rows": pops[0][g]["n_rows"], **{k: sum(p[g][k] for p in pops) / len(pops) for k in keys}}
    return out



# ------------------------------------------------------------------------------------ item level


def item_rankings_for(recommender, dataset: RecDataset, rows: Sequence, rankings: Sequence[Sequence[tuple[str, float]]],
                      k: int) -> list[list[tuple[int, float]]]:
    """Item-level rankings of ``rows`` for ``eval.protocol=item``, from the best source available:

    1. the recommender's own ``last_item_rankings`` from the ``recommend`` call that produced
       ``rankings`` (LLM recommenders: beam titles split over their items, see
       :class:`~flrec.decoding.scoring.DecodingConfig`);
    2. else its item scores (ID models: the top ``k`` items of :meth:`Recommender.score`);
    3. else ``rankings`` expanded with :func:`expand_titles_to_items` (``assign``, ties by train
       popularity).
    """
    own = getattr(recommender, "last_item_rankings", None)
    if own is not None and len(own) == len(rows):
        return [list(r)[:k] for r in own]
    try:
        scores = recommender.score(rows).float()
    except NotImplementedError:
        w = item_popularity_weights(dataset)
        return [expand_titles_to_items(r, dataset.catalogue, w, "assign", k=k) for r in rankings]
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [list(zip(i, v, strict=True)) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)]


def add_item_ranks(records: list[dict], recommender, dataset: RecDataset, rows: Sequence,
                   rankings: Sequence[Sequence[tuple[str, float]]], protocol: str, k: int, keep: int = 20) -> None:
    """For ``protocol == "item"``: add ``item_rank`` (1-based rank of the target *item*, or None) and
    ``items`` (the first ``keep`` item ids) to each evaluation record (in place).

    A recommender that shares titles among items by popularity (``item_popularity`` is None) is
    first given the dataset's train counts.
    """
    if protocol != "item":
        return
    if getattr(recommender, "item_popularity", False) is None:
        recommender.item_popularity = item_popularity_weights(dataset)
    items = item_rankings_for(recommender, dataset, rows, rankings, k)
    for rec, row, ranked in zip(records, rows, items, strict=True):
        ids = [int(i) for i, _ in ranked]
        if len(set(ids)) != len(ids):
            raise FlrecError(f"row {rec['row']}: the item ranking repeats an item; recommenders must rank distinct items")
        rec["item_rank"] = next((j + 1 for j, i in enumerate(ids) if i == row.target), None)
        rec["items"] = ids[:keep]


def item_level_summary(dataset: RecDataset, records: Sequence[Mapping], ks: Sequence[int], protocol: str = "title",
                       recommender=None) -> dict:
    """Item-level additions to an evaluation summary.

    * ``item_metrics_expected`` (always): HR/NDCG@K with title-level hits discounted to ``1/m``
      (:func:`item_level_row_metric`);
    * for ``protocol == "item"``: ``item_metrics`` (HR/NDCG@K of the target item's rank in the
      item ranking, :func:`add_item_ranks`) and ``item_top1_distinct_share``;
    * ``decoding`` when the recommender reports one (``decoding_info()``, LLM recommenders).
    """
    n = max(len(records), 1)
    expected = {}
    for k in ks:
        for name in ("hr", "ndcg"):
            vals = item_level_row_metric(records, dataset.catalogue, f"{name}@{k}") if records else {}
            expected[f"{name}@{k}"] = sum(vals.values()) / n
    out: dict = {"protocol": protocol, "item_metrics_expected": expected}
    info = getattr(recommender, "decoding_info", None)
    if callable(info):
        out["decoding"] = info()
    if protocol == "item":
        if any("item_rank" not in r for r in records):
            raise FlrecError("some records have no item_rank (rows of a title-protocol run were resumed); "
                             "re-run the evaluation in a fresh folder with eval.protocol=item")
        out["item_metrics"] = metrics_from_ranks([r["item_rank"] for r in records], ks)
        top1 = [r["items"][0] for r in records if r["items"]]
        out["item_top1_distinct_share"] = len(set(top1)) / max(len(top1), 1)
    return out
