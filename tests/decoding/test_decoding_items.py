"""Item-level ranking of titles and the item protocol of the evaluation, against hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError, FlrecError
from flrec.evaluation.analysis import expand_titles_to_items, item_popularity_weights, per_row_metric
from flrec.experiments.runner import EvalConfig, evaluate
from flrec.recommenders.base import Recommender

# items: 0 "A", 1 "B", 2 "B", 3 "C", 4 "D"; train targets: item 1 twice, item 3 once
CAT = Catalogue(["A", "B", "B", "C", "D"])
TRAIN = [Interaction("u", [0], 1), Interaction("u", [0], 1), Interaction("u", [0], 3)]


def _ds(test: list[Interaction]) -> RecDataset:
    return RecDataset(CAT, {"train": TRAIN, "valid": TRAIN[:1], "test": test})


def test_popularity_weights_by_hand():
    assert item_popularity_weights(_ds([])).tolist() == [1.0, 3.0, 1.0, 2.0, 1.0]


def test_split_and_assign_by_hand():
    w = [1.0, 3.0, 1.0, 2.0, 1.0]
    ranked = [("B", -1.0), ("A", -1.5), ("C", -3.0)]
    split = expand_titles_to_items(ranked, CAT, w, "split")
    # B's items share 3:1 -> -1 + log .75 = -1.288 and -1 + log .25 = -2.386; A keeps -1.5
    assert [i for i, _ in split] == [1, 0, 2, 3]
    assert [s for _, s in split] == pytest.approx([-1 + math.log(.75), -1.5, -1 + math.log(.25), -3.0])
    assign = expand_titles_to_items(ranked, CAT, w, "assign")
    assert assign == [(1, -1.0), (2, -1.0), (0, -1.5), (3, -3.0)]
    # excluding a history item gives its title wholly to the other item; k cuts the list
    assert expand_titles_to_items(ranked, CAT, w, "split", exclude={1}, k=2) == [(2, -1.0), (0, -1.5)]
    # equal weights: ties broken by item id
    assert [i for i, _ in expand_titles_to_items([("B", 0.0)], CAT, [1.0] * 5, "split")] == [1, 2]
    with pytest.raises(FlrecError, match="split or assign"):
        expand_titles_to_items(ranked, CAT, w, "mean")


class TitleOnly(Recommender):
    """Returns fixed title rankings (no item scores): the runner expands them by popularity."""

    name = "titles"

    def __init__(self, rankings):
        self.catalogue, self.rankings = CAT, rankings

    def fit(self, dataset, run_dir=None):
        return self

    def recommend(self, rows, k=20, batch_size=256):
        return [self.rankings[r.user] for r in rows]

    def save(self, path):
        pass

    @classmethod
    def load(cls, path):
        raise NotImplementedError


class ItemScores(TitleOnly):
    """An ID model: item scores 4, 3, 2, 1, 0 for items 0..4 (titles A, B, C, D by first item)."""

    name = "ids"

    def __init__(self):
        self.catalogue = CAT

    def score(self, rows):
        return torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).expand(len(rows), -1)

    def recommend(self, rows, k=20, batch_size=256):
        return Recommender.recommend(self, rows, k, batch_size)


def test_item_protocol_hand_case(tmp_path):
    # row 0: target item 2 (title B, shared); row 1: target item 4 (D); row 2: target item 1 (B)
    test = [Interaction("r0", [0], 2), Interaction("r1", [0], 4), Interaction("r2", [3], 1)]
    rankings = {"r0": [("B", -1.0), ("A", -1.5)], "r1": [("A", -1.0), ("C", -2.0), ("D", -3.0)],
                "r2": [("C", -1.0), ("B", -2.0)]}
    s = evaluate(TitleOnly(rankings), _ds(test), EvalConfig(ks=[1, 3], beam=3, protocol="item"), tmp_path / "t")
    # title ranks: B@1, D@3, B@2. Item lists (assign, popularity 1,3,1,2,1): r0 [1, 2, 0] -> item 2 @2;
    # r1 [0, 3, 4] -> @3; r2 [3, 1, 2] -> item 1 @2
    assert s["metrics"]["hr@1"] == pytest.approx(1 / 3) and s["metrics"]["hr@3"] == pytest.approx(1.0)
    im = s["item_metrics"]
    assert im["hr@1"] == 0.0 and im["hr@3"] == pytest.approx(1.0)
    assert im["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5 + 1 / math.log2(3)) / 3)
    # expected item level (1/m on shared titles): row 0: 1/2 * 1, row 1: 1/log2(4), row 2: 1/2 * 1/log2(3)
    ex = s["item_metrics_expected"]
    assert ex["ndcg@3"] == pytest.approx((0.5 + 0.5 + 0.5 / math.log2(3)) / 3)
    assert s["item_top1_distinct_share"] == pytest.approx(1.0)  # top-1 items 1, 0, 3
    from flrec.evaluation.records import load_ranks

    recs = load_ranks(tmp_path / "t" / "ranks.jsonl")
    assert [r["item_rank"] for r in recs] == [2, 3, 2] and recs[0]["items"] == [1, 2, 0]
    assert per_row_metric(recs, "hr@2", rank_key="item_rank") == {0: 1.0, 1: 0.0, 2: 1.0}

    ids = evaluate(ItemScores(), _ds(test), EvalConfig(ks=[1, 3], beam=3, protocol="item"))
    # items by score: 0, 1, 2, 3, 4 -> item ranks 3, None (item 4 is 5th), 2; titles A, B, C -> B@2, miss, B@2
    assert ids["item_metrics"]["hr@3"] == pytest.approx(2 / 3) and ids["metrics"]["hr@3"] == pytest.approx(2 / 3)
    assert ids["item_metrics"]["ndcg@3"] == pytest.approx((0.5 + 1 / math.log2(3)) / 3)


def test_title_protocol_has_no_item_ranks(tmp_path):
    test = [Interaction("r0", [0], 2)]
    s = evaluate(TitleOnly({"r0": [("B", -1.0)]}), _ds(test), EvalConfig(ks=[1], beam=1), tmp_path / "t")
    assert s["protocol"] == "title" and "item_metrics" not in s
    assert s["item_metrics_expected"]["hr@1"] == pytest.approx(0.5)
    with pytest.raises(FlrecError, match="protocol=item"):
        per_row_metric([{"row": 0, "rank": 1}], "hr@1", rank_key="item_rank")


def test_tune_selection_and_title_floor_by_hand(tmp_path, monkeypatch):
    """Selection on a stubbed grid: best item-level point, ties to the earlier point, title floor."""
    from dataclasses import dataclass

    import flrec.experiments.tune as tune
    from flrec.recommenders.llm import DECODING_FILE

    @dataclass
    class Cfg:
        beam: int = 10
        batch_size: int = 8

        def replace(self, **kw):
            return Cfg(**{**self.__dict__, **kw})

    class Stub:
        assistant, item_popularity, config = None, [1.0], Cfg()

        def decode_candidates(self, rows, dec, lp):
            return [], []

        def finalise(self, rows, cands, probs, dec, lp, k):
            return dec, lp

    # (scoring, alpha) -> (title ndcg@10, item ndcg@10)
    table = {("sum", 0.0): (.30, .10), ("sum", 0.5): (.25, .40), ("trie_renorm", 0.0): (.31, .20),
             ("trie_renorm", 0.5): (.35, .20)}

    def measure(dataset, rows, dec, lp, ks):
        t, i = table[(dec.scoring, dec.pmi_alpha)]
        return {"title_metrics": {"ndcg@10": t}, "item_metrics": {"ndcg@10": i}, "top1_distinct_share": 0.0}

    monkeypatch.setattr(tune, "_measure", measure)
    ds = _ds([Interaction("r", [0], 1)])
    cfg = tune.TuneConfig(scorings=["sum", "trie_renorm"], length_penalties=[1.0], alphas=[0.0, 0.5])
    res = tune.tune_decoding(Stub(), ds, cfg, tmp_path / "a")
    assert [(p["decoding"]["scoring"], p["decoding"]["pmi_alpha"]) for p in res["points"]] == list(table)
    chosen = res["chosen"][DECODING_FILE]
    assert (chosen["decoding"]["scoring"], chosen["decoding"]["pmi_alpha"]) == ("sum", 0.5)
    # never below the first point's title-level value: (sum, .5) drops to .25 < .30, so the best
    # qualifying item-level point is the earlier of the two .20s
    res = tune.tune_decoding(Stub(), ds, cfg.replace(title_floor=1.0), tmp_path / "b")
    chosen = res["chosen"][DECODING_FILE]
    assert (chosen["decoding"]["scoring"], chosen["decoding"]["pmi_alpha"]) == ("trie_renorm", 0.0)
    written = json.loads((tmp_path / "b" / DECODING_FILE).read_text())
    assert written["decoding"]["scoring"] == "trie_renorm" and written["selected_on"]["value"] == .20


def test_choose_with_a_distinct_top1_floor_by_hand():
    """``choose`` alone: the diversity floor removes collapsed points; nothing qualifying -> the first point."""
    from flrec.experiments.tune import TuneConfig, choose
    from flrec.recommenders.llm import ASSISTED_DECODING_FILE, DECODING_FILE

    def pt(alpha, gamma, title, item, distinct):
        return {"decoding": {"scoring": "sum", "pmi_alpha": alpha, "gamma": gamma}, "length_penalty": 0.0,
                "title_metrics": {"ndcg@10": title}, "item_metrics": {"ndcg@10": item},
                "top1_distinct_share": distinct}

    points = [pt(0.0, 1.0, .30, .10, .2), pt(0.5, 1.0, .30, .30, .3), pt(1.0, 1.0, .29, .25, .6),
              pt(0.0, 0.5, .40, .50, .4), pt(0.5, 0.5, .35, .45, .7)]
    plain = choose(points, TuneConfig())
    assert list(plain) == [DECODING_FILE] and plain[DECODING_FILE] is points[1]
    both = choose(points, TuneConfig(distinct_floor=0.5), assisted=True)
    assert both[DECODING_FILE] is points[2] and both[ASSISTED_DECODING_FILE] is points[4]
    # .29 < 1.0 x .30: with both floors no plain point but the reference... which fails the diversity floor
    assert choose(points, TuneConfig(distinct_floor=0.5, title_floor=1.0))[DECODING_FILE] is points[0]
    with pytest.raises(ConfigError, match="distinct_floor"):
        TuneConfig(distinct_floor=1.5)
