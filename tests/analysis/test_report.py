"""Issue #14: the paper's analyses (ablation grid, long tail, disentanglement, cost, curves) and `flrec report`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from readme_text import links, pages

from flrec.analysis.cost import measure_inference_cost
from flrec.analysis.curves import read_curves
from flrec.analysis.disentangle import (
    attention_sharpness,
    disentanglement_score,
    factor_cosine_matrix,
    gate_entropy,
    mean_abs_offdiag,
    summarize_disentanglement,
    write_figures,
)
from flrec.analysis.factors import PlantedIntents, collect
from flrec.analysis.longtail import longtail
from flrec.analysis.plots import heatmap
from flrec.analysis.report import Sources, build_report, linked_figures, paper_findings
from flrec.cli import main
from flrec.data.prompts import PromptBuilder
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.errors import ConfigError, FlrecError
from flrec.evaluation.analysis import popular_items
from flrec.experiments.ablation import AblateConfig, build_grid, format_grid, run_ablation
from flrec.experiments.compare import CompareConfig, run_comparison
from flrec.experiments.runner import evaluate
from flrec.models.backbone import add_thought_token
from flrec.models.recommender import FLRConfig, FLRRecommender
from flrec.models.testing import build_tiny
from flrec.recommenders.base import Recommender

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_synthetic(SynthConfig(n_items=40, n_users=30, seq_len_min=4, seq_len_max=7,
                                          min_intent_items=2, n_intents=6), out)


# ------------------------------------------------------------------------------ disentanglement by hand
def test_factor_cosine_offdiag_and_ds_hand_values():
    orth = torch.eye(3)[None].repeat(4, 1, 1)  # every row: three orthogonal factors
    cos = factor_cosine_matrix(orth)
    torch.testing.assert_close(cos, torch.eye(3))
    assert mean_abs_offdiag(cos) == pytest.approx(0.0)
    same = torch.ones(2, 3, 5)  # identical factors
    assert mean_abs_offdiag(factor_cosine_matrix(same)) == pytest.approx(1.0)
    # row 0: factors (1,0), (1,1)/√2 -> cos 1/√2; row 1: (1,0), (-1,0) -> cos -1; mean = (1/√2 - 1) / 2
    f = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    assert mean_abs_offdiag(factor_cosine_matrix(f)) == pytest.approx(abs((2**-0.5 - 1) / 2), rel=1e-5)
    assert mean_abs_offdiag(torch.ones(1, 1)) is None
    # A_max: factor 0 puts .3 of its .4 history mass on one item, factor 1 has no history mass (left out)
    ia = torch.tensor([[[0.3, 0.1, 0.0], [0.0, 0.0, 0.0]]])
    assert attention_sharpness(ia) == pytest.approx(0.75)
    assert attention_sharpness(torch.zeros(1, 2, 3)) is None
    assert disentanglement_score(0.2, 0.75) == pytest.approx(0.6)
    assert disentanglement_score(None, 0.5) is None
    ratio, nats = gate_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    assert nats == pytest.approx(math.log(2) / 2) and ratio == pytest.approx(0.5)


def tiny_flr(num_factors: int = 3):
    model, tok = build_tiny("llama")
    thought = add_thought_token(model, tok)
    m = FLRRecommender(model, FLRConfig(num_factors=num_factors, gate_hidden=8), thought).eval()
    return m, PromptBuilder(tok, max_history=5)


def test_disentanglement_on_a_tiny_model_shapes_bounds_and_heatmaps(synth, tmp_path):
    m, builder = tiny_flr(num_factors=3)
    rows = synth["test"][:10]
    trace = collect(m, builder, rows, synth.catalogue, batch_size=4)
    rep = summarize_disentanglement(trace, list(synth.catalogue.titles), rows,
                                    PlantedIntents(synth.root / "intents.json"), examples=2, n_perm=10)
    cos = torch.tensor(rep["factor_cosine_matrix"])
    assert cos.shape == (3, 3) and torch.allclose(cos.diagonal(), torch.ones(3), atol=1e-5)
    assert torch.allclose(cos, cos.T, atol=1e-6)
    assert 0.0 <= rep["s_avg"] <= 1.0
    h = builder.max_history
    assert 1.0 / h - 1e-6 <= rep["a_max"] <= 1.0
    assert 0.0 <= rep["ds"] <= 1.0 and rep["ds"] == pytest.approx((1 - rep["s_avg"]) * rep["a_max"])
    assert 0.0 <= rep["gate_entropy"] <= 1.0
    ex = rep["examples"][0]
    hist = rows[0].history[-len(ex["titles"]):]
    assert ex["titles"] == [synth.catalogue.title(i) for i in hist]  # oldest first, the kept history
    assert len(ex["attention"]) == 3 and all(len(a) == len(ex["titles"]) for a in ex["attention"])
    assert "target_intent_share" in rep["health"]
    figs = write_figures(rep, tmp_path / "figs")
    assert set(figs) == {"factor_cosine", "attention_row0", "attention_row1"}
    assert all(_png_ok(p) for p in figs.values())


def test_heatmap_refuses_a_matrix_that_does_not_match_its_labels(tmp_path):
    with pytest.raises(FlrecError, match="does not match"):
        heatmap(tmp_path / "x.png", [[1.0, 2.0]], ["a"], ["x", "y", "z"])
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------ fake cells
class TargetFor(Recommender):
    """Puts the target's title first on rows where ``hit(row_index, row)`` holds, else a fixed list."""

    def __init__(self, dataset, hit):
        self.catalogue, self.dataset, self.hit = dataset.catalogue, dataset, hit
        self.index = {(r.user, r.timestamp): i for i, r in enumerate(dataset["test"])}
        self.last_generated_tokens = 0

    def fit(self, dataset, run_dir=None):
        return self

    def recommend(self, rows, k=20, batch_size=256):
        titles = self.catalogue.unique_titles
        out = []
        for row in rows:
            target = self.catalogue.title(row.target)
            ranked = [t for t in titles if t != target][:k]
            if self.hit(self.index[(row.user, row.timestamp)], row):
                ranked = [target, *ranked[: k - 1]]
            out.append([(t, float(-j)) for j, t in enumerate(ranked)])
        self.last_generated_tokens = 3 * len(rows)
        return out

    def save(self, path):
        pass

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def _runner(hits):
    """A CellRunner evaluating a TargetFor recommender chosen by the cell's method config."""
    seen = []

    def run(method, seed, dataset, cell_dir, mc, ev):
        seen.append((method, mc))
        return evaluate(TargetFor(dataset, hits(mc, seed)), dataset, ev.replace(seed=seed), run_dir=cell_dir, identity={})

    run.seen = seen
    return run


def test_longtail_groups_from_a_comparison(synth, tmp_path):
    popular = popular_items(synth)
    out = tmp_path / "cmp"
    # "flr" hits exactly the unpopular targets, "latentr3" exactly the popular ones
    hits = {"flr": lambda i, row: not popular[row.target], "latentr3": lambda i, row: bool(popular[row.target])}
    run = _runner(lambda mc, seed: hits[mc["sft"]["domain"]])
    cfg = CompareConfig(methods=["flr", "latentr3"], seeds=[1, 2], out=str(out), limit=20,
                        method_configs={m: {"sft": {"domain": m}} for m in hits})
    run_comparison(cfg, run, dataset=synth)
    rep = longtail(out)
    n_pop = sum(bool(popular[r.target]) for r in synth["test"][:20])
    assert 0 < n_pop < 20  # both groups are present in these rows
    assert rep["methods"]["flr"]["unpopular"]["hr@10"] == 1.0 and rep["methods"]["flr"]["popular"]["hr@10"] == 0.0
    assert rep["methods"]["latentr3"]["popular"]["hr@10"] == 1.0
    assert rep["methods"]["flr"]["popular"]["n_rows"] == n_pop
    assert rep["improvement"]["latentr3"]["popular"]["hr@10"] == pytest.approx(-100.0)
    assert rep["improvement"]["latentr3"]["unpopular"]["hr@10"] is None  # over a zero baseline
    # the same numbers from the cells when summary.json predates the group metrics
    s = json.loads((out / "summary.json").read_text())
    for st in s["methods"].values():
        st.pop("popularity")
    (out / "summary.json").write_text(json.dumps(s))
    assert longtail(out)["methods"] == rep["methods"]


# ------------------------------------------------------------------------------ ablation grid
def _grid_hits(mc, seed):
    flr = mc["sft"]["flr"]
    n = flr.get("num_factors") or len(flr.get("aux_losses", []))  # quality grows with K / #regularisers
    return lambda i, row: i % 6 < n


def test_regulariser_grid_runs_all_eight_subsets_through_the_compare_runner(synth, tmp_path):
    base = {"sft": {"backbone": "tiny:llama", "flr": {"aux_losses": ["orth", "div", "sparse", "routing"]}}}
    cfg = AblateConfig(grid="regularisers", method_config=base, seeds=[1, 2], limit=12, out=str(tmp_path / "abl"))
    run = _runner(_grid_hits)
    res = run_ablation(cfg, run, dataset=synth)
    names = list(res["grid"]["variants"])
    assert len(names) == 8 and res["grid"]["reference"] == "flr-orth+div+sparse" and "flr-none" in names
    assert {m for m, _ in run.seen} == {"flr"}  # every variant runs the registered method
    auxes = {tuple(mc["sft"]["flr"]["aux_losses"]) for _, mc in run.seen}
    assert len(auxes) == 8 and all(a[-1] == "routing" for a in auxes)  # routing stays on; only the three vary
    assert all(res["methods"][n]["n_seeds"] == 2 for n in names)
    # four regularisers on in the full model -> hits on 4 of every 6 rows; none (routing only) -> 1 of 6
    assert res["methods"]["flr-orth+div+sparse"]["hr@5"]["mean"] > res["methods"]["flr-none"]["hr@5"]["mean"]
    assert res["significance"]["reference"] == "flr-orth+div+sparse"
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert saved["grid"]["variants"]["flr-orth"] == {"regularisers": ["orth"], "also_on": ["routing"]}
    table = format_grid(saved)
    assert table.count("\n| ") == 8 and "✓" in table
    # rerun: every cell is reused
    n_before = len(run.seen)
    run_ablation(cfg, run, dataset=synth)
    assert len(run.seen) == n_before


def test_k_grid_and_variant_checks(synth, tmp_path):
    cfg = AblateConfig(grid="k", ks=[1, 2, 3], method_config={"sft": {"flr": {"num_factors": 3}}}, seeds=[1],
                       limit=12, out=str(tmp_path / "k"))
    configs, described, ref = build_grid(cfg)
    assert list(configs) == ["flr-k1", "flr-k2", "flr-k3"] and ref == "flr-k3"
    assert [described[n]["num_factors"] for n in configs] == [1, 2, 3]
    res = run_ablation(cfg, _runner(_grid_hits), dataset=synth)
    assert (tmp_path / "k" / "k_sweep.json").is_file()
    means = [res["methods"][n]["hr@5"]["mean"] for n in configs]
    assert means == sorted(means) and means[0] < means[-1]
    with pytest.raises(ConfigError, match="ks"):
        AblateConfig(grid="k", ks=[0, 2])
    with pytest.raises(ConfigError, match="reasoner"):
        build_grid(AblateConfig(method="bigrec"))
    with pytest.raises(ConfigError, match="must differ"):
        CompareConfig(methods=["pop"], variants={"pop": "flr"})
    with pytest.raises(ConfigError, match="folder name"):
        CompareConfig(methods=["../x"], variants={"../x": "flr"})


# ------------------------------------------------------------------------------ cost, cot, curves
def test_measure_inference_cost_shapes(synth):
    recs = {"a": TargetFor(synth, lambda i, r: True), "b": TargetFor(synth, lambda i, r: False)}
    rep = measure_inference_cost(recs, synth["test"][:6], k=10, batch_size=4, repeats=2)
    assert list(rep["methods"]) == ["a", "b"] and rep["rows"] == 6
    for st in rep["methods"].values():
        assert st["seconds_per_user"] > 0 and st["seconds_per_user_std"] >= 0
        assert st["generated_tokens_per_user"] == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        measure_inference_cost(recs, [], repeats=1)


def test_cot_writes_a_bounded_rationale_then_a_constrained_title(synth):
    from flrec.recommenders.cot import CoTRec, CoTRecConfig
    from flrec.training.sft import SFTConfig, build_model

    sft = SFTConfig(backbone="tiny:llama", flr=FLRConfig(reasoner="none"), max_history=5)
    cfg = CoTRecConfig(sft=sft, rationale_tokens=4, beam=10, batch_size=3)
    model, tok, _ = build_model(sft, synth)
    rec = CoTRec(synth.catalogue, cfg)
    rec._attach(model, tok, synth)
    rows = synth["test"][:5]
    cands, _ = rec.decode_candidates(rows)
    titles = sum(rec._title_len[i] for hyps in cands for i, _ in hyps)
    rationale = rec.last_generated_tokens - titles
    assert len(rows) <= rationale <= 4 * len(rows) and rec.last_rationale_tokens == rationale
    assert 0 <= rec.last_rationale_capped <= len(rows)
    assert CoTRecConfig().rationale_tokens == 256  # a safety cap, not a length
    ranked = rec.recommend(rows, k=10)
    assert all(len(r) == 10 and len({t for t, _ in r}) == 10 for r in ranked)
    assert all(t in set(synth.catalogue.titles) for r in ranked for t, _ in r)
    # padding-safe: one row at a time gives the same rankings as batches of three
    single = [rec.recommend([row], k=10, batch_size=1)[0] for row in rows]
    for a, b in zip(ranked, single, strict=True):
        assert [t for t, _ in a[:3]] == [t for t, _ in b[:3]]
        assert [s for _, s in a[:3]] == pytest.approx([s for _, s in b[:3]], abs=1e-3)
    with pytest.raises(ConfigError, match="rationale_tokens"):
        CoTRecConfig(rationale_tokens=0)


def _write_log(path: Path) -> None:
    rows = [{"step": s, "loss": 3.0 / s, "rec": 2.0 / s, "orth": 1.0, "lambda_orth": 0.5, "gate_usage": 0.5,
             "thought_cos": 0.9, "elapsed_s": s} for s in (1, 2, 3)]
    rows.append({"step": 3, "valid_loss": 0.7, "valid_rec": 0.7, "valid_orth": 0.9, "best_step": 3})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # a torn last line


def test_read_curves_splits_train_and_valid(tmp_path):
    _write_log(tmp_path / "run" / "log.jsonl")
    c = read_curves(tmp_path / "run")
    assert c["train"]["rec"] == ([1.0, 2.0, 3.0], [2.0, 1.0, 2.0 / 3])
    assert c["valid"]["rec"] == ([3.0], [0.7]) and "elapsed_s" not in c["train"]
    with pytest.raises(FlrecError, match="no training log"):
        read_curves(tmp_path)


# ------------------------------------------------------------------------------ the report
def test_report_on_a_tiny_results_dir_links_only_existing_figures(synth, tmp_path):
    res = tmp_path / "results"
    popular = popular_items(synth)
    hits = {"flr": lambda i, row: not popular[row.target] or i % 2 == 0, "latentr3": lambda i, row: i % 3 == 0,
            "bigrec": lambda i, row: i % 4 == 0}
    cfg = CompareConfig(methods=list(hits), seeds=[1, 2], out=str(res), limit=20,
                        method_configs={m: {"sft": {"domain": m}} for m in hits})
    run_comparison(cfg, _runner(lambda mc, seed: hits[mc["sft"]["domain"]]), dataset=synth)
    run_ablation(AblateConfig(grid="regularisers", seeds=[1], limit=12, out=str(tmp_path / "abl")),
                 _runner(_grid_hits), dataset=synth)
    run_ablation(AblateConfig(grid="k", seeds=[1], limit=12, out=str(tmp_path / "k")), _runner(_grid_hits),
                 dataset=synth)
    for name in ("ablation.json",):
        (res / name).write_text((tmp_path / "abl" / name).read_text())
    (res / "k_sweep.json").write_text((tmp_path / "k" / "k_sweep.json").read_text())
    m, builder = tiny_flr()
    rows = synth["test"][:6]
    dis = summarize_disentanglement(collect(m, builder, rows, synth.catalogue), list(synth.catalogue.titles))
    (res / "disentangle.json").write_text(json.dumps(dis))
    recs = {"bigrec": TargetFor(synth, lambda i, r: True), "flr": TargetFor(synth, lambda i, r: True),
            "cot": TargetFor(synth, lambda i, r: True)}
    (res / "cost.json").write_text(json.dumps(measure_inference_cost(recs, rows, repeats=1)))
    _write_log(res / "logs" / "flr" / "log.jsonl")
    _write_log(res / "logs" / "latentr3" / "log.jsonl")

    out = tmp_path / "report"
    assert main(["report", str(res), "--out", str(out), "--title", "tiny"]) == 0
    text = (out / "report.md").read_text()
    figs = linked_figures(out / "report.md")
    assert {p.stem for p in figs} == {"comparison_ndcg10", "ablation_ndcg10", "disentangle0_factor_cosine",
                                      "disentangle0_attention_row0", "longtail", "k_sweep", "inference_cost",
                                      "learning_curves"}  # one per question (two for disentanglement)
    assert all(_png_ok(p) for p in figs)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in figs)  # nothing unlinked
    assert "Not measured" not in text  # every analysis had its input
    for q in ("RQ1", "RQ2", "RQ4", "RQ5", "RQ6", "RQ7", "Learning curves"):
        assert f"## {q}" in text
    assert text.count("*Figure ") == len(figs)  # one caption per figure
    assert "| FLR's gain over LatentR3 is larger on the long tail (Fig. 7) |" in text
    # an existing report is not replaced without --overwrite (checked before any figure is drawn)
    before = (out / "report.md").read_text()
    assert main(["report", str(res), "--out", str(out)]) == 2
    assert (out / "report.md").read_text() == before


def test_report_says_what_is_missing_and_refuses_unknown_inputs(tmp_path):
    _write_log(tmp_path / "run" / "log.jsonl")
    rep = build_report([tmp_path / "run"], tmp_path / "out")
    text = rep.read_text()
    assert "flrec ablate --data DIR --grid regularisers" in text and "not measured" in text
    assert all(_png_ok(p) for p in linked_figures(rep)) and len(linked_figures(rep)) == 1
    (tmp_path / "out" / "figures" / "stale.png").write_bytes(b"x")
    build_report([tmp_path / "run"], tmp_path / "out", overwrite=True)  # figures/ is rebuilt
    assert not (tmp_path / "out" / "figures" / "stale.png").exists()
    assert all(_png_ok(p) for p in linked_figures(rep))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlrecError, match="no result"):
        build_report([tmp_path / "empty"], tmp_path / "out2")
    with pytest.raises(FlrecError, match="no such"):
        build_report([tmp_path / "missing"], tmp_path / "out3")


def test_every_figure_linked_from_committed_reports_exists():
    reports = sorted(REPO.glob("results/**/report.md"))
    if not reports:
        pytest.skip("no committed report")
    linked = {target for page in pages() for target, _ in links(page)}
    for rep in reports:  # the README (README.md or a docs page it links: docs/results/reports.md) links each report
        assert rep.resolve() in linked, rep
    for rep in reports:
        figs = linked_figures(rep)
        assert figs, rep
        for fig in figs:
            assert _png_ok(fig), f"{rep} links {fig}, which is missing or not a PNG"


def test_analyze_disentangle_and_cost_cli_on_saved_tiny_models(synth, tmp_path, capsys):
    from flrec.training.sft import SFTConfig, build_model

    dirs = {}
    for name, flr in (("flr", FLRConfig(num_factors=2, gate_hidden=8)), ("bigrec", FLRConfig(reasoner="none"))):
        model, tok, _ = build_model(SFTConfig(backbone="tiny:llama", flr=flr, max_history=5), synth)
        model.save_pretrained(tmp_path / name, tok)
        dirs[name] = tmp_path / name
    out = tmp_path / "analysis"
    assert main(["analyze", "disentangle", "--model", str(dirs["flr"]), "--data", str(synth.root), "--limit", "6",
                 "--examples", "1", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["rows"] == 6 and rep["num_factors"] == 2 and 0 <= rep["ds"] <= 1
    assert _png_ok(out / "factor_cosine.png") and _png_ok(out / "attention_row0.png")
    assert main(["analyze", "disentangle", "--model", str(dirs["flr"]), "--data", str(synth.root), "--limit", "6",
                 "--out", str(out)]) == 2  # disentangle.json exists: not replaced without --overwrite
    assert main(["analyze", "cost", "--data", str(synth.root), "--model", f"flr={dirs['flr']}",
                 "--model", f"cot={dirs['bigrec']}", "--model", f"bigrec={dirs['bigrec']}", "--limit", "3",
                 "--repeats", "1", "--batch-size", "3", "--rationale-tokens", "3", "--out", str(out), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert list(cost["methods"]) == ["bigrec", "flr", "cot"]  # the paper's order
    toks = {m: st["generated_tokens_per_user"] for m, st in cost["methods"].items()}
    assert toks["cot"] > toks["bigrec"]  # same model: the rationale adds tokens
    cot = cost["methods"]["cot"]  # the rationale length it measured, and how often the cap cut it
    assert 1 <= cot["rationale_tokens_per_user"] <= 3 and 0 <= cot["rationale_capped_share"] <= 1
    assert cost["rationale_cap"] == 3 and "rationale_tokens_per_user" not in cost["methods"]["bigrec"]
    assert main(["analyze", "cost", "--data", str(synth.root), "--model", "flr"]) == 2  # not METHOD=DIR
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "S_avg" in text and "| cot |" in text
    assert all(_png_ok(p) for p in linked_figures(tmp_path / "report" / "report.md"))


def test_ablate_cli_runs_the_k_grid_with_real_cells_and_reports_it(synth, tmp_path, capsys):
    llm = {"sft": {"backbone": "tiny:llama", "train_limit": 8, "valid_limit": 4, "flr": {"gate_hidden": 8},
                   "train": {"max_steps": 1, "mixed_precision": "no", "progress": False}},
           "beam": 10, "batch_size": 4}
    cfg = tmp_path / "flr.yaml"
    cfg.write_text(json.dumps(llm))
    out = tmp_path / "k"
    argv = ["ablate", "--data", str(synth.root), "--grid", "k", "--ks", "1,2", "--seeds", "1", "--limit", "4",
            "--method-config", str(cfg), "--out", str(out)]
    assert main(argv) == 0
    assert "| 1 |" in capsys.readouterr().out
    res = json.loads((out / "k_sweep.json").read_text())
    assert list(res["methods"]) == ["flr-k1", "flr-k2"] and res["significance"]["reference"] == "flr-k2"
    for k in (1, 2):
        saved = json.loads((out / "cells" / f"flr-k{k}" / "seed1" / "model" / "model" / "flr_config.json").read_text())
        assert saved["flr"]["num_factors"] == k  # the variant's K reached the trained model
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## RQ6" in text and "figures/k_sweep.png" in text
    assert "Not measured: run `flrec compare" in text  # the grid's summary.json is not a comparison of methods
    assert "flr-k1/seed1" in text  # the cells' SFT logs give the learning curves
    assert all(_png_ok(p) for p in linked_figures(tmp_path / "rep" / "report.md"))


def _k_grid(means: dict[int, float], std: float = 0.0) -> Sources:
    variants = {f"k{k}": {"num_factors": k} for k in means}
    methods = {f"k{k}": {"ndcg@10": {"mean": m, "std": std}} for k, m in means.items()}
    return Sources(k_sweep=(Path("k_sweep.json"), {"grid": {"variants": variants}, "methods": methods}))


def test_k_verdicts_never_name_an_unmeasured_k_and_ties_are_inconclusive():
    """Issue 28 #8: --ks 1,2 tied at 0 printed "K=3 is best ... not reproduced" and "K=1 is worst ... reproduced"."""
    rows = {a: (b, c) for a, b, c in paper_findings(_k_grid({1: 0.0, 2: 0.0}), None, None)}
    assert rows["K=3 is best on CDs (Fig. 8)"][1] == "not measured" and "best K=3" not in rows["K=3 is best on CDs (Fig. 8)"][0]
    assert rows["K=1 is worst (Fig. 8)"][1] == "inconclusive"
    rows = {a: c for a, _, c in paper_findings(_k_grid({1: 0.1, 2: 0.2, 3: 0.3}), None, None)}
    assert rows == {**rows, "K=3 is best on CDs (Fig. 8)": "reproduced", "K=1 is worst (Fig. 8)": "reproduced"}
    rows = {a: c for a, _, c in paper_findings(_k_grid({1: 0.1, 2: 0.2, 3: 0.25}, std=0.06), None, None)}
    assert rows["K=3 is best on CDs (Fig. 8)"] == "inconclusive"  # within the seeds' noise
    assert rows["K=1 is worst (Fig. 8)"] == "reproduced"
    rows = {a: c for a, _, c in paper_findings(_k_grid({1: 0.3, 2: 0.2, 3: 0.1}), None, None)}
    assert rows["K=3 is best on CDs (Fig. 8)"] == "not reproduced" and rows["K=1 is worst (Fig. 8)"] == "not reproduced"


def test_report_out_that_is_a_file_or_an_input_is_a_one_line_error(tmp_path, capsys):
    """Issue 28 #10: `report --out FILE` raised NotADirectoryError; an --out holding an input is refused."""
    res = tmp_path / "results"
    res.mkdir()
    (res / "k_sweep.json").write_text("{}")
    (tmp_path / "file.md").write_text("mine")
    assert main(["report", str(res), "--out", str(tmp_path / "file.md")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file.md").read_text() == "mine"
    assert main(["report", str(res), "--out", str(tmp_path), "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err


def test_thought_finding_rests_on_interventions():
    from pathlib import Path

    from flrec.analysis.report import thought_finding

    used = {"thought_swap_delta": 0.05, "thought_swap_delta_p": 0.001, "thought_user_share": 0.4,
            "argmax_intent_mi_p": 0.01}
    assert thought_finding([(Path("factors.json"), used)])[2] == "reproduced"
    inert = {**used, "thought_swap_delta": -0.00003, "thought_swap_delta_p": 0.6}
    assert thought_finding([(Path("factors.json"), inert)])[2] == "not reproduced"
    unrouted = {**used, "argmax_intent_mi_p": 0.4}
    assert thought_finding([(Path("factors.json"), unrouted)])[2] == "not reproduced"
    z_only = {"z_cross_row_cosine": 0.03}  # a healthy z says nothing about what the LM receives
    assert thought_finding([(Path("factors.json"), z_only)])[2] == "not measured"
    assert thought_finding([])[2] == "not measured"


def test_long_tail_verdict_compares_flr_with_latentr3_only():
    from flrec.analysis.report import Sources, paper_findings

    groups = {"popular": {"ndcg@10": 1.0}, "unpopular": {"ndcg@10": 5.0}}
    grpo_vs_flr = {"reference": "flr_grpo", "improvement": {"flr": groups}}
    rows = {f: v for f, _, v in paper_findings(Sources(), grpo_vs_flr, None)}
    assert rows["FLR's gain over LatentR3 is larger on the long tail (Fig. 7)"] == "not measured"
    flr_vs_lr3 = {"reference": "flr", "improvement": {"latentr3": groups, "bigrec": groups}}
    rows = {f: v for f, _, v in paper_findings(Sources(), flr_vs_lr3, None)}
    assert rows["FLR's gain over LatentR3 is larger on the long tail (Fig. 7)"] == "reproduced"
