"""How a constrained beam scores titles: the decoding options and the per-token score.

With ``p`` the LLM's next-token distribution at a trie node ``n`` and ``C(n)`` the node's allowed
children (the tokens that keep the beam inside the catalogue), a title ``y = y_1..y_L`` (EOS
included) gets ``S(y) = sum_i s(y_i)`` over its tokens, then ``S(y) / L ** length_penalty`` when
it finishes (HF's length normalisation; ``length_penalty`` is :class:`~flrec.recommenders.llm.LLMRecConfig`'s,
1.0 = today's default, 0.0 = the plain sum). The token score ``s`` is one of:

* ``sum`` — ``s = log p(y_i)`` (today; the default).
* ``trie_renorm`` — ``s = log p(y_i) - log sum_{c in C(n)} p(c)``: the log-probs renormalised over
  the allowed continuations, so ``sum_i s = log P(y | y is a catalogue title)`` and a forced token
  (a node with one child) costs exactly 0 — the "ghost tokens" of D3 (arXiv 2406.14900) no longer
  tax long titles.
* ``info_gain`` — ``s = w(n, y_i) * log p(y_i)`` (IGD, arXiv 2506.13229): ``w`` is 1 for an edge that
  carries information about the title and ``zero_gain_weight`` for one that does not (an edge out of
  a node with a single child). With ``info_gain: gain`` the weight is the edge's information gain
  ``log N(n) - log N(child)`` in nats (``N`` = catalogue titles below a node; uniform title prior),
  floored at ``zero_gain_weight``.

**Text-free assistant** (D3): with an ID model's item distribution ``q`` over the catalogue, the
title mass of a node is ``M(n) = sum of q(i) over items i whose title lies below n``, and
``log p_CF(c) = log M(c) - log sum_{c' in C(n)} M(c')``. The token score becomes
``gamma * s + (1 - gamma) * log p_CF``; ``gamma = 1`` is plain decoding, ``gamma = 0`` ranks the
catalogue titles by the ID model alone (``sum_i log p_CF(y_i) = log M(leaf(y))``, the title's mass).

**Prior correction** (PMI): after the search, every returned title's score becomes
``S(y) - alpha * S_0(y)``, where ``S_0`` is the same score (same token score and length
normalisation, no assistant) under the prompt with an empty history — the model's prior for the
title, computed by teacher forcing and cached on disk (:mod:`flrec.decoding.prior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from flrec.config import ConfigBase, option
from flrec.decoding.trie import TitleTrie
from flrec.errors import ConfigError

NEG_INF = float("-inf")
SCORINGS = ("sum", "trie_renorm", "info_gain")


@dataclass
class DecodingConfig(ConfigBase):
    """Scoring of constrained decoding and how titles become a ranked list of items (defaults = today's)."""

    scoring: Literal["sum", "trie_renorm", "info_gain"] = option(
        "sum", help="per-token score: sum (log-probs, today), trie_renorm (log-probs renormalised over the trie's "
        "allowed tokens: log P(title | title in catalogue)), info_gain (IGD-style: tokens that carry no "
        "information about the title weighted zero_gain_weight)")
    info_gain: Literal["binary", "gain"] = option(
        "binary", help="info_gain weights: binary (1, or zero_gain_weight at a node with one child) or gain "
        "(the edge's information gain in nats, floored at zero_gain_weight)")
    zero_gain_weight: float = option(0.0, help="info_gain: weight of a token that carries no information (IGD: 0..1)")
    pmi_alpha: float = option(0.0, help="prior correction: score - alpha * score under an empty-history prompt (0 = off)")
    gamma: float = option(
        0.5, help="text-free assistant (only with an ID-model assistant, e.g. flr+sasrec): per token "
        "gamma * LLM score + (1 - gamma) * log p_CF; 1 = plain decoding, 0 = the ID model alone")
    cf_temperature: float = option(1.0, help="assistant item distribution softmax(scores / cf_temperature)")
    exclude_seen: bool = option(
        False, help="never recommend a history item: a title is removed when every item it names is in the "
        "history, and history items are dropped from item-level rankings (off = the paper's protocol)")
    item_tiebreak: Literal["popularity", "assistant"] = option(
        "popularity", help="how a title's score is shared among the m items it names: by train popularity "
        "(counts + 1) or by the assistant's item probabilities (falls back to popularity without one)")
    item_split: Literal["split", "assign"] = option(
        "split", help="item-level ranking: split (item score = title score + log share(item | title), so "
        "items of different titles interleave) or assign (every item keeps its title's score and rank "
        "order; items within a title ordered by share)")
    prior_cache_dir: str | None = option(
        None, help="where PMI priors are cached (default: $FLREC_CACHE/priors, i.e. ~/.cache/flrec/priors)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"config key 'decoding.gamma': {self.gamma} must be in [0, 1] (1 = plain decoding)")
        if self.zero_gain_weight < 0:
            raise ConfigError(f"config key 'decoding.zero_gain_weight': {self.zero_gain_weight} must be >= 0")
        if self.cf_temperature <= 0:
            raise ConfigError(f"config key 'decoding.cf_temperature': {self.cf_temperature} must be > 0")

    def signature(self) -> dict:
        """The options that change a title's score under a fixed prompt (the PMI prior's cache key)."""
        sig: dict = {"scoring": self.scoring}
        if self.scoring == "info_gain":
            sig.update(info_gain=self.info_gain, zero_gain_weight=self.zero_gain_weight)
        return sig


def edge_weights(trie: TitleTrie, cfg: DecodingConfig) -> torch.Tensor | None:
    """(E,) per-edge token weights for ``info_gain`` scoring; ``None`` for the other scorings."""
    if cfg.scoring != "info_gain":
        return None
    gain = trie.edge_information_gain()
    w = (gain > 1e-9).double() if cfg.info_gain == "binary" else gain
    return w.clamp(min=cfg.zero_gain_weight).float()


def token_scores(logp: torch.Tensor, real: torch.Tensor, edge: torch.Tensor, scoring: str,
                 weight: torch.Tensor | None) -> torch.Tensor:
    """Per-child token scores ``s`` (see the module docstring) from the children's log-probs.

    ``logp`` (M, F) holds ``log p`` of each node's children (padding already -inf), ``real`` marks
    the real children, ``edge`` their edge indices (for ``info_gain``'s ``weight``).
    """
    if scoring == "sum":
        return logp
    if scoring == "trie_renorm":
        lse = torch.logsumexp(logp, dim=1, keepdim=True)
        return torch.where(real, logp - lse, NEG_INF)  # where: a node without children gives -inf, not NaN
    if scoring == "info_gain":
        return torch.where(real, logp * weight[edge], NEG_INF)  # where: 0 * -inf would be NaN
    raise ConfigError(f"unknown decoding.scoring {scoring!r}; use one of {list(SCORINGS)}")


def cf_log_probs(child_mass: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log p_CF`` of each child from its subtree mass (M, F): mass over the real siblings' mass."""
    m = torch.where(real, child_mass, 0.0)
    out = (m / m.sum(1, keepdim=True)).log()
    # 0 mass -> -inf (never chosen while gamma < 1); an all-zero node would give NaN: -inf as well
    return torch.where(real & (m > 0), out, NEG_INF).float()
