"""Helpers shared by test files in several folders (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flrec.training.sft import SFTConfig


def sft_cfg(tmp_path, **over) -> SFTConfig:
    base = {"backbone": "tiny:llama", "run_dir": str(tmp_path / "run"), "train_limit": 48, "valid_limit": 16,
            "flr": {"num_factors": 3, "gate_hidden": 16},
            "train": {"max_steps": 6, "micro_batch_size": 8, "lr": 3e-3, "eval_every": 3, "save_every": 3,
                      "mixed_precision": "no", "progress": False, "log_every": 1}}
    for k, v in over.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return SFTConfig.from_dict(base)


@contextlib.contextmanager
def crash_after_first_checkpoint():
    """The run inside raises KeyboardInterrupt right after writing its first checkpoint (a crash there)."""
    import flrec.training.trainer as tr

    orig, calls = tr.Trainer._save_checkpoint, {"n": 0}

    def crash(self, state):
        orig(self, state)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    tr.Trainer._save_checkpoint = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        tr.Trainer._save_checkpoint = orig


def assert_same_flr_state(model_a: str | Path, model_b: str | Path, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """The FLR weights (``flr_state.safetensors``) of two saved models have the same keys and agree to atol/rtol."""
    a = load_file(str(Path(model_a) / "flr_state.safetensors"))
    b = load_file(str(Path(model_b) / "flr_state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=k)
