"""`make demo`'s job end to end on a tiny random backbone (the real one is too slow for the suite)."""

from __future__ import annotations

import json

import pytest

from flrec.demo import run_demo

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_demo_runs_end_to_end_and_prints_factor_diagnostics(tmp_path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("""
data: embedded:synth
backbone: tiny:llama
trainable: full
valid_limit: 8
max_history: 4
flr: {reasoner: flr, num_factors: 3, gate_hidden: 16}
train: {max_steps: 2, micro_batch_size: 4, lr: 3.0e-3, eval_every: 1, save_every: 1, keep_last: 1,
        mixed_precision: 'no', log_every: 1, progress: false}
""")
    summaries = run_demo(out=tmp_path / "demo", eval_rows=6, config=cfg, probe_rows=6)
    out = capsys.readouterr().out
    assert set(summaries) == {"FLR (SFT)", "Pop (floor)"}
    assert all(s["n_rows"] == 6 for s in summaries.values())
    assert "thought cross-row cosine" in out and "gate usage entropy ratio" in out
    assert "another user's thought" in out and "user share of the thought" in out
    factors = json.loads((tmp_path / "demo" / "factors.json").read_text())
    assert factors["rows"] == 6 and 0 <= factors["gate_usage_entropy_ratio"] <= 1
    assert factors["thought_swap_delta"] is not None and 0 <= factors["thought_user_share"] <= 1
    assert "target_intent_share" in factors  # the embedded data has planted intents
