"""The configuration of a model's latent-reasoning part (:class:`FLRConfig`) and each reasoner's
defaults (:data:`REASONER_DEFAULTS`); the backbone is chosen separately.

Kept apart from :mod:`flrec.models.recommender` (which re-exports both) so that reading or
validating a config needs no model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flrec.config import ConfigBase, option
from flrec.errors import ConfigError
from flrec.models.losses import REGULARISERS

REASONER_DEFAULTS = {
    # reasoner: (num_steps, aux_losses, embed_scale, rope_base)
    # flr: eqs. 5-6 (not L_sparse: it pushes every gate one-hot for every user), the two cross-row terms
    # and target_nce (chosen on validation, docs/results/synthetic.md; the paper's three: aux_losses=orth,div,sparse).
    "flr": (2, ("orth", "div", "thought_sim", "routing", "target_nce"), True, 10000.0),
    # LatentR3: its keys exclude the thought and its query is the pre-thought state, so a second
    # step reproduces the first exactly; its code has no embedding rescaling and RoPE base 1000.
    "latentr3": (1, (), False, 1000.0),
    # softprompt: the constant is trained exactly as FLR trains E0 (initialised from the thought token's
    # embedding, no rescaling, the FLR learning rate), so a loss gap to FLR measures the user part alone.
    "softprompt": (1, (), False, 10000.0),
    "none": (0, (), False, 10000.0),
}


@dataclass
class FLRConfig(ConfigBase):
    """The latent-reasoning part of a model (the backbone is chosen separately).

    Keys left at ``null`` take the reasoner's own default (``REASONER_DEFAULTS``); read the resolved
    values through :attr:`steps`, :attr:`aux`, :attr:`scale_thought` and :attr:`rope`.
    """

    reasoner: Literal["flr", "latentr3", "softprompt", "none"] = option(
        "flr", "flr: K prototypes + gate (the paper); latentr3: one head queried by the pre-thought state, "
        "no gate (the predecessor); softprompt: one learned constant thought (a control: what FLR must beat); "
        "none: no thought token at all (BIGRec-style SFT)")
    num_factors: int = option(4, "K, number of query prototypes / preference factors (paper: 3 for CDs, 4 elsewhere)")
    num_steps: int | None = option(None, "N, refinement steps writing z into the thought embedding "
                                   "(null = the reasoner's: flr 2 as in the paper, latentr3/softprompt 1)")
    gate_hidden: int = option(256, "hidden width of the gating MLP over flatten(F)")
    keys: Literal["tokens", "history", "items"] = option(
        "items", "what the factors attend over: tokens = every prompt token (the paper; factors can lock onto "
        "fixed instruction tokens), history = history-title tokens only, items = one mean-pooled key per "
        "history title (plus the thought in every mode)")
    key_positions: Literal["absolute", "relative", "none"] = option(
        "relative", "RoPE positions of the keys: absolute = real-token/item index (the paper), relative = distance "
        "to the thought (recency), none = no rotation")
    attn_temperature: float = option(1.0, "tau: factor attention scores are divided by tau (> 1 flattens attention)")
    query: Literal["thought", "prototypes"] = option(
        "thought", "the factors' queries: prototypes = K learned static prototypes (the paper; the same for every "
        "user); thought = prototype + a learned projection of the thought's last-layer state, which has read the "
        "history (starts as the paper: the projection is initialised to zero)")
    thought_residual: bool | None = option(
        None, "write E0 + g * scale(z) into the thought (E0 the learned initial thought, g a per-dimension gate "
        "initialised to 0) instead of scale(z): training starts from the soft-prompt control and lets user "
        "information in only as far as it lowers the loss (false: scale(z), the paper; null = the reasoner's: "
        "on for flr, off for latentr3/softprompt as in their designs)")
    values: Literal["hidden", "embeddings"] = option(
        "hidden", "what a factor's value (and so the written thought) is made of: hidden = a projection of the "
        "keys' last-layer states (the paper); embeddings = the same positions' input embeddings through W_v "
        "(initialised to the identity), so the thought is written in the space the LM reads its inputs in")
    history_dropout: float = option(
        0.0, "training only: the probability that a row's scored pass (the answer) cannot attend to the history "
        "(its titles, and the commas and tail after them, which have read the titles), so the thought is the only "
        "route from the history to the answer and the LM must learn to read it (the refinement steps still read "
        "everything; inference sees the whole prompt). 0 = off (the paper)")
    deep_write: bool = option(
        False, "also write the thought into the keys and values of its position in every layer (a learned "
        "projection of the thought embedding per layer, zero at init, so training starts from the input-only "
        "write): a one-token input embedding is a channel a small LM barely reads (issue #24: even an oracle thought "
        "holding the answer's words was ignored), while every layer's keys/values are read directly, as in prefix "
        "tuning")
    thought_teacher_steps: int = option(
        0, "training only: for the first N optimizer steps the written thought is blended with a teacher, the mean "
        "input embedding of the next title's tokens (RMS-scaled to the embeddings), with weight 1 - step/N, so the LM "
        "learns to read the thought before the reasoner can fill it (issue #24: the LM reads an informative thought "
        "after 28 steps, but never learns to while the reasoner's is not); pair it with the thought_bag regulariser, "
        "which pulls the reasoner's thought toward the same target. 0 = off (the paper)")
    thought_key: bool = option(False, "the thought's own state is a key/value (true: the paper); false leaves it "
                               "out, which with query=thought removes a free sink (its query matches its own key)")
    target_nce_temperature: float = option(0.1, "target_nce regulariser: temperature of its in-batch InfoNCE")
    readout_temperature: float = option(0.1, "thought_readout regulariser: temperature of the cosine readout of "
                                        "the written thought against the input embeddings")
    center_keys: bool = option(True, "subtract a running mean of the key states (EMA over training batches) before "
                               "projecting: removes the user-independent component shared by all last-layer states")
    rope_base: float | None = option(None, "RoPE base for the keys (null = the reasoner's: flr 10000, latentr3 1000)")
    embed_scale: bool | None = option(None, "RMS-normalise z and rescale it to the input-embedding RMS "
                                      "(null = on for flr, off for latentr3 as in its code and for the softprompt control, whose "
                                      "constant is trained as FLR trains E0)")
    aux_losses: list[str] | None = option(
        None, "enabled regularisers (null = the reasoner's: flr orth,div,thought_sim,routing,target_nce; the paper's "
        "eqs. 5-7 are orth,div,sparse): any of orth, div, sparse, thought_sim, routing, attn_entropy, target_nce, "
        "thought_readout, thought_bag "
        "(see flrec.models.losses.REGULARISERS)")
    aux_to_backbone: bool = option(
        False, "let the regularisers' gradients reach the backbone (the paper); false computes them on detached "
        "hidden states, so the reasoner satisfies them instead of the backbone reshaping its states")
    aux_warmup_steps: int = option(0, "ramp the regularisers' weights linearly from 0 over this many optimizer "
                                   "steps (0 = full weight from the start)")
    attn_entropy_floor: float = option(0.5, "attn_entropy regulariser: penalise factor attention entropy below "
                                       "this fraction of ln(#keys)")
    loss_weighting: Literal["uncertainty", "fixed"] = option("uncertainty", "learned uncertainty weights or fixed lambdas")
    fixed_weights: dict[str, float] = option(
        factory=lambda: {"orth": 0.1, "div": 0.1, "sparse": 0.1}, help="lambdas when loss_weighting=fixed "
        "(a regulariser missing here gets 0.1)")

    def __post_init__(self) -> None:
        names = list(REGULARISERS)
        bad = set(self.aux_losses or ()) - set(names)
        if bad:
            raise ConfigError(f"aux_losses: unknown {sorted(bad)}; use a subset of {names} (or [] for none)")
        if self.reasoner == "flr" and self.num_factors < 1:
            raise ConfigError("num_factors must be >= 1 (the paper uses 3 or 4)")
        if self.gate_hidden < 1:
            raise ConfigError(f"gate_hidden must be >= 1, got {self.gate_hidden}")
        if not self.attn_temperature > 0 or self.attn_temperature == float("inf"):
            raise ConfigError(f"attn_temperature must be a finite number > 0, got {self.attn_temperature}")
        for key in ("target_nce_temperature", "readout_temperature"):
            if not 0 < getattr(self, key) < float("inf"):
                raise ConfigError(f"{key} must be a finite number > 0, got {getattr(self, key)}")
        if not 0 <= self.attn_entropy_floor <= 1:
            raise ConfigError(f"attn_entropy_floor must be in [0, 1], got {self.attn_entropy_floor}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ConfigError(f"history_dropout must be in [0, 1), got {self.history_dropout}")
        if self.history_dropout and self.reasoner == "none":
            raise ConfigError("history_dropout needs a thought to carry the history; reasoner=none has none")
        if self.thought_teacher_steps < 0:
            raise ConfigError(f"thought_teacher_steps must be >= 0, got {self.thought_teacher_steps}")
        if self.thought_teacher_steps and self.reasoner == "none":
            raise ConfigError("thought_teacher_steps needs a thought to teach; reasoner=none has none")
        if self.aux_warmup_steps < 0:
            raise ConfigError(f"aux_warmup_steps must be >= 0, got {self.aux_warmup_steps}")
        negative = {k: v for k, v in self.fixed_weights.items() if not v >= 0}
        if negative:
            raise ConfigError(f"fixed_weights: {negative} must be >= 0 (a negative weight rewards the regulariser)")
        if self.num_steps is not None:
            if self.reasoner == "none" and self.num_steps:
                raise ConfigError("reasoner=none has no thought to refine; leave num_steps unset (null)")
            if self.reasoner != "none" and self.num_steps < 1:
                raise ConfigError("num_steps must be >= 1 with a thought token; use reasoner=none for no thought")
            if self.reasoner in ("latentr3", "softprompt") and self.num_steps != 1:
                raise ConfigError(f"reasoner={self.reasoner} gives the same thought at every step, so "
                                  "num_steps must be 1 (or null)")
        if self.aux_losses and self.reasoner in ("latentr3", "softprompt", "none"):
            raise ConfigError(f"reasoner={self.reasoner} has no factors to regularise; set aux_losses: []")

    @property
    def uses_thought(self) -> bool:
        return self.reasoner != "none"

    @property
    def steps(self) -> int:
        """Resolved N (refinement steps)."""
        return REASONER_DEFAULTS[self.reasoner][0] if self.num_steps is None else self.num_steps

    @property
    def aux(self) -> tuple[str, ...]:
        """Resolved enabled regularisers."""
        return REASONER_DEFAULTS[self.reasoner][1] if self.aux_losses is None else tuple(self.aux_losses)

    @property
    def residual(self) -> bool:
        """Resolved thought_residual (null = on for flr only)."""
        return self.reasoner == "flr" if self.thought_residual is None else self.thought_residual

    @property
    def scale_thought(self) -> bool:
        return REASONER_DEFAULTS[self.reasoner][2] if self.embed_scale is None else self.embed_scale

    @property
    def rope(self) -> float:
        return REASONER_DEFAULTS[self.reasoner][3] if self.rope_base is None else self.rope_base

    @property
    def needs_layout(self) -> bool:
        """Whether the reasoner needs ``prompt_items`` (the per-token history-item map)."""
        return self.reasoner == "flr" and self.keys != "tokens"


__all__ = ["REASONER_DEFAULTS", "FLRConfig"]
