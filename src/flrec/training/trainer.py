"""A generic, model-agnostic training loop on Hugging Face Accelerate.

Model contract: ``model(**batch)`` returns a dict with a scalar ``"loss"`` tensor and optionally
``"logs"`` (name -> float/tensor: averaged, logged) and ``"n_tokens"`` (token-weights the validation
loss). ``collate_fn`` returns the ``batch`` mapping. The same code runs on CPU, one GPU, or under
``accelerate launch`` (DDP/FSDP/DeepSpeed): the prepared model is what gets called, so DDP syncs.

Exact resume: a checkpoint holds trainable parameters + buffers, optimizer, scheduler and the RNG
states of every process (``accelerator.save_state``) plus the data position (``trainer_state.json``).
The shuffle order is a pure function of (data_seed, epoch) and consumed batches are skipped, so a
resumed run reproduces an uninterrupted one bit for bit. Datasets and collate functions must not
draw from the global RNGs: the loader prefetches one batch ahead, so such draws would land at
different points of the RNG stream after a resume.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from flrec.config import ConfigBase, option, save_run_metadata
from flrec.errors import ConfigError, FlrecError, disk_full_error
from flrec.utils.io import atomic_save, atomic_write_json, atomic_write_text, dir_lock, read_jsonl_tolerant
from flrec.utils.outputs import check_overlap
from flrec.utils.precision import resolve_mixed_precision
from flrec.utils.runid import (
    FINGERPRINT,
    config_identity,
    diff,
    make_fingerprint,
    mismatch_message,
    read_fingerprint,
    write_fingerprint,
)

SaveFn = Callable[[nn.Module, Path], None]
TrainableFilter = Callable[[str, nn.Parameter], bool]

STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "trainable.safetensors"
SCHEDULER_FILE = "scheduler.json"  # JSON, not pickle: nothing in a run directory is ever unpickled
FINISHED_FILE = "finished.json"  # written last: the run is complete and best/ is its model
# TrainConfig keys that cannot change a run's result (left out of its fingerprint).
TRAIN_COSMETIC = ("output_dir", "progress", "log_every", "tensorboard", "num_workers", "resume", "save_every",
                  "keep_last", "overwrite")
# What a resume-key mismatch means in the user's terms.
_RESUME_LABELS = {
    "total_steps": "max_steps/epochs (or the number of training rows)",
    "num_processes": "the number of processes (accelerate launch --num_processes)",
    "data_seed": "data_seed/seed",
}
# Keys that change which batches/steps a run sees: resuming with a different value cannot be exact.
_RESUME_KEYS = (
    "group_by_length",
    "micro_batch_size",
    "grad_accum_steps",
    "shuffle",
    "data_seed",
    "total_steps",
    "num_processes",
)


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


class EpochShuffleSampler(Sampler[int]):
    """Sampler whose order depends only on (seed, epoch): reproducible after a restart and identical on
    every process (accelerate then gives each process its own shard of batches).

    With ``lengths`` (and ``batch_size``) it groups by length: the epoch's permutation is cut into
    mega-batches of ``GROUP_MEGA`` micro-batches, each sorted longest first, so a micro-batch holds rows
    of similar length (Hugging Face's ``group_by_length``); the longest micro-batch runs first, so an
    out-of-memory error shows at step one.
    """

    GROUP_MEGA = 50

    def __init__(self, n: int, seed: int, shuffle: bool = True, lengths: Sequence[int] | None = None,
                 batch_size: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's row order."""
        if not self.shuffle:
            perm = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return perm
        mega = self.GROUP_MEGA * self.batch_size
        groups = [sorted(perm[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, self.n, mega)]
        out = [j for grp in groups for j in grp]
        longest = max(range(0, self.n, self.batch_size), key=lambda i: self.lengths[out[i]])
        out[: self.batch_size], out[longest : longest + self.batch_size] = (
            out[longest : longest + self.batch_size], out[: self.batch_size])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.n


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of a padded batch's cells that are padding, over consecutive batches of ``order``.

    >>> padding_fraction([1, 3, 1, 3], [0, 1, 2, 3], 2), padding_fraction([1, 3, 1, 3], [1, 3, 0, 2], 2)
    (0.3333333333333333, 0.0)
    """
    cells = real = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i : i + batch_size]]
        cells += max(batch) * len(batch)
        real += sum(batch)
    return (cells - real) / max(cells, 1)


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoints/step-N`` folder with the largest N, or None."""
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return max(done, key=_ckpt_step, default=None)


def _ckpt_step(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to the peak (reached at step warmup-1), then linear decay towards 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _batch_size(batch: Mapping[str, Any], default: int) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return default


def run_inputs(run_config: ConfigBase | None) -> list[str]:
    """What a stage's config reads (``from_run`` of GRPO, a local ``data`` folder): never a run directory."""
    return [v for v in (getattr(run_config, "from_run", None), getattr(run_config, "data", None))
            if isinstance(v, str) and v]


class Trainer:
    """Train ``model`` on ``train_dataset``, select the best step on ``valid_dataset``; see the module doc.

    ``param_groups``: optional torch-style groups (``{"params": [...], "lr": ...}``) for AdamW; by default
    weight decay applies to matrices only. ``trainable_filter(name, param) -> bool`` sets which parameters
    train (the others are frozen). ``save_fn(unwrapped_model, path)`` writes the final best model on the
    main process; the default is ``accelerator.save_model`` (safetensors, run on every process).
    ``save_metadata=False`` when the caller already wrote its own stage config into ``output_dir``
    (``train()`` otherwise writes ``config.yaml``/``run_info.json`` for this TrainConfig there).
    ``lengths``: each training row's length in tokens (needed by ``group_by_length``).

    Run identity: ``run_config`` (default: this TrainConfig) is what ``config.yaml`` records, under
    ``stage``; ``fingerprint`` (default: the TrainConfig minus :data:`TRAIN_COSMETIC` keys and the
    dataset sizes) is compared with the one stored in ``output_dir``. Equal -> resume, or return a
    finished run as it is; different -> :class:`ConfigError` naming the keys, unless
    ``config.overwrite``. ``config.yaml`` is written only when a run starts, never over an existing
    run; a lock file keeps a second process out of ``output_dir``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        valid_dataset: Dataset | None,
        collate_fn: Callable[[list[Any]], Mapping[str, Any]],
        config: TrainConfig,
        param_groups: Sequence[dict[str, Any]] | None = None,
        trainable_filter: TrainableFilter | None = None,
        save_fn: SaveFn | None = None,
        save_metadata: bool = True,
        run_config: ConfigBase | None = None,
        stage: str = "train",
        fingerprint: Mapping[str, Any] | None = None,
        lengths: Sequence[int] | None = None,
    ):
        cfg = self.config = config
        if len(train_dataset) == 0:
            # An empty loader would spin forever with max_steps, or "finish" untrained with epochs.
            raise FlrecError(
                "no training rows: the training set is empty (e.g. a header-only train.csv); "
                "add rows to the train split"
            )
        self.run_config, self.stage = run_config, stage
        self._given_fingerprint = dict(fingerprint) if fingerprint is not None else None
        self._data_sizes = {"train_rows": len(train_dataset),
                            "valid_rows": None if valid_dataset is None else len(valid_dataset)}
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision)
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum_steps, mixed_precision=self.mixed_precision
        )
        self.output_dir = Path(cfg.output_dir)
        self.save_fn, self.save_metadata = save_fn, save_metadata
        self.data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
        if trainable_filter is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(trainable_filter(name, p)))
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise FlrecError(
                "Trainer: the model has no trainable parameters; check trainable_filter/requires_grad"
            )
        model.to(acc.device)
        self._opt = self._make_optimizer(model, param_groups)

        if cfg.group_by_length and lengths is None:
            raise ConfigError("train.group_by_length needs the rows' lengths; this stage does not provide them, "
                              "set train.group_by_length=false")
        self.train_lengths = lengths
        self._sampler = self.make_train_sampler(len(train_dataset))
        # Own generators: DataLoader draws a worker base seed per iterator, which must not consume
        # the global RNG (a resumed run creates an extra iterator mid-epoch).
        self._train_gen = torch.Generator()
        pin = acc.device.type == "cuda"
        train_loader = DataLoader(
            train_dataset,
            batch_size=cfg.micro_batch_size,
            sampler=self._sampler,
            collate_fn=collate_fn,
            num_workers=cfg.num_workers,
            generator=self._train_gen,
            pin_memory=pin,
        )
        valid_loader = (
            None
            if valid_dataset is None
            else DataLoader(
                valid_dataset,
                batch_size=cfg.eval_batch_size or cfg.micro_batch_size,
                shuffle=False,
                collate_fn=collate_fn,
                num_workers=cfg.num_workers,
                generator=torch.Generator(),
                pin_memory=pin,
            )
        )
        self.model, self.optimizer, self.train_loader = acc.prepare(model, self._opt, train_loader)
        self.valid_loader = acc.prepare(valid_loader) if valid_loader is not None else None

        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.grad_accum_steps)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        warmup = cfg.warmup_steps or round(cfg.warmup_ratio * self.total_steps)
        # Not prepared: accelerate's scheduler wrapper steps num_processes times per optimizer step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self._opt, lambda s: _lr_factor(s, warmup, self.total_steps)
        )
        # The scheduler is NOT registered for accelerate's checkpointing (that pickles it and loads it
        # with weights_only=False); its state goes to scheduler.json instead, see _save_checkpoint.
        acc.register_save_state_pre_hook(self._keep_trainable_weights)

    # ----------------------------------------------------------------- setup helpers
    def _make_optimizer(
        self, model: nn.Module, param_groups: Sequence[dict[str, Any]] | None
    ) -> torch.optim.AdamW:
        cfg = self.config
        if param_groups is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            param_groups = [
                {"params": [p for p in trainable if p.dim() >= 2]},
                {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
            ]
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in param_groups]
        groups = [g for g in groups if g["params"]]
        kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        try:  # fused: one kernel for all params (5x faster than the default on CPU, see machine notes)
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, **kwargs)

    def _trainable_state(
        self, unwrapped: nn.Module, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Trainable parameters + buffers: the frozen base comes from the caller's model, not checkpoints."""
        keep = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
        keep |= {n for n, _ in unwrapped.named_buffers()}
        return {k: v for k, v in state_dict.items() if k in keep}

    def _keep_trainable_weights(self, models: list[nn.Module], weights: list[dict], _dir: str) -> None:
        for i, (m, w) in enumerate(zip(models, weights, strict=False)):
            weights[i] = self._trainable_state(m, w)

    # ----------------------------------------------------------------- hooks (override in subclasses)
    # A stage that trains differently (e.g. GRPO) overrides these and never copies the loop.
    def make_train_sampler(self, n: int) -> EpochShuffleSampler:
        """The training sampler over ``n`` rows; called once in ``__init__`` (after the Accelerator
        exists). It must order rows as a pure function of (seed, epoch) and have ``set_epoch``."""
        cfg = self.config
        return EpochShuffleSampler(n, self.data_seed, cfg.shuffle, self.train_lengths if cfg.group_by_length else None,
                                   cfg.micro_batch_size)

    def prepare_batch(self, batch: Mapping[str, Any], state: TrainState) -> Mapping[str, Any]:
        """Turn a collated training micro-batch into what :meth:`compute_loss` takes (default: as is).

        ``state.epoch``/``state.batch_in_epoch`` say where in the data this micro-batch is."""
        return batch

    def compute_loss(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Training and validation outputs of one micro-batch (see the module doc for the keys);
        ``self.model.training`` tells which. Default: ``model(**batch)``."""
        return self._forward(batch)

    def select_metric(self, out: Mapping[str, Any]) -> str:
        """The key of ``compute_loss``'s output that validation minimises (``config.select_metric``)."""
        return self._select_key(out)

    def extra_validation(self, step: int) -> dict[str, float]:
        """Validation values beyond the model's loss means (e.g. ranking metrics), computed at every
        validation (after ``step`` optimizer steps): logged as ``valid_<name>`` (log.jsonl, progress bar,
        history) and selectable by ``select_metric``. Runs on every process; the values must be the same
        on all of them (reduce them). Default: none."""
        return {}

    def extra_validation_names(self) -> tuple[str, ...]:
        """The names :meth:`extra_validation` returns, known before training (``select_metric`` is checked
        against them, and the first, or the selected one, is shown in the progress bar). Default: none."""
        return ()

    # ----------------------------------------------------------------- public API
    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of padding in this epoch's training micro-batches (NaN without row lengths)."""
        if self.train_lengths is None:
            return float("nan")
        sampler = EpochShuffleSampler(self._sampler.n, self._sampler.seed, self._sampler.shuffle,
                                      self._sampler.lengths, self._sampler.batch_size)
        sampler.set_epoch(epoch)
        return padding_fraction(self.train_lengths, sampler.order(), self.config.micro_batch_size)

    @torch.no_grad()
    def evaluate(self) -> float:
        """The validation value of ``select_metric`` (see :meth:`evaluate_all`)."""
        return self.evaluate_all()["selected"]

    @torch.no_grad()
    def evaluate_all(self) -> dict[str, float]:
        """Validation means, token-weighted if the model returns ``n_tokens`` (else per batch).

        Keys: ``selected`` (the ``select_metric`` value), ``total`` (the training objective) and every
        scalar the model logs (``logs``), e.g. ``rec`` and each regulariser.
        """
        if self.valid_loader is None:
            raise FlrecError("Trainer.evaluate: no valid_dataset was given")
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        weight = torch.zeros((), device=self.accelerator.device)
        for batch in self.valid_loader:
            out = self.compute_loss(batch)
            key = self.select_metric(out)
            w = torch.as_tensor(out.get("n_tokens", 1), device=weight.device, dtype=torch.float32)
            values = {"selected": out[key], "total": out["loss"], **out.get("logs", {})}
            for k, v in values.items():
                v = torch.as_tensor(v, device=weight.device).detach().float()
                sums[k] = sums.get(k, 0.0) + v * w
            weight += w
        self.model.train(was_training)
        names = sorted(sums)
        vec = self.accelerator.reduce(torch.stack([sums[k] for k in names] + [weight]), "sum")
        return {k: (vec[i] / vec[-1]).item() for i, k in enumerate(names)}

    def _select_key(self, out: Mapping[str, Any]) -> str:
        key = self.config.select_metric
        if key == "auto" or key in self.extra_validation_names():  # an extra value: valid_loss is auto's loss
            return "rec_loss" if "rec_loss" in out else "loss"
        if key not in out or not isinstance(out[key], torch.Tensor) or out[key].dim() != 0:
            extra = list(self.extra_validation_names())
            raise ConfigError(
                f"config key 'select_metric' is {key!r} but the model returns no scalar under that name "
                f"(it returns {sorted(k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 0)}"
                f"{f'; the extra validation values are {extra}' if extra else ''}); "
                "set select_metric=auto or one of those"
            )
        return key

    def _check_select_metric(self) -> None:
        """Refuse a ranking select_metric that no extra validation value provides, before training."""
        key, names = self.config.select_metric, self.extra_validation_names()
        if self.valid_loader is not None and is_ranking_metric(key) and key not in names:
            raise ConfigError(
                f"config key 'select_metric' is {key!r}, a ranking metric, but this stage's validation computes "
                f"{list(names) or 'no ranking metrics'}; " + (
                    f"pick one of {list(names)} or select_metric=auto" if names else
                    "turn validation ranking on (SFT: valid_rank_rows=500) or set select_metric=auto")
            )

    def _bar_names(self) -> tuple[str, ...]:
        """Extra validation values shown in the progress bar: the selected one, else the first."""
        names = self.extra_validation_names()
        if self.config.select_metric in names:
            return (self.config.select_metric,)
        return names[:1]

    def _eval_due(self, step: int) -> bool:
        """Whether to validate after optimizer step ``step`` (``eval_every`` / ``eval_per_epoch``)."""
        cfg = self.config
        if self.valid_loader is None:
            return False
        if cfg.eval_every:
            return step % cfg.eval_every == 0
        if cfg.eval_per_epoch:
            marks = eval_steps_in_epoch(self.steps_per_epoch, cfg.eval_per_epoch)
            return (step - 1) % self.steps_per_epoch + 1 in marks
        return False

    def train(self) -> TrainResult:
        acc = self.accelerator
        self._check_select_metric()  # before the run directory is claimed: a fixed rerun is not "other settings"
        # The run directory must never be (or hold, or lie in) what the run reads: --force would wipe it.
        check_overlap(self.output_dir, run_inputs(self.run_config), option="run_dir")
        with ExitStack() as guard:
            if acc.is_main_process:
                guard.enter_context(dir_lock(self.output_dir, "run directory"))
            finished = self._claim_output_dir()
            if finished is not None:
                return finished
            try:
                result = self._train()
            except Exception as e:  # a full disk: a one-line error naming the run, not a writer's traceback
                full = disk_full_error(e, self.output_dir)
                if full is None:
                    raise
                raise full from e
            if acc.is_main_process:
                # best/ now holds the model: the best-weights scratch copy would be a second one.
                shutil.rmtree(self.output_dir / "checkpoints" / "best", ignore_errors=True)
                result.disk_bytes = dir_size(self.output_dir)
                atomic_write_json(self.output_dir / FINISHED_FILE, asdict(result))
            acc.wait_for_everyone()
        return result

    def _train(self) -> TrainResult:
        acc, cfg = self.accelerator, self.config
        state = self._start_state()
        log = _RunLog(self.output_dir, state.step, cfg.tensorboard, enabled=acc.is_main_process)
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            disable=not (cfg.progress and acc.is_main_process),
            desc="train",
            dynamic_ncols=True,
        )
        try:
            self._loop(state, log, bar)
            if self.valid_loader is not None and state.last_eval_step != state.step:
                self._validate(state, log, bar)
            self._save_checkpoint(state)
        finally:
            bar.close()
            log.close()
        return self._finish(state)

    # ----------------------------------------------------------------- training loop
    def _loop(self, state: TrainState, log: _RunLog, bar: tqdm) -> None:
        acc, cfg = self.accelerator, self.config
        meter = _Meter(acc.device)
        t0, elapsed0 = time.perf_counter(), state.elapsed_s
        n_batches = len(self.train_loader)
        self.model.train()
        nonfinite = torch.zeros((), dtype=torch.bool, device=acc.device)  # a non-finite loss since the last step
        step_start = (state.epoch, state.batch_in_epoch)  # data position of the last good state
        while state.step < self.total_steps and not state.stopped_early:
            self.train_loader.set_epoch(state.epoch)  # also sets our sampler's epoch
            self._sampler.set_epoch(state.epoch)
            self._train_gen.manual_seed(_derive_seed(self.data_seed, state.epoch, 1))
            loader = (
                acc.skip_first_batches(self.train_loader, state.batch_in_epoch)
                if state.batch_in_epoch
                else self.train_loader
            )
            batches_this_pass = 0
            for batch in loader:
                batches_this_pass += 1
                inputs = self.prepare_batch(batch, state)
                with acc.accumulate(self.model):
                    out = self.compute_loss(inputs)
                    acc.backward(out["loss"])
                    nonfinite |= ~torch.isfinite(out["loss"].detach())
                    if acc.sync_gradients:
                        # max_norm=inf only measures the norm, so the guard also runs without clipping.
                        norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or math.inf)
                        if cfg.max_grad_norm > 0:
                            meter.grad_norm = norm
                        self._stop_if_nonfinite(state, nonfinite, norm, step_start)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                n_rows = _batch_size(batch, cfg.micro_batch_size)
                meter.add(out, n_rows)
                state.samples_seen += n_rows * acc.num_processes
                state.batch_in_epoch += 1
                if state.batch_in_epoch == n_batches:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if not acc.sync_gradients:
                    continue
                meter.lr = self.scheduler.get_last_lr()[0]  # the rate this step used
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                state.step += 1
                self._notify_step(state.step)
                step_start = (state.epoch, state.batch_in_epoch)
                state.elapsed_s = elapsed0 + time.perf_counter() - t0
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == self.total_steps:
                    row = meter.flush(acc, state)
                    log.write(row)
                    bar.set_postfix_str(bar_postfix(row, state.history, self._bar_names()), refresh=False)
                if self._eval_due(state.step):
                    self._validate(state, log, bar)
                if cfg.save_every and state.step % cfg.save_every == 0 and state.step < self.total_steps:
                    self._save_checkpoint(state)
                if state.step >= self.total_steps or state.stopped_early:
                    break
            if batches_this_pass == 0:  # another pass would yield nothing too: stop instead of spinning
                raise FlrecError(
                    f"no training rows: the training data loader of process {acc.process_index} yielded no batch "
                    f"(step {state.step} of {self.total_steps}); add rows to the train split"
                )

    def _notify_step(self, step: int) -> None:
        """Tell the model how many optimizer steps are done (``model.on_train_step(step)``, if it has one):
        schedules inside the model (e.g. FLR's regulariser warm-up) then count optimizer steps, the same
        for any accumulation or process count."""
        hook = getattr(self.accelerator.unwrap_model(self.model), "on_train_step", None)
        if callable(hook):
            hook(step)

    def _forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = self.model(**batch)
        if not isinstance(out, Mapping) or "loss" not in out or out["loss"].dim() != 0:
            raise FlrecError(
                "Trainer: model.forward(**batch) must return a dict with a scalar tensor under 'loss'"
            )
        return out

    def _validate(self, state: TrainState, log: _RunLog, bar: tqdm | None = None) -> None:
        if bar is not None:  # validation can take a while: say so instead of a frozen bar
            bar.set_description_str("train (validating)")
        values = self.evaluate_all()
        extra = {k: float(v) for k, v in self.extra_validation(state.step).items()}
        if bar is not None:
            bar.set_description_str("train", refresh=False)
        loss = values.pop("selected")
        key = self.config.select_metric
        if key in self.extra_validation_names():
            if key not in extra:
                raise FlrecError(f"{type(self).__name__}.extra_validation returned {sorted(extra)}, "
                                 f"not the declared select_metric {key!r}")
            value = extra[key]
        else:
            value = loss
        state.last_eval_step = state.step
        improved = _improves(value, state.best_loss, self.config.select_direction)
        if improved:
            state.best_loss, state.best_step, state.bad_evals = value, state.step, 0
            self._save_best()
        else:
            state.bad_evals += 1
            patience = self.config.early_stopping_patience
            state.stopped_early = bool(patience) and state.bad_evals >= patience
        # valid_loss is the selection metric (with select_metric an extra value: the loss auto would
        # select on); valid_<name> are the other validation means and the extra values.
        record = {
            "step": state.step,
            "valid_loss": loss,
            **{f"valid_{k}": v for k, v in values.items()},
            **{f"valid_{k}": v for k, v in extra.items()},
            "best_step": state.best_step,
            "elapsed_s": round(state.elapsed_s, 3),
        }
        state.history.append(record)
        log.write(record)

    # ----------------------------------------------------------------- checkpoints
    def _start_state(self) -> TrainState:
        cfg = self.config
        keys = {
            "micro_batch_size": cfg.micro_batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "shuffle": cfg.shuffle,
            "data_seed": self.data_seed,
            "total_steps": self.total_steps,
            "num_processes": self.accelerator.num_processes,
        }
        ckpt = latest_checkpoint(self.output_dir)
        if ckpt is None or cfg.resume is False:
            if ckpt is not None:
                raise ConfigError(
                    f"config key 'resume' is false but {ckpt.parent} holds checkpoints; "
                    "set resume=auto to continue that run or pick a new output_dir"
                )
            if cfg.resume is True:
                raise ConfigError(
                    f"config key 'resume' is true but {self.output_dir}/checkpoints has no checkpoint; "
                    "set resume=auto to start fresh"
                )
            set_seed(cfg.seed, device_specific=True)
            return TrainState(resume_keys=keys, trainable=self.trainable)
        state = TrainState(**json.loads((ckpt / STATE_FILE).read_text()))
        for k, v in keys.items():
            if state.resume_keys.get(k) != v:
                raise ConfigError(
                    f"{self._key_label(k)} is {v} but checkpoint {ckpt} used {state.resume_keys.get(k)}; "
                    "restore it to resume exactly, or start a new run directory (or --force to start over)"
                )
        if state.trainable != self.trainable:
            raise FlrecError(
                f"{ckpt}: trained a different parameter set than the model now marks trainable; "
                "use the same trainable_filter/requires_grad as the original run"
            )
        with _without_pickled_objects(ckpt) as view:
            self.accelerator.load_state(str(view), strict=False)  # strict=False: frozen weights are not stored
        self._load_scheduler(ckpt, state.step)
        return state

    def _save_checkpoint(self, state: TrainState) -> None:
        acc = self.accelerator
        root = self.output_dir / "checkpoints"
        final, tmp = root / f"step-{state.step}", root / f".tmp-step-{state.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during saving
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_write_json(tmp / SCHEDULER_FILE, self.scheduler.state_dict())
            atomic_write_json(tmp / STATE_FILE, asdict(state))  # marks the folder complete
            if final.exists():  # re-saving a step (end of run right after a periodic save)
                old = root / f".old-step-{state.step}"
                os.replace(final, old)
                shutil.rmtree(old)
            os.replace(tmp, final)
            steps = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()), key=_ckpt_step)
            for p in steps[: -self.config.keep_last]:
                shutil.rmtree(p)
        acc.wait_for_everyone()

    def _save_best(self) -> None:
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        weights = self._trainable_state(unwrapped, acc.get_state_dict(self.model))
        if acc.is_main_process:
            path = self.output_dir / "checkpoints" / "best" / BEST_WEIGHTS
            path.parent.mkdir(parents=True, exist_ok=True)
            cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
            atomic_save(path, lambda tmp: save_file(cpu, str(tmp)))
        acc.wait_for_everyone()

    def _finish(self, state: TrainState) -> TrainResult:
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        best_file = self.output_dir / "checkpoints" / "best" / BEST_WEIGHTS
        if state.best_loss is not None and best_file.is_file():
            missing = unwrapped.load_state_dict(
                # "cpu:0" (a multi-process CPU run's device) is not a device name safetensors accepts
                load_file(str(best_file), device="cpu" if acc.device.type == "cpu" else str(acc.device)), strict=False
            )
            if missing.unexpected_keys:
                raise FlrecError(
                    f"{best_file}: unexpected keys {missing.unexpected_keys[:3]}; wrong model for this run"
                )
        best_dir = self.output_dir / "best"
        if self.save_fn is None:
            acc.save_model(self.model, best_dir)
        elif acc.is_main_process:
            self.save_fn(unwrapped, best_dir)
        acc.wait_for_everyone()
        best_step = state.best_step if state.best_loss is not None else state.step
        return TrainResult(
            best_step,
            state.best_loss,
            state.step,
            state.stopped_early,
            best_dir,
            self.output_dir / "log.jsonl",
            samples_seen=state.samples_seen,
            mixed_precision=self.mixed_precision,
            select_metric=self.config.select_metric,
        )

    # ----------------------------------------------------------------- run identity and guards
    def fingerprint(self) -> dict[str, Any]:
        """What determines this run's result (see :mod:`flrec.utils.runid`), plus resolved settings."""
        if self._given_fingerprint is not None:
            fp = dict(self._given_fingerprint)
        else:
            fp = make_fingerprint(config_identity(self.config, TRAIN_COSMETIC), data=self._data_sizes)
        fp["resolved.mixed_precision"] = self.mixed_precision
        fp["resolved.num_processes"] = self.accelerator.num_processes
        return fp

    def _key_label(self, key: str) -> str:
        label = _RESUME_LABELS.get(key, key)
        prefix = "train." if self.run_config is not None and self.run_config is not self.config else ""
        return "config key " + "/".join(prefix + part for part in label.split("/")) if key != "num_processes" else label

    def _claim_output_dir(self) -> TrainResult | None:
        """Check ``output_dir`` against this run's fingerprint; a finished identical run is returned."""
        acc, cfg, out = self.accelerator, self.config, self.output_dir
        fp = self.fingerprint()
        stored = read_fingerprint(out)
        if stored is not None:
            keys = diff(stored, fp)
            if keys and not cfg.overwrite:
                raise ConfigError(mismatch_message(
                    out, "training run", stored, fp, keys,
                    "rerun with --force (train.overwrite=true) to delete that run and start over, "
                    "or choose a new run directory"))
            if keys:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self._wipe_run()
                stored = None
            else:
                done = out / FINISHED_FILE
                if done.is_file() and (out / "best").is_dir():
                    info = json.loads(done.read_text(encoding="utf-8"))
                    info.update(best_dir=Path(info["best_dir"]), history_path=Path(info["history_path"]), reused=True)
                    return TrainResult(**{k: v for k, v in info.items() if k in TrainResult.__dataclass_fields__})
        acc.wait_for_everyone()
        if stored is None and acc.is_main_process:
            # A run directory from an older flrec has checkpoints but no fingerprint: adopt it (the
            # resume keys below still guard exactness); otherwise this is a fresh start.
            if self.save_metadata and latest_checkpoint(out) is None:
                save_run_metadata(out, self.run_config or cfg, stage=self.stage)
                self._record_resolved()
            write_fingerprint(out, fp)
        acc.wait_for_everyone()
        return None

    def _record_resolved(self) -> None:
        """Add what "auto" settings resolved to (e.g. mixed_precision) to run_info.json."""
        path = self.output_dir / "run_info.json"
        info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        info["resolved"] = {"mixed_precision": self.mixed_precision, "num_processes": self.accelerator.num_processes,
                            "device": str(self.accelerator.device)}
        atomic_write_json(path, info)

    def _wipe_run(self) -> None:
        """Delete what a training run wrote (only those files: anything else of the user's stays)."""
        out = self.output_dir
        for name in ("checkpoints", "best", "tb"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("log.jsonl", FINISHED_FILE, FINGERPRINT, "config.yaml", "run_info.json"):
            (out / name).unlink(missing_ok=True)

    def _load_scheduler(self, ckpt: Path, step: int) -> None:
        path = ckpt / SCHEDULER_FILE
        if path.is_file():
            self.scheduler.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
            return
        # A checkpoint from an older flrec kept the scheduler in a pickle, which we never load: the
        # schedule is a pure function of the step, so replay it (the optimizer state holds the lr).
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        for _ in range(step):
            self.scheduler.step()
        for g, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            g["lr"] = lr

    def _stop_if_nonfinite(self, state: TrainState, loss_flag: torch.Tensor, grad_norm: torch.Tensor | None,
                           step_start: tuple[int, int]) -> None:
        """Stop before a non-finite update is applied, saving the last good state as a checkpoint."""
        acc = self.accelerator
        bad_loss = loss_flag.float().reshape(1)
        bad_norm = (torch.zeros(1, device=acc.device) if grad_norm is None
                    else (~torch.isfinite(torch.as_tensor(grad_norm, device=acc.device))).float().reshape(1))
        flags = acc.reduce(torch.cat([bad_loss, bad_norm]), "sum").tolist()  # one sync per optimizer step
        loss_flag.zero_()
        if not any(flags):
            return
        what = "loss" if flags[0] else f"gradient norm ({float(grad_norm)})"
        self.optimizer.zero_grad(set_to_none=True)  # the bad step's gradients are never applied
        state.epoch, state.batch_in_epoch = step_start
        self._save_checkpoint(state)
        ckpt = self.output_dir / "checkpoints" / f"step-{state.step}"
        raise FlrecError(
            f"training stopped at step {state.step + 1}: non-finite {what}; the last good state "
            f"(step {state.step}) is saved in {ckpt}; lower train.lr or set train.max_grad_norm "
            "(in a new run directory, or rerun with --force)"
        )


@contextmanager
def _without_pickled_objects(ckpt: Path) -> Iterator[Path]:
    """``ckpt``, or a temporary view of it without ``custom_checkpoint_*.pkl`` files.

    accelerate unpickles those with weights_only=False (arbitrary code) and refuses a folder whose
    count differs from the registered objects; we register none, so such files are either from an
    older flrec (its scheduler, now in scheduler.json) or planted. The view links everything else."""
    planted = list(ckpt.glob("custom_checkpoint_*.pkl"))
    if not planted:
        yield ckpt
        return
    with tempfile.TemporaryDirectory(prefix=".load-", dir=ckpt.parent) as tmp:
        for f in ckpt.iterdir():
            if f not in planted:
                (Path(tmp) / f.name).symlink_to(f.resolve())
        yield Path(tmp)


def _improves(loss: float, best: float | None, direction: Literal["min", "max"] = "min") -> bool:
    """A validation value is an improvement only if it is finite (a first NaN must not become "best") and
    beats ``best`` in ``direction`` (min: lower is better; max: higher)."""
    if not math.isfinite(loss):
        return False
    return best is None or (loss > best if direction == "max" else loss < best)


class _Meter:
    """Running sums between log rows, kept as tensors so logging syncs the device only every log_every."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.micro = 0
        self.samples = 0
        self.grad_norm: torch.Tensor | None = None
        self.lr = 0.0
        self.t = time.perf_counter()

    def add(self, out: Mapping[str, Any], n_samples: int) -> None:
        items = {"loss": out["loss"], **out.get("logs", {})}
        for k, v in items.items():
            v = torch.as_tensor(v, device=self.device).detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.micro += 1
        self.samples += n_samples

    def flush(self, acc: Accelerator, state: TrainState) -> dict[str, float]:
        names = list(self.sums)
        vec = torch.stack(
            [self.sums[k] for k in names] + [torch.tensor(float(self.samples), device=self.device)]
        )
        vec = acc.reduce(vec, "sum")
        means = (vec[:-1] / (self.micro * acc.num_processes)).tolist()
        if not math.isfinite(means[0]):
            raise FlrecError(
                f"training diverged at step {state.step} (loss={means[0]}); lower lr or set max_grad_norm"
            )
        now = time.perf_counter()
        row = {"step": state.step, "lr": self.lr, **dict(zip(names, means, strict=True))}
        if self.grad_norm is not None:
            row["grad_norm"] = float(self.grad_norm)
        row["samples_per_s"] = round(vec[-1].item() / max(now - self.t, 1e-9), 2)
        row["elapsed_s"] = round(state.elapsed_s, 3)
        self.sums, self.micro, self.samples, self.t = {}, 0, 0, now
        return row


def bar_postfix(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = (), extra: Sequence[str] = ()) -> str:
    """The progress bar's few fields (loss, lr, rows/s, last validation loss and the ``extra`` validation
    values, e.g. ndcg@10); log.jsonl has them all.

    Every logged term used to go into the bar (13 fields with FLR's regularisers), which wrapped."""
    parts = [f"loss {row['loss']:.4g}"] if "loss" in row else []
    if "rec" in row and row["rec"] != row.get("loss"):  # the recommendation loss beside the regularised total
        parts.append(f"rec {row['rec']:.4g}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.1e}")
    if "samples_per_s" in row:
        parts.append(f"{row['samples_per_s']:.3g} rows/s")
    if history:
        parts.append(f"valid {history[-1]['valid_loss']:.4g}")
        parts += [f"{k} {history[-1][f'valid_{k}']:.4g}" for k in extra if f"valid_{k}" in history[-1]]
    return ", ".join(parts)


class _RunLog:
    """log.jsonl (line-buffered, flushed per row) + optional TensorBoard, main process only.

    On resume, rows after the checkpoint's step are dropped so the log matches the resumed run."""

    def __init__(self, output_dir: Path, resume_step: int, tensorboard: bool | str, enabled: bool):
        self.file = self.tb = None
        if not enabled:
            return
        path = output_dir / "log.jsonl"
        if path.exists():
            rows, _torn = read_jsonl_tolerant(path)  # a torn last line (crash mid-write) is dropped
            kept = [r for r in rows if r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a", buffering=1, encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard is True:
                    raise ConfigError(
                        "config key 'tensorboard' is true but tensorboard is not installed; "
                        "pip install 'flrec[tb]' (the tensorboard extra) or set tensorboard=auto"
                    ) from None
                _note_tensorboard_off()
            else:
                self.tb = SummaryWriter(str(output_dir / "tb"), purge_step=resume_step + 1)

    def write(self, row: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


_TB_NOTED = False


def _note_tensorboard_off() -> None:
    """Say once per process that tensorboard=auto found no tensorboard (it used to be silent)."""
    global _TB_NOTED
    if not _TB_NOTED:
        _TB_NOTED = True
        print("note: TensorBoard logging is off (tensorboard is not installed; the optional extra "
              "`pip install 'flrec[tb]'` turns it on, train.tensorboard=false silences this note); "
              "metrics are in log.jsonl", file=sys.stderr)
