"""``flrec demo`` and ``flrec config`` (every key of a stage's or recommender's config, with its help)."""

from __future__ import annotations

CONFIGS = {
    "sft": "flrec.training.sft:SFTConfig",
    "grpo": "flrec.training.grpo:GRPOConfig",
    "flr": "flrec.models.flr_config:FLRConfig",
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


def config_class(name: str):
    import importlib

    mod, cls = CONFIGS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def cmd_demo(a) -> None:
    from flrec.demo import run_demo

    run_demo(out=a.out, steps=a.steps, eval_rows=a.eval_rows)


def cmd_config(a) -> None:
    print(config_class(a.stage).describe())


def add_demo_parser(sub) -> None:
    from flrec.demo import DEMO_EVAL_ROWS  # torch-free

    s = sub.add_parser("demo", help="embedded data -> FLR SFT -> evaluation -> results table")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--steps", type=int, default=None, help="SFT steps (default from configs/demo.yaml)")
    s.add_argument("--eval-rows", type=int, default=None, help=f"test rows to evaluate (default {DEMO_EVAL_ROWS})")
    s.set_defaults(fn=cmd_demo)


def add_config_parser(sub) -> None:
    s = sub.add_parser("config", help="list a config's keys, defaults and help (stages and recommenders)")
    s.add_argument("stage", choices=sorted(CONFIGS), help="which config: " + ", ".join(sorted(CONFIGS)))
    s.set_defaults(fn=cmd_config)
