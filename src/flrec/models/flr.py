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


KEY_MODES = ("tokens", "history", "items")
VALUE_MODES = ("hidden", "embeddings")
POSITION_MODES = ("absolute", "relative", "none")
QUERY_MODES = ("prototypes", "thought")


@dataclass
class ReasonerOutput:
    z: torch.Tensor  # (B, D) aggregated thought vector (before output scaling)
    attn: torch.Tensor  # (B, K, Lk) factor attention maps A over the keys (fp32)
    factors: torch.Tensor  # (B, K, D) factor vectors F = A V
    gates: torch.Tensor  # (B, K) importance weights alpha (fp32)
    # (B, Lk): the history item (0 = oldest kept) each key belongs to, -1 for instruction text and
    # the thought; None when the prompt layout was not given.
    key_items: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None  # (B, Lk) bool, True for real keys
    # (B, Lk, D) fp32 states the keys/values were projected from (after centring): what a factor reads.
    key_states: torch.Tensor | None = None
    # (B, D) the next item's own state (mean over its title's tokens, detached, centred like the keys);
    # set by the model after the target pass, for the target_nce regulariser. None elsewhere.
    target_state: torch.Tensor | None = None
    # (B, D) the embedding written into the LM's thought position from this step's z (set by the
    # model, which owns the write path): what the LM receives, so cross-row terms act on it.
    thought: torch.Tensor | None = None
    # (B, T) the next item's token ids (-1 at padding) and (V, D) the LM's input embeddings, detached:
    # set by the model after the target pass for the thought_readout and thought_bag regularisers.
    # None elsewhere.
    target_ids: torch.Tensor | None = None
    readout_vocab: torch.Tensor | None = None


def item_keys(hidden: torch.Tensor, items: torch.Tensor, mask: torch.Tensor):
    """Mean-pool each history title's token states into one key per item, plus the thought state.

    ``hidden`` (B, L, D) ends in the thought column; ``items`` (B, L) gives each token's history item
    (-1 outside titles). Returns ``(keys (B, H+1, D), key_mask (B, H+1), key_items (B, H+1),
    positions (B, H+1))`` with the thought as the last key, position = item index (thought = H_b).
    Pooling makes *items* the unit a factor chooses: no quote, comma or version marker can be a sink.
    """
    b, _, _ = hidden.shape
    n_items = int(items.max().item()) + 1 if items.numel() else 0
    n_items = max(n_items, 1)
    slots = torch.arange(n_items, device=items.device)
    member = (items[:, None, :] == slots[None, :, None]) & mask.bool()[:, None, :]  # (B, H, L)
    counts = member.sum(-1)  # (B, H)
    pooled = (member.to(hidden.dtype) @ hidden) / counts.clamp(min=1)[..., None].to(hidden.dtype)
    keys = torch.cat([pooled, hidden[:, -1:]], dim=1)
    key_mask = torch.cat([counts > 0, torch.ones(b, 1, dtype=torch.bool, device=hidden.device)], dim=1)
    key_items = torch.cat([slots.expand(b, -1), torch.full((b, 1), -1, device=items.device)], dim=1)
    key_items = key_items.masked_fill(~key_mask, -1)
    pos = torch.cat([slots.expand(b, -1), (counts > 0).sum(-1, keepdim=True)], dim=1)
    return keys, key_mask, key_items, pos


class FactorizedLatentReasoner(nn.Module):
    """``A = softmax(W_q Q_f · RoPE(W_k H)^T / (τ sqrt(D)) + M)``, ``F = A V``, ``z = sum_k alpha_k F_k``.

    What the keys are (``keys``):

    * ``tokens`` — every prompt token including the thought (the paper, eq. 3). The instruction text
      is identical for every user and, under causal attention, so are its hidden states: a
      prototype can lock onto one of them and the "factor" becomes a constant soft prompt.
    * ``history`` — only tokens of history titles, plus the thought.
    * ``items`` — one mean-pooled key/value per history title, plus the thought: factors choose items.

    ``positions`` for the keys' RoPE: ``absolute`` (real-token index, the paper), ``relative``
    (distance to the thought: recency), ``none``. ``temperature`` τ > 1 flattens the attention.
    ``center`` subtracts a running mean of the key states (an EMA over training batches, like
    BatchNorm's, frozen at inference) before the key/value projections: last-layer states share a
    large user-independent component, which otherwise dominates every factor and makes the thought
    nearly the same vector for every user.

    ``query``: ``prototypes`` — the K queries are the learned prototypes alone (the paper); the same K
    queries for every user, so a factor can prefer fixed *kinds* of keys but never "the items this
    user buys most": with 24 planted intents and K = 4 no static query can follow each user's main
    one. ``thought`` — each query is its prototype plus a learned projection of the thought's own
    last-layer state (``q_k = W_q(Q_k + W_c h_thought)``), which under causal attention has read the
    whole history, and at step n the thought written at step n-1: the factors can then look for
    what this user's history is about, and refinement changes where they look. ``W_c`` starts at
    zero, so training starts from the paper's model.
    ``thought_key``: whether the thought's own state is a key/value (the paper: every prompt token).
    With ``query=thought`` it is a free sink — a query built from the thought state matches the
    thought key best — so factors can read the thought instead of the history; ``False`` leaves it
    out (a row with no other real key keeps it, so attention is never over nothing).
    The whole module computes in fp32 (also under bf16 autocast or with bf16 weights): its attention
    maps and gates feed the regularisers and diagnostics, and a bf16 gate above ~0.998 is exactly 1.
    """

    def __init__(self, hidden_size: int, num_factors: int = 4, gate_hidden: int = 256, rope_base: float = 10000.0,
                 keys: str = "tokens", positions: str = "absolute", temperature: float = 1.0,
                 center: bool = False, center_momentum: float = 0.05, query: str = "prototypes",
                 thought_key: bool = True, values: str = "hidden"):
        super().__init__()
        if hidden_size % 2:
            raise ValueError("hidden_size must be even for RoPE")
        if (keys not in KEY_MODES or positions not in POSITION_MODES or query not in QUERY_MODES
                or values not in VALUE_MODES):
            raise ValueError(f"keys must be one of {KEY_MODES}, positions one of {POSITION_MODES}, query one "
                             f"of {QUERY_MODES} and values one of {VALUE_MODES}")
        d, k = hidden_size, num_factors
        self.hidden_size, self.num_factors, self.rope_base = d, k, rope_base
        self.keys, self.positions, self.temperature = keys, positions, float(temperature)
        self.center, self.center_momentum, self.query = center, center_momentum, query
        self.thought_key, self.values = thought_key, values
        if center:
            self.register_buffer("key_mean", torch.zeros(d))
            self.register_buffer("key_mean_batches", torch.zeros((), dtype=torch.long))
        self._pending_mean: torch.Tensor | None = None  # (2, D): sum and count of keys since the last commit
        self.prototypes = nn.Parameter(torch.empty(k, d))
        self.w_q = nn.Linear(d, d)
        self.w_k = nn.Linear(d, d)
        self.w_v = nn.Linear(d, d)
        if query == "thought":
            self.w_c = nn.Linear(d, d, bias=False)
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
        if self.values == "embeddings":  # z starts as a mix of the history's own input embeddings
            nn.init.eye_(self.w_v.weight)
        nn.init.normal_(self.gate[0].weight, std=(self.num_factors * d) ** -0.5)
        nn.init.zeros_(self.gate[0].bias)
        nn.init.zeros_(self.gate[2].weight)
        nn.init.zeros_(self.gate[2].bias)
        if self.query == "thought":
            nn.init.zeros_(self.w_c.weight)  # start as the paper's static prototypes

    def _select_keys(self, hidden: torch.Tensor, mask: torch.Tensor, items: torch.Tensor | None):
        """Keys/values source (B, Lk, D), key mask, key items and key positions for ``self.keys``."""
        if items is None:
            if self.keys != "tokens":
                raise ValueError(f"keys={self.keys} needs the prompt layout (prompt_items from collate_left_padded)")
            items = torch.full_like(mask, -1, dtype=torch.long)
        if self.keys == "items":
            src, key_mask, key_items, pos = item_keys(hidden, items, mask)
            last = pos[:, -1:]
        else:
            key_mask = mask.clone()
            if self.keys == "history":
                key_mask &= items >= 0
                key_mask[:, -1] = mask[:, -1]  # the thought stays a key: step n+1 must see step n
            src, key_items, pos = hidden, items.masked_fill(~key_mask, -1), positions_from_mask(mask)
            last = pos[:, -1:]
        if not self.thought_key:  # the thought is the last key in every mode
            key_mask = key_mask.clone()
            key_mask[:, -1] = ~key_mask[:, :-1].any(-1)
        if self.positions == "relative":
            pos = (last - pos).clamp(min=0)
        return src, key_mask, key_items, pos

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, items: torch.Tensor | None = None,
                embeds: torch.Tensor | None = None) -> ReasonerOutput:
        """``hidden`` (B, L, D) last-layer states ending in the thought column, ``mask`` (B, L) with 1 for
        real tokens, ``items`` (B, L) the history item of each token (-1 elsewhere; needed unless keys=tokens),
        ``embeds`` (B, L, D) the same positions' *input* embeddings (needed with values=embeddings).
        """
        out_dtype = hidden.dtype
        if self.values == "embeddings" and (embeds is None or embeds.shape != hidden.shape):
            raise ValueError("values=embeddings needs the prompt's input embeddings (embeds, same shape as hidden)")
        with torch.autocast(hidden.device.type, enabled=False):
            mask = mask.bool()
            # Padded positions can hold garbage (even NaN from fully-masked attention rows); a zero
            # attention weight times NaN is still NaN, so clear them before projecting.
            acc = torch.promote_types(torch.promote_types(hidden.dtype, self.prototypes.dtype), torch.float32)
            hidden = hidden.to(acc).masked_fill(~mask[..., None], 0.0)
            src, key_mask, key_items, pos = self._select_keys(hidden, mask, items)
            thought = src[:, -1]  # the thought's state is the last source column in every key mode
            if self.center:
                mean = self.key_mean.to(acc)
                if self.training:
                    self._accumulate_key_mean(src, key_mask)
                thought = thought - mean
                src = (src - mean).masked_fill(~key_mask[..., None], 0.0)
            queries = self.prototypes.to(acc)  # (K, D), the same for every row (the paper)
            if self.query == "thought":  # the thought state conditions the queries (a key or not)
                queries = queries[None] + _linear(thought, self.w_c)[:, None, :]  # (B, K, D)
            q = _linear(queries, self.w_q)
            k = _linear(src, self.w_k)
            if self.positions != "none":
                k = apply_rope(k, pos, self.rope_base)
            if self.values == "embeddings":
                # Values in the space the thought is written into: last-layer states are not input
                # embeddings, and a frozen LM cannot read a projection of them at first (issue #24).
                vsrc = self._select_keys(embeds.to(acc).masked_fill(~mask[..., None], 0.0), mask, items)[0]
                v = _linear(vsrc.masked_fill(~key_mask[..., None], 0.0), self.w_v)
            else:
                v = _linear(src, self.w_v)
            # Per-row queries only with query=thought: the paper's shared (K, D) queries keep their own
            # contraction, whose rounding the saved models and the 2-process equality test were made with.
            spec = "bkd,bld->bkl" if q.dim() == 3 else "kd,bld->bkl"
            scores = torch.einsum(spec, q, k) / (math.sqrt(self.hidden_size) * self.temperature)
            scores = scores.masked_fill(~key_mask[:, None, :], torch.finfo(scores.dtype).min)
            attn = scores.softmax(dim=-1)  # (B, K, Lk)
            factors = attn @ v  # (B, K, D)
            gates = _mlp(factors.flatten(1), self.gate).softmax(dim=-1)  # (B, K)
            z = (gates[..., None] * factors).sum(dim=1)
        return ReasonerOutput(z=z.to(out_dtype), attn=attn, factors=factors, gates=gates,
                              key_items=key_items, key_mask=key_mask, key_states=src)

    def center_state(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (.., D) in fp32 and centred like the keys (the running key mean; no update)."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return x - self.key_mean.to(x.dtype) if self.center else x

    @torch.no_grad()
    def _accumulate_key_mean(self, src: torch.Tensor, key_mask: torch.Tensor) -> None:
        w = key_mask[..., None].to(src.dtype)
        stats = torch.stack([(src * w).sum((0, 1)), w.sum().expand(src.shape[-1])])
        self._pending_mean = stats if self._pending_mean is None else self._pending_mean + stats

    @torch.no_grad()
    def commit_key_mean(self) -> None:
        """Fold the keys seen since the last call into the running mean (EMA; the first batch sets it).

        Called after each optimizer step (:meth:`FLRRecommender.on_train_step`), so every forward of a
        step (each refinement step, the regulariser pass) reads the mean of *earlier* batches only,
        and a row's output never depends on the other rows of its batch.
        """
        total, self._pending_mean = self._pending_mean, None
        if not self.center or total is None:
            return
        batch_mean = total[0] / total[1].clamp(min=1)
        m = 1.0 if int(self.key_mean_batches) == 0 else self.center_momentum
        self.key_mean.mul_(1 - m).add_(batch_mean.to(self.key_mean.dtype), alpha=m)
        self.key_mean_batches += 1


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` in ``x``'s (>= fp32) dtype whatever the layer's (ranking may cast the model to bf16)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return torch.nn.functional.linear(x, layer.weight.to(x.dtype), bias)


def _mlp(x: torch.Tensor, seq: nn.Sequential) -> torch.Tensor:
    for layer in seq:
        x = _linear(x, layer) if isinstance(layer, nn.Linear) else layer(x)
    return x


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
