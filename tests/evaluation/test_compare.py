"""run_comparison: cell layout, exact summary shape, resumability, failure isolation, significance."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from flrec.config import ConfigBase, option
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError
from flrec.evaluation.records import load_ranks
from flrec.experiments.compare import CompareConfig, format_markdown, run_comparison
from flrec.experiments.compare_stats import upgrade_summary
from flrec.recommenders import base
from flrec.recommenders.base import Recommender

REF, OTHER, BROKEN, MISSING = "test_ref", "test_other", "test_broken", "test_not_registered"
CALLS: dict[str, int] = {}


def tiny_dataset(n_items: int = 25, seed: int = 0) -> RecDataset:
    rng = np.random.default_rng(seed)
    titles = [f"T{i // 2}" if i < 6 else f"T{i}" for i in range(n_items)]  # a few shared titles

    def rows(n: int) -> list[Interaction]:
        return [Interaction(f"u{i % 9}", rng.integers(0, n_items, 3).tolist(), int(rng.integers(0, n_items)))
                for i in range(n)]

    return RecDataset(Catalogue(titles), {"train": rows(50), "valid": rows(8), "test": rows(30)})


@dataclass
class FakeConfig(ConfigBase):
    seed: int = option(0, help="seed")
    every: int = option(2, help="put the target first on rows whose target % every == seed % every")


class Oracle(Recommender):
    """Scores: seeded noise, plus the target first on a deterministic subset of rows (a good method)."""

    name = REF
    config_cls = FakeConfig

    def __init__(self, catalogue: Catalogue, config: FakeConfig):
        self.catalogue, self.config = catalogue, config

    def fit(self, dataset, run_dir=None):
        CALLS[self.name] = CALLS.get(self.name, 0) + 1
        if self.name == BROKEN:
            raise RuntimeError("boom: simulated training crash")
        return self

    def score(self, rows):
        g = torch.Generator().manual_seed(self.config.seed)
        s = torch.rand(len(rows), len(self.catalogue), generator=g)
        for i, r in enumerate(rows):
            if r.target % self.config.every == self.config.seed % self.config.every:
                s[i, r.target] = 2.0
        return s

    def recommend(self, rows, k=20, batch_size=256):
        CALLS["rows"] = CALLS.get("rows", 0) + len(rows)
        if "crash_eval_after" in CALLS and CALLS["rows"] > CALLS["crash_eval_after"]:
            del CALLS["crash_eval_after"]
            raise RuntimeError("simulated crash during evaluation")
        return super().recommend(rows, k, batch_size)

    def save(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(json.dumps([self.catalogue.titles, self.config.to_dict()]))

    @classmethod
    def load(cls, path):
        titles, cfg = json.loads((Path(path) / "config.json").read_text())
        return cls(Catalogue(titles), FakeConfig(**cfg))


class Other(Oracle):
    name = OTHER


class Broken(Oracle):
    name = BROKEN


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    CALLS.clear()
    for cls in (Oracle, Other, Broken):
        monkeypatch.setitem(base._REGISTRY, cls.name, cls)
    if "pop" not in base.available_recommenders():  # flrec.recommenders.pop not written yet: stand in for it
        monkeypatch.setitem(base._REGISTRY, "pop", type("FakePop", (Other,), {"name": "pop"}))


def _cfg(tmp_path: Path, **kw) -> CompareConfig:
    base_kw = dict(methods=[REF, "pop", OTHER, BROKEN], seeds=[1, 2], limit=20, out=str(tmp_path / "cmp"),
                   reference=REF, batch_size=7, method_configs={OTHER: {"every": 5}})
    return CompareConfig(**{**base_kw, **kw})


def test_compare_summary_shape_resume_and_failures(tmp_path: Path):
    ds = tiny_dataset()
    cfg = _cfg(tmp_path)
    summary = run_comparison(cfg, dataset=ds, budget={"device": "cpu"})
    out = Path(cfg.out)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    assert set(summary) == {"methods", "significance", "significance_item", "significance_all", "relative_improvement",
                            "budget"}
    for name, st in summary["methods"].items():
        assert set(st) == {"hr@5", "hr@10", "ndcg@5", "ndcg@10", "n_seeds", "n_rows", "seconds_per_user",
                           "top1_distinct_share", "expected_item_ndcg@10", "item_metrics", "popularity"}, name
    for name in (REF, "pop", OTHER):
        st = summary["methods"][name]
        assert st["n_seeds"] == 2 and st["n_rows"] == 20
        assert all(set(st[m]) == {"mean", "std"} for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"))
        for seed in (1, 2):
            cell = out / "cells" / name / f"seed{seed}"
            assert (cell / "summary.json").is_file() and len(load_ranks(cell / "ranks.jsonl")) == 20
    for name in (BROKEN,):
        assert summary["methods"][name] == {"hr@5": None, "hr@10": None, "ndcg@5": None, "ndcg@10": None,
                                            "n_seeds": 0, "n_rows": 0, "seconds_per_user": None,
                                            "top1_distinct_share": None, "expected_item_ndcg@10": None,
                                            "item_metrics": None, "popularity": None}
    assert "boom" in (out / "cells" / BROKEN / "seed1" / "error.txt").read_text()
    cells = summary["budget"]["cells"]
    assert cells[f"{BROKEN}/seed1"]["status"] == "failed" and "boom" in cells[f"{BROKEN}/seed1"]["error"]
    assert cells["pop/seed2"]["status"] == "ok" and cells["pop/seed2"]["wall_seconds"] > 0
    assert summary["budget"]["device"] == "cpu" and summary["budget"]["machine"]["cpu_count"] >= 1

    # Mean/std over seeds are the sample statistics of the cells' own metrics.
    vals = [json.loads((out / "cells" / REF / f"seed{s}" / "summary.json").read_text())["metrics"]["ndcg@10"]
            for s in (1, 2)]
    assert summary["methods"][REF]["ndcg@10"] == {"mean": pytest.approx(np.mean(vals)),
                                                   "std": pytest.approx(np.std(vals, ddof=1))}

    # Shared-title hits are discounted (T0..T2 name two items each), never inflated.
    for name in (REF, "pop", OTHER):
        st = summary["methods"][name]
        assert 0.0 <= st["expected_item_ndcg@10"]["mean"] <= st["ndcg@10"]["mean"]

    # Significance: reference vs the best other finished method, per-row NDCG@10 averaged over seeds.
    sig = summary["significance"]
    best = max(("pop", OTHER), key=lambda m: summary["methods"][m]["ndcg@10"]["mean"])
    assert sig["metric"] == "ndcg@10" and sig["reference"] == REF and sig["vs"] == best and sig["n"] == 20

    def per_row(name: str) -> np.ndarray:
        recs = [sorted(load_ranks(out / "cells" / name / f"seed{s}" / "ranks.jsonl"), key=lambda r: r["row"])
                for s in (1, 2)]
        nd = [[0.0 if r["rank"] is None or r["rank"] > 10 else 1 / math.log2(r["rank"] + 1) for r in rs] for rs in recs]
        return np.mean(nd, axis=0)

    ref = stats.ttest_rel(per_row(REF), per_row(best))
    assert sig["p_value"] == pytest.approx(ref.pvalue) and sig["t"] == pytest.approx(ref.statistic)
    # significance_all: the reference against every other method, the same test
    assert set(summary["significance_all"]) == {"pop", OTHER}
    for name in ("pop", OTHER):
        each = stats.ttest_rel(per_row(REF), per_row(name))
        got = summary["significance_all"][name]
        assert got["n"] == 20 and got["t"] == pytest.approx(each.statistic)
        assert got["p_value"] == pytest.approx(each.pvalue, nan_ok=True)
    assert set(summary["relative_improvement"]) == {"pop", OTHER}
    r, b = summary["methods"][REF]["hr@10"]["mean"], summary["methods"][OTHER]["hr@10"]["mean"]
    assert summary["relative_improvement"][OTHER]["hr@10"] == pytest.approx((r - b) / b * 100)

    md = (out / "summary.md").read_text()
    assert f"| {REF} | " in md and "±" in md and f"vs. {best}" in md and "failed" in md

    # Rerun: finished cells are reused untouched; failed ones are retried.
    stamp = (out / "cells" / "pop" / "seed1" / "summary.json").stat().st_mtime_ns
    before = dict(CALLS)
    again = run_comparison(cfg, dataset=ds)
    assert CALLS[REF] == before[REF] and CALLS[OTHER] == before[OTHER]
    assert CALLS[BROKEN] == before[BROKEN] + 2
    assert (out / "cells" / "pop" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    assert again["budget"]["cells"][f"{REF}/seed1"]["reused"] is True
    assert again["methods"] == summary["methods"] and again["significance"] == summary["significance"]

    # A finished cell evaluated on other rows, or with another method config, is refused before any work.
    before = dict(CALLS)
    with pytest.raises(ConfigError, match=r"cells/pop/seed1 holds a comparison cell.*limit 20 -> 10.*--force"):
        run_comparison(cfg.replace(limit=10, methods=["pop", OTHER]), dataset=ds)
    with pytest.raises(ConfigError, match=r"config.every 5 -> 3"):
        run_comparison(cfg.replace(method_configs={OTHER: {"every": 3}}), dataset=ds)
    assert CALLS == before
    forced = run_comparison(cfg.replace(methods=[OTHER], method_configs={OTHER: {"every": 3}}, overwrite=True),
                            dataset=ds)
    assert CALLS[OTHER] == before[OTHER] + 2 and forced["budget"]["cells"][f"{OTHER}/seed1"]["reused"] is False


def test_unknown_or_path_like_method_is_refused_before_any_work(tmp_path: Path):
    for bad in (MISSING, "../../../x", "pop/../../y"):
        with pytest.raises(ConfigError, match="unknown method"):
            _cfg(tmp_path, methods=["pop", bad])
    assert not (tmp_path / "cmp").exists()


def test_cell_crashed_mid_eval_resumes_from_saved_model(tmp_path: Path):
    ds = tiny_dataset()
    cfg = _cfg(tmp_path, methods=[REF], seeds=[1], method_configs={})
    clean = run_comparison(cfg.replace(out=str(tmp_path / "clean")), dataset=ds)
    CALLS.clear()
    CALLS["crash_eval_after"] = 7  # the second batch of 7 rows raises
    crashed = run_comparison(cfg, dataset=ds)
    assert crashed["budget"]["cells"][f"{REF}/seed1"]["status"] == "failed"
    cell = Path(cfg.out) / "cells" / REF / "seed1"
    assert len((cell / "ranks.partial.jsonl").read_text().splitlines()) == 7
    CALLS.clear()
    resumed = run_comparison(cfg, dataset=ds)
    assert CALLS.get(REF, 0) == 0 and CALLS["rows"] == 20 - 7  # loaded the saved model, evaluated the rest
    def untimed(methods: dict) -> dict:  # wall-clock cost differs between runs; everything else must not
        return {m: {k: v for k, v in st.items() if k != "seconds_per_user"} for m, st in methods.items()}

    assert untimed(resumed["methods"]) == untimed(clean["methods"])
    assert (cell / "ranks.jsonl").read_bytes() == (tmp_path / "clean" / "cells" / REF / "seed1" / "ranks.jsonl").read_bytes()


def test_compare_without_reference_skips_significance(tmp_path: Path):
    s = run_comparison(_cfg(tmp_path, methods=["pop", OTHER], seeds=[3], method_configs={}), dataset=tiny_dataset())
    assert s["significance"]["p_value"] is None and "not among the methods" in s["significance"]["skipped"]
    assert s["relative_improvement"] == {} and s["methods"]["pop"]["hr@10"]["std"] == 0.0
    assert "skipped" in format_markdown(s)


def test_compare_config_checks_and_yaml_method_config(tmp_path: Path):
    with pytest.raises(ConfigError, match="method_configs.*typo"):
        CompareConfig(methods=["pop"], method_configs={"typo": {}})
    # entries of methods not run now are kept for a later run of the whole config (--methods subsets it)
    assert CompareConfig(methods=["pop"], method_configs={"sasrec": {}}, method_seeds={"v": [0]},
                         variants={"v": "pop"}).methods == ["pop"]
    with pytest.raises(ConfigError, match="duplicates"):
        CompareConfig(methods=["pop", "pop"])
    with pytest.raises(ConfigError, match="beam"):
        CompareConfig(methods=["pop"], beam=5)
    cfg = CompareConfig.load(overrides=["methods=pop,sasrec", "seeds=1,2", "limit=100"])
    assert cfg.methods == ["pop", "sasrec"] and cfg.seeds == [1, 2] and cfg.limit == 100

    y = tmp_path / "other.yaml"
    y.write_text("every: 1\n")  # every row gets its target first -> perfect scores
    s = run_comparison(_cfg(tmp_path, methods=[OTHER], seeds=[1], method_configs={OTHER: str(y)}),
                       dataset=tiny_dataset())
    assert s["methods"][OTHER]["hr@5"]["mean"] == 1.0
    with pytest.raises(ConfigError, match="not found"):
        _cfg(tmp_path, method_configs={OTHER: str(tmp_path / "nope.yaml")}).method_config(OTHER)
    # a file plus dotted overrides: the file's keys, the overrides on top, nested sections kept
    y.write_text("every: 1\nsection: {a: 1, b: {c: 2}}\n")
    got = _cfg(tmp_path, method_configs={OTHER: {"file": str(y), "every": 3, "section.b.c": 5}}).method_config(OTHER)
    assert got == {"every": 3, "section": {"a": 1, "b": {"c": 5}}}
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        _cfg(tmp_path, method_configs={OTHER: {"file": str(tmp_path / "nope.yaml"), "every": 3}}).method_config(OTHER)


def test_method_seeds_override_seeds_per_method(tmp_path: Path):
    cfg = _cfg(tmp_path, methods=[REF, OTHER], seeds=[1, 2], method_seeds={OTHER: [7]}, method_configs={},
               budget={"llm_training": "100 steps"})
    s = run_comparison(cfg, dataset=tiny_dataset())
    assert s["budget"]["llm_training"] == "100 steps"  # the config's budget note travels into summary.json
    cells = Path(cfg.out) / "cells"
    assert sorted(p.name for p in (cells / OTHER).iterdir()) == ["seed7"]
    assert sorted(p.name for p in (cells / REF).iterdir()) == ["seed1", "seed2"]
    assert s["methods"][OTHER]["n_seeds"] == 1 and s["methods"][REF]["n_seeds"] == 2
    assert s["significance"]["vs"] == OTHER and s["significance"]["n"] == 20
    with pytest.raises(ConfigError, match="method_seeds.*typo"):
        CompareConfig(methods=["pop"], method_seeds={"typo": [1]})
    with pytest.raises(ConfigError, match="method_seeds.pop"):
        CompareConfig(methods=["pop"], method_seeds={"pop": []})
    # YAML/CLI values are coerced like top-level keys: a scalar or "a,b" becomes a list of ints
    assert CompareConfig.load(overrides=["methods=pop", "method_seeds.pop=0"]).method_seeds == {"pop": [0]}
    assert CompareConfig.load(overrides=["methods=pop", "method_seeds.pop=0,1"]).method_seeds == {"pop": [0, 1]}
    with pytest.raises(ConfigError, match="method_seeds.pop.*expected int"):
        CompareConfig.load(overrides=["methods=pop", "method_seeds.pop=a"])


def test_table_shows_no_fake_spread_no_zero_baseline_ratio_and_warns_on_small_n(tmp_path: Path, capsys):
    s = run_comparison(_cfg(tmp_path, methods=[REF, "pop", OTHER], seeds=[1], limit=12, method_configs={}),
                       dataset=tiny_dataset())
    err = capsys.readouterr().err
    assert "compare: 3 cells" in err and "cell 2/3 pop seed 1" in err
    md = format_markdown(s)
    assert "± 0.0000" not in md and "± –" in md  # one seed: no spread to report
    assert "n = 12 rows" in md and "Caveat: only 12 rows" in md
    zero = json.loads(json.dumps(s))
    zero["methods"][OTHER]["ndcg@10"]["mean"] = 0.0
    zero["relative_improvement"][OTHER]["ndcg@10"] = None
    row = next(line for line in format_markdown(zero).splitlines() if line.startswith(f"| {OTHER} |"))
    assert row.endswith("| n/a |")
    # run_comparison itself never divides by a zero mean
    for m in s["methods"]:
        for k, v in s["relative_improvement"].get(m, {}).items():
            st = s["methods"][m]["item_metrics"]["ndcg@10"] if k == "item_protocol_ndcg@10" else s["methods"][m][k]
            assert (v is None) == (st["mean"] == 0)


def _item_ndcg10(rank):
    return 0.0 if rank is None or rank > 10 else 1 / math.log2(rank + 1)


def test_item_level_columns_for_every_method_and_title_cells_are_reranked_not_refit(tmp_path: Path):
    ds = tiny_dataset()  # T0, T1, T2 each name two items: title and item ranks differ there
    cfg = _cfg(tmp_path, methods=[REF, OTHER], protocol="title")
    title_only = run_comparison(cfg, dataset=ds)
    out = Path(cfg.out)
    assert all(st["item_metrics"] is None for st in title_only["methods"].values())
    assert title_only["significance_item"]["skipped"]
    md = format_markdown(title_only)
    assert "| expected item NDCG@10 | seeds |" in md and "item HR@10" not in md  # the 1/m-discounted column only

    fits = dict(CALLS)
    both = run_comparison(cfg.replace(protocol="item"), dataset=ds)
    assert CALLS[REF] == fits[REF] and CALLS[OTHER] == fits[OTHER]  # saved models re-ranked, not refit
    cell = out / "cells" / REF / "seed1"
    assert (cell / "summary.title-protocol.json").is_file() and (cell / "ranks.title-protocol.jsonl").is_file()
    for name in (REF, OTHER):
        st, old = both["methods"][name], title_only["methods"][name]
        assert {m: st[m] for m in ("hr@10", "ndcg@10")} == {m: old[m] for m in ("hr@10", "ndcg@10")}
        # item NDCG@10 by hand: the target item's rank among the scored items, averaged over rows then seeds
        per_seed = [np.mean([_item_ndcg10(r["item_rank"]) for r in load_ranks(out / "cells" / name / f"seed{s}" / "ranks.jsonl")])
                    for s in (1, 2)]
        assert st["item_metrics"]["ndcg@10"]["mean"] == pytest.approx(np.mean(per_seed))
        for s in (1, 2):  # an ID model ranks items: the item rank is the target's rank in its scores
            model = Oracle(ds.catalogue, FakeConfig(seed=s, every=2 if name == REF else 5))
            rows = ds["test"][:20]
            scores = torch.cat([model.score(rows[i:i + 7]) for i in range(0, 20, 7)])  # batch_size=7 as run
            for r in load_ranks(out / "cells" / name / f"seed{s}" / "ranks.jsonl"):
                rank = int((scores[r["row"]] > scores[r["row"], r["target"]]).sum()) + 1
                assert r["item_rank"] == (rank if rank <= 10 else None)
    recs = [r for d in (out / "cells").glob("*/seed*") for r in load_ranks(d / "ranks.jsonl")]
    # one title per item position at most: an item is never ranked above its title; shared titles differ
    assert all(r["item_rank"] is None or (r["rank"] is not None and r["item_rank"] >= r["rank"]) for r in recs)
    assert any(r["item_rank"] != r["rank"] for r in recs if r["target_title_shared"] and r["rank"] is not None)

    sig = both["significance_item"]
    assert sig["metric"] == "item_protocol_ndcg@10" and sig["vs"] == OTHER and sig["n"] == 20
    per_row = {m: np.mean([[_item_ndcg10(r["item_rank"]) for r in sorted(load_ranks(out / "cells" / m / f"seed{s}" / "ranks.jsonl"),
                                                                     key=lambda r: r["row"])] for s in (1, 2)], axis=0)
               for m in (REF, OTHER)}
    assert sig["p_value"] == pytest.approx(stats.ttest_rel(per_row[REF], per_row[OTHER]).pvalue)
    r, b = (both["methods"][m]["item_metrics"]["ndcg@10"]["mean"] for m in (REF, OTHER))
    assert both["relative_improvement"][OTHER]["item_protocol_ndcg@10"] == pytest.approx((r - b) / b * 100)

    md = format_markdown(both)
    assert "| HR@10 | NDCG@5 | NDCG@10 | item HR@10 | item NDCG@10 | seeds |" in md
    st = both["methods"][OTHER]
    assert f"| {st['ndcg@10']['mean']:.4f} ± {st['ndcg@10']['std']:.4f} | " \
           f"{st['item_metrics']['hr@10']['mean']:.4f} ± {st['item_metrics']['hr@10']['std']:.4f} |" in md
    assert "Item level (eval.protocol=item)" in md and "item NDCG@10 |" in md.split("Relative improvement")[1]
    # a rerun reuses the item-protocol cells as they are
    stamp = (cell / "summary.json").stat().st_mtime_ns
    assert run_comparison(cfg.replace(protocol="item"), dataset=ds)["methods"] == both["methods"]
    assert (cell / "summary.json").stat().st_mtime_ns == stamp


def _stat(mean: float) -> dict:
    return {"mean": mean, "std": 0.0}


def test_a_summary_written_before_the_rename_reads_as_today():
    """Old summaries used ``item_ndcg@10`` for two metrics: per method the 1/m-discounted title-level
    NDCG@10, in relative_improvement and significance_item the item protocol's NDCG@10."""
    metrics = {m: _stat(0.02) for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10")}
    method = {**metrics, "n_seeds": 1, "n_rows": 40, "seconds_per_user": None, "top1_distinct_share": None}
    old = {
        "methods": {
            REF: {**method, "item_ndcg@10": _stat(0.0067), "item_metrics": {**metrics, "ndcg@10": _stat(0.0119)}},
            OTHER: {**method, "item_ndcg@10": _stat(0.005), "item_metrics": {**metrics, "ndcg@10": _stat(0.01)}},
        },
        "significance": {"metric": "ndcg@10", "reference": REF, "vs": OTHER, "p_value": 0.5, "t": 0.1, "n": 40},
        "significance_item": {"metric": "item_ndcg@10", "reference": REF, "vs": OTHER, "p_value": 0.2, "t": 1.0,
                              "n": 40},
        "relative_improvement": {OTHER: {"ndcg@10": 0.0, "item_ndcg@10": 19.0}},
        "budget": {"cells": {}},
    }
    frozen = json.dumps(old)
    new = upgrade_summary(old)
    assert json.dumps(old) == frozen  # the input is left as it was
    assert new["methods"][REF]["expected_item_ndcg@10"] == _stat(0.0067) and "item_ndcg@10" not in new["methods"][REF]
    assert new["methods"][REF]["item_metrics"]["ndcg@10"] == _stat(0.0119)
    assert new["relative_improvement"][OTHER] == {"ndcg@10": 0.0, "item_protocol_ndcg@10": 19.0}
    assert new["significance_item"]["metric"] == "item_protocol_ndcg@10"
    assert list(new["methods"][REF]) == [k.replace("item_ndcg", "expected_item_ndcg") for k in old["methods"][REF]]
    assert upgrade_summary(new) == new  # today's summaries pass unchanged
    md = format_markdown(old)
    assert md == format_markdown(new)
    assert "| item HR@10 | item NDCG@10 | seeds |" in md and "0.0119" in md and "0.0067" not in md
    title_only = {**old, "methods": {m: {**st, "item_metrics": None} for m, st in old["methods"].items()}}
    md = format_markdown(title_only)
    assert "| expected item NDCG@10 | seeds |" in md and "0.0067" in md
