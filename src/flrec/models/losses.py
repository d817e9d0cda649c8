"""FLR's structural regularisers (paper eqs. 5–7) and their weighting (eq. 8).

Each regulariser is a plain registered function (:func:`register_regulariser`) of the reasoner's
outputs of one refinement step; :class:`FLRObjective` averages them over steps and combines them
with the recommendation loss. The paper's three stay exactly as written; the cross-row terms below
them are options (``flr.aux_losses``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _acc(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16 statistics are too coarse), fp64 kept for exactness tests."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

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


# ------------------------------------------------------------------------------ beyond the paper
# Eqs. 5-7 are per-row statistics: factors that ignore the user and one-hot gates that pick the
# same factor for everyone reach their minimum of 0 (the collapse into a constant soft prompt).
# The terms below look *across rows* of the batch, where that degenerate solution is visible.


def thought_similarity_loss(z: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the thought vectors across the batch's rows (``z`` is (B, D)).

    1 for a constant thought, ~0 for unrelated ones; 0 for a batch of one row.

    >>> round(float(thought_similarity_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))), 4)
    1.0
    >>> round(float(thought_similarity_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))), 4)
    0.0
    """
    b = z.shape[0]
    if b < 2:
        return z.new_zeros((), dtype=torch.float32)
    zn = F.normalize(_acc(z), dim=-1)
    total = zn.sum(0)
    # sum_{i != j} cos_ij = |sum_i zn_i|^2 - sum_i |zn_i|^2: O(B D) instead of the O(B^2 D) Gram matrix.
    return (total @ total - (zn * zn).sum()) / (b * (b - 1))


def routing_loss(gates: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``−mean_b Hellinger(α_b, ᾱ)`` with ``ᾱ`` the batch-mean gate: rewards rows routed differently.

    Why not ``−I(row; factor)`` directly: I is quadratic in each row's deviation from the mean gate,
    so its gradient vanishes as the gates approach a constant. The Hellinger distance
    ``||√α_b − √ᾱ||₂ / √2`` is linear in that deviation, so a nearly constant gate still gets a
    unit-scale push in the direction each row already deviates. Zero for a constant gate, in [−1, 0].

    >>> round(float(routing_loss(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))), 4) + 0.0  # eps inside the sqrt
    0.0
    >>> round(float(routing_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))), 4)
    -0.5412
    """
    g = _acc(gates)
    mean = g.mean(dim=0, keepdim=True)
    diff = (g + eps).sqrt() - (mean + eps).sqrt()
    return -(diff.pow(2).sum(-1) + eps).sqrt().mean() / 2**0.5


def attention_entropy_floor_loss(attn: torch.Tensor, key_mask: torch.Tensor | None, floor: float = 0.5) -> torch.Tensor:
    """``mean_{b,k} relu(floor·ln n_b − H(A_bk)) / ln n_b``: a factor may not put all its mass on one key.

    ``n_b`` is the number of real keys of row b; zero once every factor's attention entropy is at
    least ``floor`` of the uniform entropy.

    >>> a = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    >>> round(float(attention_entropy_floor_loss(a, None, floor=0.5)), 4)
    0.5
    """
    a = _acc(attn)
    n = a.new_full(a.shape[:1], a.shape[-1]) if key_mask is None else key_mask.sum(-1).to(a.dtype)
    log_n = n.clamp(min=2).log()[:, None]
    ent = -(a * a.clamp(min=1e-12).log()).sum(-1)  # (B, K)
    return F.relu(floor * log_n - ent).div(log_n).mean()


def target_nce_loss(attn: torch.Tensor, gates: torch.Tensor, key_states: torch.Tensor | None,
                    target_state: torch.Tensor | None, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over the batch: what the factors read should resemble the item that comes next.

    ``r_b = sum_k α_bk sum_l A_bkl s_bl`` is the gate-weighted mix of the key states ``s`` the factors
    attend to (B, Lk, D) and ``t_b`` the next item's own (detached) state (B, D); the loss is
    ``−1/B sum_b log softmax_b'(cos(r_b, t_b') / τ)[b]``. The paper's losses never ask *which* history
    items a factor reads, and the LM sees the whole history anyway, so the rec loss barely moves the
    attention; this gives it a direct signal (items like the next one), without any planted label.
    Zero without a target state (ranking, GRPO) or for a batch of one row.

    >>> a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]); g = torch.ones(2, 1)
    >>> s = torch.eye(2).expand(2, 2, 2)
    >>> round(float(target_nce_loss(a, g, s, torch.eye(2), temperature=1.0)), 4)  # log(1 + e^-1)
    0.3133
    """
    if key_states is None or target_state is None or attn.shape[0] < 2:
        return attn.new_zeros((), dtype=torch.float32)
    read = torch.einsum("bk,bkl,bld->bd", _acc(gates), _acc(attn), _acc(key_states))
    logits = F.normalize(read, dim=-1) @ F.normalize(_acc(target_state), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def _title_tokens(target_ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, real, shared)`` of next-title tokens (``target_ids`` (B, T), −1 at padding): the ids with
    padding clamped to 0, the real positions, and the positions whose token is in *every* row's target
    (quotes, EOS: no user in them). With one row every real token is "shared"."""
    real = target_ids >= 0
    ids = target_ids.clamp(min=0)
    present = torch.zeros(target_ids.shape[0], vocab_size, dtype=torch.bool, device=ids.device)
    present.scatter_(1, ids, real)  # (B, V): token v is in row b's target
    return ids, real, present.all(0)[ids]


def thought_readout_loss(thought: torch.Tensor | None, target_ids: torch.Tensor | None,
                         vocab: torch.Tensor | None, temperature: float = 0.1) -> torch.Tensor:
    """The written thought, read as a word by the LM's own input embeddings, should name the next title.

    ``p(v | e_b) = softmax_v(cos(e_b, E_v) / τ)`` over the vocabulary embeddings ``E`` (V, D), and the
    loss is ``−mean_{b,t} log p(y_bt | e_b)`` over the next title's tokens ``y_b`` (``target_ids`` (B, T),
    −1 at padding), leaving out tokens found in *every* row's target (the closing quote, EOS: they
    carry no user). Why: the rec loss reaches the reasoner only through an LM that can already read
    the history, so the thought gets almost no per-user gradient (issue #24); this asks the thought to
    be, in the space the LM reads its inputs in, a bag of the next item's words: a direct per-user
    target, and one a frozen LM can read from step 0. Zero without targets (ranking, GRPO) or for a
    batch of one row (nothing to tell shared tokens from the user's).

    >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); E = torch.eye(2)
    >>> round(float(thought_readout_loss(e, torch.tensor([[0], [1]]), E, temperature=1.0)), 4)  # log(1 + e^-1)
    0.3133
    >>> float(thought_readout_loss(e, torch.tensor([[0], [0]]), E))  # a token every row has is left out
    0.0
    """
    if thought is None or target_ids is None or vocab is None or thought.shape[0] < 2:
        return torch.zeros((), dtype=torch.float32, device=None if thought is None else thought.device)
    logp = (F.normalize(_acc(thought), dim=-1) @ F.normalize(_acc(vocab), dim=-1).T / temperature).log_softmax(-1)
    ids, real, shared = _title_tokens(target_ids, vocab.shape[0])
    keep = real & ~shared
    if not bool(keep.any()):
        return logp.new_zeros(())
    return -(logp.gather(1, ids) * keep).sum() / keep.sum()


def title_bag(target_ids: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """(B, D) mean input embedding of each row's next-title tokens (``target_ids`` (B, T), −1 at padding),
    leaving out tokens found in every row's target when the batch has more than one row (the quotes, EOS).

    >>> E = torch.eye(3)
    >>> title_bag(torch.tensor([[0, 2], [1, 2]]), E)  # token 2 is in every row: left out
    tensor([[1., 0., 0.],
            [0., 1., 0.]])
    """
    ids, real, shared = _title_tokens(target_ids, vocab.shape[0])
    keep = real
    if target_ids.shape[0] > 1:
        keep = real & ~shared
        keep = torch.where(keep.any(1, keepdim=True), keep, real)  # a row of shared tokens only keeps them
    rows = _acc(vocab[ids])  # only the rows needed, then to fp32: never a copy of the whole matrix
    w = keep.to(rows.dtype)[..., None]
    return (rows * w).sum(1) / w.sum(1).clamp(min=1)


def thought_bag_loss(thought: torch.Tensor | None, target_ids: torch.Tensor | None,
                     vocab: torch.Tensor | None) -> torch.Tensor:
    """``1 − mean_b cos(e_b, bag_b)``: the written thought should point where the next title's words are,
    in the input-embedding space (:func:`title_bag`). A direct per-user target for the reasoner: the rec
    loss alone reaches it only through an LM that has not yet learnt to read the thought (issue #24).
    Zero without targets (ranking, GRPO).

    >>> round(float(thought_bag_loss(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.tensor([[0, 2], [1, 2]]),
    ...                              torch.eye(3))), 4)
    0.0
    """
    if thought is None or target_ids is None or vocab is None:
        return torch.zeros((), dtype=torch.float32, device=None if thought is None else thought.device)
    bag = title_bag(target_ids, vocab)
    return 1.0 - F.cosine_similarity(_acc(thought), bag, dim=-1).mean()


def written_thought_similarity_loss(thought: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
    """:func:`thought_similarity_loss` of the embedding written into the LM (``z`` if none was set).

    On ``z`` the term can be satisfied upstream of a write path (a gate, a residual constant) that the
    LM's input never shows; on the written embedding it asks for what the LM receives to differ.
    """
    return thought_similarity_loss(z if thought is None else thought)


# name -> (function, what it reads from a ReasonerOutput, its lower bound)
REGULARISERS: dict[str, tuple] = {}


def register_regulariser(name: str, reads: tuple[str, ...], floor: float = 0.0):
    """Register ``fn(*[getattr(step_output, r) for r in reads], **params)`` under ``name``; ``floor`` is
    the least value it can take (the uncertainty weighting works on ``value − floor`` ≥ 0)."""

    def wrap(fn):
        REGULARISERS[name] = (fn, reads, float(floor))
        return fn

    return wrap


register_regulariser("orth", ("factors",))(orthogonality_loss)
register_regulariser("div", ("attn",))(attention_diversity_loss)
register_regulariser("sparse", ("gates",))(sparsity_loss)
register_regulariser("thought_sim", ("thought", "z"), floor=-1.0)(written_thought_similarity_loss)
register_regulariser("routing", ("gates",), floor=-1.0)(routing_loss)
register_regulariser("attn_entropy", ("attn", "key_mask"))(attention_entropy_floor_loss)
register_regulariser("target_nce", ("attn", "gates", "key_states", "target_state"))(target_nce_loss)
register_regulariser("thought_readout", ("thought", "target_ids", "readout_vocab"))(thought_readout_loss)
register_regulariser("thought_bag", ("thought", "target_ids", "readout_vocab"))(thought_bag_loss)
AUX_LOSSES: tuple[str, ...] = ("orth", "div", "sparse")  # the paper's three
_PARAMS = {"attn_entropy": {"entropy_floor": "floor"}, "target_nce": {"nce_temperature": "temperature"},
           "thought_readout": {"readout_temperature": "temperature"}}  # objective param -> function keyword


class FLRObjective(nn.Module):
    """``L = L_rec + r(t) Σ_i w_i(L_i)`` over the enabled regularisers.

    * ``uncertainty`` (Kendall et al. 2018; paper §5.2): ``w_i(L) = exp(−s_i)/2 · (L − L_min) + s_i/2``
      with learnable ``s_i`` initialised to 0 (λ_i = 1/(2e^{s_i}) = 0.5 at start) and ``L_min`` the
      regulariser's lower bound (0 for the paper's three). The ``s_i/2`` term stops every λ_i from
      collapsing to zero; its optimum is ``s_i = log(L − L_min)``, so a term that can be negative (or
      sits at its bound, e.g. ``target_nce`` in GRPO) would drive ``s_i`` to −∞ and λ_i up
      exponentially: hence the shift, and ``s_i`` is clamped to ``[S_MIN, S_MAX]`` in the loss (its
      gradient is zero beyond, so it stays bounded).
    * ``fixed``: ``w_i(L) = λ_i · L``.

    ``r(t) = min(1, t / warmup_steps)`` over optimizer steps ``t`` (a persistent buffer that the
    trainer sets through ``FLRRecommender.on_train_step``, so a resumed run continues the ramp). It
    scales the whole ``w_i``, so the uncertainty optimum of ``s_i`` does not move while it ramps.
    """

    S_MIN, S_MAX = -4.0, 10.0  # λ in [0.5e-10, 0.5e4 ≈ 27]

    def __init__(self, enabled: tuple[str, ...] = AUX_LOSSES, weighting: str = "uncertainty",
                 fixed_weights: dict[str, float] | None = None, warmup_steps: int = 0,
                 params: dict[str, float] | None = None):
        super().__init__()
        unknown = set(enabled) - set(REGULARISERS)
        if unknown:
            raise ValueError(f"unknown auxiliary losses {sorted(unknown)}; choose from {list(REGULARISERS)}")
        self.enabled = tuple(n for n in REGULARISERS if n in enabled)
        self.weighting = weighting
        self.warmup_steps = warmup_steps
        self.params = dict(params or {})
        self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in self.enabled})
        self.fixed_weights = {n: float((fixed_weights or {}).get(n, 0.1)) for n in self.enabled}
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def aux_losses(self, steps: list) -> dict[str, torch.Tensor]:
        """Each enabled loss averaged over the refinement steps' :class:`ReasonerOutput`."""
        out = {}
        for name in self.enabled:
            fn, reads, _ = REGULARISERS[name]
            kw = {arg: self.params[p] for p, arg in _PARAMS.get(name, {}).items() if p in self.params}
            out[name] = torch.stack([fn(*(getattr(s, r) for r in reads), **kw) for s in steps]).mean()
        return out

    def ramp(self) -> float:
        if not self.warmup_steps:
            return 1.0
        return min(1.0, float(self.step) / self.warmup_steps)

    def weights(self) -> dict[str, float]:
        """Current effective λ_i (for logging), including the warm-up ramp."""
        r = self.ramp()
        if self.weighting == "fixed":
            return {n: r * w for n, w in self.fixed_weights.items()}
        return {n: r * float(0.5 * torch.exp(-p.detach().clamp(self.S_MIN, self.S_MAX)))
                for n, p in self.log_vars.items()}

    def forward(self, rec_loss: torch.Tensor, aux: dict[str, torch.Tensor]) -> torch.Tensor:
        r = self.ramp()
        total = rec_loss
        for name, value in aux.items():
            if self.weighting == "fixed":
                total = total + r * self.fixed_weights[name] * value
            else:
                s = self.log_vars[name].clamp(self.S_MIN, self.S_MAX)
                shifted = value - REGULARISERS[name][2]
                total = total + r * (0.5 * torch.exp(-s) * shifted + 0.5 * s)
        return total
