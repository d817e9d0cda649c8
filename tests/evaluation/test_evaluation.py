"""Metrics, evaluation records/diagnostics, resumable evaluate(), statistics."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError, DataError, FlrecError
from flrec.evaluation.analysis import (
    item_level_row_metric,
    paired_ttest,
    per_row_metric,
    popular_items,
    relative_improvement,
    summarise_seeds,
)
from flrec.evaluation.metrics import metrics_from_ranks, target_rank
from flrec.evaluation.records import evaluate_rankings, load_ranks
from flrec.experiments.runner import EvalConfig, evaluate
from flrec.recommenders.base import Recommender

# ----------------------------------------------------------------------------- fixtures


def toy_dataset(n_items: int = 30, n_rows: int = 23, seed: int = 0) -> RecDataset:
    """Random rows over a catalogue where items 2k and 2k+1 share a title for k < 3."""
    rng = np.random.default_rng(seed)
    titles = [f"T{i // 2}" if i < 6 else f"T{i}" for i in range(n_items)]

    def rows(n: int, tag: str) -> list[Interaction]:
        return [Interaction(user=f"{tag}{i % 7}", history=rng.integers(0, n_items, 4).tolist(),
                            target=int(rng.integers(0, n_items))) for i in range(n)]

    return RecDataset(Catalogue(titles), {"train": rows(60, "u"), "valid": rows(5, "v"), "test": rows(n_rows, "w")})


class FakeRec(Recommender):
    """Deterministic per-row scores (distinct per item); can fail on a given recommend() call."""

    name = "fake"

    def __init__(self, catalogue: Catalogue, fail_on_call: int | None = None, tokens: bool = True):
        self.catalogue, self.fail_on_call, self.calls, self.rows_seen = catalogue, fail_on_call, 0, 0
        if tokens:
            self.last_generated_tokens = 0

    def fit(self, dataset, run_dir=None):
        return self

    def score(self, rows: Sequence[Interaction]) -> torch.Tensor:
        j = torch.arange(len(self.catalogue), dtype=torch.float64)
        s = torch.tensor([sum(r.history) for r in rows], dtype=torch.float64)[:, None]
        return ((s * 31 + j * 17) % 97 + j / 1000).float()

    def recommend(self, rows, k=20, batch_size=256):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        self.rows_seen += len(rows)
        if hasattr(self, "last_generated_tokens"):
            self.last_generated_tokens = 3 * len(rows)
        return super().recommend(rows, k, batch_size)

    def save(self, path):
        pass

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def _stable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("inference", "eval_config")}


# ----------------------------------------------------------------------------- metrics


def test_metrics_hand_computed():
    m = metrics_from_ranks([1, 3, None, 10, 12], ks=(1, 3, 5, 10, 20))
    assert m["hr@1"] == pytest.approx(0.2)
    assert m["hr@3"] == pytest.approx(0.4)
    assert m["hr@5"] == pytest.approx(0.4)
    assert m["hr@10"] == pytest.approx(0.6)
    assert m["hr@20"] == pytest.approx(0.8)
    assert m["ndcg@1"] == pytest.approx(0.2)
    assert m["ndcg@5"] == pytest.approx((1 + 0.5) / 5)  # rank 3 -> 1/log2(4) = 0.5
    assert m["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(11) + 1 / math.log2(13)) / 5)
    assert metrics_from_ranks([], ks=(5,)) == {"hr@5": 0.0, "ndcg@5": 0.0}
    assert target_rank(["a", "b", "c"], "c") == 3 and target_rank(["a"], "z") is None


def test_rank_tensor_metrics_match_the_python_ones():
    # The ID models' per-epoch validation uses the tensor form: same formulas as metrics_from_ranks.
    from flrec.evaluation.metrics import metrics_from_rank_tensor

    ranks = [1, 3, 7, 10, 12, 2, 40]
    ks = (1, 3, 5, 10, 20)
    tensor = metrics_from_rank_tensor(torch.tensor(ranks), ks)
    assert tensor == pytest.approx(metrics_from_ranks(ranks, ks), rel=1e-12)
    assert set(tensor) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in ks}


# ----------------------------------------------------------------------------- evaluate_rankings


def _hand_case() -> tuple[RecDataset, list[Interaction], list[list[tuple[str, float]]]]:
    # 10 items, ids 1 and 2 share "B"; train targets: 0 x3, 3 x2, 4 x1 -> popular = {0, 3} (top 20%).
    cat = Catalogue(["A", "B", "B", "C", "D", "E", "F", "G", "H", "I"])
    train = [Interaction("u", [9], t) for t in (0, 0, 0, 3, 3, 4)]
    test = [Interaction(f"t{i}", [9], t) for i, t in enumerate((0, 1, 3, 5, 4))]
    rankings = [
        [("A", 3.0), ("B", 2.0), ("C", 1.0)],  # target A -> rank 1
        [("A", 2.0), ("B", 1.0)],  # target B (shared) -> rank 2
        [("A", 2.0), ("D", 1.0)],  # target C -> miss
        [("B", 3.0), ("C", 2.0), ("E", 1.0)],  # target E -> rank 3
        [],  # target D -> miss, no recommendations
    ]
    return RecDataset(cat, {"train": train, "valid": [], "test": test}), test, rankings


def test_evaluate_rankings_hand_case():
    ds, rows, rankings = _hand_case()
    records, s = evaluate_rankings(ds, rows, rankings, ks=(1, 3, 10))
    assert [r["rank"] for r in records] == [1, 2, None, 3, None]
    assert [r["target_title_shared"] for r in records] == [False, True, False, False, False]
    assert records[1] == {"row": 1, "user": "t1", "target": 1, "target_title": "B", "rank": 2,
                          "titles": ["A", "B"], "scores": [2.0, 1.0], "target_title_shared": True}
    assert s["n_rows"] == 5
    assert s["metrics"]["hr@3"] == pytest.approx(0.6)
    assert s["target_title_shared_share"] == pytest.approx(0.2)
    d = s["diagnostics"]
    assert d["top1_distinct_share"] == pytest.approx(2 / 4)  # A, A, A, B over 4 non-empty rows
    assert d["top1_most_common"] == [["A", 3], ["B", 1]]
    assert d["hits@10"] == 3 and d["hits@10_on_shared_titles_share"] == pytest.approx(1 / 3)
    assert d["rows_without_recommendations"] == 1
    p = s["popularity"]
    assert p["n_popular_items"] == 2
    assert p["popular"]["n_rows"] == 2 and p["popular"]["hr@1"] == pytest.approx(0.5)  # ranks [1, None]
    assert p["unpopular"]["n_rows"] == 3  # ranks [2, 3, None]
    assert p["unpopular"]["hr@3"] == pytest.approx(2 / 3)
    assert p["unpopular"]["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5) / 3)


def test_evaluate_rankings_rejects_bad_rankings():
    ds, rows, rankings = _hand_case()
    with pytest.raises(ValueError, match="4 rankings for 5 rows"):
        evaluate_rankings(ds, rows, rankings[:4])
    with pytest.raises(ValueError, match="row 0: the ranking repeats"):
        evaluate_rankings(ds, rows, [[("A", 1.0), ("A", 0.5)], *rankings[1:]])


def test_popular_items_ties_and_unseen():
    ds, _, _ = _hand_case()
    assert np.flatnonzero(popular_items(ds)).tolist() == [0, 3]
    # Only one item ever a target: the other popular slot is not given to an unseen item.
    ds.splits["train"] = [Interaction("u", [], 7)]
    assert np.flatnonzero(popular_items(ds)).tolist() == [7]


# ----------------------------------------------------------------------------- evaluate()


def test_eval_config_checks():
    assert EvalConfig().beam >= max(EvalConfig().ks)
    with pytest.raises(ConfigError, match="beam.*set beam=20"):
        EvalConfig(ks=[5, 20], beam=10)
    with pytest.raises(ConfigError, match="split"):
        EvalConfig(split="dev")
    assert EvalConfig.load(overrides=["ks=1,5", "beam=5", "limit=null"]).ks == [1, 5]


def test_batch_size_invariance(tmp_path: Path):
    ds = toy_dataset()
    outs = []
    for bs in (1, 4, 64):
        summary = evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=bs), tmp_path / f"bs{bs}")
        outs.append(((tmp_path / f"bs{bs}" / "ranks.jsonl").read_bytes(), _stable(summary)))
    assert outs[0] == outs[1] == outs[2]
    assert summary["n_rows"] == 23 and summary["metrics"]["hr@10"] > 0  # the fake does hit sometimes
    assert summary == json.loads((tmp_path / "bs64" / "summary.json").read_text())
    inf = summary["inference"]
    assert inf["rows_timed"] == 23 and inf["generated_tokens"] == 69 and inf["tokens_per_second"] > 0


def test_evaluate_without_run_dir_and_without_token_hook():
    ds = toy_dataset()
    s = evaluate(FakeRec(ds.catalogue, tokens=False), ds, EvalConfig(limit=5))
    assert s["n_rows"] == 5 and s["inference"]["tokens_per_second"] is None
    assert s["inference"]["seconds_per_user"] > 0


def test_resume_after_interrupted_eval(tmp_path: Path):
    ds = toy_dataset()
    cfg = EvalConfig(batch_size=4)
    full = evaluate(FakeRec(ds.catalogue), ds, cfg, tmp_path / "full")

    run = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(FakeRec(ds.catalogue, fail_on_call=3), ds, cfg, run)
    partial = run / "ranks.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 8 and not (run / "summary.json").exists()
    with open(partial, "a") as f:  # a crash in the middle of a write leaves a torn line
        f.write('{"row": 8, "us')

    rec = FakeRec(ds.catalogue)
    resumed = evaluate(rec, ds, cfg.replace(batch_size=5), run)
    assert rec.rows_seen == 23 - 8  # only the missing rows were recomputed
    assert (run / "ranks.jsonl").read_bytes() == (tmp_path / "full" / "ranks.jsonl").read_bytes()
    assert _stable(resumed) == _stable(full)
    assert resumed["inference"]["rows_timed"] == 23 and resumed["inference"]["generated_tokens"] == 69
    assert not partial.exists() and not (run / "ranks.progress.json").exists()


def test_resume_rejects_foreign_partial(tmp_path: Path):
    ds = toy_dataset()
    with pytest.raises(RuntimeError):
        evaluate(FakeRec(ds.catalogue, fail_on_call=2), ds, EvalConfig(batch_size=4), tmp_path)
    with pytest.raises(FlrecError, match=r"beam 10 -> 20.*--force"):
        evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4, beam=20), tmp_path)
    ds.splits["test"][0] = Interaction("w0", [1], (ds["test"][0].target + 1) % 30)
    with pytest.raises(ConfigError, match="data.hash changed"):
        evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4), tmp_path)


def test_load_ranks_reports_bad_line(tmp_path: Path):
    p = tmp_path / "ranks.jsonl"
    p.write_text('{"row": 0, "rank": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        load_ranks(p)


# ----------------------------------------------------------------------------- analysis


def test_paired_ttest_matches_scipy_and_hand_formula():
    ranks_a = [1, 2, None, 1, 5, 3]
    ranks_b = [2, None, None, 1, 1, 8]
    rec_a = [{"row": i, "rank": r} for i, r in enumerate(ranks_a)]
    rec_b = [{"row": i, "rank": r} for i, r in reversed(list(enumerate(ranks_b)))]  # order must not matter
    a = [0.0 if r is None else 1 / math.log2(r + 1) for r in ranks_a]
    b = [0.0 if r is None else 1 / math.log2(r + 1) for r in ranks_b]
    d = np.subtract(a, b)
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    res = paired_ttest(rec_a, rec_b, "ndcg@10")
    ref = stats.ttest_rel(a, b)
    assert res["n"] == 6 and res["t"] == pytest.approx(t_hand) and res["t"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue) and res["mean_diff"] == pytest.approx(d.mean())
    assert per_row_metric(rec_b, "hr@1") == {0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0, 5: 0.0}


def test_item_level_metric_discounts_shared_titles_by_hand():
    cat = Catalogue(["Greatest Hits", "Greatest Hits", "Greatest Hits", "Abbey Road", "Kind of Blue"])
    rec = [{"row": 0, "rank": 1, "target_title": "Greatest Hits"},  # 1 / 3 items
           {"row": 1, "rank": 3, "target_title": "Abbey Road"},  # unique: plain NDCG = 1/log2(4) = 0.5
           {"row": 2, "rank": None, "target_title": "Kind of Blue"}]
    assert item_level_row_metric(rec, cat, "ndcg@10") == pytest.approx({0: 1 / 3, 1: 0.5, 2: 0.0})
    assert item_level_row_metric(rec, cat, "hr@1") == pytest.approx({0: 1 / 3, 1: 0.0, 2: 0.0})
    with pytest.raises(FlrecError, match="not in the catalogue"):
        item_level_row_metric([{"row": 0, "rank": 1, "target_title": "Nevermind"}], cat)


def test_paired_ttest_degenerate_and_mismatched():
    rec = [{"row": i, "rank": r} for i, r in enumerate([1, None, 4])]
    assert paired_ttest(rec, rec) == {"t": 0.0, "p_value": 1.0, "n": 3, "mean_diff": 0.0}
    with pytest.raises(FlrecError, match="same rows"):
        paired_ttest(rec, rec[:2])
    with pytest.raises(FlrecError, match="unknown metric"):
        paired_ttest(rec, rec, "mrr")


def test_seed_summary_and_relative_improvement():
    assert summarise_seeds([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0}  # sample std
    assert summarise_seeds([0.5]) == {"mean": 0.5, "std": 0.0}
    assert relative_improvement(0.12, 0.1) == pytest.approx(20.0)
    assert relative_improvement(0.1, 0.0) is None and relative_improvement(0.0, 0.0) == 0.0
