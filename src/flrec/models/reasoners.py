"""Reasoner variants behind one interface:
``reasoner(hidden (B, L, D), mask (B, L), items (B, L) | None) -> ReasonerOutput``.

``hidden`` covers the prompt *including* the thought position (last column); ``items`` maps each
token to its history item (-1 elsewhere), see :class:`flrec.data.prompts.EncodedExample`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flrec.models.flr import FactorizedLatentReasoner, ReasonerOutput, apply_rope, positions_from_mask


class LatentR3Reasoner(nn.Module):
    """The predecessor's single-head module (LatentR3, notes §2), kept for comparison.

    Query = the hidden state just before the thought; keys/values = positions strictly before the
    thought; no gate, no regularisers, RoPE (base 1000 in its code) on query and keys. Its keys
    exclude the thought and its query is the pre-thought state, so a second refinement step would
    reproduce the first exactly: :class:`~flrec.models.flr_config.FLRConfig` runs it once.
    Differences from its code, on purpose: positions come from the mask (its ``arange`` made results
    depend on padding) and the padded positions are masked, so the baseline is not handicapped by a
    known bug.
    """

    def __init__(self, hidden_size: int, rope_base: float = 1000.0):
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

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, items: torch.Tensor | None = None) -> ReasonerOutput:
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
        gates = torch.ones(hidden.shape[0], 1, dtype=torch.float32, device=v.device)
        key_items = None if items is None else items.masked_fill(~mask, -1)
        return ReasonerOutput(z=factors[:, 0], attn=attn.float(), factors=factors, gates=gates,
                              key_items=key_items, key_mask=mask)


class SoftPromptReasoner(nn.Module):
    """A control, not a method: one learned vector written as the thought for every user.

    If FLR cannot beat this on validation loss, its thought carries nothing the LM lacks.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(hidden_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.vector, std=1.0)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, items: torch.Tensor | None = None) -> ReasonerOutput:
        b = hidden.shape[0]
        z = self.vector.to(hidden.dtype).expand(b, -1)
        attn = torch.zeros(b, 1, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        gates = torch.ones(b, 1, dtype=torch.float32, device=hidden.device)
        return ReasonerOutput(z=z, attn=attn, factors=z[:, None], gates=gates, key_mask=mask.bool())


def build_reasoner(config, hidden_size: int) -> nn.Module:
    """The reasoner named by ``config.reasoner`` (``flr``, ``latentr3`` or ``softprompt``)."""
    if config.reasoner == "flr":
        return FactorizedLatentReasoner(hidden_size, config.num_factors, config.gate_hidden, config.rope,
                                        keys=config.keys, positions=config.key_positions,
                                        temperature=config.attn_temperature, center=config.center_keys,
                                        query=config.query, thought_key=config.thought_key,
                                        values=config.values)
    if config.reasoner == "latentr3":
        return LatentR3Reasoner(hidden_size, config.rope)
    if config.reasoner == "softprompt":
        return SoftPromptReasoner(hidden_size)
    raise ValueError(f"no reasoner for '{config.reasoner}'")
