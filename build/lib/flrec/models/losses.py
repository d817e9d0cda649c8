"""FLR's structural regularisers (paper eqs. 5–7) and their weighting (eq. 8).

All three take the reasoner's outputs of one refinement step; :class:`FLRObjective` averages them
over steps and combines them with the recommendation loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _acc(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16 statistics are too coarse), fp64 kept for exactness tests."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

AUX_LOSSES: tuple[str, ...] = ("orth", "div", "sparse")


def orthogonality_loss(factors: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``1/B sum_b || F̂_b F̂_bᵀ − I_K ||_F²`` with rows of ``F̂_b`` L2-normalised.

    ``factors`` is (B, K, D). Zero when the K factor vectors are mutually orthogonal.
    """
    fhat = F.normalize(_acc(factors), dim=-1)
    gram = fhat @ fhat.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return (gram - eye).pow(2).sum(dim=(1, 2)).mean()


def attention_diversity_loss(attn: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``2/(K(K−1)) sum_{i<j} cos(A_i, A_j)``, averaged over the batch.

    ``attn`` is (B, K, L). Zero when factors attend to disjoint positions; 0 for K = 1.
    """
    k = attn.shape[1]
    if k < 2:
        return attn.new_zeros((), dtype=torch.float32)
    a = F.normalize(_acc(attn), dim=-1)
    cos = a @ a.transpose(1, 2)  # (B, K, K)
    iu = torch.triu_indices(k, k, offset=1, device=attn.device)
    return cos[:, iu[0], iu[1]].mean(dim=1).mean()


def sparsity_loss(gates: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7: gate entropy ``−1/B sum_b sum_k α_bk log(α_bk + ε)``. Zero for one-hot gates."""
    g = _acc(gates)
    return -(g * torch.log(g + eps)).sum(dim=-1).mean()


AUX_FNS = {"orth": orthogonality_loss, "div": attention_diversity_loss, "sparse": sparsity_loss}


class FLRObjective(nn.Module):
    """``L = L_rec + Σ_i w_i(L_i)`` over the enabled auxiliary losses.

    * ``uncertainty`` (Kendall et al. 2018; paper §5.2): ``w_i(L) = exp(−s_i)/2 · L + s_i/2`` with
      learnable ``s_i`` initialised to 0 (λ_i = 1/(2e^{s_i}) = 0.5 at start). The ``s_i/2`` term
      is what stops every λ_i from collapsing to zero.
    * ``fixed``: ``w_i(L) = λ_i · L``.
    """

    def __init__(self, enabled: tuple[str, ...] = AUX_LOSSES, weighting: str = "uncertainty",
                 fixed_weights: dict[str, float] | None = None):
        super().__init__()
        unknown = set(enabled) - set(AUX_LOSSES)
        if unknown:
            raise ValueError(f"unknown auxiliary losses {sorted(unknown)}; choose from {AUX_LOSSES}")
        self.enabled = tuple(n for n in AUX_LOSSES if n in enabled)
        self.weighting = weighting
        self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in self.enabled})
        self.fixed_weights = {n: float((fixed_weights or {}).get(n, 0.1)) for n in self.enabled}

    def aux_losses(self, steps: list) -> dict[str, torch.Tensor]:
        """Each enabled loss averaged over the refinement steps' :class:`ReasonerOutput`."""
        out = {}
        for name in self.enabled:
            fn = AUX_FNS[name]
            arg = {"orth": "factors", "div": "attn", "sparse": "gates"}[name]
            out[name] = torch.stack([fn(getattr(s, arg)) for s in steps]).mean()
        return out

    def weights(self) -> dict[str, float]:
        """Current effective λ_i (for logging)."""
        if self.weighting == "fixed":
            return dict(self.fixed_weights)
        return {n: float(0.5 * torch.exp(-p.detach())) for n, p in self.log_vars.items()}

    def forward(self, rec_loss: torch.Tensor, aux: dict[str, torch.Tensor]) -> torch.Tensor:
        total = rec_loss
        for name, value in aux.items():
            if self.weighting == "fixed":
                total = total + self.fixed_weights[name] * value
            else:
                s = self.log_vars[name]
                total = total + 0.5 * torch.exp(-s) * value + 0.5 * s
        return total
