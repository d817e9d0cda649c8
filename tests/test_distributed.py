"""Multi-process training through Accelerate (issue 17): 2 CPU processes (gloo) give the same model as
one process with the same global batch — gradients are synchronised, the data is sharded, not repeated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic

ROOT = Path(__file__).resolve().parents[1]
# flr.center_keys=false: like BatchNorm's running statistics, the key-centering EMA is updated from each
# process's own micro-batches, so it is close to, not bit-equal with, a one-process run; the gradient
# synchronisation this test checks is exact. train.eps=1e-3: zero-initialised parts (the thought gate, W_c) have
# gradients near 0 at first, where Adam's normalised step (lr * g / (|g| + eps)) turns round-off differences
# between the two reductions into full-size steps of either sign; a larger eps keeps such steps small, while
# unsynchronised gradients would still differ everywhere.
COMMON = ["backbone=tiny:llama", "train_limit=32", "valid_limit=8", "flr.gate_hidden=16", "train.max_steps=3",
          "train.micro_batch_size=4", "train.mixed_precision='no'", "train.progress=false", "train.lr=3e-3",
          "flr.center_keys=false", "train.eps=1e-3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(SynthConfig(n_items=40, n_users=30, seq_len_min=4, seq_len_max=7, min_intent_items=2,
                                   n_intents=6), data)
    # one process: 2 micro-batches of 4 accumulated = global batch 8, averaged per micro-batch as DDP does
    assert main(["train", "sft", f"data={data}", f"run_dir={tmp_path / 'one'}", *COMMON,
                 "train.grad_accum_steps=2"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "flrec.cli", "train", "sft", f"data={data}", f"run_dir={tmp_path / 'two'}", *COMMON, "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('"rows_seen"') == 1  # only rank 0 reports
    info = (tmp_path / "two" / "run_info.json").read_text()
    assert '"num_processes": 2' in info
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "best").rglob("*.safetensors"))
    assert files
    for f in files:
        a, b = load_file(str(tmp_path / "one" / f)), load_file(str(tmp_path / "two" / f))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"{f}:{k}")
    # and the run really moved: a 2-process run that skipped synchronisation would still differ from init
    init = tmp_path / "init"
    assert main(["train", "sft", f"data={data}", f"run_dir={init}", *COMMON, "train.lr=1e-12"]) == 0
    changed = False
    for f in files:
        start, trained = load_file(str(init / f)), load_file(str(tmp_path / "two" / f))
        changed |= any(not torch.allclose(start[k], trained[k]) for k in trained)
    assert changed


@pytest.mark.slow
def test_grpo_two_cpu_processes_equal_one_process(tmp_path):
    """GRPO's rollouts (noise seeded by the global micro-batch) and its DDP-wrapped policy: 2 processes with
    2 prompts each give the same FLR parameters as 1 process with 4 prompts in 2 micro-batches."""
    data = tmp_path / "data"
    generate_synthetic(SynthConfig(n_items=40, n_users=30, seq_len_min=4, seq_len_max=7, min_intent_items=2,
                                   n_intents=6), data)
    assert main(["train", "sft", f"data={data}", f"run_dir={tmp_path / 'sft'}", *COMMON]) == 0
    grpo = ["group_size=3", "prompts_per_micro_batch=2", "train_limit=8", "valid_limit=2", "train.max_steps=2",
            "train.mixed_precision='no'", "train.progress=false", "train.lr=1e-2", "train.eps=1e-3"]
    assert main(["train", "grpo", "--from", str(tmp_path / "sft"), f"run_dir={tmp_path / 'one'}", *grpo,
                 "prompts_per_step=4"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "flrec.cli", "train", "grpo", "--from", str(tmp_path / "sft"), f"run_dir={tmp_path / 'two'}", *grpo,
           "prompts_per_step=2", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "best" / "flr_state.safetensors"))
    b = load_file(str(tmp_path / "two" / "best" / "flr_state.safetensors"))
    sft = load_file(str(tmp_path / "sft" / "best" / "flr_state.safetensors"))
    assert any(not torch.equal(a[k], sft[k]) for k in a if k.startswith("reasoner."))  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
