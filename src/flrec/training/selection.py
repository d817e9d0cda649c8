"""Best-step selection: which validation value a run optimises (``select_metric``) and what counts as
an improvement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from flrec.errors import ConfigError
from flrec.training.config import is_ranking_metric


def improves(loss: float, best: float | None, direction: Literal["min", "max"] = "min") -> bool:
    """A validation value is an improvement only if it is finite (a first NaN must not become "best") and
    beats ``best`` in ``direction`` (min: lower is better; max: higher)."""
    if not math.isfinite(loss):
        return False
    return best is None or (loss > best if direction == "max" else loss < best)


def select_key(key: str, extra_names: Sequence[str], out: Mapping[str, Any]) -> str:
    """The key of a model output that validation selects on, for ``select_metric=key``."""
    if key == "auto" or key in extra_names:  # an extra value: valid_loss is auto's loss
        return "rec_loss" if "rec_loss" in out else "loss"
    if key not in out or not isinstance(out[key], torch.Tensor) or out[key].dim() != 0:
        extra = list(extra_names)
        raise ConfigError(
            f"config key 'select_metric' is {key!r} but the model returns no scalar under that name "
            f"(it returns {sorted(k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 0)}"
            f"{f'; the extra validation values are {extra}' if extra else ''}); "
            "set select_metric=auto or one of those"
        )
    return key


def check_select_metric(key: str, names: Sequence[str], validates: bool) -> None:
    """Refuse a ranking select_metric that no extra validation value provides, before training."""
    if validates and is_ranking_metric(key) and key not in names:
        raise ConfigError(
            f"config key 'select_metric' is {key!r}, a ranking metric, but this stage's validation computes "
            f"{list(names) or 'no ranking metrics'}; " + (
                f"pick one of {list(names)} or select_metric=auto" if names else
                "turn validation ranking on (SFT: valid_rank_rows=500) or set select_metric=auto")
        )
