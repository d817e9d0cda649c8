"""Does the LM use the user's thought? Measured at every validation of an FLR training run.

The interventions of :mod:`flrec.models.health` on a fixed set of validation batches, logged by the
trainer as ``valid_thought_swap_delta`` etc. beside the validation loss: a thought that stops
carrying the user shows up while training, not only in a later analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from flrec.models.health import thought_interventions

# Logged as valid_<name>; never a selection metric by default.
THOUGHT_PROBE_NAMES = ("thought_swap_delta", "thought_swap_delta_p", "thought_const_delta", "thought_init_delta",
                       "thought_user_share", "thought_cross_row_cosine", "z_cross_row_cosine")


def probe_batches(examples: Sequence, rows: int, batch_size: int, collate: Callable) -> list[dict]:
    """The first ``rows`` examples collated in batches of ``batch_size`` (none when fewer than 2 rows:
    a swap needs another row)."""
    ex = list(examples)[:rows]
    if len(ex) < 2:
        return []
    return [collate(ex[i : i + batch_size]) for i in range(0, len(ex), batch_size)]


def run_probe(model, batches: Sequence[dict], device: torch.device) -> dict[str, float]:
    """:data:`THOUGHT_PROBE_NAMES` for ``model`` (an FLR model with a thought) on ``batches`` (NaN where
    a value is undefined). The model's mode is restored."""
    moved = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    rep = thought_interventions(model, moved)
    return {k: float("nan") if rep.get(k) is None else float(rep[k]) for k in THOUGHT_PROBE_NAMES}
