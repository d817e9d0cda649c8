"""``flrec`` command line. Every command is a thin shell over a Python function of the same job.

Configs: ``--config file.yaml`` plus ``key=value`` overrides (dotted keys for sections, e.g.
``train.lr=3e-4 flr.num_factors=3``); ``flrec config sft`` lists every key with its help.
User errors print ``error: <one line>`` and exit with status 2 — never a traceback.
Output rule: results go to stdout (with ``--json``: exactly one JSON document), everything else
(progress, notes, where files went) to stderr, so ``flrec evaluate ... --json | jq`` works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flrec.errors import FlrecError

CONFIGS = {
    "sft": "flrec.training.sft:SFTConfig",
    "flr": "flrec.models.recommender:FLRConfig",
    "train": "flrec.training.trainer:TrainConfig",
    "eval": "flrec.evaluation.runner:EvalConfig",
    "tune-decoding": "flrec.decoding.tune:TuneConfig",
    "compare": "flrec.evaluation.compare:CompareConfig",
    "synth": "flrec.data.synth:SynthConfig",
    "amazon": "flrec.data.amazon:AmazonPrepConfig",
    "llm": "flrec.baselines.llm:LLMRecConfig",
    "sasrec": "flrec.baselines.sequential:SASRecConfig",
    "gru4rec": "flrec.baselines.sequential:GRU4RecConfig",
    "caser": "flrec.baselines.sequential:CaserConfig",
    "alpharec": "flrec.baselines.alpharec:AlphaRecConfig",
    "pop": "flrec.baselines.pop:PopConfig",
}


def _note(msg: str) -> None:
    """Anything that is not the command's result: stderr (stdout stays parseable)."""
    print(msg, file=sys.stderr, flush=True)


def _metrics_table(metrics: dict) -> str:
    return "\n".join(f"{k:>10}  {v:.4f}" for k, v in metrics.items())


def _config_class(name: str):
    import importlib

    mod, cls = CONFIGS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


# --------------------------------------------------------------------------------------------- data
def cmd_data_synth(a) -> None:
    from flrec.data.stats import dataset_stats, format_stats
    from flrec.data.synth import SynthConfig, generate_synthetic

    ds = generate_synthetic(SynthConfig.load(a.config, a.overrides), Path(a.out))
    print(format_stats(dataset_stats(ds)))
    print(f"wrote {a.out} (D3 format + intents.json ground truth)")


def cmd_data_stats(a) -> None:
    from flrec.data.stats import dataset_stats, format_stats
    from flrec.training.sft import load_dataset

    stats = dataset_stats(load_dataset(a.dir))
    print(json.dumps(stats) if a.json else format_stats(stats))


def cmd_data_convert(a) -> None:
    from flrec.data.convert import convert_interactions

    ds = convert_interactions(
        Path(a.interactions), Path(a.items), Path(a.out), user_col=a.user_col, item_col=a.item_col,
        time_col=a.time_col, rating_col=a.rating_col, item_id_col=a.item_id_col, title_col=a.title_col,
        sep=a.sep, items_sep=a.items_sep, encoding=a.encoding, k_core=a.k_core, max_history=a.max_history,
        min_rating=a.min_rating, shuffle_seed=a.seed, name=a.name, domain=a.domain)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")


def cmd_data_movielens(a) -> None:
    from flrec.data.convert import prepare_movielens

    ds = prepare_movielens(Path(a.raw), Path(a.out), k_core=a.k_core, max_history=a.max_history)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")


def cmd_data_amazon(a) -> None:
    import logging

    from flrec.data.amazon import AmazonPrepConfig, prepare_amazon

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = prepare_amazon(a.reviews, a.meta, a.out, AmazonPrepConfig.load(a.config, a.overrides))
    print(f"wrote {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")


# ------------------------------------------------------------------------------------- model tools
def cmd_prompt(a) -> None:
    from flrec.data.prompts import PromptBuilder
    from flrec.models.backbone import add_thought_token, load_backbone
    from flrec.training.sft import load_dataset

    ds = load_dataset(a.data)
    model, tok = load_backbone(a.backbone)
    add_thought_token(model, tok)
    row = ds[a.split][a.row]
    builder = PromptBuilder.for_dataset(tok, ds)
    text = builder.render(ds.history_titles(row))
    print(text)
    print(f"--- {len(builder.encode(ds.history_titles(row)))} prompt tokens; target: {ds.catalogue.title(row.target)!r}")


def cmd_train_sft(a) -> None:
    from flrec.training.sft import SFTConfig, run_sft

    overrides = list(a.overrides) + (["train.overwrite=true"] if a.force else [])
    res = run_sft(SFTConfig.load(a.config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun only rank 0 reports
        return
    if a.json:
        print(json.dumps(res, indent=2, default=str))
        return
    loss = "n/a (no validation rows)" if res["best_valid_loss"] is None else f"{res['best_valid_loss']:.4f}"
    head = "reused the finished run (same settings)" if res.get("reused") else f"trained {res['steps']} steps"
    print(f"{head}: {res['rows_seen']} rows seen (of {res['train_rows']} training rows), "
          f"precision {res['mixed_precision']}")
    print(f"best step {res['best_step']}, validation loss {loss}"
          + (" (stopped early)" if res["stopped_early"] else ""))
    print(f"model: {res['model_dir']}  (log: {res['run_dir']}/log.jsonl)")


def cmd_evaluate(a) -> None:
    from flrec.evaluation.runner import EvalConfig, evaluate, merge_shards
    from flrec.training.sft import load_dataset

    if a.merge:
        if not a.out:
            raise FlrecError("--merge needs --out DIR for the merged result")
        ds = load_dataset(a.data)
        summary = merge_shards(a.merge, ds, a.out)
        out = Path(a.out)
    else:
        if not a.model:
            raise FlrecError("--model is required (a trained model dir or SFT run dir), unless you --merge shards")
        from flrec.serving.load import load_llm_recommender, resolve_model_dir
        from flrec.utils.runid import model_identity

        ds = load_dataset(a.data)
        overrides = list(a.overrides)
        for key, val in (("split", a.split), ("limit", a.limit), ("batch_size", a.batch_size), ("shard", a.shard)):
            if val is not None:
                overrides.append(f"{key}={val}")
        cfg = EvalConfig.load(a.config, overrides)
        model_dir = resolve_model_dir(a.model)
        rec = load_llm_recommender(model_dir, ds, dtype=a.dtype, beam=cfg.beam)
        suffix = "" if cfg.shard is None else "-shard" + cfg.shard.replace("/", "of")
        out = Path(a.out) if a.out else Path(a.model) / f"eval-{cfg.split}{suffix}"
        identity = {"model": model_identity(model_dir), "dtype": a.dtype}
        summary = evaluate(rec, ds, cfg, out, identity=identity, overwrite=a.force)
    if a.json:
        print(json.dumps({"metrics": summary["metrics"], "n_rows": summary["n_rows"],
                          "inference": summary.get("inference"), "out": str(out),
                          "reused": bool(summary.get("reused"))}, indent=2))
    else:
        how = " (reused the finished evaluation)" if summary.get("reused") else ""
        print(f"{summary['method']} on {summary['split']}: {summary['n_rows']} rows{how}")
        print(_metrics_table(summary["metrics"]))
    _note(f"per-row ranks and summary in {out}")


# --------------------------------------------------------------------------- tune-decoding (issue 11)
def cmd_tune_decoding(a) -> None:
    import logging

    from flrec.decoding.tune import TuneConfig, tune_model_dir
    from flrec.training.sft import load_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(a.overrides)
    for key, val in (("limit", a.limit), ("out", a.out), ("split", a.split)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if a.force:
        overrides.append("force=true")
    cfg = TuneConfig.load(a.config, overrides)
    res = tune_model_dir(a.model, load_dataset(a.data), cfg, assistant=a.assistant, dtype=a.dtype)
    for name, p in res["chosen"].items():
        print(f"{name}: length_penalty={p['length_penalty']} " + " ".join(
            f"{k}={p['decoding'][k]}" for k in ("scoring", "pmi_alpha", "gamma")) +
            f"  {res['objective']}={p['item_metrics' if cfg.protocol == 'item' else 'title_metrics'][cfg.metric]:.4f}"
            f"  -> {p['file']}")
    print(f"search ({len(res['points'])} points) in {res['search_file']}")


def add_tune_decoding_parser(sub, with_config) -> None:
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


def cmd_compare(a) -> None:
    from flrec.evaluation.compare import CompareConfig, format_markdown, run_comparison

    overrides = list(a.overrides)
    for key, val in (("data", a.data), ("methods", a.methods), ("seeds", a.seeds), ("limit", a.limit), ("out", a.out)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if a.force:
        overrides.append("overwrite=true")
    summary = run_comparison(CompareConfig.load(a.config, overrides))
    print(json.dumps(summary, indent=2, default=str) if a.json else format_markdown(summary))


def cmd_demo(a) -> None:
    from flrec.demo import run_demo

    run_demo(out=a.out, steps=a.steps, eval_rows=a.eval_rows)


def cmd_analyze_factors(a) -> None:
    from flrec.analysis.factors import factor_diagnostics, format_report
    from flrec.training.sft import load_dataset

    rep = factor_diagnostics(a.model, load_dataset(a.data), split=a.split, limit=a.limit,
                             batch_size=a.batch_size, n_perm=a.permutations)
    print(json.dumps(rep) if a.json else format_report(rep))


def cmd_config(a) -> None:
    print(_config_class(a.stage).describe())


# ---------------------------------------------------------------------------------------- parsing
class _DefaultsFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to an option's help unless the help already says what the default is.

    (argparse.ArgumentDefaultsHelpFormatter also appends "(default: None)" to options whose help
    explains a config-dependent default, which reads as a contradiction.)"""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from flrec import __version__

    p = argparse.ArgumentParser(prog="flrec", description="Factorized Latent Reasoning for sequential recommendation")
    p.add_argument("--version", action="version", version=f"flrec {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = _DefaultsFormatter  # every option's help shows its default

    def with_config(sp):
        sp.add_argument("--config", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="key=value overrides (dotted for sections)")
        return sp

    data = sub.add_parser("data", help="datasets: synth, stats, convert, prepare-movielens, prepare-amazon")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    s = with_config(dsub.add_parser("synth", help="generate the embedded synthetic dataset"))
    s.add_argument("--out", default="data/synth")
    s.set_defaults(fn=cmd_data_synth)
    s = dsub.add_parser("stats", help="users, items, rows, title collisions, junk titles, popularity")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.set_defaults(fn=cmd_data_stats)
    s = dsub.add_parser("convert", help="your interactions + items files -> D3 format (sliding window, 8:1:1)")
    for flag in ("interactions", "items", "out", "user-col", "item-col", "time-col", "item-id-col", "title-col"):
        s.add_argument(f"--{flag}", required=True)
    s.add_argument("--rating-col")
    s.add_argument("--min-rating", type=float)
    s.add_argument("--sep", default=",")
    s.add_argument("--items-sep")
    s.add_argument("--encoding", default="utf-8")
    s.add_argument("--k-core", type=int, default=0)
    s.add_argument("--max-history", type=int, default=10)
    s.add_argument("--seed", type=int, default=42, help="item-id shuffle seed (D3 uses 42)")
    s.add_argument("--name")
    s.add_argument("--domain", default="item", help="singular item word for prompts, e.g. movie")
    s.set_defaults(fn=cmd_data_convert)
    s = dsub.add_parser("prepare-movielens", help="raw MovieLens-100K (u.data + u.item) -> D3 format")
    s.add_argument("raw")
    s.add_argument("--out", default="data/ml-100k")
    s.add_argument("--k-core", type=int, default=0)
    s.add_argument("--max-history", type=int, default=10)
    s.set_defaults(fn=cmd_data_movielens)
    s = with_config(dsub.add_parser("prepare-amazon", help="raw Amazon Review 2018 (5-core + meta) -> D3 format"))
    s.add_argument("--reviews", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_data_amazon)

    s = sub.add_parser("prompt", help="show the rendered prompt of one dataset row", formatter_class=fmt)
    s.add_argument("--data", default="embedded:synth", help="D3 dataset folder, or embedded:synth")
    s.add_argument("--backbone", default="embedded:smollm2-135m",
                   help="tokenizer/model: HF id, local folder, .gguf, embedded:smollm2-135m or tiny:llama")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split the row comes from")
    s.add_argument("--row", type=int, default=0, help="0-based row index within the split")
    s.set_defaults(fn=cmd_prompt)

    add_tune_decoding_parser(sub, with_config)

    train = sub.add_parser("train", help="training stages")
    tsub = train.add_subparsers(dest="train_cmd", required=True)
    s = with_config(tsub.add_parser("sft", help="supervised fine-tuning of FLR (or latentr3 / bigrec via flr.reasoner)",
                                    formatter_class=fmt))
    s.add_argument("--force", action="store_true",
                   help="if run_dir holds a run made with other settings, delete it and start over "
                   "(= train.overwrite=true); a run with the same settings is always resumed or reused")
    s.add_argument("--json", action="store_true", help="print the result as one JSON document")
    s.set_defaults(fn=cmd_train_sft)

    s = with_config(sub.add_parser("evaluate", help="constrained beam-search ranking + HR/NDCG on a split",
                                   formatter_class=fmt))
    s.add_argument("--model", help="a trained model dir (an SFT run's best/) or the run dir (required unless --merge)")
    s.add_argument("--data", required=True, help="D3 dataset folder (or embedded:synth) whose catalogue is ranked")
    s.add_argument("--split", help="train, valid or test (default: the config's split, test)")
    s.add_argument("--limit", type=int, help="evaluate only the first N rows (default: all rows)")
    s.add_argument("--batch-size", type=int, help="rows per recommend() call; results do not depend on it "
                   "(default: the config's, 64)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights dtype for ranking; bfloat16 is ~2x faster on CPUs with native bf16")
    s.add_argument("--shard", help="i/n: evaluate only the i-th (0-based) of n contiguous row blocks, e.g. 0/4; "
                   "combine the shard folders with --merge (default: all rows)")
    s.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                   help="merge finished shard folders (every i of i/n) into --out instead of evaluating")
    s.add_argument("--out", help="output dir (default: MODEL/eval-SPLIT, or MODEL/eval-SPLIT-shardIofN)")
    s.add_argument("--force", action="store_true",
                   help="recompute --out if it holds an evaluation with other settings (model, data, beam, ...)")
    s.add_argument("--json", action="store_true", help="stdout: exactly one JSON document (notes go to stderr)")
    s.set_defaults(fn=cmd_evaluate)

    s = with_config(sub.add_parser("compare", help="train + evaluate several methods x seeds; table + t-test",
                                   formatter_class=fmt))
    s.add_argument("--data", help="D3 dataset folder (default: the config's data)")
    s.add_argument("--methods", help="comma-separated, e.g. flr,latentr3,bigrec,base,sasrec,gru4rec,caser,alpharec,pop "
                   "(default: the config's methods)")
    s.add_argument("--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's seeds, 1,2,3)")
    s.add_argument("--limit", type=int, help="evaluate only the first N rows of the split (default: all rows)")
    s.add_argument("--out", help="output dir (default: the config's out, runs/compare)")
    s.add_argument("--force", action="store_true",
                   help="recompute cells whose settings changed (= overwrite=true); unchanged finished cells are reused")
    s.add_argument("--json", action="store_true", help="print summary.json instead of the Markdown table")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("demo", help="embedded data -> FLR SFT -> evaluation -> results table")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--steps", type=int, default=None, help="SFT steps (default from configs/demo.yaml)")
    s.add_argument("--eval-rows", type=int, default=None, help="test rows to evaluate (default from the demo config)")
    s.set_defaults(fn=cmd_demo)

    analyze = sub.add_parser("analyze", help="analyses of a trained model")
    asub = analyze.add_subparsers(dest="analyze_cmd", required=True)
    s = asub.add_parser("factors", help="factor health: thought similarity across users, gate usage, attention on "
                        "history items, planted-intent recovery (synthetic data)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--model", required=True, help="an SFT run dir (holding best/) or a model dir")
    s.add_argument("--data", required=True, help="D3 dataset dir or embedded:synth")
    s.add_argument("--split", default="test", help="split whose rows are analysed")
    s.add_argument("--limit", type=int, default=200, help="first N rows of the split (0 = all)")
    s.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (results do not depend on it)")
    s.add_argument("--permutations", type=int, default=1000, help="permutations for the MI p-value")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    s.set_defaults(fn=cmd_analyze_factors)

    s = sub.add_parser("config", help="list a config's keys, defaults and help (stages and baselines)")
    s.add_argument("stage", choices=sorted(CONFIGS), help="which config: " + ", ".join(sorted(CONFIGS)))
    s.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except FlrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
