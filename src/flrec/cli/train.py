"""``flrec train sft`` and ``flrec train grpo``."""

from __future__ import annotations

import json
import os

from flrec.cli.common import DefaultsHelp, load_config, with_config
from flrec.utils.outputs import check_overlap

FORCE_HELP = ("if run_dir holds a run made with other settings, delete it and start over "
              "(= train.overwrite=true); a run with the same settings is always resumed or reused")


def _reports() -> bool:
    """Under accelerate launch / torchrun only rank 0 reports."""
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train_sft(a) -> None:
    from flrec.training.sft import SFTConfig, run_sft

    res = run_sft(load_config(SFTConfig, a, force="train.overwrite"))
    if not _reports():
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

    first = [f"from_run={a.from_run}"] if a.from_run else []
    cfg = load_config(GRPOConfig, a, force="train.overwrite", first=first)
    from flrec.training.trainer import run_inputs

    check_overlap(cfg.run_dir, run_inputs(cfg), option="run_dir")  # before the SFT model is read
    res = run_grpo(cfg)
    if not _reports():
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


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="training stages")
    tsub = train.add_subparsers(dest="train_cmd", required=True)
    s = with_config(tsub.add_parser("sft", help="supervised fine-tuning of FLR (or latentr3 / bigrec via flr.reasoner)",
                                    formatter_class=DefaultsHelp))
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.add_argument("--json", action="store_true", help="print the result as one JSON document")
    s.set_defaults(fn=cmd_train_sft)
    s = with_config(tsub.add_parser("grpo", help="FLR-GRPO (or LR-GRPO: variant=lr) from an SFT run; only FLR parts train. "
                                    "Teacher-forced: the ground-truth title scored under noisy thoughts "
                                    "(advantage-weighted likelihood); `flrec config grpo` lists the presets",
                                    formatter_class=DefaultsHelp))
    s.add_argument("--from", dest="from_run", help="the SFT run directory to start from (= from_run=RUN_DIR)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.add_argument("--json", action="store_true", help="print the result as one JSON document")
    s.set_defaults(fn=cmd_train_grpo)
