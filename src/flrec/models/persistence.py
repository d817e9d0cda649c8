"""Saving a model to its folder and loading it back (:meth:`FLRRecommender.save_pretrained` /
:meth:`~FLRRecommender.from_pretrained` delegate here).

A folder holds the FLR config and weights, the tokenizer with its additions, and the backbone only
where training changed it (its LoRA adapter, or the whole causal LM); the file names and the
reading of configs saved by older versions live in :mod:`flrec.models.folder`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from flrec.errors import FlrecError
from flrec.models.flr_config import FLRConfig
from flrec.models.folder import CONFIG_NAME, FORMAT_VERSION, STATE_NAME, migrate_flr_config
from flrec.models.freeze import parse_top
from flrec.utils.io import atomic_path, atomic_write_json


def save_model(model: nn.Module, path: str | Path, tokenizer=None) -> None:
    """Write ``model`` (an ``FLRRecommender``) to the directory ``path``: config, FLR weights,
    tokenizer additions, and the backbone if it changed."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if model.trainable_mode == "lora":
        model.backbone.save_pretrained(path / "adapter")
    elif model.trainable_mode == "full" or parse_top(model.trainable_mode):
        model.causal_lm.save_pretrained(path / "backbone")
        if tokenizer is not None:  # a self-contained HF directory, loadable on its own
            tokenizer.save_pretrained(path / "backbone")
    if tokenizer is not None:
        tokenizer.save_pretrained(path / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.flr_state_dict().items()}
    with atomic_path(path / STATE_NAME) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(path / CONFIG_NAME, {
        "flr": model.config.to_dict(), "backbone_spec": model.backbone_spec,
        "thought_token_id": model.thought_token_id, "trainable_mode": model.trainable_mode,
        "prompt": model.prompt_settings, "format": FORMAT_VERSION,
    })


def load_model(cls: type, path: str | Path, dtype: torch.dtype = torch.float32, backbone_override: str | None = None):
    """Load a directory written by :func:`save_model` as a ``cls`` (``FLRRecommender``); returns
    ``(model, tokenizer)``."""
    from safetensors.torch import load_file

    from flrec.models.backbone import add_thought_token, load_backbone  # lazy: transformers only to load

    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FlrecError(f"{path} is not an flrec model directory ({CONFIG_NAME} missing); pass a trained run's model dir")
    meta = json.loads((path / CONFIG_NAME).read_text())
    state = load_file(str(path / STATE_NAME))
    cfg = FLRConfig.from_dict(migrate_flr_config(meta["flr"], state, meta.get("format", 1)))
    spec = backbone_override or (str(path / "backbone") if (path / "backbone").is_dir() else meta["backbone_spec"])
    backbone, tokenizer = load_backbone(spec, dtype=dtype)
    if (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        tokenizer.padding_side = "left"
    thought_id = add_thought_token(backbone, tokenizer) if cfg.uses_thought else None
    if (path / "adapter").is_dir():
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, path / "adapter")
    model = cls(backbone, cfg, thought_id, backbone_spec=meta["backbone_spec"])
    model.trainable_mode = meta.get("trainable_mode", "full")
    model.prompt_settings = meta.get("prompt", {})
    missing, unexpected = model.load_state_dict(state, strict=False)
    # objective.step (the warm-up counter) is absent from models saved before it existed.
    bad = [k for k in missing if not k.startswith("backbone.") and k != "objective.step"] + list(unexpected)
    if bad:
        raise FlrecError(f"{path / STATE_NAME}: weights do not match the config (e.g. '{bad[0]}'); was it saved by another flrec version?")
    return model.to(dtype), tokenizer
