"""``make demo``: embedded data -> FLR SFT -> constrained-beam evaluation -> table beside Pop.

Every number printed is measured in this run; the run directory holds the logs, per-row ranks and
summaries. Rerunning resumes (finished SFT and evaluations are reused).
"""

from __future__ import annotations

import time
from pathlib import Path

from flrec.errors import FlrecError

REPO = Path(__file__).resolve().parents[2]
METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
DEMO_EVAL_ROWS = 64  # test rows ranked by default: with set-up the demo stays under 15 minutes on 2 cores
# test rows of the factor diagnostics and thought interventions (two prompt passes per row: ~1.5 min for 64
# rows on 2 cores); `flrec analyze factors --limit 192` gives the paired test more power.
DEMO_PROBE_ROWS = 64


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 86 - len(text)), flush=True)


def results_table(rows: dict[str, dict]) -> str:
    """Markdown table of ``{method: evaluation summary}``."""
    from flrec.utils.text import markdown_table

    body = []
    for name, s in rows.items():
        m = s["metrics"]
        spu = (s.get("inference") or {}).get("seconds_per_user")
        cost = f"{spu:.3f}" if spu is not None else "-"
        body.append([name, *(f"{m[k]:.4f}" for k in METRICS), cost, str(s["n_rows"])])
    return "\n".join(markdown_table(["method", *(m.upper() for m in METRICS), "s/user", "rows"], body))


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, eval_rows: int | None = None,
             config: str | Path | None = None, probe_rows: int | None = None) -> dict:
    """Run the main job on the embedded defaults; returns ``{method: summary}``. ``probe_rows``: test rows
    of the factor diagnostics and thought interventions (default: the larger of ``eval_rows`` and 192)."""
    from flrec.analysis.factors import factor_diagnostics, format_report
    from flrec.data.load import load_dataset
    from flrec.data.prompts import PromptBuilder
    from flrec.data.stats import dataset_stats, format_stats
    from flrec.evaluation.metrics import EVAL_KS
    from flrec.experiments.runner import EvalConfig, evaluate
    from flrec.recommenders.pop import Pop
    from flrec.serving.load import load_llm_recommender
    from flrec.training.sft import SFTConfig, run_sft
    from flrec.utils.io import atomic_write_json, atomic_write_text
    from flrec.utils.precision import resolve_inference_dtype
    from flrec.utils.runid import model_identity

    t0 = time.time()
    out = Path(out)
    config = Path(config) if config else REPO / "configs" / "demo.yaml"
    if not config.is_file():
        raise FlrecError(f"demo config {config} not found; run `flrec demo` from the flrec repository or pass config=")
    overrides = [f"run_dir={out / 'sft'}"] + ([f"train.max_steps={steps}"] if steps else [])
    cfg = SFTConfig.load(config, overrides)
    eval_rows = DEMO_EVAL_ROWS if eval_rows is None else eval_rows

    _banner("1/4 embedded dataset (flrec data synth)")
    ds = load_dataset(cfg.data)
    print(format_stats(dataset_stats(ds)))
    print(f"dataset folder: {ds.root}")

    _banner("2/4 embedded backbone and prompt")
    from flrec.models.backbone import add_thought_token, load_backbone

    model, tok = load_backbone(cfg.backbone)
    add_thought_token(model, tok)
    row = ds["test"][0]
    builder = PromptBuilder.for_dataset(tok, ds)
    print(builder.render(ds.history_titles(row)))
    print(f"--- {len(builder.encode(ds.history_titles(row)))} prompt tokens; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"target: {ds.catalogue.title(row.target)!r}")
    del model

    _banner(f"3/4 FLR SFT ({cfg.train.max_steps} steps, K={cfg.flr.num_factors}, N={cfg.flr.steps})")
    res = run_sft(cfg, ds)
    print(f"best step {res['best_step']} (valid loss {res['best_valid_loss']:.4f}); model: {res['model_dir']}")

    _banner(f"4/4 evaluation on the first {eval_rows} test rows (beam 10, full catalogue trie)")
    ecfg = EvalConfig(split="test", limit=eval_rows, batch_size=8, ks=list(EVAL_KS), beam=10)
    # bf16 only where the hardware runs it natively: emulated bf16 ranks several times slower than fp32.
    dtype = resolve_inference_dtype("auto")
    flr = load_llm_recommender(res["model_dir"], ds, dtype=dtype, beam=10)
    # The model's identity is part of the folder's fingerprint: a retrained model never reuses stale ranks.
    identity = {"model": model_identity(res["model_dir"]), "dtype": dtype}
    summaries = {"FLR (SFT)": evaluate(flr, ds, ecfg, out / "eval-flr", identity=identity)}
    pop = Pop(ds.catalogue).fit(ds)
    summaries["Pop (floor)"] = evaluate(pop, ds, ecfg, out / "eval-pop")
    table = results_table(summaries)
    diag = summaries["FLR (SFT)"].get("diagnostics", {})
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_json(out / "results.json", {k: {"metrics": v["metrics"], "inference": v.get("inference"),
                                                 "n_rows": v["n_rows"]} for k, v in summaries.items()})
    print(table)
    if diag:
        print(f"FLR decoding diagnostics: distinct top-1 share {diag.get('top1_distinct_share'):.3f}, "
              f"most frequent top-1: {diag.get('top1_most_common', [])[:3]}")
    # Check the mechanism, not just the metric: does the thought differ across users, are the
    # factors used, do they look at the history items that predict the target?
    # And intervene on what the LM receives: does giving each user another user's thought cost anything?
    probe_rows = max(eval_rows, DEMO_PROBE_ROWS) if probe_rows is None else probe_rows
    factors = factor_diagnostics(res["model_dir"], ds, split="test", limit=probe_rows)
    atomic_write_json(out / "factors.json", factors)
    print(format_report(factors))
    print(f"(the same as JSON: flrec analyze factors --model {out / 'sft'} --data {cfg.data} --limit {probe_rows} --json)")
    print(f"\nrun directory: {out.resolve()}  (total {time.time() - t0:.0f} s)")
    print(f"Next: stage 2 (FLR-GRPO) from this model: flrec train grpo --from {out / 'sft'} --config configs/grpo.yaml; "
          "the multi-method table: flrec compare (see README).")
    return summaries
