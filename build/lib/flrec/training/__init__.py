"""Training: a generic Accelerate-based loop (SFT, later GRPO and baselines build on it)."""

from flrec.training.trainer import (
    EpochShuffleSampler,
    TrainConfig,
    Trainer,
    TrainResult,
    latest_checkpoint,
    resolve_mixed_precision,
)

__all__ = [
    "EpochShuffleSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "latest_checkpoint",
    "resolve_mixed_precision",
]
