"""What a training run returns (:class:`TrainResult`) and what it keeps between steps and resumes
(:class:`TrainState`, stored as JSON in each checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    best_step: int
    best_valid_loss: float | None  # the best select_metric value; None without a validation set (best = last)
    steps_done: int
    stopped_early: bool
    best_dir: Path  # what save_fn wrote: output_dir/best
    history_path: Path  # output_dir/log.jsonl
    samples_seen: int = 0  # training examples consumed over all processes (counting repeats over epochs)
    mixed_precision: str = "no"  # the resolved autocast setting ("bf16" or "no")
    reused: bool = False  # True when a finished run with the same fingerprint was returned as it was
    disk_bytes: int = 0  # what the finished run directory holds on disk
    select_metric: str = "auto"  # what best_valid_loss measures (TrainConfig.select_metric)


@dataclass
class TrainState:
    """Everything besides tensors that a resume needs; stored as JSON in each checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed (per process)
    best_step: int = 0
    best_loss: float | None = None  # best select_metric value (whatever its direction; None = no validation yet)
    bad_evals: int = 0  # validations since the last improvement
    last_eval_step: int = -1
    stopped_early: bool = False
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # validation records
    resume_keys: dict[str, Any] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    samples_seen: int = 0  # training examples consumed (all processes)
