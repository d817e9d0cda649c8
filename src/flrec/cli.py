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

from flrec.errors import FlrecError, disk_full_error
from flrec.utils.outputs import check_output, check_overlap

CONFIGS = {
    "sft": "flrec.training.sft:SFTConfig",
    "grpo": "flrec.training.grpo:GRPOConfig",
    "flr": "flrec.models.recommender:FLRConfig",
    "train": "flrec.training.trainer:TrainConfig",
    "eval": "flrec.experiments.runner:EvalConfig",
    "tune-decoding": "flrec.experiments.tune:TuneConfig",
    "compare": "flrec.experiments.compare:CompareConfig",
    "ablate": "flrec.experiments.ablation:AblateConfig",
    "cot": "flrec.recommenders.cot:CoTRecConfig",
    "synth": "flrec.data.synth:SynthConfig",
    "amazon": "flrec.data.amazon:AmazonPrepConfig",
    "llm": "flrec.recommenders.llm:LLMRecConfig",
    "serve": "flrec.serving.app:ServeConfig",
    "sasrec": "flrec.recommenders.sequential:SASRecConfig",
    "gru4rec": "flrec.recommenders.sequential:GRU4RecConfig",
    "caser": "flrec.recommenders.sequential:CaserConfig",
    "alpharec": "flrec.recommenders.alpharec:AlphaRecConfig",
    "pop": "flrec.recommenders.pop:PopConfig",
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
def _wrote(out: str, ds) -> None:
    from flrec.data.convert import format_report

    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")
    if ds.report:
        print(format_report(ds.report))


class _DefaultsHelp(argparse.HelpFormatter):
    """Shows an option's default in its help unless it has none (None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != argparse.SUPPRESS and action.option_strings \
                and "default" not in text:
            text += " (default: %(default)s)"
        return text


def cmd_data_synth(a) -> None:
    from flrec.data.stats import dataset_stats, format_stats
    from flrec.data.synth import SynthConfig, generate_synthetic

    ds = generate_synthetic(SynthConfig.load(a.config, a.overrides), Path(a.out), overwrite=a.overwrite)
    print(format_stats(dataset_stats(ds)))
    print(f"wrote {a.out} (D3 format + intents.json ground truth)")


def cmd_data_stats(a) -> None:
    from flrec.data.d3 import read_d3
    from flrec.data.stats import dataset_stats, format_stats

    if str(a.dir).startswith("embedded:"):  # no flrec.training import: that would pull in torch
        from flrec.data.embedded import embedded_dataset_dir

        ds = read_d3(embedded_dataset_dir(str(a.dir).split(":", 1)[1]), domain=a.domain)
    else:
        ds = read_d3(Path(a.dir), domain=a.domain)
    stats = dataset_stats(ds)
    print(json.dumps(stats) if a.json else format_stats(stats, legend=True))


def _column(spec: str | None, header: bool) -> str | int | None:
    """A column option: a 0-based index for headerless files, else a header name."""
    if spec is not None and not header and spec.strip().isdigit():
        return int(spec)
    return spec


def cmd_data_convert(a) -> None:
    from flrec.data.convert import convert_interactions

    header = a.no_header not in ("both", "interactions")
    items_header = a.no_header not in ("both", "items")
    ds = convert_interactions(
        Path(a.interactions), Path(a.items), Path(a.out), user_col=_column(a.user_col, header),
        item_col=_column(a.item_col, header), time_col=_column(a.time_col, header),
        rating_col=_column(a.rating_col, header), item_id_col=_column(a.item_id_col, items_header),
        title_col=_column(a.title_col, items_header), header=header, items_header=items_header,
        sep=a.sep, items_sep=a.items_sep, encoding=a.encoding, k_core=a.k_core, max_history=a.max_history,
        min_rating=a.min_rating, shuffle_seed=a.seed, name=a.name, domain=a.domain,
        drop_unknown=a.drop_unknown, overwrite=a.overwrite)  # fmt: skip
    _wrote(a.out, ds)


def cmd_data_movielens(a) -> None:
    from flrec.data.convert import prepare_movielens

    ds = prepare_movielens(Path(a.raw), Path(a.out), k_core=a.k_core, max_history=a.max_history, overwrite=a.overwrite)
    _wrote(a.out, ds)


def cmd_data_amazon(a) -> None:
    import logging

    from flrec.data.amazon import AmazonPrepConfig, prepare_amazon

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = prepare_amazon(a.reviews, a.meta, a.out, AmazonPrepConfig.load(a.config, a.overrides), overwrite=a.overwrite)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")
    print(f"filter counts and windows tried: {Path(a.out) / 'prepare_report.json'}")


# ------------------------------------------------------------------------------------- model tools
def cmd_prompt(a) -> None:
    from flrec.data.load import load_dataset
    from flrec.data.prompts import PromptBuilder
    from flrec.models.backbone import add_thought_token, load_backbone

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
    metric = res.get("select_metric", "auto")
    what = f"validation {metric}" if metric not in ("auto", "loss", "rec_loss") else "validation loss"
    print(f"best step {res['best_step']}, {what} {loss}"
          + (" (stopped early)" if res["stopped_early"] else ""))
    print(f"model: {res['model_dir']}  (log: {res['run_dir']}/log.jsonl)")


def cmd_train_grpo(a) -> None:
    from flrec.training.grpo import GRPOConfig, run_grpo

    overrides = ([f"from_run={a.from_run}"] if a.from_run else []) + list(a.overrides)
    overrides += ["train.overwrite=true"] if a.force else []
    cfg = GRPOConfig.load(a.config, overrides)
    from flrec.training.trainer import run_inputs

    check_overlap(cfg.run_dir, run_inputs(cfg), option="run_dir")  # before the SFT model is read
    res = run_grpo(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if a.json:
        print(json.dumps(res, indent=2, default=str))
        return
    head = "reused the finished run (same settings)" if res.get("reused") else f"trained {res['steps']} steps"
    print(f"{head} of {res['variant']}-GRPO from {res['start']}: {res['prompts_seen']} prompts seen "
          f"(of {res['train_rows']} training rows), reward {res['reward']}, advantage {res['advantage']}")
    print(f"preset {res['preset']}: {res['num_iterations']} iteration(s) per rollout, beta_kl {res['beta_kl']}, "
          f"noise {res['noise']}, trainable {res['trainable']}")
    best = res["best_valid_neg_reward"]
    print(f"best step {res['best_step']}" + ("" if best is None else f", validation reward {-best:.4f}"))
    print(f"model: {res['model_dir']}  (log: {res['run_dir']}/log.jsonl)")


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
        overrides = list(a.overrides)
        for key, val in (("split", a.split), ("limit", a.limit), ("batch_size", a.batch_size), ("shard", a.shard)):
            if val is not None:
                overrides.append(f"{key}={val}")
        cfg = EvalConfig.load(a.config, overrides)
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
        print(_metrics_table(summary["metrics"]))
    _note(f"per-row ranks and summary in {out}")


# --------------------------------------------------------------------------- tune-decoding (issue 11)
def cmd_tune_decoding(a) -> None:
    import logging

    from flrec.data.load import load_dataset
    from flrec.experiments.tune import TuneConfig, tune_model_dir

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
    from flrec.experiments.compare import CompareConfig, format_markdown, run_comparison

    overrides = list(a.overrides)
    for key, val in (("data", a.data), ("methods", a.methods), ("seeds", a.seeds), ("limit", a.limit), ("out", a.out),
                     ("protocol", a.protocol)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if a.force:
        overrides.append("overwrite=true")
    summary = run_comparison(CompareConfig.load(a.config, overrides))
    print(json.dumps(summary, indent=2, default=str) if a.json else format_markdown(summary))


def cmd_demo(a) -> None:
    from flrec.demo import run_demo

    run_demo(out=a.out, steps=a.steps, eval_rows=a.eval_rows)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise FlrecError(f"--limit must be >= 0 (0 = all rows), got {limit}")


def cmd_analyze_factors(a) -> None:
    from flrec.analysis.factors import factor_diagnostics, format_report
    from flrec.data.load import load_dataset

    _check_limit(a.limit)
    rep = factor_diagnostics(a.model, load_dataset(a.data), split=a.split, limit=a.limit,
                             batch_size=a.batch_size, n_perm=a.permutations)
    print(json.dumps(rep) if a.json else format_report(rep))


def cmd_ablate(a) -> None:
    from flrec.experiments.ablation import AblateConfig, format_grid, run_ablation

    overrides = list(a.overrides)
    for key, val in (("data", a.data), ("grid", a.grid), ("seeds", a.seeds), ("limit", a.limit), ("out", a.out),
                     ("ks", a.ks), ("method_config", a.method_config)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if a.force:
        overrides.append("overwrite=true")
    result = run_ablation(AblateConfig.load(a.config, overrides))
    print(json.dumps(result, indent=2, default=str) if a.json else format_grid(result))


def cmd_report(a) -> None:
    from flrec.analysis.report import build_report

    path = build_report(a.inputs, a.out, title=a.title, overwrite=a.overwrite)
    print(path)


def _check_json_out(out: str | None, name: str, overwrite: bool, inputs: list) -> None:
    """Refuse ``--out`` (before the work) when ``out/name`` may not be written."""
    if out is not None:
        check_output(out, inputs=inputs, replace=False, allow_inside=True)
        check_output(Path(out) / name, kind="file", overwrite=overwrite, option="--out")


def _write_json_out(out: str | None, name: str, rep: dict, overwrite: bool) -> None:
    if out is None:
        return
    from flrec.utils.io import atomic_write_json

    path = Path(out) / name
    check_output(path, kind="file", overwrite=overwrite, option="--out")
    atomic_write_json(path, rep)
    _note(f"wrote {path}")


def cmd_analyze_longtail(a) -> None:
    from flrec.analysis.longtail import format_longtail, longtail

    _check_json_out(a.out, "longtail.json", a.overwrite, [])
    rep = longtail(a.compare_dir, reference=a.reference)
    _write_json_out(a.out, "longtail.json", rep, a.overwrite)
    print(json.dumps(rep) if a.json else format_longtail(rep))


def cmd_analyze_disentangle(a) -> None:
    from flrec.analysis.disentangle import disentanglement, format_disentanglement, write_figures
    from flrec.data.load import load_dataset

    _check_limit(a.limit)
    _check_json_out(a.out, "disentangle.json", a.overwrite, [a.model, a.data])
    rep = disentanglement(a.model, load_dataset(a.data), split=a.split, limit=a.limit or None,
                          batch_size=a.batch_size, examples=a.examples)
    _write_json_out(a.out, "disentangle.json", rep, a.overwrite)
    if a.out is not None:
        for path in write_figures(rep, a.out).values():
            _note(f"wrote {path}")
    print(json.dumps(rep) if a.json else format_disentanglement(rep))


def cmd_analyze_cost(a) -> None:
    from flrec.analysis.cost import format_cost, inference_cost
    from flrec.data.load import load_dataset

    models = {}
    for spec in a.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise FlrecError(f"--model {spec!r}: expected METHOD=RUN_DIR, e.g. flr=runs/cds-flr")
        models[name] = path
    _check_json_out(a.out, "cost.json", a.overwrite, [a.data, *models.values()])
    rep = inference_cost(models, load_dataset(a.data), split=a.split, limit=a.limit, batch_size=a.batch_size,
                         repeats=a.repeats, beam=a.beam, cot_beam=a.cot_beam, rationale_tokens=a.rationale_tokens)
    _write_json_out(a.out, "cost.json", rep, a.overwrite)
    print(json.dumps(rep) if a.json else format_cost(rep))


def cmd_analyze_curves(a) -> None:
    from flrec.analysis.curves import plot_learning_curves

    out = check_output(a.out, kind="file", overwrite=a.overwrite, inputs=[a.run])
    print(plot_learning_curves(a.run, out))


def cmd_config(a) -> None:
    print(_config_class(a.stage).describe())


# ------------------------------------------------------------------------ serving (export, recommend, serve)
def cmd_export(a) -> None:
    from flrec.serving.export import export

    out = export(a.run_dir, a.out, data=a.data, overwrite=a.overwrite, beam=a.beam, dtype=a.dtype,
                 batch_size=a.batch_size, allow_other_data=a.allow_other_data)
    print(f"exported {a.run_dir} to {out}; load it with flrec.serving.load_recommender({str(out)!r}) "
          f"or `flrec recommend --model {out} --history ...`")


def _print_answer(model, ans: dict) -> None:
    print(f"{model.method}: top {len(ans['items'])} for a history of {len(ans['history'])} item(s)"
          + (" (history items excluded)" if ans["exclude_seen"] else ""))
    for it in ans["items"]:
        more = f"  (+{len(it['same_title_item_ids'])} more items with this title)" if it["same_title_item_ids"] else ""
        print(f"{it['rank']:>3}. [{it.get('original_id') or it['item_id']}] {it['title']}  score {it['score']:.4f}{more}")
    ex = ans.get("explanation")
    if ex:
        print(f"why (refinement step {ex['step']}; {ex['history_in_prompt']} history titles in the prompt):")
        for f in sorted(ex["factors"], key=lambda f: -f["gate"]):
            top = ", ".join(f"{h['title']!r} {h['attention']:.2f}" for h in f["top_history"])
            print(f"  factor {f['factor']}: gate {f['gate']:.3f}, {f['attention_on_history']:.0%} of its attention "
                  f"on history titles; most: {top}")


def cmd_recommend(a) -> None:
    from flrec.serving.batch import recommend_file
    from flrec.serving.service import empty_answer_reason, load_recommender

    given = [x for x in (a.history, a.item_ids, a.input) if x is not None]
    if len(given) != 1:
        raise FlrecError("give exactly one of --history TITLE..., --item-ids ID... or --input FILE.jsonl --output FILE.jsonl")
    if (a.input is None) != (a.output is None):
        raise FlrecError("--input and --output go together (a JSONL file of histories in, one of answers out)")
    # lazy: a misspelt title is refused before the weights are read
    model = load_recommender(a.model, dtype=a.dtype, lazy=True)
    explain = not a.no_explain and model.explains
    if a.input is not None:
        res = recommend_file(model, a.input, a.output, k=a.k, exclude_seen=a.exclude_seen, explain=explain,
                             batch_size=a.batch_size, overwrite=a.overwrite)
        print(json.dumps(res) if a.json else f"wrote {res['histories']} answers to {res['output']}")
        return
    ans = model.recommend(history=a.history, item_ids=a.item_ids, k=a.k, exclude_seen=a.exclude_seen,
                          explain=explain)
    if not ans["items"]:
        raise FlrecError(empty_answer_reason(model, a.exclude_seen))
    if a.json:
        print(json.dumps(ans, ensure_ascii=False))
    else:
        _print_answer(model, ans)


def cmd_serve(a) -> None:
    from flrec.serving.app import ServeConfig, serve

    overrides = list(a.overrides)
    for key, val in (("host", a.host), ("port", a.port), ("max_batch", a.max_batch), ("max_wait_ms", a.max_wait_ms),
                     ("max_queue", a.max_queue)):
        if val is not None:
            overrides.append(f"{key}={val}")
    serve(a.model, ServeConfig.load(a.config, overrides), dtype=a.dtype)


def _add_serving_parsers(sub, with_config) -> None:
    s = sub.add_parser("export", help="a trained run -> one self-contained directory (load_recommender / serve)")
    s.add_argument("run_dir", help="an SFT run (or its best/), a demo run, a compare cell or a saved recommender")
    s.add_argument("--out", required=True, help="export directory (must not exist or be empty)")
    s.add_argument("--data", help="the training dataset, if the run's config.yaml does not name a readable one")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--beam", type=int, help="LLM models: beam width (= largest k) stored with the export")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="LLM models: inference dtype stored with the export")
    s.add_argument("--batch-size", type=int, help="LLM models: users decoded together")
    s.add_argument("--allow-other-data", action="store_true",
                   help="accept a --data whose content differs from the dataset the run recorded")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("recommend", help="top-K items (ids, titles, scores; FLR: why) for histories")
    s.add_argument("--model", required=True, help="an export directory (flrec export)")
    s.add_argument("--history", nargs="+", metavar="TITLE", help="catalogue titles, oldest first")
    s.add_argument("--item-ids", nargs="+", metavar="ID",
                   help="item ids, oldest first: your own ids (as in the files given to flrec data convert, "
                   "e.g. it7) or flrec's integer ids")
    s.add_argument("--input", help="JSONL file, one {\"history\": [...]} or {\"item_ids\": [...]} per line")
    s.add_argument("--output", help="JSONL answers, one per input line (with --input)")
    s.add_argument("-k", type=int, default=10, help="items to return (default 10)")
    s.add_argument("--exclude-seen", action="store_true", help="never return an item of the history")
    s.add_argument("--no-explain", action="store_true", help="FLR: leave out the per-factor explanation")
    s.add_argument("--json", action="store_true", help="print JSON instead of a list")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the export's inference dtype")
    s.add_argument("--batch-size", type=int, default=16, help="histories per model call (--input)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    s.set_defaults(fn=cmd_recommend)

    s = with_config(sub.add_parser("serve", help="HTTP JSON API: POST /recommend, GET /healthz, GET /metadata"))
    s.add_argument("--model", required=True, help="an export directory (flrec export)")
    s.add_argument("--host", help="interface (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port (default 8000)")
    s.add_argument("--max-batch", type=int, help="requests per batched model call (default 8)")
    s.add_argument("--max-wait-ms", type=float, help="wait for more requests after the first of a batch (default 10)")
    s.add_argument("--max-queue", type=int, help="waiting requests before 503 (default 64)")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the export's inference dtype")
    s.set_defaults(fn=cmd_serve)


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
    fmt = _DefaultsHelp
    overwrite_help = "replace a non-empty --out folder (without it such a folder is left untouched and it is an error)"
    s = with_config(dsub.add_parser("synth", help="generate the embedded synthetic dataset", formatter_class=fmt))
    s.add_argument("--out", default="data/synth", help="output folder (new or empty)")
    s.add_argument("--overwrite", action="store_true", help=overwrite_help)
    s.set_defaults(fn=cmd_data_synth)
    s = dsub.add_parser("stats", help="users, items, rows, title collisions, junk titles, popularity", formatter_class=fmt)
    s.add_argument("dir", help="a D3 dataset folder or embedded:synth")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.add_argument("--domain", help="item word to report (default: dataset.json, a known folder name, else 'item')")
    s.set_defaults(fn=cmd_data_stats)
    s = dsub.add_parser(
        "convert", formatter_class=fmt,
        help="your interactions + items files -> D3 format (sliding window, 8:1:1)",
        description="Columns are header names, or 0-based indices with --no-header. MovieLens u.data: "
        "--no-header --sep '\\t' --user-col 0 --item-col 1 --rating-col 2 --time-col 3 with u.item as "
        "--items-sep '|' --item-id-col 0 --title-col 1 --encoding latin-1. Item-file columns other than the "
        "id and title are not used (the summary lists them as ignored).",
    )  # fmt: skip
    s.add_argument("--interactions", required=True, help="interaction log: one user, item, time (and rating) per row")
    s.add_argument("--items", required=True, help="item table: one id and title per row")
    s.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--user-col", required=True, help="user column (name, or 0-based index with --no-header)")
    s.add_argument("--item-col", required=True, help="item id column of the interaction log")
    s.add_argument("--time-col", required=True, help="time column: Unix seconds or ISO 8601 dates (naive = UTC)")
    s.add_argument("--item-id-col", required=True, help="item id column of the item table")
    s.add_argument("--title-col", required=True, help="title column of the item table")
    s.add_argument("--rating-col", help="rating column (ratings are 0.0 without it)")
    s.add_argument("--min-rating", type=float, help="keep interactions rated at least this (needs --rating-col)")
    s.add_argument("--sep", default=",", help="one-character field separator; '\\t' for TSV")
    s.add_argument("--items-sep", help="separator of the item table (default: --sep)")
    s.add_argument("--encoding", default="utf-8", help="text encoding of both files, e.g. latin-1")
    s.add_argument("--no-header", nargs="?", const="both", choices=["both", "interactions", "items"],
                   help="the files (or only the named one) have no header row; columns are then 0-based indices")
    s.add_argument("--drop-unknown", action="store_true",
                   help="drop (and count) interactions whose item is missing from the item table instead of stopping")
    s.add_argument("--k-core", type=int, default=0, help="iterative k-core on users and items (0 = off)")
    s.add_argument("--max-history", type=int, default=10, help="history items per row (D3 uses 10)")
    s.add_argument("--seed", type=int, default=42, help="item-id shuffle seed (D3 uses 42)")
    s.add_argument("--name", help="dataset name (default: the --out folder name)")
    s.add_argument("--domain", default="item", help="singular item word for prompts, e.g. movie")
    s.add_argument("--overwrite", action="store_true", help=overwrite_help)
    s.set_defaults(fn=cmd_data_convert)
    s = dsub.add_parser("prepare-movielens", help="raw MovieLens-100K (u.data + u.item) -> D3 format", formatter_class=fmt)
    s.add_argument("raw", help="the unpacked ml-100k folder")
    s.add_argument("--out", default="data/ml-100k", help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--k-core", type=int, default=0, help="iterative k-core on users and items (0 = off)")
    s.add_argument("--max-history", type=int, default=10, help="history items per row (D3 uses 10)")
    s.add_argument("--overwrite", action="store_true", help=overwrite_help)
    s.set_defaults(fn=cmd_data_movielens)
    s = with_config(dsub.add_parser("prepare-amazon", help="raw Amazon Review 2018 (5-core + meta) -> D3 format",
                                    formatter_class=fmt))  # fmt: skip
    s.add_argument("--reviews", required=True, help="<Category>_5.json.gz")
    s.add_argument("--meta", required=True, help="meta_<Category>.json.gz")
    s.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help=overwrite_help)
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
    s = with_config(tsub.add_parser("grpo", help="FLR-GRPO (or LR-GRPO: variant=lr) from an SFT run; only FLR parts train. "
                                    "Teacher-forced: the ground-truth title scored under noisy thoughts "
                                    "(advantage-weighted likelihood); `flrec config grpo` lists the presets",
                                    formatter_class=fmt))
    s.add_argument("--from", dest="from_run", help="the SFT run directory to start from (= from_run=RUN_DIR)")
    s.add_argument("--force", action="store_true",
                   help="if run_dir holds a run made with other settings, delete it and start over "
                   "(= train.overwrite=true); a run with the same settings is always resumed or reused")
    s.add_argument("--json", action="store_true", help="print the result as one JSON document")
    s.set_defaults(fn=cmd_train_grpo)

    s = with_config(sub.add_parser("evaluate", help="constrained beam-search ranking + HR/NDCG on a split",
                                   formatter_class=fmt))
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

    s = with_config(sub.add_parser("compare", help="train + evaluate several methods x seeds; table + t-test",
                                   formatter_class=fmt))
    s.add_argument("--data", help="D3 dataset folder (default: the config's data)")
    s.add_argument("--methods", help="comma-separated, e.g. flr,latentr3_sft,bigrec,base,sasrec,gru4rec,caser,alpharec,pop "
                   "(default: the config's methods)")
    s.add_argument("--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's seeds, 1,2,3)")
    s.add_argument("--limit", type=int, help="evaluate only the first N rows of the split (default: all rows)")
    s.add_argument("--out", help="output dir (default: the config's out, runs/compare)")
    s.add_argument("--protocol", choices=["item", "title"],
                   help="item (the config default): item-level HR/NDCG@10 columns beside the title-level ones; "
                   "title: the paper's title-level protocol only")
    s.add_argument("--force", action="store_true",
                   help="recompute cells whose settings changed (= overwrite=true); unchanged finished cells are reused")
    s.add_argument("--json", action="store_true", help="print summary.json instead of the Markdown table")
    s.set_defaults(fn=cmd_compare)

    from flrec.demo import DEMO_EVAL_ROWS  # torch-free

    s = sub.add_parser("demo", help="embedded data -> FLR SFT -> evaluation -> results table")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--steps", type=int, default=None, help="SFT steps (default from configs/demo.yaml)")
    s.add_argument("--eval-rows", type=int, default=None, help=f"test rows to evaluate (default {DEMO_EVAL_ROWS})")
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

    s = asub.add_parser("longtail", help="popular vs. unpopular targets per method of a comparison (paper Fig. 7)",
                        formatter_class=fmt)
    s.add_argument("compare_dir", help="a folder written by flrec compare (summary.json, cells/)")
    s.add_argument("--reference", help="method whose improvement is reported (default: the comparison's reference)")
    s.add_argument("--out", help="also write longtail.json into this folder (read by flrec report)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing longtail.json")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    s.set_defaults(fn=cmd_analyze_longtail)
    s = asub.add_parser("disentangle", help="factor cosine matrix, attention heatmaps, DS, gate entropy (Figs. 4, 6)",
                        formatter_class=fmt)
    s.add_argument("--model", required=True, help="an SFT run dir (holding best/) or a model dir")
    s.add_argument("--data", required=True, help="D3 dataset dir or embedded:synth")
    s.add_argument("--split", default="test", help="split whose rows are analysed")
    s.add_argument("--limit", type=int, default=200, help="first N rows of the split (0 = all)")
    s.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (results do not depend on it)")
    s.add_argument("--examples", type=int, default=2, help="users whose attention heatmap is kept")
    s.add_argument("--out", help="write disentangle.json and the heatmap PNGs into this folder")
    s.add_argument("--overwrite", action="store_true", help="replace an existing disentangle.json")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    s.set_defaults(fn=cmd_analyze_disentangle)
    s = asub.add_parser("cost", help="seconds per user of several trained LLM methods, same rows, one run (Fig. 9)",
                        formatter_class=fmt)
    s.add_argument("--data", required=True, help="D3 dataset dir or embedded:synth")
    s.add_argument("--model", action="append", required=True, metavar="METHOD=RUN_DIR",
                   help="repeatable: bigrec=RUN, latentr3=RUN, flr=RUN, cot=RUN (cot: a no-thought model, e.g. bigrec's, "
                   "that writes its own rationale before the title)")
    s.add_argument("--split", default="test", help="split whose rows are timed")
    s.add_argument("--limit", type=int, default=100, help="users timed (the paper: 100)")
    s.add_argument("--batch-size", type=int, default=4, help="users per recommend() call (the paper: 4)")
    s.add_argument("--repeats", type=int, default=3, help="repetitions averaged (the paper: 3)")
    s.add_argument("--beam", type=int, default=10, help="beam width")
    s.add_argument("--cot-beam", type=int, help="beam of the cot method (the paper: 1; default: --beam)")
    s.add_argument("--rationale-tokens", type=int, default=None,
                   help="cot: cap on its self-generated rationale per user (default: the method's 256, i.e. until "
                   "the model starts the title); the report gives the measured length and the rows that hit the cap")
    s.add_argument("--out", help="write cost.json into this folder (read by flrec report)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing cost.json")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    s.set_defaults(fn=cmd_analyze_cost)
    s = asub.add_parser("curves", help="learning curves of a training run (log.jsonl) as one PNG", formatter_class=fmt)
    s.add_argument("run", help="an SFT run dir, a compare cell, or a log.jsonl file")
    s.add_argument("--out", required=True, help="the PNG to write")
    s.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    s.set_defaults(fn=cmd_analyze_curves)

    s = with_config(sub.add_parser("ablate", help="FLR ablations (Table 3) or K sweep (Fig. 8) with the compare runner",
                                   formatter_class=fmt))
    s.add_argument("--data", help="D3 dataset folder (default: the config's data)")
    s.add_argument("--grid", choices=["regularisers", "k"], help="regularisers: all 8 subsets of {orth, div, sparse}; "
                   "k: num_factors in --ks (default: the config's grid, regularisers)")
    s.add_argument("--method-config", help="the FLR method's config YAML (e.g. configs/recommenders/llm-cds-cpu.yaml)")
    s.add_argument("--ks", help="grid k: comma-separated K values (default 1,2,3,4)")
    s.add_argument("--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's seeds, 1,2,3)")
    s.add_argument("--limit", type=int, help="evaluate only the first N rows of the split (default: all rows)")
    s.add_argument("--out", help="output dir (default runs/ablate-<grid>); holds ablation.json or k_sweep.json")
    s.add_argument("--force", action="store_true", help="recompute cells whose settings changed")
    s.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    s.set_defaults(fn=cmd_ablate)

    s = sub.add_parser("report", help="the paper's analyses as report.md + PNG figures from result folders",
                       formatter_class=fmt)
    s.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULTS_DIR",
                   help="compare/ablate output folders, results/<data>, run dirs (log.jsonl) or result JSON files")
    s.add_argument("--out", required=True, help="report folder (report.md + figures/)")
    s.add_argument("--title", help="the report's title (default: flrec report)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing report.md (and its figures/)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("config", help="list a config's keys, defaults and help (stages and recommenders)")
    s.add_argument("stage", choices=sorted(CONFIGS), help="which config: " + ", ".join(sorted(CONFIGS)))
    s.set_defaults(fn=cmd_config)
    _add_serving_parsers(sub, with_config)
    return p


# Commands that run a model on the CPU for minutes (see flrec.utils.threads).
HEAVY_COMMANDS = {"train", "evaluate", "compare", "demo", "tune-decoding", "serve", "recommend", "analyze"}


def _warn_if_sharing_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        return
    from flrec.utils.threads import oversubscription_warning, register_cpu_job

    try:
        msg = oversubscription_warning(register_cpu_job())
    except OSError:  # a read-only home: the check is advice, never a failure
        return
    if msg:
        _note(msg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in HEAVY_COMMANDS:
            _warn_if_sharing_cpu()
        args.fn(args)
        sys.stdout.flush()  # a closed pipe (`| head`) surfaces here, inside the handler below
    except FlrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flrec data stats D | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141
    except Exception as e:  # out of space surfaces from many writers (torch, safetensors, open)
        full = disk_full_error(e)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
