"""Beam search with one copy of each user's prompt: the prompt's KV once per user, the generated
suffix once per beam.

Why: with a plain KV cache every beam holds its own copy of its user's prompt, so each step's
beam reorder copies ``users × beams × prompt length`` cache entries and the attention reads them all
again; for the 135M backbone on CDs prompts (~250 tokens, 10 beams) that is ~2 GB moved per step
against ~40 GFLOP of needed arithmetic. Here a reorder moves only the suffixes (a few tokens per
beam) and the attention reads each prompt once for all of its user's beams.

How: the suffix lives in an ordinary :class:`~transformers.DynamicCache` (so the model's own cache
update, reorder and length logic apply to it unchanged); the prompt's per-layer keys/values (B, H_kv,
P, d) sit beside it. A registered attention function (:data:`ATTN_NAME`) attends each query to its
user's prompt and to its beam's own suffix in two parts and merges them with the log-sum-exp rule,
which equals one softmax over the concatenation (flash-attention's split-softmax identity):

    out = (e^{m_p−m} Σ_p e^{s_p−m_p} v_p + e^{m_s−m} Σ_s e^{s_s−m_s} v_s) / (e^{m_p−m} Z_p + e^{m_s−m} Z_s)

with ``m = max(m_p, m_s)``. The search's masks are ours (the prompt's left padding; the suffix's padded
jump slots and causality). Plain tensor ops: no custom kernel, any device, fp32 softmax whatever the
model dtype.

The model is switched to this attention only while a search runs (reference-counted per config, so
concurrent searches on one model are safe), and any other forward of the model meanwhile (no
``flrec_prompt`` keyword) gets PyTorch SDPA with its usual mask, exactly as before the switch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTN_NAME = "flrec_shared_prompt"


class SharedPromptCache(DynamicCache):
    """A per-beam suffix cache plus each user's prompt keys/values, held once.

    ``prompt_cache``: the prefill's cache (B rows, one per user); ``prompt_mask`` (B, P) its attention
    mask. Beam ``i`` belongs to user ``i // K`` (K = rows of the suffix / users). ``suffix_mask``
    (B*K, S), set by the search before each forward, marks the suffix's real slots.
    """

    def __init__(self, prompt_cache, prompt_mask: torch.Tensor) -> None:
        super().__init__()
        self.prompt = [(layer.keys, layer.values) for layer in prompt_cache.layers]
        self.prompt_mask = prompt_mask.bool()
        self.suffix_mask: torch.Tensor | None = None

    def keep_users(self, kept: torch.Tensor) -> None:
        """Drop the prompts of users that left the search (``kept``: the remaining users' indices)."""
        self.prompt = [(k[kept], v[kept]) for k, v in self.prompt]
        self.prompt_mask = self.prompt_mask[kept]


def supports_shared_prompt(model: torch.nn.Module, prompt_cache) -> bool:
    """Whether ``model`` can decode against a :class:`SharedPromptCache`: a config whose attention
    implementation can be switched, and a prompt cache of plain full-attention layers (a sliding
    window counts cache slots, which a split cache does not reproduce)."""
    layers = getattr(prompt_cache, "layers", None)
    if not layers or not hasattr(getattr(model, "config", None), "_attn_implementation"):
        return False
    return all(not getattr(layer, "is_sliding", False) and getattr(layer, "keys", None) is not None
               and layer.keys.dim() == 4 for layer in layers)


_LOCK = threading.Lock()
_ACTIVE: dict[int, tuple[int, str | None]] = {}  # id(config) -> (searches in flight, implementation before)


@contextlib.contextmanager
def shared_prompt_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s attention through :func:`split_prompt_attention` inside the block (nestable and
    thread-safe: the first search in flight switches, the last one restores)."""
    config, key = model.config, id(model.config)
    with _LOCK:
        depth, before = _ACTIVE.get(key, (0, config._attn_implementation))
        _ACTIVE[key] = (depth + 1, before)
        config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        with _LOCK:
            depth, before = _ACTIVE[key]
            if depth == 1:
                del _ACTIVE[key]
                config._attn_implementation = before
            else:
                _ACTIVE[key] = (depth - 1, before)


def split_prompt_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           flrec_prompt: SharedPromptCache | None = None, **_: object
                           ) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` (N, H, W, d) over its user's prompt and its beam's suffix ``key``/``value``
    (N, H_kv, S, d), the W new tokens last; returns (N, W, H, d) as transformers' attention functions do."""
    if flrec_prompt is None:  # another forward of the model while a search runs: plain SDPA
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                               dropout=dropout, **_)
    pk, pv = flrec_prompt.prompt[module.layer_idx]  # (b, H_kv, P, d)
    n, h, w, d = query.shape
    b, h_kv = pk.shape[0], pk.shape[1]
    k, g, s = n // b, h // h_kv, key.shape[2]
    scale = d**-0.5 if scaling is None else scaling
    acc = torch.promote_types(query.dtype, torch.float32)
    q = query.to(acc) * scale

    # prompt part: the K beams x G grouped heads x W tokens of a user are that user's query rows
    qp = q.view(b, k, h_kv, g, w, d).permute(0, 2, 1, 3, 4, 5).reshape(b, h_kv, k * g * w, d)
    sp = (qp @ pk.to(acc).transpose(-1, -2)).masked_fill(~flrec_prompt.prompt_mask[:, None, None, :], -torch.inf)
    mp = sp.amax(-1, keepdim=True)
    ep = (sp - mp).exp()
    num_p, den_p = ep @ pv.to(acc), ep.sum(-1, keepdim=True)

    def per_beam(x: torch.Tensor) -> torch.Tensor:  # (b, H_kv, K*G*W, c) -> (N, H_kv, G*W, c)
        return x.view(b, h_kv, k, g * w, -1).transpose(1, 2).reshape(n, h_kv, g * w, -1)

    mp, num_p, den_p = per_beam(mp), per_beam(num_p), per_beam(den_p)

    # suffix part: each beam's own tokens, its real slots only, causal among the W new ones
    ss = q.reshape(n, h_kv, g * w, d) @ key.to(acc).transpose(-1, -2)  # (N, H_kv, G*W, S)
    real = flrec_prompt.suffix_mask.bool()
    causal = torch.arange(s, device=key.device)[None] <= torch.arange(s - w, s, device=key.device)[:, None]  # (W, S)
    allowed = (real[:, None, :] & causal[None]).repeat(1, g, 1)  # (N, G*W, S), rows ordered (g, w)
    ss = ss.masked_fill(~allowed[:, None], -torch.inf)
    ms = ss.amax(-1, keepdim=True)
    es = (ss - ms).exp()
    num_s, den_s = es @ value.to(acc), es.sum(-1, keepdim=True)

    m = torch.maximum(mp, ms)  # the token itself is always visible, so m is finite
    ap, as_ = (mp - m).exp(), (ms - m).exp()
    out = (num_p * ap + num_s * as_) / (den_p * ap + den_s * as_)  # (N, H_kv, G*W, d)
    out = out.reshape(n, h, w, d).transpose(1, 2).contiguous().to(query.dtype)
    return out, None


AttentionInterface.register(ATTN_NAME, split_prompt_attention)
# Ordinary forwards under the switched name build SDPA's mask; the search's own passes give no mask.
AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
