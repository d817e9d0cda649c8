"""Rewards and advantage estimators of FLR-GRPO (paper §4.2, eqs. 10–11), registered by name.

A reward is a plain function ``fn(inputs: RewardInputs, **params) -> (R,)`` over the R = B*G
teacher-forced samples of one rollout (G consecutive rows per prompt); register your own with
:func:`register_reward` and select it with ``grpo.reward=NAME`` (``grpo.reward_params`` are passed
as keywords). An advantage estimator maps the (B, G) rewards to (B, G) advantages.

Why no decoding: the completion of every sample is the ground-truth title (teacher forcing, as in
LatentR3 and eq. 12); exploration comes from the noise on the thought. A reward therefore scores the
*target* under a perturbed thought, and the GRPO loss built on it is an advantage-weighted likelihood
of the target, not an unbiased policy gradient. "Exact match" — whether greedy
trie-constrained decoding under that thought reproduces the target — needs no decoding either:
greedy decoding follows the target exactly when, at every target position, the argmax over the
trie's allowed next tokens *is* the target token (:func:`greedy_trie_match`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flrec.errors import ConfigError


@dataclass
class RewardInputs:
    """What a reward function sees; R = B*G rows, the G samples of prompt b in rows b*G .. b*G+G-1."""

    token_logprobs: torch.Tensor  # (R, T) log-prob of each target token under the sample's thought; 0 at padding
    target_mask: torch.Tensor  # (R, T) 1 on real target tokens
    greedy_match: torch.Tensor  # (R, T) bool: trie-constrained argmax == target token (True at padding)
    group_size: int  # G

    def exact_match(self) -> torch.Tensor:
        """(R,) bool: greedy trie-constrained decoding reproduces the whole target."""
        return self.greedy_match.all(dim=-1)

    def mean_logprob(self) -> torch.Tensor:
        """(R,) mean log-prob of the target's tokens (the paper's token confidence)."""
        m = self.target_mask.to(self.token_logprobs.dtype)
        return (self.token_logprobs * m).sum(-1) / m.sum(-1).clamp(min=1)


RewardFn = Callable[..., torch.Tensor]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn(inputs: RewardInputs, **params) -> (R,) tensor`` under ``name``."""

    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ConfigError(f"grpo.reward: unknown reward {name!r}; choose from {sorted(REWARDS)} "
                          "(or register one with flrec.training.rewards.register_reward)")
    return REWARDS[name]


def _example() -> RewardInputs:
    """Two prompts x two samples, for the doctests (row 1 has one padded token)."""
    return RewardInputs(
        token_logprobs=torch.tensor([[-1.0, -3.0], [-0.5, 0.0], [-2.0, -2.0], [-4.0, -2.0]]),
        target_mask=torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]]),
        greedy_match=torch.tensor([[True, False], [True, True], [True, True], [False, True]]),
        group_size=2)


@register_reward("token_confidence")
def token_confidence(inputs: RewardInputs) -> torch.Tensor:
    """Mean log-prob of the target title's tokens under the (perturbed) thought: eq. 10's first term.

    >>> token_confidence(_example()).tolist()
    [-2.0, -0.5, -2.0, -3.0]
    """
    return inputs.mean_logprob()


@register_reward("exact_match")
def exact_match(inputs: RewardInputs) -> torch.Tensor:
    """1 when greedy trie-constrained decoding under the thought reproduces the target, else 0.

    >>> exact_match(_example()).tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    return inputs.exact_match().to(inputs.token_logprobs.dtype)


@register_reward("hybrid")
def hybrid(inputs: RewardInputs, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
    """Eq. 10: ``alpha * token confidence + beta * exact match`` (the paper's alpha = 0.1, beta = 1.0).

    >>> [round(v, 4) for v in hybrid(_example()).tolist()]
    [-0.2, 0.95, 0.8, -0.3]
    """
    return alpha * token_confidence(inputs) + beta * exact_match(inputs)


@register_reward("neg_perplexity")
def neg_perplexity(inputs: RewardInputs) -> torch.Tensor:
    """LatentR3's reward (LR-GRPO): ``-exp(-mean log-prob)``, the negative perplexity of the target.

    >>> [round(v, 4) for v in neg_perplexity(_example()).tolist()]
    [-7.3891, -1.6487, -7.3891, -20.0855]
    """
    return -torch.exp(-inputs.mean_logprob())


@register_reward("rank")
def rank_reward(inputs: RewardInputs, gated: bool = True) -> torch.Tensor:
    """A hit reward with a rank penalty for misses, in the style of MiniOneRec's ranking reward.

    A sample that reproduces the target (exact match) gets 1. Misses are ranked within their group
    from the least to the most confident about the target (ascending token confidence) and get the
    NDCG-shaped penalty ``-(1/log2(rank+2)) / sum_j 1/log2(j+2)`` (the penalties of a full group sum
    to -1): the miss furthest from the target is pushed away hardest. With ``gated`` (default) the
    penalty applies only in groups where some sample hits; MiniOneRec reported that without this
    gate RL collapsed the top-1 onto a few items.

    >>> [round(v, 4) for v in rank_reward(_example()).tolist()]
    [-0.6131, 1.0, 1.0, -0.6131]
    >>> x = _example(); x.greedy_match[1, 0] = False  # no hit left in the first group
    >>> [round(v, 4) for v in rank_reward(x).tolist()]
    [0.0, 0.0, 1.0, -0.6131]
    """
    g = inputs.group_size
    hit = inputs.exact_match().view(-1, g)
    conf = inputs.mean_logprob().view(-1, g)
    # rank of each miss among its group's misses, least confident first (hits sort last)
    key = torch.where(hit, torch.full_like(conf, math.inf), conf)
    order = key.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(g, device=order.device).expand_as(order))
    disc = 1.0 / torch.log2(torch.arange(g, device=conf.device, dtype=conf.dtype) + 2)
    penalty = -disc[rank] / disc.sum()
    reward = torch.where(hit, torch.ones_like(conf), penalty)
    if gated:
        reward = torch.where(hit.any(dim=1, keepdim=True), reward, torch.zeros_like(reward))
    return reward.reshape(-1)


# ------------------------------------------------------------------------------------ advantages
AdvantageFn = Callable[[torch.Tensor, float], torch.Tensor]
ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register ``fn(rewards (B, G), eps) -> advantages (B, G)`` under ``name``."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return wrap


def get_advantage(name: str) -> AdvantageFn:
    if name not in ADVANTAGES:
        raise ConfigError(f"grpo.advantage: unknown estimator {name!r}; choose from {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]


@register_advantage("group_baseline")
def group_baseline_advantage(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11, per group: ``(r_i - r_1) / (||r_{2:G} - r_1||_2 + eps)``, r_1 the noise-free sample.

    The noise-free sample's own advantage is 0; a group whose noisy samples all score like the
    noise-free one has all-zero advantages (no learning signal; the trainer logs their share).

    >>> r = torch.tensor([[1.0, 4.0, 1.0, -3.0], [2.0, 2.0, 2.0, 2.0]])
    >>> [[round(v, 4) for v in row] for row in group_baseline_advantage(r).tolist()]
    [[0.0, 0.6, 0.0, -0.8], [0.0, 0.0, 0.0, 0.0]]
    """
    dev = rewards - rewards[:, :1]
    return dev / (dev[:, 1:].norm(dim=1, keepdim=True) + eps)


@register_advantage("global_baseline")
def global_baseline_advantage(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LatentR3 (LR-GRPO): one baseline for the whole batch — the mean of all groups' noise-free
    rewards — and one L2 norm over the whole deviation vector (noise-free rows included).

    >>> r = torch.tensor([[1.0, 4.0], [3.0, 2.0]])  # baseline (1 + 3) / 2 = 2
    >>> [[round(v, 4) for v in row] for row in global_baseline_advantage(r).tolist()]
    [[-0.4082, 0.8165], [0.4082, 0.0]]
    """
    dev = rewards - rewards[:, 0].mean()
    return dev / (dev.norm() + eps)


def zero_advantage_share(advantages: torch.Tensor) -> torch.Tensor:
    """Share of groups (rows of (B, G) advantages) whose advantages are all zero: no learning signal.

    >>> float(zero_advantage_share(torch.tensor([[0.0, 0.0], [0.0, 0.5]])))
    0.5
    """
    return (advantages.abs().amax(dim=1) == 0).float().mean()


def greedy_trie_match(trie, target_ids: torch.Tensor, target_mask: torch.Tensor,
                      logits: torch.Tensor) -> torch.Tensor:
    """(R, T) bool: at each real target position, is the argmax over the trie's allowed next tokens
    the target token? (True at padding.) All True in a row = greedy trie-constrained decoding
    reproduces the target. ``logits`` (M, V) are the teacher-forced logits at the M real target
    positions, row-major over ``target_mask`` (as :class:`~flrec.models.recommender.CompletionScores`).
    A target that leaves the trie (not a catalogue title) never matches.
    """
    trie = trie.to(target_ids.device) if trie.child_ptr.device != target_ids.device else trie
    r, t = target_ids.shape
    node = torch.zeros(r, dtype=torch.long, device=target_ids.device)  # the root
    nodes = []
    for j in range(t):  # the trie node each target token is chosen at (T is a title's length)
        nodes.append(node)
        node = trie.advance(node, target_ids[:, j])
    sel = target_mask.bool()
    at = torch.stack(nodes, dim=1)[sel]  # (M,)
    tok, real = trie.children(at)  # (M, F) allowed next tokens
    scores = logits.gather(1, tok).masked_fill(~real, -math.inf)
    best = tok.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
    ok = (best == target_ids[sel]) & (at >= 0)
    return torch.ones_like(sel).masked_scatter(sel, ok)
