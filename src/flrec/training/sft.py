"""Stage 1: supervised fine-tuning of FLR (paper §4.1, eq. 8) — also BIGRec-style and LatentR3-style SFT.

``flrec train sft --config configs/demo.yaml train.lr=3e-4`` is :func:`run_sft` on a
:class:`SFTConfig`. The loop itself is the generic Accelerate :class:`~flrec.training.trainer.Trainer`
(CPU, one GPU, or ``accelerate launch`` with DDP/FSDP/DeepSpeed); this module only builds the
model, the encoded examples and the save hook.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from flrec.config import ConfigBase, option
from flrec.data.load import load_dataset
from flrec.data.prompts import PromptBuilder, collate_left_padded
from flrec.data.schema import Interaction, RecDataset
from flrec.decoding.ranker import RankSettings, TitleRanker
from flrec.errors import ConfigError
from flrec.evaluation.metrics import EVAL_KS
from flrec.evaluation.records import evaluate_rankings
from flrec.models.flr_config import FLRConfig
from flrec.models.freeze import parse_top
from flrec.models.recommender import FLRRecommender
from flrec.training.probe import THOUGHT_PROBE_NAMES, probe_batches, run_probe
from flrec.training.trainer import TRAIN_COSMETIC, TrainConfig, Trainer, is_ranking_metric
from flrec.utils.dtypes import DTYPES
from flrec.utils.runid import config_identity, dataset_hash, make_fingerprint, model_identity

MAX_FACTORS = 1024  # far beyond any useful K; larger values would allocate K x hidden queries and K x L attention


@dataclass
class SFTConfig(ConfigBase):
    """One SFT run: data, backbone, what trains, the FLR module and the optimisation."""

    data: str = option("embedded:synth", help="D3-format dataset directory, or embedded:synth (generated once, cached)")
    backbone: str = option("embedded:smollm2-135m", help="HF id (e.g. Qwen/Qwen2.5-1.5B), local dir, .gguf file, "
                           "embedded:smollm2-135m or tiny:llama / tiny:qwen2 (tests)")
    domain: str | None = option(None, help="item word used in the prompt (default: the dataset's, e.g. 'CD')")
    run_dir: str = option("runs/sft", help="run directory (checkpoints, log.jsonl, best/ = the trained model)")
    seed: int = option(0, help="seed for the row subsample, model init and training")
    trainable: str = option("full", help="full fine-tune (paper), lora, frozen backbone, or top:N (only the top N "
                            "blocks + final norm + FLR train; the bottom runs without autograd on the prompt)")
    lora_r: int = option(8, help="LoRA rank (trainable=lora)")
    lora_alpha: int = option(16, help="LoRA alpha (trainable=lora)")
    lora_targets: list[str] = option(factory=lambda: ["q_proj", "v_proj"], help="module names LoRA adapts")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", help="weight dtype; keep float32 and use train.mixed_precision=bf16 for autocast training")
    max_prompt_tokens: int = option(512, help="prompts longer than this drop whole oldest titles")
    max_history: int = option(10, help="history titles per prompt (newest kept)")
    prompt_template: Literal["alpaca", "compact"] = option(
        "alpaca", help="alpaca = the paper's (LatentR3's) instruction prompt; compact = a one-line instruction "
        "(~45 fewer tokens per row; a speed/quality trade-off, docs/cpu-training.md)")
    train_limit: int | None = option(None, help="train on a random subset of this many rows (None = all)")
    valid_limit: int | None = option(512, help="validation-loss rows (random subset; None = all)")
    valid_rank_rows: int = option(
        0, help="rank this many fixed validation rows (the first N of the validation split, the same at every "
        "validation) with trie-constrained beam search at each validation, with the model as it is at that step, "
        "and log valid_hr@K / valid_ndcg@K (K in 1,3,5,10 up to valid_rank_beam; title-level hits, as flrec "
        "evaluate); train.select_metric=ndcg@10 then selects on it; 0 = off")
    valid_rank_beam: int = option(
        10, help="beam width (= titles ranked per row) of the validation ranking (valid_rank_rows); "
        "K above it are not reported")
    thought_probe_rows: int = option(
        64, help="at each validation, measure on the first N validation rows whether the LM uses the user's "
        "thought: the rec-loss change when each row gets another row's thought (valid_thought_swap_delta), the "
        "mean thought (valid_thought_const_delta) or E0, and the user share of the written thought (see "
        "flrec.models.health); 0 = off. Does not change training")
    flr_lr_scale: float = option(10.0, help="learning-rate multiplier for the FLR parts (reasoner, thought "
                                 "embedding, scale, loss weights): they start from random init, the backbone "
                                 "is pretrained")
    flr: FLRConfig = option(factory=FLRConfig, help="the latent-reasoning module and its losses")
    train: TrainConfig = option(factory=TrainConfig, help="optimisation, schedule, checkpoints (run_dir overrides output_dir)")

    def __post_init__(self) -> None:
        if self.trainable not in ("full", "lora", "frozen") and parse_top(self.trainable) is None:
            raise ConfigError(f"trainable: unknown mode '{self.trainable}'; use full, lora, frozen or top:N (e.g. top:15)")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ConfigError(f"lora_r and lora_alpha must be >= 1 (LoRA rank and scale), got lora_r={self.lora_r}, "
                              f"lora_alpha={self.lora_alpha}; e.g. lora_r=8 lora_alpha=16")
        if not self.lora_targets or not all(isinstance(t, str) and t.strip() for t in self.lora_targets):
            raise ConfigError(f"lora_targets must name at least one layer, got {self.lora_targets}; "
                              "e.g. lora_targets=[q_proj,v_proj]")
        if self.max_prompt_tokens < 16:
            raise ConfigError("max_prompt_tokens must be >= 16 (a prompt needs its instruction and one title)")
        if not self.flr_lr_scale > 0:
            raise ConfigError(f"flr_lr_scale must be > 0, got {self.flr_lr_scale}")
        for key in ("train_limit", "valid_limit"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 or null (all rows), got {v}")
        if self.thought_probe_rows < 0:
            raise ConfigError(f"thought_probe_rows must be >= 0 (0 = off), got {self.thought_probe_rows}")
        if not 1 <= self.flr.num_factors <= MAX_FACTORS:  # FLRConfig checks >= 1; this stops a huge allocation
            raise ConfigError(f"flr.num_factors must be in 1..{MAX_FACTORS} (the paper uses 3), got {self.flr.num_factors}")
        if self.valid_rank_rows < 0:
            raise ConfigError(f"valid_rank_rows must be >= 0 (0 = no validation ranking), got {self.valid_rank_rows}")
        if self.valid_rank_beam < 1:
            raise ConfigError(f"valid_rank_beam must be >= 1 (e.g. 10), got {self.valid_rank_beam}")
        metric = self.train.select_metric
        if is_ranking_metric(metric):
            names = valid_rank_names(self.valid_rank_beam)
            if not self.valid_rank_rows:
                raise ConfigError(f"train.select_metric={metric} needs validation ranking; set valid_rank_rows "
                                  "(e.g. valid_rank_rows=500) or train.select_metric=auto")
            if metric not in names:
                raise ConfigError(f"train.select_metric={metric} is not computed by the validation ranking "
                                  f"(valid_rank_beam={self.valid_rank_beam}); pick one of {', '.join(names)}")
        self.train = self.train.replace(output_dir=self.run_dir)


def valid_rank_ks(beam: int) -> tuple[int, ...]:
    """The cut-offs K the validation ranking reports: those of ``flrec evaluate`` up to the beam width.

    >>> valid_rank_ks(10), valid_rank_ks(4)
    ((1, 3, 5, 10), (1, 3))
    """
    return tuple(k for k in EVAL_KS if k <= beam) or (1,)


def valid_rank_names(beam: int) -> tuple[str, ...]:
    """The validation ranking's values, largest K first (``ndcg@10`` leads: the progress bar shows it)."""
    return tuple(f"{m}@{k}" for k in reversed(valid_rank_ks(beam)) for m in ("ndcg", "hr"))


class SFTTrainer(Trainer):
    """The generic :class:`Trainer` plus validation ranking: with ``rank_rows``, every validation ranks
    them by trie-constrained beam search (:class:`~flrec.decoding.ranker.TitleRanker`, the ranking of the
    LLM recommenders, with the model as it is at that step, eval mode, no grad) and reports title-level ``hr@K``/``ndcg@K`` as the evaluation
    runner computes them. Each process ranks a strided shard of the rows; the sums are reduced."""

    def __init__(self, *args: Any, dataset: RecDataset | None = None, tokenizer: Any = None,
                 rank_rows: Sequence[Interaction] = (), rank_beam: int = 10, rank_batch_size: int = 8,
                 probe_batches: Sequence[dict] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rank_rows, self.rank_beam, self.rank_batch_size = list(rank_rows), rank_beam, rank_batch_size
        # Collated validation batches for the thought interventions (flrec.models.health), every validation.
        self.probe_batches = list(probe_batches)
        self.rank_dataset, self.rank_tokenizer = dataset, tokenizer
        if self.rank_rows and (dataset is None or tokenizer is None):
            raise ValueError("SFTTrainer: rank_rows need the dataset and the tokenizer")
        self._ranker_cache: TitleRanker | None = None

    def extra_validation_names(self) -> tuple[str, ...]:
        names = valid_rank_names(self.rank_beam) if self.rank_rows else ()
        return names + (THOUGHT_PROBE_NAMES if self.probe_batches else ())

    def extra_validation(self, step: int) -> dict[str, float]:
        """Title-level HR/NDCG@K of the fixed validation rows under the current weights (none without rows),
        and the thought interventions on ``probe_batches`` (does the LM use the user's thought?)."""
        out = self._thought_probe() if self.probe_batches else {}
        return {**out, **self._valid_ranking()} if self.rank_rows else out

    def _thought_probe(self) -> dict[str, float]:
        return run_probe(self.accelerator.unwrap_model(self.model), self.probe_batches, self.accelerator.device)

    def _valid_ranking(self) -> dict[str, float]:
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        rec = self._ranker(model)
        rows = self.rank_rows[acc.process_index :: acc.num_processes]
        was_training = model.training
        try:
            rankings = rec.recommend(rows, k=self.rank_beam, batch_size=self.rank_batch_size) if rows else []
        finally:
            model.train(was_training)  # recommend() puts the model in eval mode
        ks = valid_rank_ks(self.rank_beam)
        metrics = evaluate_rankings(self.rank_dataset, rows, rankings, ks)[1]["metrics"]
        names = sorted(metrics)
        sums = torch.tensor([metrics[k] * len(rows) for k in names] + [float(len(rows))], dtype=torch.float64,
                            device=acc.device)
        sums = acc.reduce(sums, "sum").tolist()
        return {k: sums[i] / max(sums[-1], 1.0) for i, k in enumerate(names)}

    def _ranker(self, model: FLRRecommender) -> TitleRanker:
        """The ranker around ``model`` (built once: its title trie is reused); prompts follow
        ``model.prompt_settings``, decoding is the default one (as ``flrec evaluate`` without a tuned decoding)."""
        if self._ranker_cache is None or self._ranker_cache.model is not model:
            # Rank in the dtype the model has (no cast of the weights being trained).
            dtype = {v: k for k, v in DTYPES.items()}[next(model.parameters()).dtype]
            config = RankSettings(beam=self.rank_beam, batch_size=self.rank_batch_size, inference_dtype=dtype)
            self._ranker_cache = TitleRanker(model, self.rank_tokenizer, self.rank_dataset.catalogue, config)
        return self._ranker_cache


def subsample(rows: list, limit: int | None, seed: int) -> list:
    """A reproducible random subset (kept in original, chronological order)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    idx = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in idx]


def build_model(cfg: SFTConfig, dataset: RecDataset):
    """Backbone + tokenizer (+ thought token) + FLR, in the configured training mode; and a prompt builder."""
    from flrec.models.backbone import add_thought_token, load_backbone  # lazy: transformers

    torch.manual_seed(cfg.seed)
    backbone, tokenizer = load_backbone(cfg.backbone, dtype=DTYPES[cfg.dtype])
    thought = add_thought_token(backbone, tokenizer) if cfg.flr.uses_thought else None
    model = FLRRecommender(backbone, cfg.flr, thought, backbone_spec=cfg.backbone)
    model.set_trainable(cfg.trainable, cfg.lora_r, cfg.lora_alpha, tuple(cfg.lora_targets))
    model.prompt_settings = {"domain": cfg.domain or dataset.domain, "max_prompt_tokens": cfg.max_prompt_tokens,
                             "max_history": cfg.max_history, "template": cfg.prompt_template}
    builder = PromptBuilder(tokenizer, use_thought=cfg.flr.uses_thought, **model.prompt_settings)
    return model, tokenizer, builder


def sft_fingerprint(cfg: SFTConfig, dataset: RecDataset) -> dict:
    """What determines an SFT run's result: the config (minus where files go, progress and logging),
    the train/valid rows and titles (a content hash: the data path itself may move) and the backbone."""
    ignore = ("run_dir", "data", "thought_probe_rows", *(f"train.{k}" for k in TRAIN_COSMETIC))
    return make_fingerprint(config_identity(cfg, ignore), data={"hash": dataset_hash(dataset, ("train", "valid"))},
                            backbone=model_identity(cfg.backbone))


def param_groups(model: FLRRecommender, lr: float, flr_lr_scale: float) -> list[dict] | None:
    """AdamW groups: the FLR parts at ``lr * flr_lr_scale``; no weight decay on vectors (None = defaults)."""
    if flr_lr_scale == 1.0:
        return None
    groups = []
    for is_flr in (False, True):
        params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.") != is_flr]
        extra = {"lr": lr * flr_lr_scale} if is_flr else {}
        groups += [{"params": [p for p in params if p.dim() >= 2], **extra},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra}]
    return groups


def example_lengths(examples) -> list[int]:
    """Prompt + target tokens per encoded example (what a padded batch's width follows)."""
    return [len(e.prompt_ids) + len(e.target_ids) for e in examples]


def run_sft(cfg: SFTConfig, dataset: RecDataset | None = None) -> dict:
    """Train, select the best step on validation (``train.select_metric``: the recommendation loss, or with
    ``valid_rank_rows`` e.g. NDCG@10; ``best_valid_loss`` is its best value), write the model to ``run_dir/best``."""
    dataset = dataset or load_dataset(cfg.data)
    model, tokenizer, builder = build_model(cfg, dataset)
    train_rows = subsample(dataset["train"], cfg.train_limit, cfg.seed)
    valid_rows = subsample(dataset["valid"], cfg.valid_limit, cfg.seed)
    train_ex = builder.encode_rows(train_rows, dataset.catalogue)
    valid_ex = builder.encode_rows(valid_rows, dataset.catalogue) if valid_rows else None

    def save_fn(m: FLRRecommender, path: Path) -> None:
        m.save_pretrained(path, tokenizer)

    rank_rows = list(dataset["valid"][: cfg.valid_rank_rows]) if valid_ex is not None else []
    collate = partial(collate_left_padded, pad_id=tokenizer.pad_token_id)
    bs = cfg.train.eval_batch_size or cfg.train.micro_batch_size
    probe = probe_batches(valid_ex or [], cfg.thought_probe_rows if cfg.flr.uses_thought else 0, bs, collate)
    trainer = SFTTrainer(model, train_ex, valid_ex, collate,
                         cfg.train, param_groups=param_groups(model, cfg.train.lr, cfg.flr_lr_scale), save_fn=save_fn,
                         run_config=cfg, stage="sft", fingerprint=sft_fingerprint(cfg, dataset),
                         lengths=example_lengths(train_ex), dataset=dataset, tokenizer=tokenizer, rank_rows=rank_rows,
                         rank_beam=cfg.valid_rank_beam,
                         rank_batch_size=bs, probe_batches=probe)
    result = trainer.train()
    # train_rows = rows available; rows_seen = examples actually consumed (steps x batch, with repeats).
    return {"run_dir": cfg.run_dir, "model_dir": str(result.best_dir), "best_step": result.best_step,
            "best_valid_loss": result.best_valid_loss, "select_metric": cfg.train.select_metric,
            "steps": result.steps_done,
            "stopped_early": result.stopped_early, "rows_seen": result.samples_seen, "train_rows": len(train_ex),
            "valid_rows": len(valid_ex or []), "mixed_precision": result.mixed_precision, "reused": result.reused,
            "disk_bytes": result.disk_bytes, "padding_fraction": round(trainer.padding_fraction(), 4)}
