"""Issue 17, defect 4 gaps: out of disk space and bad LoRA settings are one-line errors, not tracebacks."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import SafetensorError
from test_trainer import TRAIN, VALID, ToyMLP, cfg, collate, params

import flrec.training.checkpoint as checkpoint_mod
from flrec.cli import main
from flrec.errors import ConfigError, FlrecError, disk_full_error
from flrec.training import Trainer

ENOSPC_SAFETENSORS = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 142208 vs 142096"


def test_disk_full_is_recognised_from_every_writer_and_nothing_else():
    for exc in (OSError(errno.ENOSPC, "No space left on device"), SafetensorError(ENOSPC_SAFETENSORS),
                RuntimeError(TORCH_SHORT_WRITE)):  # fmt: skip
        err = disk_full_error(exc, "runs/x")
        assert isinstance(err, FlrecError) and str(err).startswith("runs/x: ") and "\n" not in str(err)
        assert "disk space" in str(err) and "rerun" in str(err)
    for exc in (OSError(errno.ENOENT, "No such file"), RuntimeError("shape mismatch"), ValueError("x"),
                SafetensorError("invalid header")):  # fmt: skip
        assert disk_full_error(exc) is None


def test_training_out_of_space_is_one_line_and_resumes_to_the_same_model(tmp_path, monkeypatch):
    kw = dict(max_steps=6, eval_every=2, save_every=2)
    ref = ToyMLP()
    Trainer(ref, TRAIN, VALID, collate, cfg(tmp_path, "ref", **kw)).train()
    real_save, calls = checkpoint_mod.save_file, []

    def fills_up(*a, **k):  # the best-weights copy at step 4 finds the disk full
        calls.append(1)
        if len(calls) == 2:
            raise SafetensorError(ENOSPC_SAFETENSORS)
        return real_save(*a, **k)

    monkeypatch.setattr(checkpoint_mod, "save_file", fills_up)
    with pytest.raises(FlrecError, match="out of disk space") as e:
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    assert str(tmp_path / "run") in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(checkpoint_mod, "save_file", real_save)  # space freed
    model = ToyMLP()
    Trainer(model, TRAIN, VALID, collate, cfg(tmp_path, "run", **kw)).train()
    for k, v in params(ref).items():
        assert torch.equal(v, params(model)[k]), k


def test_cli_out_of_space_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    import flrec.data.d3 as d3

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(d3, "write_d3", full)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "n_items=40", "n_users=20", "seq_len_min=4",
                 "seq_len_max=6", "min_intent_items=2", "n_intents=4"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: out of disk space") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "override, expect",
    [("lora_r=0", "lora_r"), ("lora_alpha=0", "lora_alpha"), ("lora_targets=[]", "lora_targets"),
     ("lora_targets=['']", "lora_targets")],
)  # fmt: skip
def test_bad_lora_settings_are_config_errors(override, expect):
    from flrec.training.sft import SFTConfig

    with pytest.raises(ConfigError, match=expect) as e:
        SFTConfig.load(None, ["trainable=lora", override])
    assert "\n" not in str(e.value)


def test_lora_target_that_names_no_layer_lists_the_ones_that_do():
    from flrec.models.backbone import load_backbone
    from flrec.models.recommender import FLRConfig, FLRRecommender

    backbone, _ = load_backbone("tiny:llama")
    model = FLRRecommender(backbone, FLRConfig(reasoner="none"), None)
    for bad in (["nosuch"], ["q_proj", "layers"]):
        with pytest.raises(ConfigError, match=f"'{bad[-1]}' names no linear layer.*q_proj") as e:
            model.set_trainable("lora", lora_targets=tuple(bad))
        assert "\n" not in str(e.value)
    model.set_trainable("lora", lora_targets=("self_attn.q_proj",))  # peft's suffix match still works
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
