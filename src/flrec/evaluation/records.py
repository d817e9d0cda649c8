"""Per-row evaluation records and their summary: the scoring behind ``flrec evaluate`` (whose
orchestration, :mod:`flrec.experiments.runner`, writes them to a folder) and SFT's validation ranking.

A record is one line of ``ranks.jsonl``: ``row, user, target, target_title, rank`` (the 1-based
position of the target's *title* among the ranked titles, or ``None``), the first
:data:`RECORDED_TOP` ``titles``/``scores`` and ``target_title_shared`` (item-level fields are added
by :func:`flrec.evaluation.analysis.add_item_ranks`). See :mod:`flrec.experiments.runner` for the
hit protocol.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from flrec.data.items import Ranked
from flrec.data.schema import Interaction, RecDataset
from flrec.errors import DataError, FlrecError
from flrec.evaluation.analysis import POPULAR_FRACTION, popular_items
from flrec.evaluation.metrics import EVAL_KS, metrics_from_ranks, target_rank

RECORDED_TOP = 20  # titles/scores kept per row in ranks.jsonl
HIT_K_DIAG = 10  # K of the "hits on shared titles" diagnostic
RANKS, SUMMARY = "ranks.jsonl", "summary.json"


def row_records(dataset: RecDataset, rows: Sequence[Interaction], rankings: Sequence[Ranked], start: int = 0) -> list[dict]:
    if len(rankings) != len(rows):
        raise ValueError(f"recommender returned {len(rankings)} rankings for {len(rows)} rows")
    cat = dataset.catalogue
    out = []
    for i, (row, ranked) in enumerate(zip(rows, rankings, strict=True)):
        titles = [t for t, _ in ranked]
        if len(set(titles)) != len(titles):
            raise ValueError(f"row {start + i}: the ranking repeats a title; recommend() must return distinct titles")
        target_title = cat.title(row.target)
        out.append({
            "row": start + i,
            "user": row.user,
            "target": row.target,
            "target_title": target_title,
            "rank": target_rank(titles, target_title),
            "titles": titles[:RECORDED_TOP],
            "scores": [float(s) for _, s in ranked[:RECORDED_TOP]],
            "target_title_shared": len(cat.item_ids(target_title)) > 1,
        })
    return out


def summarise_records(dataset: RecDataset, records: Sequence[dict], ks: Sequence[int] = EVAL_KS) -> dict:
    """Metrics, decoding-bias diagnostics and popularity groups from per-row records."""
    n = len(records)
    ranks = [r["rank"] for r in records]
    top1 = Counter(r["titles"][0] for r in records if r["titles"])
    hits = [r for r in records if r["rank"] is not None and r["rank"] <= HIT_K_DIAG]
    popular = popular_items(dataset)
    groups: dict[str, list] = {"popular": [], "unpopular": []}
    for r in records:
        groups["popular" if popular[r["target"]] else "unpopular"].append(r["rank"])
    return {
        "n_rows": n,
        "metrics": metrics_from_ranks(ranks, ks),
        "target_title_shared_share": sum(r["target_title_shared"] for r in records) / max(n, 1),
        "diagnostics": {
            "top1_distinct_share": len(top1) / max(sum(top1.values()), 1),
            "top1_most_common": [[t, c] for t, c in top1.most_common(10)],
            f"hits@{HIT_K_DIAG}": len(hits),
            f"hits@{HIT_K_DIAG}_on_shared_titles_share": sum(r["target_title_shared"] for r in hits) / max(len(hits), 1),
            "rows_without_recommendations": n - sum(top1.values()),
        },
        "popularity": {
            "popular_fraction": POPULAR_FRACTION,
            "n_popular_items": int(popular.sum()),
            **{g: {"n_rows": len(v), **metrics_from_ranks(v, ks)} for g, v in groups.items()},
        },
    }


def evaluate_rankings(
    dataset: RecDataset, rows: Sequence[Interaction], rankings: Sequence[Ranked], ks: Sequence[int] = EVAL_KS
) -> tuple[list[dict], dict]:
    """Score ``rankings`` (one per row) against the rows' targets with the title-level protocol.

    Returns per-row records (``row, user, target, target_title, rank`` (1-based or ``None``),
    ``titles``/``scores`` (first 20), ``target_title_shared``) and a summary: ``n_rows``, ``metrics``
    (HR/NDCG@K), ``target_title_shared_share``, ``diagnostics`` (share of distinct top-1 titles,
    10 most frequent top-1 titles, share of hits@10 on shared titles) and ``popularity`` (metrics
    for test targets among the top 20% of items by train frequency vs the rest, with row counts).
    """
    records = row_records(dataset, rows, rankings)
    return records, summarise_records(dataset, records, ks)


def load_ranks(path: str | Path) -> list[dict]:
    """Read a ``ranks.jsonl`` file written by :func:`flrec.experiments.runner.evaluate`."""
    path = Path(path)
    if not path.is_file():
        raise FlrecError(f"{path} not found; run the evaluation first")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(path, "not valid JSON; delete the file and re-run the evaluation", line=i) from None
    return out
