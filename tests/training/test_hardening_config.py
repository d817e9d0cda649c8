"""Issue 17, defects 3-4 gaps: degenerate module settings are refused; float16 weights train on a CPU."""

from __future__ import annotations

import math

import pytest
from tiny_runs import sft_cfg

from flrec.errors import ConfigError
from flrec.models.recommender import FLRConfig
from flrec.training.sft import SFTConfig, run_sft


@pytest.mark.parametrize(
    "override, expect",
    [("flr.gate_hidden=0", "gate_hidden must be >= 1"), ("flr.fixed_weights={orth: -1}", "fixed_weights.*>= 0"),
     ("flr.fixed_weights={div: .nan}", "div"), ("flr.num_factors=0", "num_factors")],
)  # fmt: skip
def test_degenerate_flr_settings_are_one_line_config_errors(override, expect):
    with pytest.raises(ConfigError, match=expect) as e:
        SFTConfig.load(None, [override])
    assert "\n" not in str(e.value)
    assert FLRConfig(gate_hidden=1, fixed_weights={"orth": 0.0}).gate_hidden == 1  # the edges are allowed


def test_float16_weights_train_on_cpu_to_a_finite_model(tmp_path, tiny_data):  # noqa: F811
    res = run_sft(sft_cfg(tmp_path, dtype="float16", train={"max_steps": 2, "eval_every": 2, "save_every": 2}),
                  tiny_data)
    assert res["best_step"] == 2 and math.isfinite(res["best_valid_loss"])
    assert (tmp_path / "run" / "best").is_dir()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_embedded_dataset_cache_folder_follows_the_umask(tmp_path, monkeypatch, mask):
    import os
    import stat

    import flrec.data.embedded as embedded
    import flrec.data.synth as synth

    small = synth.SynthConfig(n_items=40, n_users=20, seq_len_min=4, seq_len_max=6, min_intent_items=2, n_intents=4)
    monkeypatch.setattr(synth, "SynthConfig", lambda: small)  # the cache layout, not the default's size
    monkeypatch.setenv("FLREC_CACHE", str(tmp_path / "cache"))
    old = os.umask(mask)
    try:
        dest = embedded.embedded_dataset_dir("synth")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~mask  # mkdtemp's 0700 hid a shared cache
    assert stat.S_IMODE((dest / "train.csv").stat().st_mode) == 0o666 & ~mask


def test_training_code_never_asks_for_device_map_auto():
    """Issue 17 (Build): device_map="auto" spreads layers over devices for inference; under DDP/FSDP every
    process must hold its own full replica, so the training path never requests it."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "flrec"
    pattern = re.compile(r"device_map\s*=\s*['\"]auto['\"]")
    hits = [str(p) for p in src.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert not hits, hits
