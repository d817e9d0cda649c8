"""Long tail (paper RQ5, Fig. 7): metrics on popular vs. unpopular test targets, and the reference
method's relative improvement in each group.

*Popular* = the top 20% of catalogue items by train frequency
(:func:`flrec.evaluation.analysis.popular_items`); a test row belongs to the group of its target.
Every evaluation summary already holds these group metrics (``popularity``); this module averages
them over a comparison's seeds, so it needs no model and no dataset:

* from ``summary.json`` when the comparison recorded ``methods[m]["popularity"]`` (flrec ≥ this
  version), else
* from the cells (``cells/<method>/seed<s>/summary.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from flrec.errors import FlrecError
from flrec.evaluation.analysis import GROUPS, average_groups, relative_improvement

LONGTAIL_METRICS = ("hr@10", "ndcg@10")


def _from_cells(compare_dir: Path, methods: list[str]) -> dict[str, dict]:
    out = {}
    for m in methods:
        cells = sorted((compare_dir / "cells" / m).glob("seed*/summary.json"))
        groups = average_groups([json.loads(p.read_text()) for p in cells]) if cells else None
        if groups is not None:
            out[m] = groups
    return out


def longtail(compare_dir: str | Path, reference: str | None = None) -> dict:
    """Group metrics of every method of a finished comparison and ``reference``'s relative improvement.

    Returns ``{"reference", "popular_fraction", "methods": {m: {group: {"n_rows", metric: value}}},
    "improvement": {m: {group: {metric: % or None}}}}``. Raises if no method has group metrics.
    """
    compare_dir = Path(compare_dir)
    path = compare_dir / "summary.json"
    if not path.is_file():
        raise FlrecError(f"{path} not found; pass a folder written by `flrec compare` (or flrec ablate)")
    summary = json.loads(path.read_text())
    methods = list(summary.get("methods", {}))
    groups = {m: st["popularity"] for m, st in summary["methods"].items() if st and st.get("popularity")}
    missing = [m for m in methods if m not in groups]
    if missing:
        groups.update(_from_cells(compare_dir, missing))
    if not groups:
        raise FlrecError(f"{compare_dir}: no popular/unpopular group metrics (summary.json predates them and the "
                         "cells/ folder is absent); rerun `flrec compare` on the same --out to add them")
    ref = reference or summary.get("significance", {}).get("reference", "flr")
    return {"reference": ref, **longtail_from_groups({m: groups[m] for m in methods if m in groups}, ref)}


def longtail_from_groups(groups: dict[str, dict], reference: str) -> dict:
    """``methods`` and ``improvement`` (%) of ``reference`` over each other method per group."""
    frac = next(iter(groups.values())).get("popular_fraction") if groups else None
    imp: dict = {}
    if reference in groups:
        ref = groups[reference]
        for m, g in groups.items():
            if m == reference:
                continue
            imp[m] = {grp: {k: relative_improvement(ref[grp][k], g[grp][k]) for k in LONGTAIL_METRICS
                            if k in ref[grp] and k in g[grp]} for grp in GROUPS}
    return {"popular_fraction": frac,
            "methods": {m: {grp: g[grp] for grp in GROUPS} for m, g in groups.items()},
            "improvement": imp}


def format_longtail(rep: dict) -> str:
    """Markdown: each method's HR@10/NDCG@10 per group, then the reference's improvement."""
    lines = ["| method | " + " | ".join(f"{g} {k.upper()}" for g in GROUPS for k in LONGTAIL_METRICS) + " |",
             "|---|" + "---:|" * (len(GROUPS) * len(LONGTAIL_METRICS))]
    for m, g in rep["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{g[grp].get(k, float('nan')):.4f}" for grp in GROUPS
                                             for k in LONGTAIL_METRICS) + " |")
    n = next(iter(rep["methods"].values()), {})
    if n:
        lines += ["", "Rows: " + ", ".join(f"{grp} {n[grp]['n_rows']}" for grp in GROUPS) + "."]
    if rep["improvement"]:
        lines += ["", f"Relative improvement of {rep['reference']} (%):", "",
                  "| vs. | " + " | ".join(f"{g} {k.upper()}" for g in GROUPS for k in LONGTAIL_METRICS) + " |",
                  "|---|" + "---:|" * (len(GROUPS) * len(LONGTAIL_METRICS))]
        for m, g in rep["improvement"].items():
            lines.append(f"| {m} | " + " | ".join("n/a" if g[grp].get(k) is None else f"{g[grp][k]:+.2f}"
                                                 for grp in GROUPS for k in LONGTAIL_METRICS) + " |")
    return "\n".join(lines) + "\n"
