"""``flrec evaluate``, ``flrec tune-decoding``, ``flrec compare`` and ``flrec ablate``."""

from __future__ import annotations

import json
from pathlib import Path

from flrec.cli.common import DefaultsHelp, add_grid_flags, load_config, metrics_table, note, with_config
from flrec.errors import FlrecError
from flrec.utils.outputs import check_output


def cmd_evaluate(a) -> None:
    from flrec.data.load import load_dataset
    from flrec.experiments.runner import EvalConfig, evaluate, merge_shards

    if a.merge:
        if not a.out:
            raise FlrecError("--merge needs --out DIR for the merged result")
        # the merged folder may hold its shard folders (it adds only its own files), never be or lie in one
        check_output(a.out, inputs=[*a.merge, a.data], replace=False, allow_contains=True)
        ds = load_dataset(a.data)
        summary = merge_shards(a.merge, ds, a.out)
        out = Path(a.out)
    else:
        if not a.model:
            raise FlrecError("--model is required (a trained model dir or SFT run dir), unless you --merge shards")
        from flrec.serving.load import load_llm_recommender, resolve_model_dir
        from flrec.utils.runid import model_identity

        model_dir = resolve_model_dir(a.model)
        # --out holds only the evaluation's own files (a rerun resumes, --force replaces only those): it may
        # sit inside the run, but never be (or hold) the model or the data.
        check_output(a.out or Path(a.model) / "eval", inputs=[model_dir, a.data], replace=False, allow_inside=True)
        ds = load_dataset(a.data)
        cfg = load_config(EvalConfig, a, flags=("split", "limit", "batch_size", "shard"))
        from flrec.utils.precision import resolve_inference_dtype

        dtype = resolve_inference_dtype(a.dtype)  # the fingerprint records what actually ran
        rec = load_llm_recommender(model_dir, ds, dtype=dtype, beam=cfg.beam)
        if a.use_tuned_decoding:  # logged, and recorded in the summary and fingerprint
            rec.apply_tuned_decoding(model_dir)
        suffix = "" if cfg.shard is None else "-shard" + cfg.shard.replace("/", "of")
        out = Path(a.out) if a.out else Path(a.model) / f"eval-{cfg.split}{suffix}"
        identity = {"model": model_identity(model_dir), "dtype": dtype}
        summary = evaluate(rec, ds, cfg, out, identity=identity, overwrite=a.force)
    if a.json:
        print(json.dumps({"metrics": summary["metrics"], "n_rows": summary["n_rows"],
                          "inference": summary.get("inference"), "out": str(out),
                          "reused": bool(summary.get("reused"))}, indent=2))
    else:
        how = " (reused the finished evaluation)" if summary.get("reused") else ""
        print(f"{summary['method']} on {summary['split']}: {summary['n_rows']} rows{how}")
        print(metrics_table(summary["metrics"]))
    note(f"per-row ranks and summary in {out}")


def cmd_tune_decoding(a) -> None:
    import logging

    from flrec.data.load import load_dataset
    from flrec.experiments.tune import TuneConfig, tune_model_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(TuneConfig, a, flags=("limit", "out", "split"), force="force")
    res = tune_model_dir(a.model, load_dataset(a.data), cfg, assistant=a.assistant, dtype=a.dtype)
    for name, p in res["chosen"].items():
        print(f"{name}: length_penalty={p['length_penalty']} " + " ".join(
            f"{k}={p['decoding'][k]}" for k in ("scoring", "pmi_alpha", "gamma")) +
            f"  {res['objective']}={p['item_metrics' if cfg.protocol == 'item' else 'title_metrics'][cfg.metric]:.4f}"
            f"  -> {p['file']}")
    print(f"search ({len(res['points'])} points) in {res['search_file']}")


def cmd_compare(a) -> None:
    from flrec.experiments.compare import CompareConfig, format_markdown, run_comparison

    cfg = load_config(CompareConfig, a, flags=("data", "methods", "seeds", "limit", "out", "protocol"),
                      force="overwrite")
    summary = run_comparison(cfg)
    print(json.dumps(summary, indent=2, default=str) if a.json else format_markdown(summary))


def cmd_ablate(a) -> None:
    from flrec.experiments.ablation import AblateConfig, format_grid, run_ablation

    cfg = load_config(AblateConfig, a, flags=("data", "grid", "seeds", "limit", "out", "ks", "method_config"),
                      force="overwrite")
    result = run_ablation(cfg)
    print(json.dumps(result, indent=2, default=str) if a.json else format_grid(result))


# ---------------------------------------------------------------------------------------- parsers
def add_tune_decoding_parser(sub) -> None:
    s = with_config(sub.add_parser("tune-decoding", help="choose decoding (scoring, PMI alpha, assistant gamma) on "
                                   "validation rows; writes MODEL/decoding.json"))
    s.add_argument("--model", required=True, help="a trained model dir (an SFT run's best/) or the run dir")
    s.add_argument("--data", required=True)
    s.add_argument("--limit", type=int, help="validation rows to tune on (default 500)")
    s.add_argument("--split", help="valid (default) or train; test is refused")
    s.add_argument("--assistant", help="a saved ID recommender (e.g. sasrec) to tune gamma for flr+sasrec")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    s.add_argument("--out", help="search JSON (default: MODEL/decoding_search.json)")
    s.add_argument("--force", action="store_true", help="replace an existing decoding.json / search file")
    s.set_defaults(fn=cmd_tune_decoding)


def add_evaluate_parser(sub) -> None:
    s = with_config(sub.add_parser("evaluate", help="constrained beam-search ranking + HR/NDCG on a split",
                                   formatter_class=DefaultsHelp))
    s.add_argument("--model", help="a trained model dir (an SFT run's best/) or the run dir (required unless --merge)")
    s.add_argument("--data", required=True, help="D3 dataset folder (or embedded:synth) whose catalogue is ranked")
    s.add_argument("--split", help="train, valid or test (default: the config's split, test)")
    s.add_argument("--limit", type=int, help="evaluate only the first N rows (default: all rows)")
    s.add_argument("--batch-size", type=int, help="rows per recommend() call; results do not depend on it "
                   "(default: the config's, 64)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="dtype (auto: bf16 if native)")
    s.add_argument("--shard", help="i/n: evaluate only the i-th (0-based) of n contiguous row blocks, e.g. 0/4; "
                   "combine the shard folders with --merge (default: all rows)")
    s.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                   help="merge finished shard folders (every i of i/n) into --out instead of evaluating")
    s.add_argument("--out", help="output dir (default: MODEL/eval-SPLIT, or MODEL/eval-SPLIT-shardIofN)")
    s.add_argument("--use-tuned-decoding", action="store_true",
                   help="rank with the decoding.json flrec tune-decoding wrote into the model dir (default: ignore "
                   "it); the adopted decoding is printed and recorded in the summary and fingerprint")
    s.add_argument("--force", action="store_true",
                   help="recompute --out if it holds an evaluation with other settings (model, data, beam, ...)")
    s.add_argument("--json", action="store_true", help="stdout: exactly one JSON document (notes go to stderr)")
    s.set_defaults(fn=cmd_evaluate)


def add_compare_parser(sub) -> None:
    s = with_config(sub.add_parser("compare", help="train + evaluate several methods x seeds; table + t-test",
                                   formatter_class=DefaultsHelp))
    s.add_argument("--data", help="D3 dataset folder (default: the config's data)")
    s.add_argument("--methods", help="comma-separated, e.g. flr,latentr3_sft,bigrec,base,sasrec,gru4rec,caser,alpharec,pop "
                   "(default: the config's methods)")
    s.add_argument("--protocol", choices=["item", "title"],
                   help="item (the config default): item-level HR/NDCG@10 columns beside the title-level ones; "
                   "title: the paper's title-level protocol only")
    add_grid_flags(s, "output dir (default: the config's out, runs/compare)",
                   "recompute cells whose settings changed (= overwrite=true); unchanged finished cells are reused",
                   "print summary.json instead of the Markdown table")
    s.set_defaults(fn=cmd_compare)


def add_ablate_parser(sub) -> None:
    s = with_config(sub.add_parser("ablate", help="FLR ablations (Table 3) or K sweep (Fig. 8) with the compare runner",
                                   formatter_class=DefaultsHelp))
    s.add_argument("--data", help="D3 dataset folder (default: the config's data)")
    s.add_argument("--grid", choices=["regularisers", "k"], help="regularisers: all 8 subsets of {orth, div, sparse}; "
                   "k: num_factors in --ks (default: the config's grid, regularisers)")
    s.add_argument("--method-config", help="the FLR method's config YAML (e.g. configs/recommenders/llm-cds-cpu.yaml)")
    s.add_argument("--ks", help="grid k: comma-separated K values (default 1,2,3,4)")
    add_grid_flags(s, "output dir (default runs/ablate-<grid>); holds ablation.json or k_sweep.json",
                   "recompute cells whose settings changed", "print the result JSON instead of the table")
    s.set_defaults(fn=cmd_ablate)
