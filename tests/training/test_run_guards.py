"""Training guards (issue 17): run identity, locking, empty data, non-finite numbers, torn logs,
no unpickling from a run directory, file modes."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import TRAIN, VALID, ToyMLP, cfg, collate, params

from flrec.errors import ConfigError, FlrecError
from flrec.training import Trainer, latest_checkpoint
from flrec.utils.io import atomic_write_text, dir_lock, read_jsonl_tolerant


class PoisonMLP(ToyMLP):
    """ToyMLP whose training loss (or gradient) turns non-finite from training call ``at`` on."""

    def __init__(self, at: int, kind: str = "loss", eval_nan_first: bool = False):
        super().__init__(dropout=0.0)
        self.at, self.kind, self.eval_calls, self.eval_nan_first = at, kind, 0, eval_nan_first

    def forward(self, x, y):
        out = super().forward(x, y)
        if not self.training:
            self.eval_calls += 1
            if self.eval_nan_first and self.eval_calls == 1:
                out["loss"] = out["loss"] * float("nan")
            return out
        if self.calls >= self.at:
            if self.kind == "loss":
                out["loss"] = out["loss"] * float("inf")
            else:  # finite loss, infinite gradient
                out["loss"] = out["loss"] + self.log_w * 0 + _InfGrad.apply(self.log_w)
        return out


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 0

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_empty_train_set_is_an_error_not_a_hang(tmp_path):
    for kw in ({"max_steps": 5}, {"epochs": 2}):
        with pytest.raises(FlrecError, match="no training rows"):
            Trainer(ToyMLP(), [], VALID, collate, cfg(tmp_path, "run", **kw)).train()
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_stops_with_a_loadable_last_good_state(tmp_path, kind):
    # micro 4 x accum 2: training call 9 is the first micro-batch of step 5 -> steps 1-4 are good.
    model = PoisonMLP(at=9, kind=kind)
    with pytest.raises(FlrecError, match="non-finite") as e:
        Trainer(model, TRAIN, VALID, collate, cfg(tmp_path, "run", max_steps=10, eval_every=2)).train()
    msg = str(e.value)
    assert "\n" not in msg and "step 5" in msg and "step-4" in msg
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "step-4"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert all(torch.isfinite(v).all() for v in params(model).values())  # the bad update was not applied
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["batch_in_epoch"] == 8


def test_first_nan_validation_is_not_an_improvement(tmp_path):
    model = PoisonMLP(at=10**9, eval_nan_first=True)
    res = Trainer(model, TRAIN, VALID, collate, cfg(tmp_path, "run", max_steps=6, eval_every=2)).train()
    assert res.best_step != 2 and res.best_valid_loss is not None and res.best_valid_loss == res.best_valid_loss


def test_torn_log_line_is_dropped_on_resume(tmp_path):
    kw = dict(max_steps=8, save_every=3, eval_every=3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyMLP(crash_after=2 * 4 + 1), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "lo')  # out of space mid-write
    res = Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    rows, torn = read_jsonl_tolerant(log)
    assert res.steps_done == 8 and not torn and rows[-1]["step"] == 8


def test_corrupt_middle_log_line_is_a_one_line_error(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1}\n{bad\n{"step": 2}\n')
    with pytest.raises(FlrecError, match="line 2"):
        read_jsonl_tolerant(p)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_planted_pickle_in_a_checkpoint_is_never_executed(tmp_path):
    kw = dict(max_steps=8, save_every=3, eval_every=3)
    ref = ToyMLP()
    Trainer(ref, TRAIN, VALID, collate, cfg(tmp_path, "ref", **kw)).train()
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyMLP(crash_after=2 * 4 + 1), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    ckpt = latest_checkpoint(tmp_path / "run")
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        with open(ckpt / name, "wb") as f:
            pickle.dump(_Evil(str(marker)), f)
    model = ToyMLP()
    Trainer(model, TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    assert not marker.exists()
    assert (ckpt / "scheduler.json").is_file() or not ckpt.exists()
    for k, v in params(ref).items():  # the scheduler state came back from JSON: resume is still exact
        assert torch.equal(v, params(model)[k]), k


def test_finished_run_is_reused_and_a_changed_one_refused(tmp_path):
    kw = dict(max_steps=4, eval_every=2)
    first = Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()
    info_before = (tmp_path / "run" / "run_info.json").read_bytes()
    again = Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", progress=True, **kw)).train()
    assert again.reused and not first.reused and again.best_step == first.best_step
    with pytest.raises(ConfigError) as e:
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", lr=1e-3, **kw)).train()
    msg = str(e.value)
    assert "lr 0.03 -> 0.001" in msg and "--force" in msg and "\n" not in msg and "total_steps" not in msg
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before
    assert (tmp_path / "run" / "run_info.json").read_bytes() == info_before
    forced = Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", lr=1e-3, overwrite=True, **kw)).train()
    assert not forced.reused and "lr: 0.001" in (tmp_path / "run" / "config.yaml").read_text()


def test_lr_change_on_an_unfinished_run_is_refused(tmp_path):
    kw = dict(max_steps=8, save_every=3, eval_every=3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyMLP(crash_after=2 * 4 + 1), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    with pytest.raises(ConfigError, match="lr"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", lr=1e-3, **kw)).train()
    with pytest.raises(ConfigError, match="max_steps"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **{**kw, "max_steps": 9})).train()


def test_a_run_directory_in_use_is_locked(tmp_path):
    with dir_lock(tmp_path / "run"), pytest.raises(FlrecError, match="in use by another flrec process"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", max_steps=2)).train()
    Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", max_steps=2)).train()  # released


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_tensorboard_auto_without_tensorboard_says_so_once(tmp_path, monkeypatch, capsys):
    import importlib.util

    import flrec.training.runlog as tr

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    monkeypatch.setattr(tr, "_TB_NOTED", False)
    for name in ("a", "b"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, name, max_steps=1, tensorboard="auto")).train()
    err = capsys.readouterr().err
    assert err.count("TensorBoard logging is off") == 1 and "flrec[tb]" in err  # names the optional extra
