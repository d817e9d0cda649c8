"""Extra validation values (the Trainer hook), selection direction, eval_per_epoch and SFT's validation ranking."""

from __future__ import annotations

import json
import math

import pytest
from test_trainer import TRAIN, VALID, ToyMLP, cfg, collate
from tiny_runs import crash_after_first_checkpoint, sft_cfg

from flrec.errors import ConfigError
from flrec.training import TrainConfig, Trainer
from flrec.training.sft import SFTConfig, run_sft, valid_rank_names
from flrec.training.trainer import _improves, bar_postfix, eval_steps_in_epoch

NAN = float("nan")


class ScriptedTrainer(Trainer):
    """A Trainer whose extra validation value ``ndcg@10`` is scripted per step (so selection is exact)."""

    def __init__(self, *args, script: dict[int, float], **kw):
        super().__init__(*args, **kw)
        self.script = script

    def extra_validation_names(self) -> tuple[str, ...]:
        return ("ndcg@10", "hr@10")

    def extra_validation(self, step: int) -> dict[str, float]:
        return {"ndcg@10": self.script[step], "hr@10": 1.0}


def valid_rows(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "valid_loss" in r]


def test_improves_respects_the_direction_and_refuses_nan():
    assert _improves(0.5, 0.4, "max") and not _improves(0.3, 0.4, "max") and not _improves(0.4, 0.4, "max")
    assert _improves(0.3, 0.4) and not _improves(0.5, 0.4) and _improves(0.3, 0.4, "min")
    for direction in ("min", "max"):
        assert not _improves(NAN, None, direction) and not _improves(NAN, 0.4, direction)
        assert not _improves(math.inf, None, direction) and _improves(0.0, None, direction)


def test_select_direction_auto_min_max():
    assert TrainConfig().select_direction == "min"
    assert TrainConfig(select_metric="rec_loss").select_direction == "min"
    for name in ("ndcg@10", "hr@5", "recall@20", "mrr"):
        assert TrainConfig(select_metric=name).select_direction == "max"
    assert TrainConfig(select_metric="ndcg@10", select_mode="min").select_direction == "min"
    assert TrainConfig(select_metric="loss", select_mode="max").select_direction == "max"


def test_hook_values_are_logged_and_select_the_highest_ndcg(tmp_path):
    script = {2: 0.1, 4: 0.4, 6: 0.3, 8: NAN, 10: 0.2}
    trainer = ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate,
                              cfg(tmp_path, "run", max_steps=10, eval_every=2, select_metric="ndcg@10"), script=script)
    res = trainer.train()
    rows = valid_rows(res.history_path)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    logged = [r["valid_ndcg@10"] for r in rows]
    assert logged[:3] == [0.1, 0.4, 0.3] and math.isnan(logged[3]) and logged[4] == 0.2
    assert all(r["valid_hr@10"] == 1.0 and math.isfinite(r["valid_loss"]) for r in rows)
    assert res.best_step == 4 and res.best_valid_loss == 0.4 and res.select_metric == "ndcg@10"
    assert rows[-1]["best_step"] == 4
    # the best weights (step 4) are back: their validation loss is the one logged at step 4
    assert trainer.evaluate() == pytest.approx(rows[1]["valid_loss"], abs=1e-7)
    assert bar_postfix({"loss": 1.0}, rows, trainer._bar_names()).endswith("ndcg@10 0.2")


def test_early_stopping_follows_the_max_direction(tmp_path):
    script = {2: 0.1, 4: 0.2, 6: 0.15, 8: 0.12, 10: 0.9, 12: 0.9}
    res = ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate,
                          cfg(tmp_path, "run", max_steps=12, eval_every=2, early_stopping_patience=2,
                              select_metric="ndcg@10"), script=script).train()
    assert res.stopped_early and res.steps_done == 8 and res.best_step == 4 and res.best_valid_loss == 0.2


def test_loss_selection_is_unchanged_with_hook_values(tmp_path):
    res = ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", max_steps=6, eval_every=2),
                          script={2: 0.9, 4: 0.1, 6: 0.5}).train()
    rows = valid_rows(res.history_path)
    assert res.best_step == min(rows, key=lambda r: r["valid_loss"])["step"]
    assert res.best_valid_loss == min(r["valid_loss"] for r in rows)


def test_resume_restores_the_best_value_of_a_max_metric(tmp_path):
    script = {2: 0.5, 4: 0.1, 6: 0.3, 8: 0.2}  # a resume that forgot the best (or its direction) picks 6 or 4
    kw = dict(max_steps=8, eval_every=2, save_every=4, select_metric="ndcg@10")
    ref = ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "ref", **kw), script=script).train()
    with crash_after_first_checkpoint():
        ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw), script=script).train()
    res = ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw), script=script).train()
    assert ref.best_step == res.best_step == 2 and ref.best_valid_loss == res.best_valid_loss == 0.5
    assert [r["valid_ndcg@10"] for r in valid_rows(res.history_path)] == [0.5, 0.1, 0.3, 0.2]


@pytest.mark.parametrize(("per_epoch", "steps"), [(4, [2, 4, 6, 8, 10, 12, 14, 16]), (3, [3, 5, 8, 11, 13, 16])])
def test_eval_per_epoch_validates_evenly_within_each_epoch(tmp_path, per_epoch, steps):
    # 64 rows / micro-batch 4 / accumulation 2 = 8 optimizer steps per epoch
    res = Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", epochs=2, eval_per_epoch=per_epoch)).train()
    assert [r["step"] for r in valid_rows(res.history_path)] == steps
    assert eval_steps_in_epoch(8, per_epoch) == steps[: len(steps) // 2]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        TrainConfig(eval_every=2, eval_per_epoch=4)
    assert "eval_per_epoch" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        TrainConfig(eval_per_epoch=-1)
    assert "eval_per_epoch" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"select_mode": "up"})
    assert "select_mode" in _one_line(e)
    # a ranking metric that no hook computes: refused before training
    with pytest.raises(ConfigError) as e:
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "a", max_steps=2, select_metric="ndcg@10")).train()
    assert "select_metric" in _one_line(e) and not (tmp_path / "a" / "fingerprint.json").exists()
    with pytest.raises(ConfigError) as e:
        ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "b", max_steps=2, select_metric="ndcg@5"),
                        script={}).train()
    assert "'ndcg@10'" in _one_line(e)
    # neither a model output nor a hook value (found at the first validation)
    with pytest.raises(ConfigError) as e:
        ScriptedTrainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "c", max_steps=2, select_metric="foo"),
                        script={2: 0.1}).train()
    assert "'ndcg@10'" in _one_line(e) and "'loss'" in str(e.value)
    base = {"backbone": "tiny:llama"}
    for over, needle in [({"train": {"select_metric": "ndcg@10"}}, "valid_rank_rows"),
                         ({"valid_rank_rows": 4, "train": {"select_metric": "hr@20"}}, "ndcg@10"),
                         ({"valid_rank_rows": 4, "valid_rank_beam": 5, "train": {"select_metric": "ndcg@10"}}, "ndcg@5"),
                         ({"valid_rank_rows": -1}, "valid_rank_rows"), ({"valid_rank_beam": 0}, "valid_rank_beam")]:
        with pytest.raises(ConfigError) as e:
            SFTConfig.from_dict({**base, **over})
        assert needle in _one_line(e)


def test_valid_rank_names():
    assert valid_rank_names(10)[:2] == ("ndcg@10", "hr@10") and len(valid_rank_names(10)) == 8
    assert valid_rank_names(4) == ("ndcg@3", "hr@3", "ndcg@1", "hr@1")


def test_sft_ranks_validation_rows_and_selects_on_ndcg(tmp_path, tiny_data):
    from flrec.experiments.runner import EvalConfig, evaluate
    from flrec.recommenders.llm import FLRRec

    cfg_ = sft_cfg(tmp_path, valid_rank_rows=4,
                   train={"max_steps": 4, "eval_every": 2, "save_every": 4, "select_metric": "ndcg@10"})
    res = run_sft(cfg_, tiny_data)
    rows = valid_rows(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        for name in valid_rank_names(10):
            assert 0.0 <= r[f"valid_{name}"] <= 1.0
        assert r["valid_hr@10"] >= r["valid_ndcg@10"] and math.isfinite(r["valid_loss"])
    best = max(rows, key=lambda r: r["valid_ndcg@10"])  # the first of equal values
    assert res["best_step"] == best["step"] and res["best_valid_loss"] == best["valid_ndcg@10"]
    assert res["select_metric"] == "ndcg@10"
    # the logged values are what flrec evaluate computes for the selected model on the same rows
    rec = FLRRec.from_model_dir(res["model_dir"], tiny_data.catalogue)
    summary = evaluate(rec, tiny_data, EvalConfig(split="valid", limit=4, beam=10))
    for k, v in summary["metrics"].items():
        assert best[f"valid_{k}"] == pytest.approx(v, abs=1e-6)
