"""A comparison's statistics over its finished cells: per-row NDCG@10 averaged over seeds, the
paired t-tests of the reference method, relative improvements; see :mod:`flrec.experiments.compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.evaluation.analysis import (
    average_groups,
    item_level_row_metric,
    paired_ttest_values,
    per_row_metric,
    relative_improvement,
    summarise_seeds,
)
from flrec.evaluation.records import RANKS, SUMMARY, load_ranks
from flrec.experiments.compare_config import CompareConfig

TABLE_METRICS: tuple[str, ...] = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
SIG_METRIC = "ndcg@10"
ITEM_METRIC = "ndcg@10"  # also reported with shared-title hits discounted (analysis.item_level_row_metric)
# Two different "item NDCG@10"s, two names (issue: one name used to stand for both):
# the title-level NDCG@10 with a hit on a title that m items share counted 1/m (always present; the
# expectation when a title stands for one of its items at random, analysis.item_level_row_metric) ...
EXPECTED_ITEM_KEY = f"expected_item_{ITEM_METRIC}"
# ... and NDCG@10 of the target item's rank in the item ranking (eval.protocol=item; per method it is
# item_metrics[ITEM_METRIC]): the key of significance_item's metric and of relative_improvement.
ITEM_PROTOCOL_KEY = f"item_protocol_{ITEM_METRIC}"
# summary.json keys written before the rename, per section: {old: new}. Read through upgrade_summary.
_LEGACY_KEYS = {"methods": {f"item_{ITEM_METRIC}": EXPECTED_ITEM_KEY},
                "relative_improvement": {f"item_{ITEM_METRIC}": ITEM_PROTOCOL_KEY}}


def _significance(cfg: CompareConfig, methods: dict[str, dict], done: dict[str, list[Path]], ok: list[str],
                  others: list[str], item: bool) -> dict[str, Any]:
    """Paired t-test of the reference against the best other method on per-row NDCG@10 (averaged
    over seeds); ``item=True`` uses the item-level ranks (``item_metrics``) of both."""
    ref = cfg.reference
    out: dict[str, Any] = {"metric": ITEM_PROTOCOL_KEY if item else SIG_METRIC, "reference": ref, "vs": None,
                           "p_value": None, "t": None, "n": 0}
    if ref not in ok:
        out["skipped"] = f"reference method '{ref}' " + (
            ("has no item-level ranks (eval.protocol=item)" if item else "has no finished seed")
            if ref in cfg.methods else "is not among the methods")
        return out
    if not others:
        out["skipped"] = "no other method finished" + (" with item-level ranks" if item else "")
        return out
    stat = (lambda m: methods[m]["item_metrics"][SIG_METRIC]["mean"]) if item else (lambda m: methods[m][SIG_METRIC]["mean"])
    best = max(others, key=stat)
    key = "item_rank" if item else "rank"
    test = paired_ttest_values(_seed_averaged_rows(done[ref], SIG_METRIC, key),
                               _seed_averaged_rows(done[best], SIG_METRIC, key))
    out.update(vs=best, p_value=test["p_value"], t=test["t"], n=test["n"])
    return out


def _significance_all(ref: str, ok: list[str], done: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """The reference paired against *every* other finished method on per-row NDCG@10 (seed-averaged):
    ``{method: {"t", "p_value", "n"}}``; empty when the reference has no finished seed."""
    if ref not in ok:
        return {}
    mine = _seed_averaged_rows(done[ref], SIG_METRIC, "rank")
    out = {}
    for m in ok:
        if m != ref:
            test = paired_ttest_values(mine, _seed_averaged_rows(done[m], SIG_METRIC, "rank"))
            out[m] = {"t": test["t"], "p_value": test["p_value"], "n": test["n"]}
    return out


def _rel(ref: dict, other: dict) -> float | None:
    return None if other["mean"] == 0 else relative_improvement(ref["mean"], other["mean"])


def _item_level(cell_dirs: list[Path], dataset: RecDataset) -> dict[str, float] | None:
    if not cell_dirs:
        return None
    vals = [item_level_row_metric(load_ranks(d / RANKS), dataset.catalogue, ITEM_METRIC) for d in cell_dirs]
    return summarise_seeds([sum(v.values()) / max(len(v), 1) for v in vals])


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _seed_averaged_rows(cell_dirs: list[Path], metric: str, rank_key: str = "rank") -> dict[int, float]:
    per_seed = [per_row_metric(load_ranks(d / RANKS), metric, rank_key) for d in cell_dirs]
    rows = set(per_seed[0])
    for d, vals in zip(cell_dirs, per_seed, strict=True):
        if set(vals) != rows:
            raise ConfigError(f"{d / RANKS} covers other rows than {cell_dirs[0] / RANKS}; delete the stale cell")
    return {r: sum(v[r] for v in per_seed) / len(per_seed) for r in rows}


def method_stats(dirs: list[Path], dataset: RecDataset) -> dict[str, Any]:
    """One method's entry of ``summary.json`` from its finished cell folders (seed means ± std)."""
    summaries = [json.loads((d / SUMMARY).read_text()) for d in dirs]
    stats: dict[str, Any] = {
        m: summarise_seeds([s["metrics"][m] for s in summaries]) if summaries else None for m in TABLE_METRICS
    }
    stats.update(
        n_seeds=len(summaries),
        n_rows=summaries[0]["n_rows"] if summaries else 0,
        # cost and the generic-title diagnostic, averaged over seeds (None where a cell lacks them)
        seconds_per_user=_mean([(s.get("inference") or {}).get("seconds_per_user") for s in summaries]),
        top1_distinct_share=_mean([(s.get("diagnostics") or {}).get("top1_distinct_share") for s in summaries]),
        # popular / unpopular target groups (the long-tail analysis, flrec.analysis.longtail), seed means
        popularity=average_groups(summaries) if summaries else None,
        **{EXPECTED_ITEM_KEY: _item_level(dirs, dataset)},
        # the item protocol (eval.protocol=item): None unless every finished cell has item ranks
        item_metrics={m: summarise_seeds([s["item_metrics"][m] for s in summaries]) for m in TABLE_METRICS}
        if summaries and all("item_metrics" in s for s in summaries) else None,
    )
    return stats


def reference_tests(cfg: CompareConfig, methods: dict[str, dict], done: dict[str, list[Path]]) -> dict[str, Any]:
    """The reference method against the others: ``significance``, ``significance_item``,
    ``significance_all`` and ``relative_improvement`` of ``summary.json``."""
    ok = [m for m in cfg.methods if methods[m]["n_seeds"] > 0]
    ref = cfg.reference
    others = [m for m in ok if m != ref]
    significance = _significance(cfg, methods, done, ok, others, item=False)
    with_items = [m for m in ok if methods[m]["item_metrics"] is not None]
    significance_item = _significance(cfg, methods, done, with_items, [m for m in with_items if m != ref], item=True)
    significance_all = _significance_all(ref, ok, done)
    rel: dict[str, dict[str, float | None]] = {}
    if ref in ok:  # no relative improvement over a zero baseline: it would print +0.00 or -100.00
        for m in others:
            rel[m] = {k: _rel(methods[ref][k], methods[m][k]) for k in TABLE_METRICS}
            if m in with_items and ref in with_items:
                rel[m][ITEM_PROTOCOL_KEY] = _rel(methods[ref]["item_metrics"][ITEM_METRIC],
                                                     methods[m]["item_metrics"][ITEM_METRIC])
    return {"significance": significance, "significance_item": significance_item,
            "significance_all": significance_all, "relative_improvement": rel}


def upgrade_summary(summary: dict) -> dict:
    """A comparison ``summary.json`` with the keys of today, whatever flrec version wrote it.

    Before the rename one key, ``item_ndcg@10``, named two metrics: under ``methods.<m>`` the
    1/m-discounted title-level NDCG@10 (now :data:`EXPECTED_ITEM_KEY`), under
    ``relative_improvement.<m>`` and as ``significance_item.metric`` the item-protocol NDCG@10 (now
    :data:`ITEM_PROTOCOL_KEY`). Returns a new dict (``summary`` is left as it is); a current summary
    comes back unchanged. Every reader of a summary (the table, ``flrec report``) goes through here.
    """
    out = dict(summary)
    for section, renames in _LEGACY_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {name: _renamed(entry, renames) for name, entry in out[section].items()}
    sig = out.get("significance_item")
    if isinstance(sig, dict) and sig.get("metric") == f"item_{SIG_METRIC}":
        out["significance_item"] = {**sig, "metric": ITEM_PROTOCOL_KEY}
    return out


def _renamed(entry, renames: dict[str, str]):
    if not isinstance(entry, dict) or not any(old in entry for old in renames):
        return entry
    return {renames.get(k, k) if renames.get(k) not in entry else k: v for k, v in entry.items()}
