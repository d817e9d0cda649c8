"""Is the thought used? Statistics of what the LM receives, and interventions on it.

A statistic computed upstream of the write path (on ``z``, before a gate or a residual constant)
can look healthy while nothing user-specific reaches the LM. The test of whether the thought
matters is an intervention on the embedding the LM actually reads, ``e``:

* ``thought_swap_delta`` = mean_r [ℓ_r(e_π(r)) − ℓ_r(e_r)], ℓ_r the row's teacher-forced rec loss
  (mean token NLL of its target title), π a fixed random derangement of the evaluated rows (no row
  keeps its own thought). > 0 means the LM uses *which user's* thought it gets.
* ``thought_const_delta``: the same with every row given the mean thought ē (over the evaluated
  rows): the cost of removing what varies per user while keeping the average.
* ``thought_init_delta``: the same with the learned initial thought E0 (the soft-prompt constant).
* ``thought_user_share`` = RMS_r(e_r − ē) / RMS_r(e_r): the user-specific part of what is written.
* ``thought_cross_row_cosine`` = mean_{i≠j} cos(e_i, e_j); ``z_cross_row_cosine`` the same on ``z``.

Each delta comes with its paired standard error and a two-sided paired t-test p-value. Everything
here is computed by running the model; nothing is estimated from parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats

from flrec.models.flr import ReasonerOutput
from flrec.models.losses import thought_similarity_loss


def thought_cross_row_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the rows of ``z`` (R, D), pairs i ≠ j; needs R ≥ 2.

    The value of the ``thought_sim`` regulariser, detached and accumulated in fp64.
    """
    return thought_similarity_loss(z.detach().double()).float()


def gate_usage_entropy_ratio(gates: torch.Tensor) -> torch.Tensor:
    """Entropy of the row-mean gate divided by ln K (``gates`` (R, K), K ≥ 2)."""
    mean = gates.detach().double().mean(0)
    ent = -(mean * mean.clamp(min=1e-300).log()).sum()
    return (ent / math.log(gates.shape[1])).float()


def thought_user_share(e: torch.Tensor) -> float:
    """``RMS(e − mean_rows(e)) / RMS(e)`` for written thoughts ``e`` (R, D); 0 for a constant thought.

    >>> thought_user_share(torch.ones(3, 4))
    0.0
    >>> round(thought_user_share(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), 4)
    1.0
    """
    e = e.detach().double()
    rms = e.pow(2).mean().sqrt()
    if float(rms) == 0.0:
        return 0.0
    return float((e - e.mean(0, keepdim=True)).pow(2).mean().sqrt() / rms)


@torch.no_grad()
def health_stats(out: ReasonerOutput) -> dict[str, torch.Tensor]:
    """Batch health of one refinement step, logged every training step.

    ``thought_cos``: mean pairwise cosine across the batch of the *written* thought ``e`` (what the
    LM reads; 1 = a constant soft prompt); ``z_cos``: the same on ``z``, before the write path;
    ``thought_user_share``: :func:`thought_user_share` of ``e`` in the batch; ``gate_usage``: entropy
    of the batch-mean gate / ln K (0 = every row picks the same factor); ``gate_max``: mean largest
    gate; ``hist_attn``: mean attention mass on history-title keys.
    """
    stats_: dict[str, torch.Tensor] = {"gate_max": out.gates.float().max(-1).values.mean()}
    written = out.thought if out.thought is not None else out.z
    if out.z.shape[0] > 1:
        stats_["thought_cos"] = thought_cross_row_cosine(written)
        stats_["z_cos"] = thought_cross_row_cosine(out.z)
        stats_["thought_user_share"] = torch.tensor(thought_user_share(written))
    if out.gates.shape[1] > 1:
        stats_["gate_usage"] = gate_usage_entropy_ratio(out.gates)
    if out.key_items is not None:
        stats_["hist_attn"] = (out.attn * (out.key_items >= 0)[:, None, :]).sum(-1).mean()
    return stats_


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A random permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one n-cycle).

    >>> p = derangement(5, seed=1)
    >>> sorted(p.tolist()) == list(range(5)) and all(int(p[i]) != i for i in range(5))
    True
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 rows, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(0, i, (1,), generator=g))
        perm[i], perm[j] = perm[j], perm[i]
    return torch.tensor(perm)


def paired_summary(delta: torch.Tensor) -> dict[str, float]:
    """Mean, standard error and two-sided one-sample t-test p-value of per-row differences.

    >>> paired_summary(torch.zeros(4))
    {'mean': 0.0, 'se': 0.0, 'p': 1.0}
    """
    d = delta.detach().double()
    n = d.numel()
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "se": float("nan"), "p": float("nan")}
    se = float(d.std(unbiased=True) / math.sqrt(n))
    if se == 0.0:
        return {"mean": mean, "se": 0.0, "p": 1.0 if mean == 0.0 else 0.0}
    p = float(2 * stats.t.sf(abs(mean / se), df=n - 1))
    return {"mean": mean, "se": se, "p": p}


INTERVENTIONS = ("swap", "const", "init")


@torch.no_grad()
def thought_interventions(model, batches: Sequence[dict], seed: int = 0,
                          own: tuple[torch.Tensor, torch.Tensor] | None = None, hidden_history: bool = False) -> dict:
    """Run :mod:`this module's <flrec.models.health>` interventions on collated ``batches``.

    ``model`` is an :class:`~flrec.models.recommender.FLRRecommender` with a thought; each batch has
    ``prompt_ids, prompt_mask, target_ids, target_mask`` (and ``prompt_items``). Own and intervened
    losses are computed by the same code path (:meth:`row_losses` with a given thought), so a
    thought that does not vary gives a swap delta of exactly 0. ``own`` = (thoughts (R, D), z (R, D)) of
    the same rows, already computed by the caller, skips the first refinement pass. Returns a
    JSON-ready dict; the model is left in the mode it was in.
    ``hidden_history`` adds ``thought_hidden_own_loss`` and ``thought_hidden_swap_delta`` (+ se, p): the
    same swap with the history hidden from the answer, so the thought is its only route to the user.
    It tells a reasoner or LM that cannot carry the user (≈ 0 here too) from an LM that can but prefers
    to read the history itself (> 0 here, ≈ 0 with the whole prompt).
    """
    was_training = model.training
    model.eval()
    keys = ("prompt_ids", "prompt_mask", "target_ids", "target_mask", "prompt_items")
    try:
        if own is None:
            es, zs = [], []
            for b in batches:
                prompt = model.encode_prompt(b["prompt_ids"], b["prompt_mask"], b.get("prompt_items"))
                _, e, z = model.row_losses(**{k: b.get(k) for k in keys}, return_z=True, prefix=prompt)
                es.append(e.float())
                zs.append(z.float())
            own = (torch.cat(es), torch.cat(zs))
        e_all, z_all = own[0].float(), own[1].float()
        if e_all.shape[0] != sum(b["prompt_ids"].shape[0] for b in batches):
            raise ValueError(f"own thoughts for {e_all.shape[0]} rows, batches hold another number of rows")
        n = e_all.shape[0]
        perm = derangement(n, seed) if n >= 2 else None
        variants = {"own": e_all, "const": e_all.mean(0, keepdim=True).expand(n, -1),
                    "init": model.thought_init.detach().float()[None].expand(n, -1)}
        if perm is not None:
            variants["swap"] = e_all[perm]
        hidden = ("own", "swap") if hidden_history and perm is not None else ()
        losses: dict[str, list[torch.Tensor]] = {k: [] for k in [*variants, *(f"hidden_{v}" for v in hidden)]}
        start = 0
        for b in batches:
            rows = b["prompt_ids"].shape[0]
            # One prompt encoding serves every variant: only the thought and the target are re-run.
            prompt = model.encode_prompt(b["prompt_ids"], b["prompt_mask"], b.get("prompt_items"))
            for name, e in variants.items():
                loss, _ = model.row_losses(**{k: b.get(k) for k in keys}, thought=e[start : start + rows],
                                           prefix=prompt)
                losses[name].append(loss.double())
            for name in hidden:
                loss, _ = model.row_losses(**{k: b.get(k) for k in keys}, thought=variants[name][start : start + rows],
                                           prefix=prompt, hide_history=True)
                losses[f"hidden_{name}"].append(loss.double())
            start += rows
    finally:
        model.train(was_training)
    loss = {k: torch.cat(v) for k, v in losses.items()}
    out: dict = {"rows": n, "thought_own_loss": float(loss["own"].mean()),
                 "thought_user_share": thought_user_share(e_all),
                 "thought_cross_row_cosine": float(thought_cross_row_cosine(e_all)) if n > 1 else None,
                 "z_cross_row_cosine": float(thought_cross_row_cosine(z_all)) if n > 1 else None}
    for name in INTERVENTIONS:
        if name not in loss:
            out.update({f"thought_{name}_delta": None, f"thought_{name}_delta_se": None,
                        f"thought_{name}_delta_p": None})
            continue
        s = paired_summary(loss[name] - loss["own"])
        out.update({f"thought_{name}_delta": s["mean"], f"thought_{name}_delta_se": s["se"],
                    f"thought_{name}_delta_p": s["p"]})
    if hidden:
        s = paired_summary(loss["hidden_swap"] - loss["hidden_own"])
        out.update({"thought_hidden_own_loss": float(loss["hidden_own"].mean()), "thought_hidden_swap_delta": s["mean"],
                    "thought_hidden_swap_delta_se": s["se"], "thought_hidden_swap_delta_p": s["p"]})
    return out


def format_interventions(rep: dict) -> str:
    """Lines for a console report of :func:`thought_interventions`."""

    def delta(name: str) -> str:
        m = rep.get(f"thought_{name}_delta")
        if m is None:
            return "n/a"
        return f"{m:+.4f} ± {rep[f'thought_{name}_delta_se']:.4f} nats (p = {rep[f'thought_{name}_delta_p']:.2g})"

    return "\n".join([
        f"thought interventions ({rep['rows']} rows; rec loss with its own thought {rep['thought_own_loss']:.4f}):",
        f"  another user's thought    {delta('swap')}   (> 0: the LM uses whose thought it gets)",
        f"  the mean thought          {delta('const')}",
        f"  the initial thought E0    {delta('init')}",
        f"  user share of the thought {rep['thought_user_share']:.3f}   (RMS of e - mean(e) over RMS of e)",
        *([f"  history hidden: another user's thought {delta('hidden_swap')}   (rec loss with its own "
           f"{rep['thought_hidden_own_loss']:.4f})"] if rep.get("thought_hidden_swap_delta") is not None else []),
    ])
