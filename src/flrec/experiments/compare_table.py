"""The Markdown table of a comparison summary (``summary.md``); see :mod:`flrec.experiments.compare`."""

from __future__ import annotations

from flrec.experiments.compare_stats import (
    EXPECTED_ITEM_KEY,
    ITEM_METRIC,
    ITEM_PROTOCOL_KEY,
    SIG_METRIC,
    TABLE_METRICS,
    upgrade_summary,
)
from flrec.utils.text import markdown_table

ITEM_TABLE_METRICS: tuple[str, ...] = ("hr@10", "ndcg@10")  # item-protocol columns of the Markdown table
MIN_ROWS_FOR_TEST = 30  # below this many rows the t-test's p-value is printed with a caveat


def _fmt(stat: dict | None, n: int = 2) -> str:
    if stat is None:
        return "failed"
    # One seed has no spread to report: "± 0.0000" would claim a measured zero variance.
    return f"{stat['mean']:.4f} ± –" if n == 1 else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def format_markdown(summary: dict) -> str:
    """The results table of a comparison summary (mean ± std over seeds), improvements, p-value.

    Two item-level NDCG@10s, named apart: "item NDCG@10" is the item protocol's (``item_metrics``,
    the rank of the target item); "expected item NDCG@10" (``expected_item_ndcg@10``) is the
    title-level value with a hit on a title that m items share counted 1/m. A summary written before
    the names were told apart is read through :func:`~flrec.experiments.compare_stats.upgrade_summary`.
    """
    summary = upgrade_summary(summary)
    sig = summary["significance"]
    ref = sig["reference"]
    rel = summary["relative_improvement"]
    # With item-level ranks (protocol=item) the item columns are that protocol's HR/NDCG@10; a summary
    # without them (protocol=title, older runs) keeps its one 1/m-discounted column, as first published.
    ranked = any(st.get("item_metrics") for st in summary["methods"].values())
    item_cols = ITEM_TABLE_METRICS if ranked else (ITEM_METRIC,)
    item_heads = [f"item {m.upper()}" for m in item_cols] if ranked else [f"expected item {ITEM_METRIC.upper()}"]
    head = ["method", *[m.upper() for m in TABLE_METRICS], *item_heads, "seeds", "rows",
            "s/user", "distinct top-1", f"{ref} vs. method (N@10)"]
    body = []
    for name, st in summary["methods"].items():
        imp = rel.get(name, {}).get(SIG_METRIC)
        spu, top1 = st.get("seconds_per_user"), st.get("top1_distinct_share")
        n = st["n_seeds"]
        if ranked:
            im = st.get("item_metrics")
            icells = ["failed" if n == 0 else "n/a" if im is None else _fmt(im[m], n) for m in item_cols]
        else:
            icells = ["" if st.get(EXPECTED_ITEM_KEY) is None else _fmt(st[EXPECTED_ITEM_KEY], n)]
        cells = [_fmt(st[m], n) for m in TABLE_METRICS] + icells + [str(n), str(st["n_rows"]),
            "" if spu is None else f"{spu:.4f}", "" if top1 is None else f"{top1:.1%}",
            "" if name not in rel else ("n/a" if imp is None else f"{imp:+.2f}%")]
        body.append([name, *cells])
    lines = [*markdown_table(head, body, numeric=True), ""]
    if sig.get("skipped"):
        lines.append(f"Significance test skipped: {sig['skipped']}.")
    else:
        p = "n/a" if sig["p_value"] is None else f"{sig['p_value']:.3g}"
        t = "n/a" if sig["t"] is None else f"{sig['t']:.3f}"
        lines.append(f"Paired t-test on per-row {sig['metric'].upper()} (averaged over seeds), {ref} vs. "
                     f"{sig['vs']}: t = {t}, p = {p}, n = {sig['n']} rows.")
        if sig["n"] < MIN_ROWS_FOR_TEST:
            lines.append(f"Caveat: only {sig['n']} rows (< {MIN_ROWS_FOR_TEST}); the t-test's normal approximation "
                         "is unreliable here, so treat p as indicative only.")
    every = summary.get("significance_all") or {}
    if len(every) > 1:  # the headline test above is against the best other method; here against each
        lines.append(f"{ref} paired against every method (per-row {SIG_METRIC.upper()}): " + "; ".join(
            f"{m} t = {'n/a' if v['t'] is None else format(v['t'], '.3f')}, "
            f"p = {'n/a' if v['p_value'] is None else format(v['p_value'], '.3g')}" for m, v in every.items()) + ".")
    isig = summary.get("significance_item") or {}
    if ranked and isig.get("vs"):
        p = "n/a" if isig["p_value"] is None else f"{isig['p_value']:.3g}"
        t = "n/a" if isig["t"] is None else f"{isig['t']:.3f}"
        lines.append(f"Item level (eval.protocol=item), per-row item NDCG@10, {ref} vs. {isig['vs']}: "
                     f"t = {t}, p = {p}, n = {isig['n']} rows.")
    if ranked:
        na = any(st["n_seeds"] and not st.get("item_metrics") for st in summary["methods"].values())
        lines += ["", "Item columns (item protocol): the rank of the target *item* (a title shared by m items is "
                  "split over them; ID models rank items)"
                  + ("; n/a: cells evaluated with the title protocol only." if na else ".")]
    else:
        lines += ["", f"Expected item {ITEM_METRIC.upper()}: the title-level value with a hit on a title that m "
                  "items share counted 1/m (no item ranking; protocol=item ranks items)."]
    if rel:
        item = ITEM_PROTOCOL_KEY
        cols = [*TABLE_METRICS] + ([item] if any(item in v for v in rel.values()) else [])
        lines += ["", f"Relative improvement of {ref} over each method (%):", "",
                  "| method | " + " | ".join(m.upper() if m != item else f"item {ITEM_METRIC.upper()}" for m in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name, imps in rel.items():
            lines.append(f"| {name} | " + " | ".join("n/a" if imps.get(c) is None else f"{imps[c]:+.2f}" for c in cols)
                         + " |")
    failed = {k: c for k, c in summary["budget"].get("cells", {}).items() if c["status"] == "failed"}
    if failed:
        lines += ["", "Failed cells (see cells/<method>/seed<seed>/error.txt):", ""]
        lines += [f"- {k}: {c.get('error', '')}" for k, c in failed.items()]
    return "\n".join(lines) + "\n"
