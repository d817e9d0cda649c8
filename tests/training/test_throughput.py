"""Throughput options (#10): length-grouped batches, the compact prompt, top:N, and a run's disk use."""

from __future__ import annotations

import random

import pytest
from tiny_runs import sft_cfg

from flrec.data.prompts import PromptBuilder
from flrec.models.recommender import FLRRecommender
from flrec.training.sft import run_sft
from flrec.training.trainer import EpochShuffleSampler, padding_fraction


def test_length_grouping_is_a_seeded_permutation_with_less_padding():
    rnd = random.Random(0)
    lengths = [rnd.randint(20, 200) for _ in range(1000)]
    plain = EpochShuffleSampler(1000, seed=3)
    grouped = EpochShuffleSampler(1000, seed=3, lengths=lengths, batch_size=8)
    order = grouped.order()
    assert sorted(order) == list(range(1000)) and order == grouped.order()
    grouped.set_epoch(1)
    assert grouped.order() != order  # a new order every epoch
    assert max(lengths[i] for i in order[:8]) == max(lengths)  # the longest batch runs first
    before, after = padding_fraction(lengths, plain.order(), 8), padding_fraction(lengths, order, 8)
    assert after < before / 4, (before, after)


def test_compact_template_is_shorter_and_saved_with_the_model(tmp_path, tiny_data):
    cfg = sft_cfg(tmp_path, prompt_template="compact", trainable="top:1",
                  train={"max_steps": 3, "eval_every": 3, "save_every": 1, "group_by_length": True})
    res = run_sft(cfg, tiny_data)
    model, tok = FLRRecommender.from_pretrained(res["model_dir"])
    assert model.prompt_settings["template"] == "compact" and model.trainable_mode == "top:1"
    compact = PromptBuilder(tok, **model.prompt_settings).render(["A", "B"])
    alpaca = PromptBuilder(tok, **{**model.prompt_settings, "template": "alpaca"}).render(["A", "B"])
    assert compact.startswith("Recommend the next") and len(compact) < len(alpaca) / 2
    # keep_last=1 by default; the best model lives once (best/), not also as a checkpoint copy
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]
    assert 0 < res["disk_bytes"] == sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) - \
        (run / "finished.json").stat().st_size
    assert 0 <= res["padding_fraction"] < 1


def test_unknown_template_and_top_mode_are_config_errors():
    from flrec.errors import ConfigError, FlrecError
    from flrec.training.sft import SFTConfig

    with pytest.raises(ConfigError, match="prompt_template"):
        SFTConfig.from_dict({"prompt_template": "chat"})
    with pytest.raises(ConfigError, match="top:N"):
        SFTConfig.from_dict({"trainable": "bottom:3"})
    with pytest.raises(FlrecError, match="template"):
        PromptBuilder(None, template="chat")


def test_a_second_cpu_job_is_noticed_and_stale_records_are_dropped(tmp_path):
    import os
    import subprocess
    import sys

    from flrec.utils.threads import oversubscription_warning, register_cpu_job

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live non-ancestor
    try:
        (tmp_path / f"{other.pid}.pid").touch()
        (tmp_path / f"{os.getppid()}.pid").touch()  # our parent: a launcher, not a competitor
        (tmp_path / "999999999.pid").touch()  # long gone
        others = register_cpu_job(tmp_path)
    finally:
        other.kill()
    assert others == [other.pid]
    assert not (tmp_path / "999999999.pid").exists() and (tmp_path / f"{os.getpid()}.pid").exists()
    assert "OMP_NUM_THREADS" in oversubscription_warning(others, {})
    assert oversubscription_warning(others, {"OMP_NUM_THREADS": "1"}) is None


def test_auto_inference_dtype_is_bf16_only_where_native():
    from flrec.utils.precision import resolve_inference_dtype, resolve_mixed_precision

    native = resolve_mixed_precision("auto") == "bf16"
    assert resolve_inference_dtype("auto") == ("bfloat16" if native else "float32")
    assert resolve_inference_dtype("bfloat16") == "bfloat16" and resolve_inference_dtype("float32") == "float32"
