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

The loop calls its parts, each in its own module: :mod:`~flrec.training.config` (TrainConfig),
:mod:`~flrec.training.sampler`, :mod:`~flrec.training.optim`, :mod:`~flrec.training.selection`,
:mod:`~flrec.training.checkpoint`, :mod:`~flrec.training.runlog` and :mod:`~flrec.training.rundir`.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from flrec.config import ConfigBase, save_run_metadata
from flrec.errors import ConfigError, FlrecError, disk_full_error
from flrec.training import checkpoint
from flrec.training.checkpoint import BEST_WEIGHTS, SCHEDULER_FILE, STATE_FILE, latest_checkpoint
from flrec.training.config import (
    RANKING_PREFIXES,
    TRAIN_COSMETIC,
    TrainConfig,
    eval_steps_in_epoch,
    is_ranking_metric,
)
from flrec.training.optim import make_optimizer, make_scheduler
from flrec.training.rundir import FINISHED_FILE, claim_output_dir, dir_size, record_resolved, run_inputs
from flrec.training.runlog import Meter, RunLog, bar_postfix
from flrec.training.sampler import EpochShuffleSampler, derive_seed, padding_fraction
from flrec.training.selection import check_select_metric, improves, select_key
from flrec.training.state import TrainResult, TrainState
from flrec.utils.io import atomic_write_json, dir_lock
from flrec.utils.outputs import check_overlap
from flrec.utils.precision import resolve_mixed_precision
from flrec.utils.runid import config_identity, make_fingerprint

__all__ = [  # the loop's parts live in their own modules; these names were always importable from here
    "BEST_WEIGHTS", "FINISHED_FILE", "RANKING_PREFIXES", "SCHEDULER_FILE", "STATE_FILE", "TRAIN_COSMETIC",
    "EpochShuffleSampler", "TrainConfig", "TrainResult", "TrainState", "Trainer", "bar_postfix", "dir_size",
    "eval_steps_in_epoch", "is_ranking_metric", "latest_checkpoint", "padding_fraction", "resolve_mixed_precision",
    "run_inputs",
]  # fmt: skip

SaveFn = Callable[[nn.Module, Path], None]
TrainableFilter = Callable[[str, nn.Parameter], bool]
_improves = improves  # the name tests know




def _batch_size(batch: Mapping[str, Any], default: int) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return default


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
        self.accelerator = acc = _accelerator(cfg.grad_accum_steps, self.mixed_precision)
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
        self._opt = make_optimizer(model, param_groups, cfg)

        if cfg.group_by_length and lengths is None:
            raise ConfigError("train.group_by_length needs the rows' lengths; this stage does not provide them, "
                              "set train.group_by_length=false")
        self.train_lengths = lengths
        self._sampler = self.make_train_sampler(len(train_dataset))
        train_loader, valid_loader = self._make_loaders(train_dataset, valid_dataset, collate_fn)
        self.model, self.optimizer, self.train_loader = acc.prepare(model, self._opt, train_loader)
        self.valid_loader = acc.prepare(valid_loader) if valid_loader is not None else None

        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.grad_accum_steps)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        # Not prepared: accelerate's scheduler wrapper steps num_processes times per optimizer step.
        self.scheduler = make_scheduler(self._opt, cfg, self.total_steps)
        # The scheduler is NOT registered for accelerate's checkpointing (that pickles it and loads it
        # with weights_only=False); its state goes to scheduler.json instead, see _save_checkpoint.
        acc.register_save_state_pre_hook(self._keep_trainable_weights)

    # ----------------------------------------------------------------- setup helpers
    def _make_loaders(self, train_dataset: Dataset, valid_dataset: Dataset | None,
                      collate_fn: Callable[[list[Any]], Mapping[str, Any]]) -> tuple[DataLoader, DataLoader | None]:
        cfg = self.config
        # Own generators: DataLoader draws a worker base seed per iterator, which must not consume
        # the global RNG (a resumed run creates an extra iterator mid-epoch).
        self._train_gen = torch.Generator()
        pin = self.accelerator.device.type == "cuda"
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
        return train_loader, valid_loader

    def _trainable_state(
        self, unwrapped: nn.Module, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Trainable parameters + buffers: the frozen base comes from the caller's model, not checkpoints."""
        return checkpoint.trainable_state(unwrapped, state_dict)

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
        return select_key(self.config.select_metric, self.extra_validation_names(), out)

    def _check_select_metric(self) -> None:
        """Refuse a ranking select_metric that no extra validation value provides, before training."""
        check_select_metric(self.config.select_metric, self.extra_validation_names(), self.valid_loader is not None)

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
        log = RunLog(self.output_dir, state.step, cfg.tensorboard, enabled=acc.is_main_process)
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
    def _loop(self, state: TrainState, log: RunLog, bar: tqdm) -> None:
        acc, cfg = self.accelerator, self.config
        meter = Meter(acc.device)
        t0, elapsed0 = time.perf_counter(), state.elapsed_s
        n_batches = len(self.train_loader)
        self.model.train()
        nonfinite = torch.zeros((), dtype=torch.bool, device=acc.device)  # a non-finite loss since the last step
        step_start = (state.epoch, state.batch_in_epoch)  # data position of the last good state
        while state.step < self.total_steps and not state.stopped_early:
            self.train_loader.set_epoch(state.epoch)  # also sets our sampler's epoch
            self._sampler.set_epoch(state.epoch)
            self._train_gen.manual_seed(derive_seed(self.data_seed, state.epoch, 1))
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

    def _validate(self, state: TrainState, log: RunLog, bar: tqdm | None = None) -> None:
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
        improved = improves(value, state.best_loss, self.config.select_direction)
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
        ckpt = checkpoint.resumable(self.output_dir, cfg.resume)
        if ckpt is None:
            set_seed(cfg.seed, device_specific=True)
            return TrainState(resume_keys=keys, trainable=self.trainable)
        state = checkpoint.read_state(ckpt, keys, self.trainable, self._key_label)
        checkpoint.load_tensors(self.accelerator, ckpt)
        checkpoint.load_scheduler(self.scheduler, self.optimizer, ckpt, state.step)
        return state

    def _save_checkpoint(self, state: TrainState) -> None:
        checkpoint.save_checkpoint(self.accelerator, self.output_dir, state, self.scheduler, self.config.keep_last)

    def _save_best(self) -> None:
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        checkpoint.save_best(acc, self.output_dir, self._trainable_state(unwrapped, acc.get_state_dict(self.model)))

    def _finish(self, state: TrainState) -> TrainResult:
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        if state.best_loss is not None:
            checkpoint.load_best(acc, unwrapped, self.output_dir)
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
        return checkpoint.resume_key_label(key, self.run_config is not None and self.run_config is not self.config)

    def _claim_output_dir(self) -> TrainResult | None:
        """Check ``output_dir`` against this run's fingerprint; a finished identical run is returned."""
        write_metadata = self._write_metadata if self.save_metadata else None
        return claim_output_dir(self.accelerator, self.output_dir, self.fingerprint(), self.config.overwrite,
                                write_metadata)

    def _write_metadata(self) -> None:
        """``config.yaml``/``run_info.json`` of a run that starts, with what "auto" settings resolved to."""
        save_run_metadata(self.output_dir, self.run_config or self.config, stage=self.stage)
        record_resolved(self.output_dir, {"mixed_precision": self.mixed_precision,
                                          "num_processes": self.accelerator.num_processes,
                                          "device": str(self.accelerator.device)})

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


def _accelerator(grad_accum_steps: int, mixed_precision: str) -> Accelerator:
    """An ``Accelerator`` with this run's precision.

    Accelerate keeps its state as a per-process singleton that refuses a second precision ("cannot be
    changed, restart your runtime"), so two runs in one Python process (an SFT in bf16 then a GRPO stage
    in fp32, or a test suite) would fail. In a single process (not launched as several by accelerate)
    the accelerator-level state is reset when the precision differs; a multi-process launch keeps it.
    """
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(gradient_accumulation_steps=grad_accum_steps, mixed_precision=mixed_precision)
