"""``flrec report``: the paper's analyses (RQ1–RQ7) as one Markdown report with PNG figures.

:func:`build_report` reads result folders and files, whatever subset of them exists, and writes
``OUT/report.md`` plus ``OUT/figures/*.png`` (relative links, so the folder is self-contained):

==================  ====================================================  ==========================
question            read from                                             written by
==================  ====================================================  ==========================
RQ1 comparison      ``summary.json`` (methods, significance, budget)       ``flrec compare``
RQ2 ablation        ``ablation.json``                                      ``flrec ablate --grid regularisers``
RQ4 disentangle     ``disentangle*.json``                                  ``flrec analyze disentangle``
RQ4 factor health   ``factor_variants.json``                               ``benchmarks/factor_variants.py``
RQ4 thought used    ``factors*.json`` (thought interventions)              ``flrec analyze factors --json``
RQ5 long tail       ``longtail.json``, else the comparison                 ``flrec analyze longtail`` / compare
RQ6 K sweep         ``k_sweep.json``                                       ``flrec ablate --grid k``
RQ7 cost            ``cost.json``, else the comparison's s/user            ``flrec analyze cost``
learning curves     ``log.jsonl`` of a run dir, or under ``logs/*/``       ``flrec train sft`` / compare
==================  ====================================================  ==========================

Every section has one figure with a one-line caption and its table; a missing input gives a line
saying which command produces it. The report ends with the paper's findings next to ours
(reproduced / not reproduced / not measured), computed from the same numbers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flrec.errors import FlrecError
from flrec.utils.io import atomic_write_text
from flrec.utils.outputs import check_output
from flrec.utils.text import format_seconds

REPORT = "report.md"
FIGURES = "figures"
MAX_CURVES = 8  # runs drawn in the learning-curve figure


@dataclass
class Sources:
    """What was found in the inputs."""

    comparison: tuple[Path, dict] | None = None
    ablation: tuple[Path, dict] | None = None
    k_sweep: tuple[Path, dict] | None = None
    longtail: tuple[Path, dict] | None = None
    cost: tuple[Path, dict] | None = None
    disentangle: list[tuple[Path, dict]] = field(default_factory=list)
    factor_variants: tuple[Path, dict] | None = None
    factors: list[tuple[Path, dict]] = field(default_factory=list)  # flrec analyze factors --json
    logs: list[tuple[str, Path]] = field(default_factory=list)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FlrecError(f"{path}: not a readable JSON file ({e}); regenerate it") from None
    if not isinstance(data, dict):
        raise FlrecError(f"{path}: expected a JSON object")
    return data


def _classify_file(path: Path, src: Sources) -> bool:
    name = path.name
    if name == "ablation.json":
        src.ablation = (path, _load(path))
    elif name == "k_sweep.json":
        src.k_sweep = (path, _load(path))
    elif name == "longtail.json":
        src.longtail = (path, _load(path))
    elif name == "cost.json":
        src.cost = (path, _load(path))
    elif name.startswith("disentangle") and name.endswith(".json"):
        src.disentangle.append((path, _load(path)))
    elif name == "factor_variants.json":
        src.factor_variants = (path, _load(path))
    elif name.startswith("factors") and name.endswith(".json"):
        data = _load(path)
        if "thought_swap_delta" not in data and "z_cross_row_cosine" not in data:
            return False
        src.factors.append((path, data))
    elif name == "summary.json":
        data = _load(path)
        if "methods" not in data or "significance" not in data:
            return False
        if "grid" in data:  # a flrec ablate folder's summary: ablation.json / k_sweep.json carry it
            return False
        src.comparison = (path, data)
    elif name == "log.jsonl":
        src.logs.append((path.parent.name, path))
    else:
        return False
    return True


def _grid_summary(folder: Path) -> Path | None:
    """``folder/summary.json`` when it is an ablate folder's (its methods are a grid's variants), which
    is not a comparison of methods; a results folder may hold both a comparison and grid files."""
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    methods = set(_load(summary).get("methods", {}))
    for name in ("ablation.json", "k_sweep.json"):
        if (folder / name).is_file() and methods == set(_load(folder / name).get("grid", {}).get("variants", {})):
            return summary
    return None


def find_sources(inputs: Sequence[str | Path]) -> Sources:
    """Classify every input: a result file, a results/comparison/ablation folder, or a run dir."""
    src = Sources()
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise FlrecError(f"{p}: no such file or folder; pass result folders (flrec compare --out, results/<data>) "
                             "or run directories")
        found = False
        if p.is_file():
            found = _classify_file(p, src)
        else:
            skip = _grid_summary(p)
            for child in sorted(p.iterdir()):
                if child.is_file() and child != skip:
                    found |= _classify_file(child, src)
            for log in sorted(p.glob("logs/*/log.jsonl")):
                src.logs.append((log.parent.name, log))
            for log in sorted(p.glob("sft/log.jsonl")):
                src.logs.append((p.name, log))
            for log in sorted(p.glob("cells/*/seed*/sft/log.jsonl")):  # a comparison's LLM cells
                src.logs.append((f"{log.parents[2].name}/{log.parents[1].name}", log))
            found |= bool(src.logs)
        if not found:
            raise FlrecError(f"{p}: holds no result flrec report can read (summary.json, ablation.json, k_sweep.json, "
                             "longtail.json, cost.json, disentangle*.json, factor_variants.json or a run's log.jsonl)")
    return src


# ------------------------------------------------------------------------------------- sections
class _Report:
    def __init__(self, out: Path):
        self.out, self.lines, self.figures, self.n_fig = out, [], [], 0
        (out / FIGURES).mkdir(parents=True, exist_ok=True)

    def fig(self, name: str) -> Path:
        return self.out / FIGURES / f"{name}.png"

    def add_figure(self, path: Path, caption: str) -> None:
        self.n_fig += 1
        rel = path.relative_to(self.out).as_posix()
        self.figures.append(rel)
        self.lines += [f"![{caption}]({rel})", "", f"*Figure {self.n_fig}. {caption}*", ""]

    def h(self, text: str) -> None:
        self.lines += [f"## {text}", ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]


def _mean(st: dict | None, metric: str) -> float | None:
    return None if not st or not st.get(metric) else st[metric]["mean"]


def _std(st: dict | None, metric: str) -> float:
    cell = (st or {}).get(metric)
    return float(cell.get("std") or 0.0) if isinstance(cell, dict) else 0.0


def _extreme_call(vals: dict, k: int, sign: int, noise: float, txt: str) -> tuple[str, str]:
    """(ours, verdict) for "K=k is best" (``sign`` 1) or worst (-1): a K never measured is never named,
    and a K level with others within ties or noise (the largest seed std) is "inconclusive"."""
    word = "best" if sign > 0 else "worst"
    if k not in vals or len(vals) < 2:
        return (f"K={k} not measured ({txt})" if k not in vals else f"only K={k} measured"), "not measured"
    top = max(vals.values()) if sign > 0 else min(vals.values())
    tied = sorted(x for x in vals if abs(vals[x] - top) <= max(noise, 1e-12))
    if k in tied and len(tied) > 1:
        return f"{word}: K={', '.join(map(str, tied))} level within ties/noise ({txt})", "inconclusive"
    return f"{word} K={', '.join(map(str, tied))} ({txt})", "reproduced" if tied == [k] else "not reproduced"


def _section_comparison(r: _Report, src: Sources) -> None:
    from flrec.analysis.plots import bar_chart
    from flrec.experiments.compare import format_markdown

    r.h("RQ1 — Overall comparison (paper Table 2)")
    if src.comparison is None:
        r.p("Not measured: run `flrec compare --data DIR --methods flr,latentr3,bigrec,sasrec,pop --out DIR`.")
        return
    _, s = src.comparison
    ms = [m for m, st in s["methods"].items() if st and st.get("n_seeds")]
    ref = s["significance"]["reference"]
    fig = bar_chart(r.fig("comparison_ndcg10"), ms, [_mean(s["methods"][m], "ndcg@10") for m in ms],
                    errors=[s["methods"][m]["ndcg@10"]["std"] for m in ms], ylabel="NDCG@10", highlight=ref)
    r.add_figure(fig, f"NDCG@10 of every method on the same test rows (mean ± std over seeds; {ref} dark).")
    r.p(format_markdown(s))


def _section_grid(r: _Report, data: tuple[Path, dict] | None, kind: str) -> None:
    from flrec.analysis.plots import bar_chart, line_plot
    from flrec.experiments.ablation import format_grid

    if kind == "regularisers":
        r.h("RQ2 — Ablation of the regularisers (paper Table 3)")
        cmd = "flrec ablate --data DIR --grid regularisers --config ... --out DIR"
    else:
        r.h("RQ6 — Number of factors K (paper Fig. 8)")
        cmd = "flrec ablate --data DIR --grid k --config ... --out DIR"
    if data is None:
        r.p(f"Not measured: run `{cmd}`.")
        return
    _, g = data
    names = [n for n in g["grid"]["variants"] if g["methods"].get(n, {}).get("n_seeds")]
    if not names:
        r.p("Every variant failed; see the cells' error.txt.")
        r.p(format_grid(g))
        return
    if kind == "regularisers":
        labels = ["+".join(g["grid"]["variants"][n]["regularisers"]) or "none" for n in names]
        fig = bar_chart(r.fig("ablation_ndcg10"), labels, [_mean(g["methods"][n], "ndcg@10") for n in names],
                        errors=[g["methods"][n]["ndcg@10"]["std"] for n in names], ylabel="NDCG@10",
                        highlight="+".join(g["grid"]["variants"][g["grid"]["reference"]]["regularisers"]))
        r.add_figure(fig, "NDCG@10 of FLR trained with each subset of {L_orth, L_div, L_sparse} (mean ± std over seeds).")
    else:
        ks = [g["grid"]["variants"][n]["num_factors"] for n in names]
        series = {m.upper(): [_mean(g["methods"][n], m) for n in names] for m in ("hr@5", "ndcg@5", "hr@10", "ndcg@10")}
        errs = {m.upper(): [g["methods"][n][m]["std"] for n in names] for m in ("hr@5", "ndcg@5", "hr@10", "ndcg@10")}
        fig = line_plot(r.fig("k_sweep"), ks, series, errors=errs, xlabel="K (number of factors)", ylabel="metric")
        r.add_figure(fig, "HR and NDCG @5/@10 of FLR against the number of factors K (mean ± std over seeds).")
    r.p(format_grid(g))


def _section_disentangle(r: _Report, src: Sources) -> None:
    from flrec.analysis.disentangle import write_figures
    from flrec.analysis.plots import grouped_bars

    r.h("RQ4 — Disentanglement of the factors (paper Figs. 4 and 6)")
    if not src.disentangle and src.factor_variants is None:
        r.p("Not measured: run `flrec analyze disentangle --model RUN_DIR --data DIR --out DIR`.")
        return
    if src.disentangle:
        rows = ["| model | rows | K | S_avg (mean abs. off-diag. cosine) | A_max | DS | gate entropy / ln K | "
                "thought cosine | intent share − uniform | MI p |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for i, (path, d) in enumerate(src.disentangle):
            figs = write_figures(d, r.out / FIGURES, prefix=f"disentangle{i}_")
            label = Path(d.get("model", path.stem)).name or path.stem
            r.add_figure(figs["factor_cosine"], f"{label}: cosine between the K factor vectors, averaged over "
                         f"{d['rows']} test users (1 = identical factors).")
            for key, fpath in figs.items():
                if key.startswith("attention_row"):
                    r.add_figure(fpath, f"{label}: one test user's attention of each factor over the history titles "
                                 "(oldest left), with the factor's gate.")
                    break  # one example per model: one figure per question
            def f(x):
                return "n/a" if x is None else f"{x:.3f}"
            hl = d.get("health", {})  # intent statistics exist on the synthetic data only
            rows.append(f"| {label} | {d['rows']} | {d['num_factors']} | {f(d['s_avg'])} | {f(d['a_max'])} | "
                        f"{f(d['ds'])} | {f(d['gate_entropy'])} | {f(hl.get('thought_cross_row_cosine'))} | "
                        f"{f(hl.get('target_intent_share_gain'))} | {f(hl.get('argmax_intent_mi_p'))} |")
        r.p("\n".join(rows))
    if src.factor_variants is not None:
        _, fv = src.factor_variants
        variants = fv.get("variants", [])
        names = [v["variant"] for v in variants]
        series = {
            "thought cosine (1 = same for all users)": [v["test"].get("thought_cross_row_cosine") for v in variants],
            "gate usage (0 = one factor)": [v["test"].get("gate_usage_entropy_ratio") for v in variants],
            "target-intent share − uniform": [v["test"].get("target_intent_share_gain") for v in variants],
        }
        fig = grouped_bars(r.fig("factor_health"), names, series, ylabel="value (test rows)")
        r.add_figure(fig, "Factor health of each FLR variant on the synthetic test rows: does the thought differ "
                     "per user, are the factors used, do they look at the target's planted intent.")
        lines = ["| variant | valid rec loss | thought cos (test) | gate usage (test) | argmax factor (test) | "
                 "intent share − uniform (test) | MI p (test) |", "|---|---:|---:|---:|---|---:|---:|"]
        for v in variants:
            t = v["test"]
            hist = ", ".join(f"{k}: {c}" for k, c in t.get("argmax_histogram", {}).items() if c)
            def f(x, spec=".3f"):
                return "–" if x is None else format(x, spec)
            lines.append(f"| {v['variant']} | {f(v.get('valid_rec_loss'), '.4f')} | "
                         f"{f(t.get('thought_cross_row_cosine'))} | {f(t.get('gate_usage_entropy_ratio'))} | {hist} | "
                         f"{f(t.get('target_intent_share_gain'), '+.3f')} | {f(t.get('argmax_intent_mi_p'), '.2g')} |")
        r.p("\n".join(lines))
        b = fv.get("budget")
        if b:
            r.p("Budget: " + "; ".join(f"{k}: {v}" for k, v in b.items() if not isinstance(v, dict | list)) + ".")


def _longtail_report(src: Sources) -> dict | None:
    from flrec.analysis.longtail import longtail

    if src.longtail is not None:
        return src.longtail[1]
    if src.comparison is None:
        return None
    try:
        return longtail(src.comparison[0].parent)
    except FlrecError:
        return None


def _section_longtail(r: _Report, src: Sources, rep: dict | None) -> None:
    from flrec.analysis.longtail import GROUPS, format_longtail
    from flrec.analysis.plots import grouped_bars

    r.h("RQ5 — Popular vs. long-tail items (paper Fig. 7)")
    if rep is None:
        why = ("the comparison's summary.json predates the group metrics and its cells/ are not here; rerun "
               "`flrec compare` on its --out (finished cells are reused) or run `flrec analyze longtail COMPARE_DIR`"
               if src.comparison is not None else "run `flrec compare`, then `flrec analyze longtail COMPARE_DIR`")
        r.p(f"Not measured: {why}.")
        return
    if rep["improvement"]:
        others = list(rep["improvement"])
        series = {m: [rep["improvement"][m][g].get("ndcg@10") for g in GROUPS] for m in others}
        fig = grouped_bars(r.fig("longtail"), list(GROUPS), series, ylabel=f"{rep['reference']} NDCG@10 gain (%)")
        r.add_figure(fig, f"Relative NDCG@10 improvement of {rep['reference']} over each method on popular "
                     "(top 20% by train frequency) and unpopular test targets.")
    r.p(format_longtail(rep))


def _cost_report(src: Sources) -> dict | None:
    from flrec.analysis.cost import cost_from_comparison

    if src.cost is not None:
        return src.cost[1]
    if src.comparison is not None:
        rep = cost_from_comparison(src.comparison[1])
        return rep if rep["methods"] else None
    return None


def _section_cost(r: _Report, rep: dict | None) -> None:
    from flrec.analysis.cost import format_cost
    from flrec.analysis.plots import bar_chart

    r.h("RQ7 — Inference cost (paper Fig. 9)")
    if rep is None:
        r.p("Not measured: run `flrec analyze cost --data DIR --model bigrec=RUN --model latentr3=RUN --model flr=RUN "
            "--model cot=RUN --out DIR`.")
        return
    ms = list(rep["methods"])
    fig = bar_chart(r.fig("inference_cost"), ms, [rep["methods"][m]["seconds_per_user"] for m in ms],
                    errors=[rep["methods"][m].get("seconds_per_user_std") or 0.0 for m in ms],
                    ylabel="seconds per user (log)", highlight="flr", log_scale=True)
    where = ("one process, same rows, methods interleaved" if rep.get("source") != "comparison"
             else "from the comparison's ranking cells")
    r.add_figure(fig, f"Seconds per user to rank (log scale; {where}).")
    r.p(format_cost(rep))
    if rep.get("source") == "comparison":
        r.p("These are the ranking times of the comparison's cells (each cell timed on its own); "
            "`flrec analyze cost` times the methods side by side, including `cot`.")
    else:
        r.p(f"{rep['rows']} users, batch {rep['batch_size']}, {rep['repeats']} repetitions; "
            f"beam {rep.get('beam')} (cot: {rep.get('cot_beam')}).")


def _section_curves(r: _Report, src: Sources) -> None:
    from flrec.analysis.curves import plot_learning_curves, plot_runs

    r.h("Learning curves")
    if not src.logs:
        r.p("No training log among the inputs: pass a run directory of `flrec train sft` (or a folder with "
            "logs/<run>/log.jsonl).")
        return
    if len(src.logs) == 1:
        name, log = src.logs[0]
        fig = plot_learning_curves(log, r.fig("learning_curves"))
        r.add_figure(fig, f"{name}: recommendation loss, auxiliary terms, uncertainty weights and factor health "
                     "over optimizer steps.")
        return
    runs = dict(src.logs[:MAX_CURVES])
    fig = plot_runs(runs, r.fig("learning_curves"))
    r.add_figure(fig, "Training and validation recommendation loss and factor health over optimizer steps, one line "
                 "per run (" + ", ".join(runs) + ").")
    if len(src.logs) > MAX_CURVES:
        r.p(f"({len(src.logs) - MAX_CURVES} more runs not plotted.)")


# ------------------------------------------------------------------------------------- findings
SIGNIFICANT = 0.05  # the paired t-test's level for "reproduced" where the paper claims a significant gain


FLR_METHODS = ("flr", "flr_grpo")  # methods whose gain over LatentR3 is the paper's long-tail finding


def thought_finding(factors: list[tuple[Path, dict]]) -> tuple[str, str, str]:
    """"Factors specialise per user" rests on interventions on what the LM receives: the per-user thought
    must matter (swapping users' thoughts raises the rec loss, paired p < 0.05) and, where the data has
    planted intents, the argmax factor must follow the user's intent (permutation p < 0.05). A statistic
    on ``z`` alone is not evidence: a gate after it can pass nothing to the LM."""
    finding = "Factors specialise per user and the LM uses them (Figs. 4, 6)"
    rows = [(p, d) for p, d in factors if d.get("thought_swap_delta") is not None]
    if not rows:
        return finding, "no thought-intervention numbers (flrec analyze factors --json)", "not measured"
    path, d = rows[0]
    swap, p = d["thought_swap_delta"], d.get("thought_swap_delta_p")
    used = swap > 0 and p is not None and p < SIGNIFICANT
    ours = f"swap delta {swap:+.4f} nats (p = {p:.2g}), user share {d.get('thought_user_share', float('nan')):.3f}"
    mi_p = d.get("argmax_intent_mi_p")
    if mi_p is not None:
        ours += f", argmax factor vs. planted intent p = {mi_p:.2g}"
        used = used and mi_p < SIGNIFICANT
    return finding, f"{ours} ({path.name})", verdict_word(used)


def verdict_word(ok: bool) -> str:
    return "reproduced" if ok else "not reproduced"


def paper_findings(src: Sources, longtail_rep: dict | None, cost_rep: dict | None) -> list[tuple[str, str, str]]:
    """``[(paper's finding, ours, verdict)]``; verdict is reproduced / not reproduced / not measured (or, for a
    higher mean without a significant paired test, "same direction, not significant")."""
    return [
        *_comparison_findings(src),
        *_ablation_findings(src),
        *_k_sweep_findings(src),
        *_disentangle_findings(src),
        thought_finding(src.factors),
        *_longtail_findings(longtail_rep),
        *_cost_findings(cost_rep),
    ]


def _comparison_findings(src: Sources) -> list[tuple[str, str, str]]:
    """Table 2: FLR ahead of the best other method (significance decides between the two calls)."""
    if src.comparison is None:
        return [("FLR beats every baseline (Table 2)", "–", "not measured")]
    s = src.comparison[1]
    ref = s["significance"]["reference"]
    ok = {m: _mean(st, "ndcg@10") for m, st in s["methods"].items() if _mean(st, "ndcg@10") is not None}
    if ref not in ok or len(ok) <= 1:
        return []
    best = max((m for m in ok if m != ref), key=ok.get)
    p = s["significance"].get("p_value")
    # the paper reports a significant gain: a higher mean with p >= 0.05 is only the same direction
    ahead, significant = ok[ref] > ok[best], p is not None and p < SIGNIFICANT
    call = "same direction, not significant" if ahead and not significant else verdict_word(ahead)
    return [("FLR beats every baseline (Table 2)", f"{ref} NDCG@10 {ok[ref]:.4f} vs. best other ({best}) "
             f"{ok[best]:.4f}" + ("" if p is None else f", p = {p:.2g}"), call)]


def _ablation_findings(src: Sources) -> list[tuple[str, str, str]]:
    """Table 3: the full model is best, removing L_orth hurts most, no regulariser is worst."""
    if src.ablation is None:
        return [("Removing L_orth hurts most (Table 3)", "–", "not measured")]
    out = []
    g = src.ablation[1]
    full = g["grid"]["reference"]
    vals = {n: _mean(g["methods"].get(n), "ndcg@10") for n in g["grid"]["variants"]}
    vals = {n: v for n, v in vals.items() if v is not None}
    regs = {n: tuple(g["grid"]["variants"][n]["regularisers"]) for n in vals}
    if full in vals:
        out.append(("The full model (all three regularisers) is best (Table 3)", f"best: {max(vals, key=vals.get)} "
                    f"({max(vals.values()):.4f}); full {vals[full]:.4f}", verdict_word(max(vals, key=vals.get) == full)))
    minus_one = {next(t for t in ("orth", "div", "sparse") if t not in r_): n for n, r_ in regs.items() if len(r_) == 2}
    if len(minus_one) == 3:
        worst = min(minus_one, key=lambda t: vals[minus_one[t]])
        out.append(("Removing L_orth hurts most", f"removing L_{worst} hurts most (" + ", ".join(
            f"w/o {t} {vals[n]:.4f}" for t, n in minus_one.items()) + ")", verdict_word(worst == "orth")))
    none = [n for n, r_ in regs.items() if not r_]
    if none:
        out.append(("No regulariser is worst (Table 3)", f"none {vals[none[0]]:.4f}, worst: {min(vals, key=vals.get)}",
                    verdict_word(min(vals, key=vals.get) == none[0])))
    return out


def _k_sweep_findings(src: Sources) -> list[tuple[str, str, str]]:
    """Fig. 8: K=3 best, K=1 worst, each called against the sweep's seed noise."""
    if src.k_sweep is None:
        return [("K=3 is best on CDs, K=1 worst (Fig. 8)", "–", "not measured")]
    g = src.k_sweep[1]
    vals = {g["grid"]["variants"][n]["num_factors"]: _mean(g["methods"].get(n), "ndcg@10") for n in g["grid"]["variants"]}
    vals = {k: v for k, v in vals.items() if v is not None}
    noise = max((_std(g["methods"].get(n), "ndcg@10") for n in g["grid"]["variants"]), default=0.0)
    if not vals:
        return []
    txt = ", ".join(f"K={k}: {v:.4f}" for k, v in sorted(vals.items()))
    return [(claim, *_extreme_call(vals, k, sign, noise, txt))
            for claim, k, sign in (("K=3 is best on CDs (Fig. 8)", 3, 1), ("K=1 is worst (Fig. 8)", 1, -1))]


def _disentangle_findings(src: Sources) -> list[tuple[str, str, str]]:
    """Fig. 4: near-orthogonal factors (nothing when no disentanglement numbers were found)."""
    if not src.disentangle:
        return []
    d = src.disentangle[0][1]
    if d.get("s_avg") is None:
        return []
    return [("With the regularisers the factors are near-orthogonal: mean |off-diag.| ≈ 0.03 (Fig. 4)",
             f"S_avg {d['s_avg']:.3f}", verdict_word(d["s_avg"] <= 0.1))]


def _longtail_findings(longtail_rep: dict | None) -> list[tuple[str, str, str]]:
    """Fig. 7: FLR's gain over LatentR3 larger on unpopular items than on popular ones."""
    if longtail_rep and longtail_rep.get("improvement"):
        imp = longtail_rep["improvement"]
        # The paper compares FLR with LatentR3 (Fig. 7); a gain over any other method is not that finding.
        vs = next((m for m in ("latentr3", "latentr3_sft") if m in imp), None)
        ref_lt = imp[vs] if vs is not None and longtail_rep.get("reference") in FLR_METHODS else None
        if ref_lt is not None:
            pop, unpop = ref_lt["popular"].get("ndcg@10"), ref_lt["unpopular"].get("ndcg@10")
            if pop is not None and unpop is not None:
                return [("FLR's gain over LatentR3 is larger on the long tail (Fig. 7)",
                         f"NDCG@10 gain of {longtail_rep['reference']} over {vs}: popular {pop:+.1f}%, "
                         f"unpopular {unpop:+.1f}%", verdict_word(unpop > pop))]
    return [("FLR's gain over LatentR3 is larger on the long tail (Fig. 7)", "–", "not measured")]


def _cost_findings(cost_rep: dict | None) -> list[tuple[str, str, str]]:
    """Fig. 9: FLR costs about what no-thought decoding does; explicit CoT costs far more."""
    if not cost_rep:
        return [("FLR's inference cost ≈ no-thought (Fig. 9)", "–", "not measured")]
    out = []
    m = cost_rep["methods"]
    base = "bigrec" if "bigrec" in m else None
    if "flr" in m and base:
        ratio = m["flr"]["seconds_per_user"] / m[base]["seconds_per_user"]
        how = " (separately timed comparison cells)" if cost_rep.get("source") == "comparison" else ""
        out.append(("FLR's inference cost ≈ no-thought (Fig. 9)", f"flr / {base} = {ratio:.2f}× s/user{how}",
                    verdict_word(ratio <= 1.25)))
    if "cot" in m and "flr" in m:
        ratio = m["cot"]["seconds_per_user"] / m["flr"]["seconds_per_user"]
        out.append(("Explicit CoT costs far more (Fig. 9)", f"cot / flr = {ratio:.2f}× s/user", verdict_word(ratio >= 2)))
    else:
        out.append(("Explicit CoT costs far more (Fig. 9)", "cot not timed", "not measured"))
    return out


def build_report(inputs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/figures/*.png`` from ``inputs``; returns the report's path.

    An existing ``report.md`` is replaced only with ``overwrite=True`` (its ``figures/`` folder is
    then rebuilt).
    """
    out = check_output(out, inputs=inputs, replace=False, allow_inside=True)  # never an input, never a file
    src = find_sources(inputs)
    if (out / REPORT).exists():
        if not overwrite:
            raise FlrecError(f"{out / REPORT} exists; pass --overwrite to replace it, or another --out")
        shutil.rmtree(out / FIGURES, ignore_errors=True)
    r = _Report(out)
    names = ", ".join(str(Path(i)) for i in inputs)
    r.lines += [f"# {title or 'flrec report'}", "", f"Generated by `flrec report` from: {names}. Every number below "
                "is read from those files; nothing was re-run. Sections whose inputs are missing say which command "
                "produces them.", ""]
    if src.comparison is not None and src.comparison[1].get("budget"):
        b = src.comparison[1]["budget"]
        # wall_seconds is the last invocation's (finished cells are reused): the cells' sum is the cost.
        keep = {k: v for k, v in b.items() if not isinstance(v, dict | list) and v is not None and k != "wall_seconds"}
        if keep:
            r.h("Budget")
            r.p("\n".join(f"- **{k}**: {format_seconds(v) if k.endswith('seconds') and isinstance(v, int | float) else v}"
                          for k, v in keep.items()))
    lt = _longtail_report(src)
    cost = _cost_report(src)
    findings = paper_findings(src, lt, cost)
    r.h("The paper's findings and ours")
    r.p("\n".join(["| paper | ours | verdict |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in findings]))
    _section_comparison(r, src)
    _section_grid(r, src.ablation, "regularisers")
    _section_disentangle(r, src)
    _section_longtail(r, src, lt)
    _section_grid(r, src.k_sweep, "k")
    _section_cost(r, cost)
    _section_curves(r, src)
    atomic_write_text(out / REPORT, "\n".join(r.lines).rstrip() + "\n")
    return out / REPORT


def linked_figures(report: str | Path) -> list[Path]:
    """The image files a Markdown report links (relative to the report), for checks."""
    import re

    report = Path(report)
    text = report.read_text(encoding="utf-8")
    return [report.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]
