"""Factor health: does FLR's thought carry the user, and does it look where the next item comes from?

A regulariser at zero can mean a degenerate solution: every user gets the same thought (one factor
reading a fixed instruction token) and the "reasoning" is a learned soft prompt. These statistics
measure the mechanism directly. Notation: R rows, K factors, Lk keys, H history-item slots;
``g`` (R, K) gates of the final refinement step, ``A`` (R, K, Lk) its attention, ``z`` (R, D) its
thought vector. Each key belongs to a history item (slot 0 = oldest title kept in the prompt) or to
none (instruction text, separators, the thought).

* ``thought_cross_row_cosine`` = mean over pairs i ≠ j of cos(z_i, z_j) (1 for a constant thought).
* ``gate_usage_entropy_ratio`` = H(mean_r g_r) / ln K (0 when every row picks the same factor, 1 when
  the factors are used evenly across rows). ``argmax_histogram`` counts each row's largest gate.
* ``active_factors`` = mean_r #{k : g_rk ≥ 0.1}.
* ``history_attention_share``[k] = mean_r Σ_{l : key l is in a history item} A_rkl.
* ``target_intent_share`` (synthetic data with ``intents.json``): over rows whose target was drawn
  from a planted intent j and whose prompt history holds at least one item of intent j (an item
  "of intent j" matches both facets intent j prefers), the mean of
  ``S_r = Σ_k g_rk · M_rk(j) / M_rk`` where ``M_rk`` is factor k's attention mass on history items
  and ``M_rk(j)`` the part on items of intent j (a factor with no history mass contributes 0).
  ``target_intent_share_uniform`` is the same with uniform attention over the history items, i.e.
  mean_r n_r(j) / n_r: the chance level. The difference asks whether the thought looks at the part
  of the history that predicts what comes next. ``target_intent_share_references`` are the shares of
  fixed attention rules on the same rows (:func:`reference_intent_shares`), and
  ``target_intent_share_gain_oracle`` the gain of the one that knows the user's dominant intent: the
  scale against which the model's gain is read.
* ``argmax_intent_mi``: mutual information (nats) between each row's argmax factor and its dominant
  planted intent (the largest weight of the user's intent mix at the target step), with a
  permutation p-value (the intents shuffled over rows).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flrec.data.prompts import PromptBuilder, collate_left_padded
from flrec.errors import FlrecError
from flrec.models.flr import positions_from_mask
from flrec.models.folder import resolve_model_dir
from flrec.models.health import (  # noqa: F401 (gate_usage_entropy_ratio, thought_cross_row_cosine re-exported)
    format_interventions,
    gate_usage_entropy_ratio,
    thought_cross_row_cosine,
    thought_interventions,
)
from flrec.models.recommender import FLRRecommender

ACTIVE_GATE = 0.1


# ------------------------------------------------------------------------------ the statistics
def active_factors(gates: torch.Tensor, threshold: float = ACTIVE_GATE) -> float:
    """Mean number of factors per row whose gate is at least ``threshold``."""
    return float((gates.detach() >= threshold).sum(-1).float().mean())


def argmax_histogram(gates: torch.Tensor) -> dict[int, int]:
    """``{factor: rows whose largest gate is that factor}`` (every factor listed)."""
    counts = Counter(gates.detach().argmax(-1).tolist())
    return {k: counts.get(k, 0) for k in range(gates.shape[1])}


def item_attention(attn: torch.Tensor, key_items: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Attention mass per history-item slot: (R, K, Lk) × (R, Lk) → (R, K, n_slots)."""
    onehot = (key_items[..., None] == torch.arange(n_slots, device=attn.device)).to(attn.dtype)  # (R, Lk, H)
    return attn @ onehot


def history_attention_share(item_attn: torch.Tensor) -> list[float]:
    """Per factor, the row-mean attention mass on history items (``item_attn`` (R, K, H))."""
    return item_attn.sum(-1).mean(0).tolist()


def target_intent_share(item_attn: torch.Tensor, gates: torch.Tensor, in_intent: torch.Tensor,
                        in_history: torch.Tensor) -> tuple[float, float, int]:
    """``(share, uniform share, rows used)`` as in the module doc.

    ``item_attn`` (R, K, H), ``gates`` (R, K); ``in_intent`` (R, H) marks history slots whose item is of
    the row's target intent, ``in_history`` (R, H) the slots holding an item. Rows without any
    target-intent item (or whose target came from no intent: give them an all-False ``in_intent``)
    are left out.
    """
    in_intent = in_intent & in_history
    use = in_intent.any(-1)
    if not bool(use.any()):
        return float("nan"), float("nan"), 0
    mass = item_attn.sum(-1)  # (R, K)
    hit = (item_attn * in_intent[:, None, :]).sum(-1)
    per_factor = torch.where(mass > 0, hit / mass.clamp(min=1e-30), torch.zeros_like(mass))
    share = (gates * per_factor).sum(-1)
    uniform = in_intent.sum(-1) / in_history.sum(-1).clamp(min=1)
    return float(share[use].mean()), float(uniform[use].double().mean()), int(use.sum())


def reference_intent_shares(slot_items: Sequence[Sequence[int]], truth: Sequence[tuple[int | None, int]],
                            member: np.ndarray) -> dict[str, float | None]:
    """``target_intent_share`` of fixed attention rules on the same rows as the model's (a yardstick).

    ``slot_items`` per row the history items in the prompt (oldest first), ``truth`` per row
    ``(target intent or None, dominant intent)`` (:meth:`PlantedIntents.row_truth`), ``member[j, i]``
    item i is of intent j. Rows are those :func:`target_intent_share` uses. Each rule spreads its
    attention uniformly over a set of history items:

    * ``uniform``: all of them (the chance level, = ``target_intent_share_uniform``);
    * ``last_item``: the newest one only;
    * ``history_majority``: those of the intent with most items in the history (observable; ties go
      to the lower intent id; all items when no history item is of any intent);
    * ``dominant_oracle``: those of the user's dominant planted intent at the target step (ground
      truth no model sees; all items when none is of it). The target's intent is drawn from the
      user's mix, so no attention rule can know it: this oracle's gain over ``uniform`` is roughly
      the most a model can gain.

    >>> member = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)  # intent 0: items 0, 1; intent 1: 2, 3
    >>> refs = reference_intent_shares([[0, 2, 3], [0, 1, 2]], [(1, 1), (0, 1)], member)
    >>> {k: round(v, 3) for k, v in refs.items()}
    {'uniform': 0.667, 'last_item': 0.5, 'history_majority': 1.0, 'dominant_oracle': 0.5}
    """
    rules: dict[str, list[float]] = {"uniform": [], "last_item": [], "history_majority": [], "dominant_oracle": []}
    for items, (target, dominant) in zip(slot_items, truth, strict=True):
        if target is None or not len(items):
            continue
        m = member[:, list(items)]  # (J, n): history slot n is of intent j
        hit = m[target].astype(float)
        if not hit.any():
            continue
        every = np.ones(len(items))
        counts = m.sum(1)
        chosen = {"uniform": every, "last_item": np.eye(len(items))[-1],
                  "history_majority": m[int(np.argmax(counts))] if counts.max() else every,
                  "dominant_oracle": m[dominant] if m[dominant].any() else every}
        for name, w in chosen.items():
            w = np.asarray(w, dtype=float)
            rules[name].append(float((w * hit).sum() / w.sum()))
    return {name: float(np.mean(v)) if v else None for name, v in rules.items()}


def mutual_information(a: Sequence[int], b: Sequence[int]) -> float:
    """Plug-in mutual information (nats) between two discrete sequences of equal length."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    if n == 0:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= n
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def permutation_mi(a: Sequence[int], b: Sequence[int], n_perm: int = 1000, seed: int = 0) -> tuple[float, float]:
    """``(MI, p)``: p = (1 + #{permutations with MI ≥ observed}) / (1 + n_perm)."""
    mi = mutual_information(a, b)
    rng = np.random.default_rng(seed)
    b = np.asarray(b)
    ge = sum(mutual_information(a, rng.permutation(b)) >= mi - 1e-12 for _ in range(n_perm))
    return mi, (1 + ge) / (1 + n_perm)


# ------------------------------------------------------------------------------ collecting
@dataclass
class FactorTrace:
    """Final-step reasoner outputs for R rows, attention already summed per history-item slot."""

    z: torch.Tensor  # (R, D)
    gates: torch.Tensor  # (R, K)
    item_attn: torch.Tensor  # (R, K, H)
    in_history: torch.Tensor  # (R, H) bool
    slot_items: list[list[int]]  # per row, the catalogue item of each slot (oldest kept first)
    factors: torch.Tensor | None = None  # (R, K, D) factor vectors F = A V (disentanglement analysis)
    thought: torch.Tensor | None = None  # (R, D) the embedding written into the LM (what it receives)


@torch.no_grad()
def collect(model, builder, rows, catalogue, batch_size: int = 16) -> FactorTrace:
    """Run refinement on ``rows`` and keep the final step's thought, gates and per-item attention."""
    if not model.config.uses_thought:
        raise FlrecError("this model has no thought (reasoner=none); factor diagnostics need flr/latentr3/softprompt")
    model.eval()
    zs, gs, attns, hist, slots, fs, es = [], [], [], [], [], [], []
    h_max = builder.max_history
    pad_id = builder.tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ex = builder.encode_rows(chunk, catalogue)
        batch = collate_left_padded(ex, pad_id)
        pos = positions_from_mask(batch["prompt_mask"])
        e, _, steps, _ = model.refine(batch["prompt_ids"], batch["prompt_mask"], pos, batch["prompt_items"])
        out = steps[-1]
        key_items = out.key_items if out.key_items is not None else torch.full(out.attn.shape[::2], -1)
        item_attn = item_attention(out.attn.float(), key_items, h_max)
        n_kept = (batch["prompt_items"].max(-1).values + 1).tolist()
        for row, n in zip(chunk, n_kept, strict=True):
            slots.append(list(row.history[len(row.history) - n :]))
        zs.append(out.z.float())
        es.append(e.float())
        fs.append(out.factors.float())
        gs.append(out.gates.float())
        attns.append(item_attn)
        hist.append(torch.arange(h_max)[None, :] < torch.tensor(n_kept)[:, None])
    return FactorTrace(torch.cat(zs), torch.cat(gs), torch.cat(attns), torch.cat(hist), slots, torch.cat(fs),
                       torch.cat(es))


# ------------------------------------------------------------------------------ planted intents
class PlantedIntents:
    """The synthetic generator's ground truth (``intents.json`` beside the splits)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        try:
            truth = json.loads(path.read_text())
            self.users = truth["users"]
            prefers = [it["prefers"] for it in truth["intents"]]
            items = truth["items"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FlrecError(f"{path}: not a planted-intents file written by `flrec data synth` ({e})") from None
        # member[j, i]: item i matches both facets intent j prefers.
        self.member = np.array([[all(it.get(f) == v for f, v in p.items()) for it in items] for p in prefers])

    def row_truth(self, row) -> tuple[int | None, int]:
        """``(intent the target was drawn from or None, dominant intent of the user's mix)`` at the row."""
        user = self.users.get(row.user)
        if user is None or row.timestamp not in user["timestamps"]:
            raise FlrecError(f"intents.json has no purchase of user {row.user!r} at {row.timestamp}; "
                             "it belongs to another dataset")
        step = user["timestamps"].index(row.timestamp)
        if user["items"][step] != row.target:
            raise FlrecError(f"intents.json: user {row.user!r}'s purchase at step {step} is item "
                             f"{user['items'][step]}, the dataset's target is {row.target}; another dataset?")
        seg = [s for s in user["segments"] if s["from_step"] <= step][-1]
        dominant = seg["intents"][int(np.argmax(seg["weights"]))]
        return user["intents"][step], int(dominant)


# ------------------------------------------------------------------------------ the report
def summarize(trace: FactorTrace, rows=None, intents: PlantedIntents | None = None, n_perm: int = 1000) -> dict:
    """All statistics of the module doc as one JSON-ready dict."""
    r, k = trace.gates.shape
    out: dict = {"rows": r, "num_factors": k}
    # On z, before the write path: a gate or residual constant after it can hide a collapse (see
    # thought_cross_row_cosine from the interventions, computed on what the LM receives).
    out["z_cross_row_cosine"] = float(thought_cross_row_cosine(trace.z)) if r > 1 else None
    out["gate_usage_entropy_ratio"] = float(gate_usage_entropy_ratio(trace.gates)) if k > 1 else None
    out["argmax_histogram"] = argmax_histogram(trace.gates)
    out["active_factors"] = active_factors(trace.gates)
    out["mean_gate"] = trace.gates.mean(0).tolist()
    out["history_attention_share"] = history_attention_share(trace.item_attn)
    if intents is not None and rows is not None and float(trace.item_attn.sum()) > 0:
        # (a thought with no attention over the history, e.g. the soft-prompt control, has no share)
        truth = [intents.row_truth(row) for row in rows]
        h = trace.item_attn.shape[-1]
        in_intent = torch.zeros(r, h, dtype=torch.bool)
        for i, ((target_intent, _), items) in enumerate(zip(truth, trace.slot_items, strict=True)):
            if target_intent is not None:
                in_intent[i, : len(items)] = torch.from_numpy(intents.member[target_intent, items])
        share, uniform, used = target_intent_share(trace.item_attn, trace.gates, in_intent, trace.in_history)
        refs = reference_intent_shares(trace.slot_items, truth, intents.member)
        out.update(target_intent_share=share, target_intent_share_uniform=uniform, target_intent_rows=used,
                   target_intent_share_gain=share - uniform if used else None, target_intent_share_references=refs,
                   target_intent_share_gain_oracle=refs["dominant_oracle"] - refs["uniform"] if used else None)
        mi, p = permutation_mi(trace.gates.argmax(-1).tolist(), [d for _, d in truth], n_perm=n_perm)
        out.update(argmax_intent_mi=mi, argmax_intent_mi_p=p)
    return out


def trace_split(model_dir: str | Path, dataset, split: str = "test", limit: int | None = 200,
                batch_size: int = 16, with_builder: bool = False):
    """Load a trained model and trace ``split``'s first ``limit`` rows through it.

    Returns ``(model, rows, trace, intents)`` (+ the prompt builder with ``with_builder``); ``intents``
    is None unless the data has ``intents.json``.
    """
    if split not in dataset.splits:
        raise FlrecError(f"split '{split}' not in the dataset (has {sorted(dataset.splits)})")
    rows = dataset[split][:limit] if limit else dataset[split]
    if not rows:
        raise FlrecError(f"split '{split}' has no rows to analyse")
    model, tok = FLRRecommender.from_pretrained(resolve_model_dir(model_dir))
    ps = dict(model.prompt_settings)
    ps.setdefault("domain", dataset.domain)
    builder = PromptBuilder(tok, use_thought=True, **ps)
    trace = collect(model, builder, rows, dataset.catalogue, batch_size)
    truth_file = Path(dataset.root) / "intents.json" if getattr(dataset, "root", None) else None
    intents = PlantedIntents(truth_file) if truth_file is not None and truth_file.is_file() else None
    return (model, rows, trace, intents, builder) if with_builder else (model, rows, trace, intents)


def intervention_report(model, builder, rows, catalogue, batch_size: int = 16, seed: int = 0,
                        trace: FactorTrace | None = None) -> dict:
    """:func:`flrec.models.health.thought_interventions` on ``rows`` (teacher-forced, the rows' targets);
    a ``trace`` of the same rows supplies their own thoughts (no second refinement pass). Includes the
    swap with the history hidden from the answer (``thought_hidden_*``)."""
    ex = builder.encode_rows(rows, catalogue)
    pad = builder.tokenizer.pad_token_id
    batches = [collate_left_padded(ex[i : i + batch_size], pad) for i in range(0, len(ex), batch_size)]
    own = (trace.thought, trace.z) if trace is not None and trace.thought is not None else None
    return thought_interventions(model, batches, seed=seed, own=own, hidden_history=True)


def factor_diagnostics(model_dir: str | Path, dataset, split: str = "test", limit: int | None = 200,
                       batch_size: int = 16, n_perm: int = 1000, interventions: bool = True) -> dict:
    """Load a trained model and report its factor health on ``split`` (first ``limit`` rows): the
    statistics of the module doc, and (``interventions``) whether the LM uses the thought at all
    (:mod:`flrec.models.health`: swap/mean/E0 deltas of the rec loss, user share of the written thought)."""
    model, rows, trace, intents, builder = trace_split(model_dir, dataset, split, limit, batch_size, with_builder=True)
    report = summarize(trace, rows, intents, n_perm=n_perm)
    if interventions:
        report.update(intervention_report(model, builder, rows, dataset.catalogue, batch_size, trace=trace))
    report.update(model=str(model_dir), split=split, reasoner=model.config.reasoner, keys=model.config.keys)
    return report


def format_report(rep: dict) -> str:
    """A short human-readable rendering of :func:`summarize`'s dict."""

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = [f"factor diagnostics ({rep['rows']} {rep.get('split', '')} rows, K={rep['num_factors']}):",
             f"  z cross-row cosine        {f(rep['z_cross_row_cosine'])}   (before the write path; 1 = the same z "
             "for every user)"]
    if rep.get("thought_cross_row_cosine") is not None:
        lines.append(f"  thought cross-row cosine  {f(rep['thought_cross_row_cosine'])}   (what the LM receives)")
    lines += [
             f"  gate usage entropy ratio  {f(rep['gate_usage_entropy_ratio'])}   (0 = one factor for everyone)",
             f"  argmax factor histogram   {rep['argmax_histogram']}",
             f"  active factors per row    {rep['active_factors']:.2f}   (gate >= {ACTIVE_GATE})",
             "  history attention share   " + ", ".join(f"{x:.2f}" for x in rep["history_attention_share"])]
    if "target_intent_share" in rep:
        lines.append(f"  target-intent share       {f(rep['target_intent_share'])} vs uniform "
                     f"{f(rep['target_intent_share_uniform'])} over {rep['target_intent_rows']} rows")
        lines.append(f"  MI(argmax factor; dominant intent) {rep['argmax_intent_mi']:.4f} nats, "
                     f"permutation p = {rep['argmax_intent_mi_p']:.3g}")
    if "thought_swap_delta" in rep:
        lines.append(format_interventions(rep))
    return "\n".join(lines)
