"""Run identity of SFT runs (issue 17, defect 1): reuse only when the fingerprint matches; refusals
name the user's keys and never rewrite config.yaml."""

from __future__ import annotations

import pytest
from tiny_runs import sft_cfg

from flrec.errors import ConfigError
from flrec.training.sft import run_sft


def test_sft_rerun_reuses_or_refuses_by_fingerprint(tmp_path, tiny_data):
    kw = {"train": {"max_steps": 3, "eval_every": 3, "save_every": 3}}
    first = run_sft(sft_cfg(tmp_path, **kw), tiny_data)
    assert first["rows_seen"] == 3 * 8 and first["train_rows"] == 48 and first["mixed_precision"] == "no"
    run = tmp_path / "run"
    config_before, info_before = (run / "config.yaml").read_bytes(), (run / "run_info.json").read_bytes()
    assert '"mixed_precision": "no"' in info_before.decode()
    again = run_sft(sft_cfg(tmp_path, train={**kw["train"], "progress": True, "log_every": 5}), tiny_data)
    assert again["reused"] and again["best_step"] == first["best_step"]
    for change, key in (({"train": {**kw["train"], "lr": 1e-4}}, "train.lr"),
                        ({**kw, "flr": {"num_factors": 2}}, "flr.num_factors"),
                        ({"train": {**kw["train"], "max_steps": 4}}, "train.max_steps")):
        with pytest.raises(ConfigError) as e:
            run_sft(sft_cfg(tmp_path, **change), tiny_data)
        msg = str(e.value)
        assert key in msg and "--force" in msg and "total_steps" not in msg and "output_dir" not in msg
        assert (run / "config.yaml").read_bytes() == config_before
        assert (run / "run_info.json").read_bytes() == info_before
    # other data (one title changed) is another run too
    tiny_data.catalogue.titles[0] += " (remastered)"
    try:
        with pytest.raises(ConfigError, match="data.hash changed"):
            run_sft(sft_cfg(tmp_path, **kw), tiny_data)
    finally:
        tiny_data.catalogue.titles[0] = tiny_data.catalogue.titles[0].removesuffix(" (remastered)")
    forced = run_sft(sft_cfg(tmp_path, train={**kw["train"], "lr": 1e-4, "overwrite": True}), tiny_data)
    assert not forced["reused"] and "lr: 0.0001" in (run / "config.yaml").read_text()
