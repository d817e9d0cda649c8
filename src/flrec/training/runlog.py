"""What a training run reports: the running means between log rows (:class:`Meter`), the rows themselves
in ``log.jsonl`` and TensorBoard (:class:`RunLog`), and the progress bar's few fields (:func:`bar_postfix`)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from flrec.errors import ConfigError, FlrecError
from flrec.training.state import TrainState
from flrec.utils.io import atomic_write_text, read_jsonl_tolerant


class Meter:
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


class RunLog:
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
