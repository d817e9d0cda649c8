"""Cost of one FLR-GRPO optimizer step against one SFT step on the same number of prompts (issue #13).

Both go through the real training loops (:func:`flrec.training.sft.run_sft`,
:func:`flrec.training.grpo.run_grpo`) in one process, alternating in rounds (SFT, GRPO, SFT, GRPO, ...)
so machine noise hits both alike. Seconds per optimizer step come from each run's ``log.jsonl``
(``elapsed_s`` logged every step): SFT over steps 2..S (the first step pays one-off set-up costs); GRPO
with ``num_iterations=2`` rolls out on every other step, so it runs S + 2 steps and is timed over steps
3..S + 2, i.e. S / 2 whole rollout batches (each a rollout plus two updates).

The GRPO start is a 1-step SFT run of the same backbone (cost does not depend on the weights). The goal
of issue #13: a GRPO step at G = 8 costs <= 2x an SFT step of the same number of prompts.

Prints one JSON object: ``sft_s_per_step``, ``grpo_s_per_step`` (medians over rounds),
``grpo_over_sft`` and the settings. Not a test.

Usage: ``python benchmarks/bench_grpo_step.py --json [--backbone embedded:smollm2-135m] [--data embedded:synth]
[--steps 6] [--rounds 2] [--prompts 8] [--group 8] [--trainable top:15]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from flrec.data.load import load_dataset
from flrec.training.grpo import GRPOConfig, read_log, run_grpo
from flrec.training.sft import SFTConfig, run_sft


def seconds_per_step(run_dir: Path, first: int, last: int) -> float:
    """Mean seconds per optimizer step over steps ``first + 1 .. last`` from a run's per-step ``elapsed_s``."""
    rows = {r["step"]: r["elapsed_s"] for r in read_log(run_dir) if "elapsed_s" in r and "step" in r}
    missing = [s for s in (first, last) if s not in rows]
    if missing:
        raise SystemExit(f"{run_dir}/log.jsonl has no elapsed_s for step(s) {missing}; was train.log_every=1?")
    return (rows[last] - rows[first]) / (last - first)


def sft_config(args, run_dir: Path, steps: int) -> SFTConfig:
    return SFTConfig.from_dict({
        "backbone": args.backbone, "data": args.data, "run_dir": str(run_dir), "trainable": args.trainable,
        "max_history": args.max_history, "train_limit": 64 * args.prompts, "valid_limit": 8, "seed": 0,
        "train": {"max_steps": steps, "micro_batch_size": args.prompts, "grad_accum_steps": 1, "lr": 1e-4,
                  "warmup_steps": 0, "eval_every": 10_000, "save_every": 10_000, "log_every": 1,
                  "group_by_length": True, "progress": False, "mixed_precision": "auto"},
    })


def grpo_config(args, start: Path, run_dir: Path) -> GRPOConfig:
    return GRPOConfig.from_dict({
        "from_run": str(start), "run_dir": str(run_dir), "group_size": args.group, "prompts_per_step": args.prompts,
        "prompts_per_micro_batch": args.prompts_per_micro_batch, "num_iterations": 2,
        "train_limit": 64 * args.prompts, "valid_limit": 8,
        "train": {"max_steps": args.steps + 2, "lr": 1e-5, "warmup_steps": 0, "eval_every": 10_000,
                  "save_every": 10_000, "log_every": 1, "progress": False, "mixed_precision": "auto"},
    })


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="embedded:smollm2-135m")
    p.add_argument("--data", default="embedded:synth")
    p.add_argument("--steps", type=int, default=6, help="steps timed per round (even)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step (both)")
    p.add_argument("--group", type=int, default=8, help="G, GRPO samples per prompt")
    p.add_argument("--prompts-per-micro-batch", type=int, default=4)
    p.add_argument("--trainable", default="top:15", help="the SFT step's trainable blocks (the demo's: top:15)")
    p.add_argument("--max-history", type=int, default=6)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 2 or args.steps % 2:
        p.error("--steps must be an even number >= 2 (GRPO rolls out every 2 steps)")
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        start = work / "start"
        run_sft(sft_config(args, start, 1), ds)  # the GRPO start (untimed)
        sft_s, grpo_s = [], []
        for r in range(args.rounds):
            run_sft(sft_config(args, work / f"sft{r}", args.steps), ds)
            sft_s.append(seconds_per_step(work / f"sft{r}", 1, args.steps))
            run_grpo(grpo_config(args, start, work / f"grpo{r}"), ds)
            grpo_s.append(seconds_per_step(work / f"grpo{r}", 2, args.steps + 2))
            print(f"round {r}: sft {sft_s[-1]:.2f} s/step, grpo {grpo_s[-1]:.2f} s/step", file=sys.stderr)
    out = {
        "sft_s_per_step": round(statistics.median(sft_s), 3), "grpo_s_per_step": round(statistics.median(grpo_s), 3),
        "grpo_over_sft": round(statistics.median(grpo_s) / statistics.median(sft_s), 3),
        "goal_grpo_over_sft_max": 2.0, "sft_s_rounds": [round(x, 3) for x in sft_s],
        "grpo_s_rounds": [round(x, 3) for x in grpo_s], "prompts_per_step": args.prompts, "group_size": args.group,
        "prompts_per_micro_batch": args.prompts_per_micro_batch, "num_iterations": 2, "sft_trainable": args.trainable,
        "grpo_trainable": "FLR module only (backbone frozen)", "backbone": args.backbone, "data": args.data,
        "sft_steps_timed": args.steps - 1, "grpo_steps_timed": args.steps, "threads": args.threads, "torch": torch.__version__,
    }
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
