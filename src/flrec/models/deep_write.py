"""The deep write (``flr.deep_write``): the thought also enters the keys and values of its own
position in every layer.

Why: the paper writes the thought as one input embedding. On the embedded 135M backbone that
channel is barely read: an *oracle* thought holding the bag of the answer's own title words, written
there, changed the loss by 0.003 ± 0.016 nats (frozen LM) and 0.002 ± 0.003 (after the demo's SFT)
against another row's oracle (issue #24, docs/results/thought.md). Input-only soft prompts are known
to be weak for small LMs, while per-layer prefixes are not (P-tuning v2, prefix tuning). So each
layer ℓ gets ``k_ℓ += A_ℓ e`` and ``v_ℓ += B_ℓ e`` at the thought's column, with ``e`` the written
thought embedding (so every intervention on ``e`` reaches every layer) and ``A``, ``B`` learned and
zero at init (training starts from the input-only write). The key delta is added before RoPE, so it
is rotated with its position like the LM's own key.

How: forward hooks on each layer's ``self_attn.k_proj`` / ``v_proj`` add the deltas to the output
column that the current pass marks as the thought (:meth:`DeepThoughtWrite.writing`, entered by
``FLRRecommender._run``); passes that mark no thought column are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from flrec.errors import ConfigError


def _kv_projections(decoder: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    layers = getattr(decoder, "layers", None)
    pairs = [(getattr(getattr(layer, "self_attn", None), "k_proj", None),
              getattr(getattr(layer, "self_attn", None), "v_proj", None)) for layer in layers or []]
    if not pairs or any(k is None or v is None for k, v in pairs):
        raise ConfigError("flr.deep_write needs decoder layers with self_attn.k_proj and self_attn.v_proj (Llama, "
                          "Qwen2, Mistral...); this backbone has none: set flr.deep_write=false")
    return pairs


class DeepThoughtWrite(nn.Module):
    """Per-layer key/value deltas ``(B, L, 2, kv_dim)`` of a thought embedding ``(B, D)``."""

    def __init__(self, decoder: nn.Module, hidden_size: int) -> None:
        super().__init__()
        pairs = _kv_projections(decoder)
        self._pairs = pairs  # plain list: the projections belong to the backbone, not to this module
        self.layers, self.kv_dim = len(pairs), pairs[0][0].out_features
        self.proj = nn.Linear(hidden_size, self.layers * 2 * self.kv_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, thought: torch.Tensor) -> torch.Tensor:
        x = thought.to(torch.promote_types(thought.dtype, self.proj.weight.dtype))
        return torch.nn.functional.linear(x, self.proj.weight.to(x.dtype)).view(-1, self.layers, 2, self.kv_dim)

    def attach(self) -> None:
        """Hook every layer's K/V projection (once, at construction)."""
        for k_proj, v_proj in self._pairs:
            for proj in (k_proj, v_proj):
                proj._flrec_thought_delta = None
                proj.register_forward_hook(_add_delta)

    @contextlib.contextmanager
    def writing(self, col: int, thought: torch.Tensor) -> Iterator[None]:
        """Inside the block, every pass adds ``thought``'s deltas at column ``col`` of each K/V projection.

        The state sits on the hooked modules themselves (not in a closure), so a deep copy of the model
        writes through its own copies."""
        deltas = self(thought)
        try:
            for i, pair in enumerate(self._pairs):
                for j, proj in enumerate(pair):
                    proj._flrec_thought_delta = (col, deltas[:, i, j])
            yield
        finally:
            for pair in self._pairs:
                for proj in pair:
                    proj._flrec_thought_delta = None


def _add_delta(module: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor:
    ctx = getattr(module, "_flrec_thought_delta", None)
    if ctx is None:
        return out
    col, delta = ctx
    return out.index_add(1, torch.tensor([col], device=out.device), delta[:, None].to(out.dtype))
