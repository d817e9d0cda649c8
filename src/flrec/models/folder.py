"""The conventions of a trained model's folder, in one place: its file names, how a run directory
leads to the model folder in it, which reasoner the folder holds, and how a config saved by an older
flrec reads today.

A model folder (``FLRRecommender.save_pretrained``) holds ``flr_config.json`` (:data:`CONFIG_NAME`),
``flr_state.safetensors`` (:data:`STATE_NAME`), ``tokenizer/`` and the backbone or its adapter;
``flrec tune-decoding`` adds :data:`DECODING_FILE` (and :data:`ASSISTED_DECODING_FILE`) and its
search (:data:`SEARCH_FILE`). The folder is the run's ``best/`` (``flrec train sft``) or a saved
recommender's ``model/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flrec.errors import FlrecError
from flrec.models.losses import REGULARISERS

CONFIG_NAME = "flr_config.json"
# 2: the soft-prompt control's thought is not rescaled by default (models saved before resolve it as on).
FORMAT_VERSION = 2
STATE_NAME = "flr_state.safetensors"
DECODING_FILE = "decoding.json"  # tuned decoding of a model directory (flrec tune-decoding)
ASSISTED_DECODING_FILE = "decoding+assistant.json"  # the same, tuned with an ID-model assistant
SEARCH_FILE = "decoding_search.json"  # the whole search of flrec tune-decoding (its default --out)


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model dir or an SFT run dir (whose ``best/`` is the model)."""
    p = Path(path)
    for cand in (p, p / "best", p / "sft" / "best", p / "model"):
        if (cand / CONFIG_NAME).is_file():
            return cand
    raise FlrecError(f"{p}: no trained flrec model here (looked for {CONFIG_NAME} in ., best/, sft/best/, model/); "
                     "pass the run directory of `flrec train sft` or its best/ folder")


def read_model_meta(model_dir: str | Path) -> dict:
    """The folder's ``flr_config.json`` (``flr`` = the FLR config, ``backbone_spec``, ``prompt``, ``format``...)."""
    path = Path(model_dir) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FlrecError(f"{path}: cannot read the model's config ({e}); is the run complete?") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("flr"), dict):
        raise FlrecError(f"{path}: not an flrec model config (no 'flr' entry)")
    return meta


def model_reasoner(model_dir: str | Path) -> str:
    """The reasoner (``flr``, ``latentr3``, ``softprompt`` or ``none``) of the model in ``model_dir``."""
    return str(read_model_meta(model_dir)["flr"].get("reasoner", "flr"))


def migrate_flr_config(saved: dict, state: dict[str, torch.Tensor], fmt: int = FORMAT_VERSION) -> dict:
    """Read configs written before an option existed (or its default changed) as what they trained with;
    ``state`` is the saved FLR weights, ``fmt`` the saved folder's format version."""
    saved = dict(saved)
    if fmt < 2 and saved.get("reasoner") == "softprompt" and saved.get("embed_scale") is None:
        saved["embed_scale"] = True
    saved.setdefault("values", "hidden")
    saved.setdefault("history_dropout", 0.0)
    if saved.get("aux_losses") is None and saved.get("reasoner", "flr") == "flr":
        # "the reasoner's default" has changed over versions: the saved loss weights name what it was.
        used = {k.rsplit(".", 1)[-1] for k in state if k.startswith("objective.log_vars.")}
        saved["aux_losses"] = [n for n in REGULARISERS if n in used]
    if "keys" not in saved:  # the paper's formulation was the only one
        saved.update(keys="tokens", key_positions="absolute", aux_to_backbone=True)
    saved.setdefault("center_keys", False)
    saved.setdefault("query", "prototypes")  # options added later: absent = what the model trained with
    saved.setdefault("thought_key", True)
    saved.setdefault("thought_residual", False)
    if saved.get("reasoner") == "latentr3" and saved.get("num_steps") == 2:
        saved["num_steps"] = None  # its second step reproduced the first exactly
    if saved.get("reasoner") in ("latentr3", "none") and saved.get("num_steps") == 0:
        saved["num_steps"] = None
    return saved
