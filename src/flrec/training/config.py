"""The configuration of one training run (:class:`TrainConfig`) and the validation-schedule helpers it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flrec.config import ConfigBase, option
from flrec.errors import ConfigError

# TrainConfig keys that cannot change a run's result (left out of its fingerprint).
TRAIN_COSMETIC = ("output_dir", "progress", "log_every", "tensorboard", "num_workers", "resume", "save_every",
                  "keep_last", "overwrite")


@dataclass
class TrainConfig(ConfigBase):
    """Optimisation, schedule, evaluation, checkpointing and logging of one training run."""

    output_dir: str = option(
        "runs/train", help="Run folder: checkpoints/, best/, log.jsonl, config.yaml. Ignored by stages with "
        "their own run_dir (flrec train sft writes to run_dir)."
    )
    seed: int = option(0, help="Seed for model-side randomness (dropout); offset by the process index.")
    lr: float = option(1e-4, help="Peak learning rate of AdamW (after warmup).")
    weight_decay: float = option(
        0.01, help="AdamW decoupled weight decay; never applied to biases/norms (ndim < 2)."
    )
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas (two values in [0, 1)).")
    eps: float = option(1e-8, help="AdamW epsilon.")
    warmup_steps: int = option(0, help="Linear warmup length in optimizer steps (use this or warmup_ratio).")
    warmup_ratio: float = option(0.0, help="Warmup as a fraction of total steps (use this or warmup_steps).")
    max_steps: int | None = option(
        None, help="Total optimizer steps; set this OR epochs (neither = 1 epoch)."
    )
    epochs: int | None = option(None, help="Passes over the training set; set this OR max_steps.")
    micro_batch_size: int = option(8, help="Examples per forward pass per process.")
    grad_accum_steps: int = option(
        1, help="Micro-batches per optimizer step (effective batch = micro x accum x procs)."
    )
    max_grad_norm: float = option(1.0, help="Clip the global gradient norm to this value; 0 = no clipping.")
    mixed_precision: Literal["no", "bf16", "auto"] = option(
        "auto",
        help="bf16 autocast with fp32 master weights; auto = bf16 where the hardware runs it natively.",
    )
    eval_every: int = option(
        0, help="Validate every N optimizer steps (always also at the end); 0 = end only. Use this or "
        "eval_per_epoch."
    )
    eval_per_epoch: int = option(
        0, help="Validate N times per epoch, evenly: after step round(j * steps_per_epoch / N) of each epoch, "
        "j = 1..N (4 = at 25/50/75/100% of every epoch; always also at the end); 0 = off. Use this or "
        "eval_every."
    )
    eval_batch_size: int | None = option(
        None, help="Validation batch size per process; default micro_batch_size."
    )
    early_stopping_patience: int = option(
        0, help="Stop after this many validations without improvement (restoring the best); 0 = off."
    )
    select_metric: str = option(
        "auto",
        help="Validation value that early stopping and best-checkpoint selection optimise: a scalar model "
        "output (e.g. rec_loss or loss) or a value of the stage's extra validation (SFT with valid_rank_rows > 0: "
        "e.g. ndcg@10, hr@10); auto = rec_loss when the model returns it (FLR: the recommendation loss alone, "
        "so regulariser terms and their drifting weights never pick the model), else loss.",
    )
    select_mode: Literal["auto", "min", "max"] = option(
        "auto", help="Direction of select_metric: min (lower is better) or max; auto = max for ranking metrics "
        "(names starting with hr@, ndcg@, recall@ or mrr), else min."
    )
    save_every: int = option(
        0, help="Checkpoint every N optimizer steps (always also at the end); 0 = end only."
    )
    keep_last: int = option(
        1, help="Step checkpoints kept on disk, each with weights and optimizer state (~3x the trainable "
        "weights); the best model is kept once, in best/.")
    log_every: int = option(10, help="Log (JSONL, progress bar, TensorBoard) every N optimizer steps.")
    num_workers: int = option(0, help="DataLoader worker processes.")
    shuffle: bool = option(True, help="Shuffle the training set each epoch (reproducibly, see data_seed).")
    group_by_length: bool = option(
        False, help="Batch rows of similar length (seeded mega-batches of 50 micro-batches, each sorted by length, "
        "as Hugging Face's group_by_length): less padding, faster steps; batches differ from plain shuffling."
    )
    data_seed: int | None = option(None, help="Seed of the per-epoch shuffle order; default = seed.")
    resume: bool | Literal["auto"] = option(
        "auto", help="Continue from the latest checkpoint in output_dir: true, false or auto (if one exists)."
    )
    tensorboard: bool | Literal["auto"] = option(
        "auto", help="Write TensorBoard events to output_dir/tb (auto = if tensorboard is installed)."
    )
    progress: bool = option(True, help="Show a tqdm progress bar on the main process.")
    overwrite: bool = option(
        False, help="If output_dir holds a run made with other settings, delete it and start over "
        "(CLI: --force); a run with the same settings is always resumed or reused."
    )

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise ConfigError(
                f"config keys 'max_steps' ({self.max_steps}) and 'epochs' ({self.epochs}) both set; "
                "exactly one decides the schedule: set the other to null"
            )
        if self.max_steps is None and self.epochs is None:
            self.epochs = 1
        positive = (
            "lr",
            "micro_batch_size",
            "grad_accum_steps",
            "keep_last",
            "log_every",
            "max_steps",
            "epochs",
            "eval_batch_size",
        )
        for key in positive:
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"config key '{key}': must be > 0, got {value}")
        for key in (
            "weight_decay",
            "eps",
            "warmup_steps",
            "max_grad_norm",
            "eval_every",
            "eval_per_epoch",
            "save_every",
            "early_stopping_patience",
            "num_workers",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"config key 'betas': need two values in [0, 1), got {list(self.betas)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"config key 'warmup_ratio': must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("config keys 'warmup_steps' and 'warmup_ratio' both set; set one of them to 0")
        if not self.output_dir:
            raise ConfigError("config key 'output_dir' is empty; set it to a run folder, e.g. runs/sft")
        if self.eval_every and self.eval_per_epoch:
            raise ConfigError(f"config keys 'eval_every' ({self.eval_every}) and 'eval_per_epoch' "
                              f"({self.eval_per_epoch}) both set; set one of them to 0")
        if self.select_mode not in ("auto", "min", "max"):
            raise ConfigError(f"config key 'select_mode': {self.select_mode!r} is not one of auto, min, max")
        if not str(self.select_metric).strip():
            raise ConfigError("config key 'select_metric' is empty; set it to auto, rec_loss, loss or e.g. ndcg@10")

    @property
    def select_direction(self) -> Literal["min", "max"]:
        """``select_mode`` resolved: ``max`` for ranking metrics under ``auto``, else ``min``."""
        if self.select_mode != "auto":
            return self.select_mode
        return "max" if is_ranking_metric(self.select_metric) else "min"


RANKING_PREFIXES = ("hr@", "ndcg@", "recall@", "mrr")


def is_ranking_metric(name: str) -> bool:
    """Whether ``name`` is a ranking metric (higher is better): ``hr@K``, ``ndcg@K``, ``recall@K``, ``mrr``.

    >>> is_ranking_metric("ndcg@10"), is_ranking_metric("rec_loss")
    (True, False)
    """
    return str(name).lower().startswith(RANKING_PREFIXES)


def eval_steps_in_epoch(steps_per_epoch: int, per_epoch: int) -> list[int]:
    """The 1-based steps within an epoch after which ``eval_per_epoch=per_epoch`` validates.

    >>> eval_steps_in_epoch(8, 4), eval_steps_in_epoch(10, 3), eval_steps_in_epoch(2, 4)
    ([2, 4, 6, 8], [3, 7, 10], [1, 2])
    """
    return sorted({s for j in range(1, per_epoch + 1) if (s := round(j * steps_per_epoch / per_epoch)) > 0})
