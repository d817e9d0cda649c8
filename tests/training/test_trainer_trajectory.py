"""The training loop's exact numbers: a tiny SFT run's per-step losses, gradient norms, learning rates and
validation losses equal the floats recorded on the trainer before it was split into modules
(config/sampler/checkpoint/runlog/rundir). A refactor of the loop must keep them (to rounding).

The constants are fp32 CPU results with one intra-op thread, recorded on a CPU without AVX512-BF16;
another CPU kernel library or ISA rounds differently in the last bits (seen on an AVX512 machine: 1e-7
relative at step 1, growing to ~1e-5 by step 5), so they are compared to 1e-4 relative: above rounding,
below what a change of the computation gives."""

from __future__ import annotations

import json

import pytest
from tiny_runs import sft_cfg

from flrec.training.sft import run_sft

# step -> (loss, rec, grad_norm, lr) of every optimizer step (log_every=1)
TRAIN_ROWS = {
    1: (12.061927795410156, 6.273674488067627, 3.549163341522217, 0.003),
    2: (11.409058570861816, 5.925154685974121, 3.2466976642608643, 0.0024000000000000002),
    3: (11.158371925354004, 5.685083389282227, 3.004282236099243, 0.0018),
    4: (10.721860885620117, 5.528419017791748, 2.906705379486084, 0.0012000000000000001),
    5: (9.985528945922852, 5.424384117126465, 3.558872938156128, 0.0006000000000000001),
}
# step -> (valid_loss, valid_total, best_step) of every validation (eval_every=2, and at the end)
VALID_ROWS = {
    2: (5.7048516273498535, 11.21585750579834, 2),
    4: (5.4452290534973145, 10.81872272491455, 4),
    5: (5.391119956970215, 10.561055183410645, 5),
}


def test_tiny_sft_loss_trajectory_is_bit_identical(tmp_path, tiny_data, one_thread):
    cfg = sft_cfg(tmp_path, train_limit=16, valid_limit=8,
                  train={"max_steps": 5, "micro_batch_size": 4, "eval_every": 2, "save_every": 0})
    res = run_sft(cfg, tiny_data)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = {r["step"]: (r["loss"], r["rec"], r["grad_norm"], r["lr"]) for r in rows if "loss" in r}
    valid = {r["step"]: (r["valid_loss"], r["valid_total"], r["best_step"]) for r in rows if "valid_loss" in r}
    assert train.keys() == TRAIN_ROWS.keys() and valid.keys() == VALID_ROWS.keys()
    for got, want in ((train, TRAIN_ROWS), (valid, VALID_ROWS)):
        for step, row in want.items():
            assert got[step] == pytest.approx(row, rel=1e-4, abs=0), step
    assert res["steps"] == 5 and res["best_valid_loss"] == VALID_ROWS[5][0]


def test_two_runs_with_different_precisions_in_one_process():
    """Accelerate's state is a per-process singleton; a second run with another precision (an SFT in bf16,
    then a stage in fp32) must not fail with 'cannot be changed, restart your runtime'."""
    from flrec.training.trainer import _accelerator

    assert _accelerator(1, "bf16").mixed_precision == "bf16"
    assert _accelerator(1, "no").mixed_precision == "no"
