"""The Factorized Latent Reasoner (paper §4.1, eqs. 3–4).

K learnable query prototypes attend over the backbone's last hidden states (RoPE on the keys,
padding masked), giving K factor vectors; a softmax MLP gate mixes them into one vector ``z`` that
becomes the ``<|Thought|>`` input embedding for the next refinement step.

Shapes: ``B`` batch, ``L`` positions, ``D`` backbone hidden size, ``K`` factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only, so left and right padding agree.

    (LatentR3 used ``arange(L)``; with keys-only RoPE that makes the result depend on padding.)
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding over the full last dimension of ``x`` (B, L, D), D even."""
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, L, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class ReasonerOutput:
    z: torch.Tensor  # (B, D) aggregated thought vector (before output scaling)
    attn: torch.Tensor  # (B, K, L) factor attention maps A
    factors: torch.Tensor  # (B, K, D) factor vectors F = A V
    gates: torch.Tensor  # (B, K) importance weights alpha


class FactorizedLatentReasoner(nn.Module):
    """``A = softmax(W_q Q_f · RoPE(W_k H)^T / sqrt(D) + M)``, ``F = A V``, ``z = sum_k alpha_k F_k``."""

    def __init__(self, hidden_size: int, num_factors: int = 4, gate_hidden: int = 256, rope_base: float = 10000.0):
        super().__init__()
        if hidden_size % 2:
            raise ValueError("hidden_size must be even for RoPE")
        d, k = hidden_size, num_factors
        self.hidden_size, self.num_factors, self.rope_base = d, k, rope_base
        self.prototypes = nn.Parameter(torch.empty(k, d))
        self.w_q = nn.Linear(d, d)
        self.w_k = nn.Linear(d, d)
        self.w_v = nn.Linear(d, d)
        self.gate = nn.Sequential(nn.Linear(k * d, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, k))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Explicit init: meta-device loading would otherwise leave raw Parameters as ``torch.empty``.

        Prototypes are orthogonal rows of norm sqrt(D) and projections have std 1/sqrt(D), so the
        scaled scores start O(1): the factors attend to *different* positions from step one instead
        of all averaging the sequence (which would make L_orth start at its maximum). The last gate
        layer starts at zero, i.e. a uniform mix.
        """
        d = self.hidden_size
        nn.init.orthogonal_(self.prototypes)
        self.prototypes.mul_(math.sqrt(d))
        for lin in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(lin.weight, std=d**-0.5)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.gate[0].weight, std=(self.num_factors * d) ** -0.5)
        nn.init.zeros_(self.gate[0].bias)
        nn.init.zeros_(self.gate[2].weight)
        nn.init.zeros_(self.gate[2].bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> ReasonerOutput:
        """``hidden`` (B, L, D) last-layer states, ``mask`` (B, L) with 1 for real tokens."""
        mask = mask.bool()
        # Padded positions can hold garbage (even NaN from fully-masked attention rows); a zero
        # attention weight times NaN is still NaN, so clear them before projecting.
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        q = self.w_q(self.prototypes.to(hidden.dtype))  # (K, D)
        k = apply_rope(self.w_k(hidden), positions_from_mask(mask), self.rope_base)  # (B, L, D)
        v = self.w_v(hidden)
        scores = torch.einsum("kd,bld->bkl", q, k) / math.sqrt(self.hidden_size)
        acc = torch.promote_types(scores.dtype, torch.float32)  # softmax in >= fp32 (bf16 autocast)
        scores = scores.to(acc).masked_fill(~mask[:, None, :], torch.finfo(acc).min)
        attn = scores.softmax(dim=-1).to(v.dtype)  # (B, K, L)
        factors = attn @ v  # (B, K, D)
        gates = self.gate(factors.flatten(1)).to(acc).softmax(dim=-1).to(v.dtype)  # (B, K)
        z = (gates[..., None] * factors).sum(dim=1)
        return ReasonerOutput(z=z, attn=attn, factors=factors, gates=gates)


class EmbeddingScale(nn.Module):
    """Brings ``z`` to the scale of the backbone's input embeddings.

    The reasoner reads hidden states taken after the final norm (per-element RMS often ~1 or more),
    but ``z`` is fed back as an *input embedding*, whose rows are much smaller (SmolLM2: ~0.1). An
    off-scale thought embedding dominates the first layers' attention. We RMS-normalise ``z`` and
    multiply by a learnable per-dimension gain initialised to the RMS of the embedding matrix, so
    the thought starts exactly at embedding scale and training may move it.
    (``benchmarks/bench_refinement.py`` reports the loss at init with and without this.)
    """

    def __init__(self, hidden_size: int, init_rms: float = 1.0, enabled: bool = True, eps: float = 1e-6):
        super().__init__()
        self.enabled, self.eps = enabled, eps
        self.gain = nn.Parameter(torch.full((hidden_size,), float(init_rms)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return z
        zf = z.to(torch.promote_types(z.dtype, torch.float32))
        zf = zf * torch.rsqrt(zf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (zf * self.gain.to(zf.dtype)).to(z.dtype)
