"""Helpers shared by test files in several folders (tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import contextlib

import pytest

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
