"""Reasoner variants behind one interface: ``reasoner(hidden (B, L, D), mask (B, L)) -> ReasonerOutput``.

``hidden`` covers the prompt *including* the thought position (last column).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flrec.models.flr import FactorizedLatentReasoner, ReasonerOutput, apply_rope, positions_from_mask


class LatentR3Reasoner(nn.Module):
    """The predecessor's single-head module (LatentR3, notes §2), kept for comparison.

    Query = the hidden state just before the thought; keys/values = positions strictly before the
    thought; no gate, no regularisers, one refinement step. Differences from its code, on purpose:
    positions come from the mask (its ``arange`` made results depend on padding) and the padded
    positions are masked, so the baseline is not handicapped by a known bug.
    """

    def __init__(self, hidden_size: int, rope_base: float = 10000.0):
        super().__init__()
        d = hidden_size
        self.hidden_size, self.rope_base = d, rope_base
        self.w_q, self.w_k, self.w_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for lin in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(lin.weight, std=self.hidden_size**-0.5)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> ReasonerOutput:
        mask = mask.bool().clone()
        mask[:, -1] = False  # keys/values: strictly before the thought
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        pos = positions_from_mask(mask)
        q = apply_rope(self.w_q(hidden[:, -2:-1]), pos[:, -2:-1], self.rope_base)  # (B, 1, D)
        k = apply_rope(self.w_k(hidden), pos, self.rope_base)
        v = self.w_v(hidden)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.hidden_size)
        acc = torch.promote_types(scores.dtype, torch.float32)
        scores = scores.to(acc).masked_fill(~mask[:, None, :], torch.finfo(acc).min)
        attn = scores.softmax(-1).to(v.dtype)  # (B, 1, L)
        factors = attn @ v
        gates = torch.ones(hidden.shape[0], 1, dtype=v.dtype, device=v.device)
        return ReasonerOutput(z=factors[:, 0], attn=attn, factors=factors, gates=gates)


def build_reasoner(config, hidden_size: int) -> nn.Module:
    """The reasoner named by ``config.reasoner`` (``flr`` or ``latentr3``)."""
    if config.reasoner == "flr":
        return FactorizedLatentReasoner(hidden_size, config.num_factors, config.gate_hidden, config.rope_base)
    if config.reasoner == "latentr3":
        return LatentR3Reasoner(hidden_size, config.rope_base)
    raise ValueError(f"no reasoner for '{config.reasoner}'")
