"""Generic trainer: learning, freezing, exact resume, early stopping, accumulation, pruning, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from flrec.errors import ConfigError
from flrec.training import TrainConfig, Trainer, latest_checkpoint, resolve_mixed_precision

D_IN = 6


class ToyMLP(nn.Module):
    """Regression MLP with dropout and a learned loss weight (logged, like FLR's loss weights)."""

    def __init__(self, dropout: float = 0.2, crash_after: int | None = None):
        super().__init__()
        torch.manual_seed(0)  # identical init for every run
        self.embed = nn.Linear(D_IN, 32)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(32, 1)
        self.log_w = nn.Parameter(torch.zeros(()))
        self.crash_after, self.calls = crash_after, 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        if self.training:
            self.calls += 1
            if self.crash_after is not None and self.calls > self.crash_after:
                raise KeyboardInterrupt("simulated crash")
        pred = self.head(self.drop(torch.tanh(self.embed(x)))).squeeze(-1)
        mse = ((pred - y) ** 2).mean()
        loss = mse * torch.exp(-self.log_w) + 0.1 * self.log_w
        return {"loss": loss, "logs": {"mse": mse.detach(), "w": self.log_w.detach()}, "n_tokens": y.numel()}


def make_data(n: int, seed: int, sign: float = 1.0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g)
    y = sign * torch.sin(x @ torch.linspace(-1, 1, D_IN))
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


TRAIN, VALID = make_data(64, 1), make_data(32, 2)


def cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / name),
        lr=3e-2,
        micro_batch_size=4,
        grad_accum_steps=2,
        mixed_precision="no",
        log_every=1,
        progress=False,
        warmup_steps=2,
    )
    return TrainConfig(**{**base, **kw})


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def test_learns_logs_and_keeps_frozen_params(tmp_path):
    model = ToyMLP()
    before = params(model)
    trainer = Trainer(
        model,
        TRAIN,
        VALID,
        collate,
        cfg(tmp_path, "run", epochs=6, eval_every=8),
        trainable_filter=lambda name, _: not name.startswith("embed"),
    )
    initial = trainer.evaluate()
    res = trainer.train()
    after = params(model)
    assert res.steps_done == 6 * 8 and res.best_valid_loss < 0.5 * initial
    assert torch.equal(before["embed.weight"], after["embed.weight"])
    assert torch.equal(before["embed.bias"], after["embed.bias"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["log_w"], after["log_w"])
    rows = [json.loads(line) for line in res.history_path.read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"lr", "mse", "w", "grad_norm", "samples_per_s"} <= set(train_rows[0])
    assert train_rows[-1]["mse"] < train_rows[0]["mse"]
    assert [r["step"] for r in rows if "valid_loss" in r] == [8, 16, 24, 32, 40, 48]
    assert (res.best_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "run_info.json").is_file()


def test_resume_after_crash_is_exact(tmp_path):
    # 64 rows / micro 4 = 16 micro-batches = 8 steps per epoch: 13 steps cross an epoch boundary.
    kw = dict(max_steps=13, eval_every=3, save_every=3, keep_last=5)
    ref_model = ToyMLP()
    ref = Trainer(ref_model, TRAIN, VALID, collate, cfg(tmp_path, "ref", **kw)).train()

    crashing = ToyMLP(crash_after=2 * 10 + 1)  # dies inside step 11, after checkpoint step-9
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashing, TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    assert latest_checkpoint(tmp_path / "run").name == "step-9"

    with pytest.raises(ConfigError, match="micro_batch_size"):
        Trainer(
            ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **{**kw, "micro_batch_size": 8})
        ).train()
    with pytest.raises(ConfigError, match="resume"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", resume=False, **kw)).train()

    resumed_model = ToyMLP()
    res = Trainer(resumed_model, TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    assert res.steps_done == ref.steps_done == 13 and res.best_step == ref.best_step
    assert res.best_valid_loss == ref.best_valid_loss
    for k, v in params(ref_model).items():
        assert torch.equal(v, params(resumed_model)[k]), k
    # the log is that of one uninterrupted run (rows written after step 9 by the crashed run are dropped)
    steps = [json.loads(line)["step"] for line in res.history_path.read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in ref.history_path.read_text().splitlines()]


def test_early_stopping_restores_best(tmp_path):
    anti_valid = make_data(32, 2, sign=-1.0)  # fitting the training function makes this worse
    model = ToyMLP(dropout=0.0)
    trainer = Trainer(
        model,
        TRAIN,
        anti_valid,
        collate,
        cfg(tmp_path, "run", max_steps=40, eval_every=2, early_stopping_patience=2),
    )
    res = trainer.train()
    assert res.stopped_early and res.steps_done < 40
    history = [json.loads(line) for line in res.history_path.read_text().splitlines() if "valid_loss" in line]
    best = min(history, key=lambda r: r["valid_loss"])
    assert res.best_step == best["step"] and res.steps_done == res.best_step + 2 * 2
    assert trainer.evaluate() == pytest.approx(res.best_valid_loss, abs=1e-7)  # best weights are back


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    runs = []
    for micro, accum in ((2, 2), (4, 1)):
        model = ToyMLP(dropout=0.0)
        Trainer(
            model,
            TRAIN[:32],
            None,
            collate,
            cfg(tmp_path, f"m{micro}", micro_batch_size=micro, grad_accum_steps=accum, max_steps=12),
        ).train()
        runs.append(params(model))
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], atol=1e-6, rtol=0)


def test_checkpoints_pruned_to_keep_last(tmp_path):
    res = Trainer(
        ToyMLP(),
        TRAIN,
        VALID,
        collate,
        cfg(tmp_path, "run", max_steps=9, save_every=2, keep_last=2, eval_every=4),
    ).train()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-8", "step-9"]  # the best model lives once, in best/
    assert (tmp_path / "run" / "best").is_dir()
    assert res.best_step in (4, 8, 9)
    assert (tmp_path / "run" / "checkpoints" / "step-9" / "trainer_state.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"max_steps": 5, "epochs": 2}, "max_steps"),
        ({"lr": -1}, "lr"),
        ({"keep_last": 0}, "keep_last"),
        ({"warmup_steps": 3, "warmup_ratio": 0.1}, "warmup_ratio"),
        ({"betas": [0.9, 1.5]}, "betas"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"learning_rate": 1e-3}, "learning_rate"),
    ],
)
def test_bad_config_names_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig.from_dict(overrides)


def test_config_defaults_and_mixed_precision():
    assert TrainConfig().epochs == 1 and TrainConfig(max_steps=5).epochs is None
    assert TrainConfig.from_dict({"resume": "true", "max_steps": "10"}).resume is True
    assert resolve_mixed_precision("no") == "no"
    assert resolve_mixed_precision("auto") in ("no", "bf16")


def test_progress_bar_is_compact_and_says_when_validating(tmp_path, capsys):
    from flrec.training.trainer import bar_postfix

    # a logged FLR row: every regulariser, loss weight and factor-health term (13+ fields)
    row = {"step": 10, "lr": 3e-4, "loss": 3.35, "rec": 1.72, "orth": 1.84, "div": 0.03, "sparse": 1.39,
           "lambda_div": 0.5, "lambda_orth": 0.5, "lambda_sparse": 0.5, "gate_max": 0.26, "thought_cos": 0.98,
           "gate_usage": 0.99, "hist_attn": 0.44, "grad_norm": 5.37, "samples_per_s": 0.28, "elapsed_s": 283.2}
    text = bar_postfix(row, [{"valid_loss": 0.7374}])
    assert text == "loss 3.35, rec 1.72, lr 3.0e-04, 0.28 rows/s, valid 0.7374"
    assert bar_postfix({**row, "rec": 3.35}) == "loss 3.35, lr 3.0e-04, 0.28 rows/s"  # no regulariser: no rec
    Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "bar", max_steps=4, eval_every=2, progress=True)).train()
    err = capsys.readouterr().err
    assert "train (validating)" in err and "mse" not in err and "grad_norm" not in err
