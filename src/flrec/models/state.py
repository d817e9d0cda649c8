"""What a model hands to the beam search after reading the prompt (shared contract, owned by models).

Plain LMs produce it with one prompt forward; FLR produces it after its N refinement steps (the
prefix and the final thought are in the cache). The beam search only ever calls
``model(input_ids=..., attention_mask=..., position_ids=..., <cache kw>=cache, use_cache=True)`` (via ``flrec.models.compat.lm_forward``)
on top of it, so any ``AutoModelForCausalLM`` works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillState:
    cache: object  # a transformers Cache (e.g. DynamicCache) holding the whole prompt, batch B
    next_logits: torch.Tensor  # (B, V) logits for the first response token
    attention_mask: torch.Tensor  # (B, L) mask of the cached prompt (1 = real token)
    next_position: torch.Tensor  # (B,) position id of the first response token
