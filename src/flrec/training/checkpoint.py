"""Checkpoints of a training run: ``checkpoints/step-N`` (what an exact resume needs) and the best
weights seen so far (``checkpoints/best``).

A step checkpoint holds trainable parameters + buffers, optimizer and the RNG states of every process
(``accelerator.save_state``), the scheduler (``scheduler.json``: JSON, never a pickle) and the data
position (``trainer_state.json``, written last: it marks the folder complete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from flrec.errors import ConfigError, FlrecError
from flrec.training.state import TrainState
from flrec.utils.io import atomic_save, atomic_write_json

STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "trainable.safetensors"
SCHEDULER_FILE = "scheduler.json"  # JSON, not pickle: nothing in a run directory is ever unpickled
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


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoints/step-N`` folder with the largest N, or None."""
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return max(done, key=_ckpt_step, default=None)


def _ckpt_step(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def resume_key_label(key: str, stage_prefix: bool) -> str:
    """How an error names resume key ``key`` (``train.``-prefixed when the stage's config nests TrainConfig)."""
    label = _RESUME_LABELS.get(key, key)
    prefix = "train." if stage_prefix else ""
    return "config key " + "/".join(prefix + part for part in label.split("/")) if key != "num_processes" else label


def trainable_state(unwrapped: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable parameters + buffers: the frozen base comes from the caller's model, not checkpoints."""
    keep = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in unwrapped.named_buffers()}
    return {k: v for k, v in state_dict.items() if k in keep}


# ----------------------------------------------------------------- resume
def resumable(output_dir: Path, resume: bool | str) -> Path | None:
    """The checkpoint to resume from under the ``resume`` setting, or None for a fresh start."""
    ckpt = latest_checkpoint(output_dir)
    if ckpt is None or resume is False:
        if ckpt is not None:
            raise ConfigError(
                f"config key 'resume' is false but {ckpt.parent} holds checkpoints; "
                "set resume=auto to continue that run or pick a new output_dir"
            )
        if resume is True:
            raise ConfigError(
                f"config key 'resume' is true but {output_dir}/checkpoints has no checkpoint; "
                "set resume=auto to start fresh"
            )
        return None
    return ckpt


def read_state(ckpt: Path, keys: Mapping[str, Any], trainable: list[str],
               key_label: Callable[[str], str]) -> TrainState:
    """``ckpt``'s :class:`TrainState`, checked against this run's resume ``keys`` and trainable names."""
    state = TrainState(**json.loads((ckpt / STATE_FILE).read_text()))
    for k, v in keys.items():
        if state.resume_keys.get(k) != v:
            raise ConfigError(
                f"{key_label(k)} is {v} but checkpoint {ckpt} used {state.resume_keys.get(k)}; "
                "restore it to resume exactly, or start a new run directory (or --force to start over)"
            )
    if state.trainable != trainable:
        raise FlrecError(
            f"{ckpt}: trained a different parameter set than the model now marks trainable; "
            "use the same trainable_filter/requires_grad as the original run"
        )
    return state


def load_tensors(acc: Accelerator, ckpt: Path) -> None:
    """Load model, optimizer and RNG states from ``ckpt`` (never its pickles)."""
    with _without_pickled_objects(ckpt) as view:
        acc.load_state(str(view), strict=False)  # strict=False: frozen weights are not stored


def load_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, ckpt: Path, step: int) -> None:
    path = ckpt / SCHEDULER_FILE
    if path.is_file():
        scheduler.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        return
    # A checkpoint from an older flrec kept the scheduler in a pickle, which we never load: the
    # schedule is a pure function of the step, so replay it (the optimizer state holds the lr).
    lrs = [g["lr"] for g in optimizer.param_groups]
    for _ in range(step):
        scheduler.step()
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr


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


# ----------------------------------------------------------------- save
def save_checkpoint(acc: Accelerator, output_dir: Path, state: TrainState, scheduler: Any, keep_last: int) -> None:
    """Write ``checkpoints/step-<state.step>`` (all processes take part) and keep the last ``keep_last``."""
    root = output_dir / "checkpoints"
    final, tmp = root / f"step-{state.step}", root / f".tmp-step-{state.step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during saving
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        atomic_write_json(tmp / SCHEDULER_FILE, scheduler.state_dict())
        atomic_write_json(tmp / STATE_FILE, asdict(state))  # marks the folder complete
        if final.exists():  # re-saving a step (end of run right after a periodic save)
            old = root / f".old-step-{state.step}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        steps = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()), key=_ckpt_step)
        for p in steps[:-keep_last]:
            shutil.rmtree(p)
    acc.wait_for_everyone()


def best_weights_file(output_dir: Path) -> Path:
    return output_dir / "checkpoints" / "best" / BEST_WEIGHTS


def save_best(acc: Accelerator, output_dir: Path, weights: Mapping[str, torch.Tensor]) -> None:
    """Keep ``weights`` (the trainable state) as the best seen so far; written by the main process."""
    if acc.is_main_process:
        path = best_weights_file(output_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
        atomic_save(path, lambda tmp: save_file(cpu, str(tmp)))
    acc.wait_for_everyone()


def load_best(acc: Accelerator, unwrapped: nn.Module, output_dir: Path) -> None:
    """Load the best weights kept by :func:`save_best` into ``unwrapped`` (if there are any)."""
    best_file = best_weights_file(output_dir)
    if not best_file.is_file():
        return
    missing = unwrapped.load_state_dict(
        # "cpu:0" (a multi-process CPU run's device) is not a device name safetensors accepts
        load_file(str(best_file), device="cpu" if acc.device.type == "cpu" else str(acc.device)), strict=False
    )
    if missing.unexpected_keys:
        raise FlrecError(
            f"{best_file}: unexpected keys {missing.unexpected_keys[:3]}; wrong model for this run"
        )
