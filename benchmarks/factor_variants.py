"""Issue #9: the factor-collapse fixes compared under one budget, with their factor health.

Every variant is the demo's SFT (``configs/demo.yaml``: embedded SmolLM2-135M, embedded synthetic
data, K=4, N=2, full fine-tune (``BASE``), the same rows in the same order) with a few ``flr.*`` overrides. For
each we report the validation recommendation loss (the selection metric) and the factor
diagnostics of :mod:`flrec.analysis.factors` on validation rows (used to choose the default) and
on test rows (reported, never used to choose). Runs are resumable: a finished variant is reused.

    python benchmarks/factor_variants.py --steps 40 --json > results/synthetic/factor_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PAPER_AUX = "flr.aux_losses=orth,div,sparse"
# Every variant spells out every option that the defaults have changed since, so rerunning gives the same runs.
PAPER = ["flr.keys=tokens", "flr.key_positions=absolute", "flr.aux_to_backbone=true", "flr.center_keys=false",
         PAPER_AUX]
ITEMS = ["flr.keys=items", "flr.key_positions=relative", "flr.aux_to_backbone=false", "flr.center_keys=false"]
CROSS = "flr.aux_losses=orth,div,sparse,thought_sim,routing"
CENTER = ["flr.keys=items", "flr.key_positions=relative", "flr.aux_to_backbone=false", "flr.center_keys=true"]
# The demo config's settings these variants were first run with (it has since moved to top:15 and grouping).
BASE = ["trainable=full", "train.group_by_length=false"]
BASES = {"full": BASE, "demo": []}
# Defaults that changed after the first variants were run (session 6): every variant starts from the old ones,
# so its overrides mean what they meant then; the new defaults are the variant default6+residual.
OLD_DEFAULTS = ["flr.query=prototypes", "flr.thought_key=true", "flr_lr_scale=1", "flr.thought_residual=false"]  # every flr variant names its aux_losses  # demo: configs/demo.yaml as it is today (top 15 blocks, length grouping)
VARIANTS: dict[str, list[str]] = {
    "paper": PAPER,  # eqs. 3-8 exactly as written
    "paper+detach": ["flr.keys=tokens", "flr.key_positions=absolute", "flr.aux_to_backbone=false",
                     "flr.center_keys=false", PAPER_AUX],
    "history": ["flr.keys=history", "flr.key_positions=relative", "flr.aux_to_backbone=false",
                "flr.center_keys=false", PAPER_AUX],
    "items": [*ITEMS, PAPER_AUX],
    "items+abs": ["flr.keys=items", "flr.key_positions=absolute", "flr.aux_to_backbone=false",
                  "flr.center_keys=false", PAPER_AUX],
    "items+cross": [*ITEMS, CROSS],
    "items+center": [*CENTER, CROSS],  # = today's defaults
    "items+floor": [*ITEMS, "flr.aux_losses=orth,div,sparse,attn_entropy"],
    # the reasoner starts from random init while the backbone is pretrained: give it 10x the learning rate
    "items+center+lr10": [*CENTER, CROSS, "flr_lr_scale=10"],
    # L_sparse pushes every gate one-hot from step one; without it the gate may stay soft while routing learns
    "items+center-sparse": [*CENTER, "flr.aux_losses=orth,div,thought_sim,routing"],
    # static prototypes cannot follow each user's main intent (24 intents, K=4): queries read the thought state
    "items+center+thought": [*CENTER, CROSS, "flr.query=thought"],
    "items+center+thought+lr10": [*CENTER, CROSS, "flr.query=thought", "flr_lr_scale=10"],
    # with query=thought the thought key is a free sink (two factors read only it): leave it out
    "items+center+thought+lr10-sink": [*CENTER, CROSS, "flr.query=thought", "flr.thought_key=false",
                                       "flr_lr_scale=10"],
    # ... and give the attention a direct signal: what the factors read should resemble the next item
    "items+center+thought+lr10-sink+nce": [*CENTER, CROSS + ",target_nce", "flr.query=thought",
                                           "flr.thought_key=false", "flr_lr_scale=10"],
    # the same at the base learning rate, without L_sparse (it pushes every gate one-hot), and with static queries
    "items+center+thought-sink+nce": [*CENTER, CROSS + ",target_nce", "flr.query=thought", "flr.thought_key=false"],
    "items+center+thought+lr10-sink+nce-sparse": [*CENTER, "flr.aux_losses=orth,div,thought_sim,routing,target_nce",
                                                  "flr.query=thought", "flr.thought_key=false", "flr_lr_scale=10"],
    "items+center+lr10-sink+nce": [*CENTER, CROSS + ",target_nce", "flr.thought_key=false", "flr_lr_scale=10"],
    # the defaults since session 6 (the variant above, spelled out) with the thought written as E0 + g*scale(z), g = 0 at init
    "default6+residual": [*CENTER, "flr.aux_losses=orth,div,thought_sim,routing,target_nce", "flr.query=thought",
                          "flr.thought_key=false", "flr_lr_scale=10", "flr.thought_residual=true"],
    "softprompt": ["flr.reasoner=softprompt"],
    "softprompt+lr10": ["flr.reasoner=softprompt", "flr_lr_scale=10"],  # the control: one learned constant thought
    "latentr3": ["flr.reasoner=latentr3"],
    "bigrec": ["flr.reasoner=none"],
}


def variant_config(run_dir: Path, overrides: list[str], args, extra: tuple[str, ...] = ()):
    """The SFT config of one variant: configs/demo.yaml, the budget of ``args``, the base, the old defaults,
    the variant's ``overrides``, then ``extra`` (tests/test_benchmarks.py: a tiny backbone and data)."""
    from flrec.training.sft import SFTConfig

    return SFTConfig.load(REPO / "configs" / "demo.yaml", [
        f"run_dir={run_dir}", f"train.max_steps={args.steps}", f"train.eval_every={args.steps // 2}",
        f"train.save_every={args.steps // 2}", f"valid_limit={args.valid_rows}", f"seed={args.seed}",
        "train.progress=false", *BASES[args.base], *OLD_DEFAULTS, *overrides, *extra])


def run_variant(name: str, overrides: list[str], args) -> dict:
    from flrec.analysis.factors import factor_diagnostics
    from flrec.data.load import load_dataset
    from flrec.training.sft import run_sft

    run_dir = Path(args.out) / name
    done = run_dir / "variant.json"
    if done.is_file():  # finished earlier (the run itself would also be reused; this skips the diagnostics)
        return json.loads(done.read_text())
    cfg = variant_config(run_dir, overrides, args)
    ds = load_dataset(cfg.data)
    t0 = time.time()
    res = run_sft(cfg, ds)
    rec = {"variant": name, "overrides": overrides, "seed": args.seed, "steps": res["steps"],
           "best_step": res["best_step"], "valid_rec_loss": res["best_valid_loss"],
           "train_seconds": round(time.time() - t0, 1)}
    if cfg.flr.uses_thought:
        for split in ("valid", "test"):
            d = factor_diagnostics(res["model_dir"], ds, split=split, limit=args.diag_rows, n_perm=args.permutations)
            rec[split] = {k: d.get(k) for k in (
                "thought_cross_row_cosine", "gate_usage_entropy_ratio", "argmax_histogram", "active_factors",
                "history_attention_share", "target_intent_share", "target_intent_share_uniform",
                "target_intent_rows", "target_intent_share_gain", "argmax_intent_mi", "argmax_intent_mi_p",
                "target_intent_share_references", "target_intent_share_gain_oracle")}
    done.write_text(json.dumps(rec))
    return rec


INTENT_KEYS = ("target_intent_share", "target_intent_share_uniform", "target_intent_rows",
               "target_intent_share_gain", "argmax_intent_mi", "argmax_intent_mi_p")


def markdown_table(records: list[dict]) -> str:
    """The README table of the variants (``results/synthetic/factor_variants.json`` → Markdown)."""

    def g(r, split, key, fmt="{:.3f}"):
        v = (r.get(split) or {}).get(key)
        return "–" if v is None else fmt.format(v)

    lines = ["| variant | valid rec loss | thought cos (valid / test) | gate usage (valid / test) | argmax factor "
             "(test rows) | target-intent share − uniform (valid / test) | MI(argmax factor; dominant intent), "
             "permutation p (valid / test) |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in records:
        hist = (r.get("test") or {}).get("argmax_histogram")
        hs = "–" if hist is None else ", ".join(f"{k}: {v}" for k, v in hist.items() if v)
        lines.append(
            f"| {r['variant']} | {r['valid_rec_loss']:.4f} | {g(r, 'valid', 'thought_cross_row_cosine')} / "
            f"{g(r, 'test', 'thought_cross_row_cosine')} | {g(r, 'valid', 'gate_usage_entropy_ratio')} / "
            f"{g(r, 'test', 'gate_usage_entropy_ratio')} | {hs} | {g(r, 'valid', 'target_intent_share_gain', '{:+.3f}')}"
            f" / {g(r, 'test', 'target_intent_share_gain', '{:+.3f}')} | {g(r, 'valid', 'argmax_intent_mi_p')} / "
            f"{g(r, 'test', 'argmax_intent_mi_p')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=40, help="SFT steps per variant (batch 8)")
    p.add_argument("--valid-rows", type=int, default=128, help="validation rows for the selection metric")
    p.add_argument("--diag-rows", type=int, default=200, help="rows for the factor diagnostics per split")
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", choices=list(BASES), default="full", help="full: full fine-tune without length "
                   "grouping (the committed table); demo: configs/demo.yaml's own training settings")
    p.add_argument("--out", default="runs/factor-variants")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        rec = run_variant(name, VARIANTS[name], args)
        results.append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
        done = Path(args.out) / "summary.json"
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps({"budget": {"steps": args.steps, "batch": 8, "seed": args.seed, "base": args.base,
                                     "config": "configs/demo.yaml", "overrides": BASES[args.base]}, "variants": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
