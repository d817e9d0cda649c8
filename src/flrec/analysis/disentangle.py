"""Disentanglement (paper Fig. 4, RQ4 / Fig. 6): are FLR's K factors different, and focused?

From the final refinement step on R test rows (:func:`flrec.analysis.factors.collect`), with
factor vectors ``F`` (R, K, D), gates ``g`` (R, K) and attention mass per history item ``M`` (R, K, H):

* ``factor_cosine_matrix`` C[k, l] = mean_r cos(F_rk, F_rl) (K × K, diagonal 1; Fig. 4);
* ``s_avg`` = mean over k ≠ l of |C[k, l]| (the paper's "average absolute correlation"); None for K = 1;
* ``a_max`` = mean over rows and factors of max_h M_rkh / Σ_h M_rkh: how sharply a factor focuses on
  one history item, in [1/H, 1] (factors with no attention on the history are left out);
* ``ds`` = (1 − s_avg) × a_max, the Disentanglement Score, in [0, 1];
* ``gate_entropy`` = mean_r H(g_r) / ln K, in [0, 1] (0: one factor decides each row; the paper's
  L_sparse pushes it down), and ``gate_entropy_nats`` unnormalised;
* per-user attention maps (``examples``): M_r as factors × history titles (oldest first) with the gates
  (Fig. 6), plotted by :func:`write_figures`;
* ``health``: :func:`flrec.analysis.factors.summarize` (thought cosine, gate usage, and on the synthetic
  data the planted-intent recovery).

A K × K cosine over the batch *mean* factors would hide per-user differences, so C averages per-row
cosines.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from flrec.analysis.factors import FactorTrace, PlantedIntents, summarize, trace_split
from flrec.errors import FlrecError


def factor_cosine_matrix(factors: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the K × K cosine matrix of each row's factor vectors (``factors`` (R, K, D))."""
    f = torch.nn.functional.normalize(factors.detach().double(), dim=-1)
    return (f @ f.transpose(1, 2)).mean(0).float()


def mean_abs_offdiag(matrix: torch.Tensor) -> float | None:
    """Mean |C[k, l]| over k ≠ l; None for a 1 × 1 matrix."""
    k = matrix.shape[0]
    if k < 2:
        return None
    off = ~torch.eye(k, dtype=torch.bool)
    return float(matrix[off].abs().mean())


def attention_sharpness(item_attn: torch.Tensor) -> float | None:
    """``a_max``: mean over (row, factor) of the largest share of the factor's history mass on one item."""
    mass = item_attn.sum(-1)  # (R, K)
    use = mass > 0
    if not bool(use.any()):
        return None
    share = item_attn.max(-1).values / mass.clamp(min=1e-30)
    return float(share[use].mean())


def disentanglement_score(s_avg: float | None, a_max: float | None) -> float | None:
    """DS = (1 − S_avg) × A_max (paper §5.6); None when either part is undefined."""
    if s_avg is None or a_max is None:
        return None
    return (1.0 - s_avg) * a_max


def gate_entropy(gates: torch.Tensor) -> tuple[float | None, float]:
    """``(mean_r H(g_r) / ln K, mean_r H(g_r) in nats)``; the ratio is None for K = 1."""
    g = gates.detach().double()
    h = -(g * g.clamp(min=1e-300).log()).sum(-1).mean()
    k = gates.shape[1]
    # min(): a uniform gate's fp64 entropy can exceed ln K by an ulp
    return (min(1.0, float(h / math.log(k))) if k > 1 else None), float(h)


def user_attention(trace: FactorTrace, row: int, titles: list[str]) -> dict:
    """Row ``row``'s factors × history-items attention (oldest first), with titles and gates."""
    items = trace.slot_items[row]
    mat = trace.item_attn[row, :, : len(items)]
    return {"row": row, "titles": [titles[i] for i in items], "items": list(items),
            "attention": mat.tolist(), "gates": trace.gates[row].tolist()}


def summarize_disentanglement(trace: FactorTrace, catalogue_titles: list[str], rows=None,
                              intents: PlantedIntents | None = None, examples: int = 1, n_perm: int = 200) -> dict:
    """All statistics of the module doc from a collected trace (``trace.factors`` must be present)."""
    if trace.factors is None:
        raise FlrecError("the trace has no factor vectors; collect it with flrec.analysis.factors.collect")
    cos = factor_cosine_matrix(trace.factors)
    s_avg = mean_abs_offdiag(cos)
    a_max = attention_sharpness(trace.item_attn)
    ent, ent_nats = gate_entropy(trace.gates)
    n_ex = min(max(examples, 0), trace.gates.shape[0])
    return {
        "rows": int(trace.gates.shape[0]), "num_factors": int(trace.gates.shape[1]),
        "factor_cosine_matrix": cos.tolist(), "s_avg": s_avg, "a_max": a_max,
        "ds": disentanglement_score(s_avg, a_max), "gate_entropy": ent, "gate_entropy_nats": ent_nats,
        "examples": [user_attention(trace, r, catalogue_titles) for r in range(n_ex)],
        "health": summarize(trace, rows, intents, n_perm=n_perm),
    }


def disentanglement(model_dir: str | Path, dataset, split: str = "test", limit: int | None = 200,
                    batch_size: int = 16, examples: int = 2, n_perm: int = 200) -> dict:
    """Load a trained FLR model and report its disentanglement on ``split`` (first ``limit`` rows)."""
    model, rows, trace, intents = trace_split(model_dir, dataset, split, limit, batch_size)
    rep = summarize_disentanglement(trace, list(dataset.catalogue.titles), rows, intents, examples, n_perm)
    rep.update(model=str(model_dir), split=split, reasoner=model.config.reasoner)
    return rep


def write_figures(rep: dict, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """The factor cosine heatmap and one attention heatmap per example user; ``{name: png path}``."""
    from flrec.analysis.plots import heatmap

    out_dir = Path(out_dir)
    k = rep["num_factors"]
    names = [f"factor {i + 1}" for i in range(k)]
    s = "n/a" if rep["s_avg"] is None else f"{rep['s_avg']:.2f}"
    figs = {"factor_cosine": heatmap(out_dir / f"{prefix}factor_cosine.png", rep["factor_cosine_matrix"], names, names,
                                     title=f"factor cosine, {rep['rows']} users (mean |off-diag.| {s})",
                                     vmin=-1, vmax=1, cmap="coolwarm", colorbar_label="cosine")}
    for ex in rep["examples"]:
        if not ex["titles"]:
            continue
        rows = [f"factor {i + 1} (gate {g:.2f})" for i, g in enumerate(ex["gates"])]
        figs[f"attention_row{ex['row']}"] = heatmap(
            out_dir / f"{prefix}attention_row{ex['row']}.png", ex["attention"], rows, ex["titles"],
            title=f"row {ex['row']}: attention on history titles (oldest left)", vmin=0,
            colorbar_label="attention mass")
    return figs


def format_disentanglement(rep: dict) -> str:
    """A short text rendering."""

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    return "\n".join([
        f"disentanglement ({rep['rows']} {rep.get('split', '')} rows, K={rep['num_factors']}):",
        f"  mean |off-diagonal| factor cosine S_avg  {f(rep['s_avg'])}",
        f"  attention sharpness A_max              {f(rep['a_max'])}",
        f"  disentanglement score DS               {f(rep['ds'])}",
        f"  gate entropy / ln K                    {f(rep['gate_entropy'])}",
    ])
