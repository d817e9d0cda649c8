"""PNG figures for the report (matplotlib, object API: no pyplot global state, no display needed).

Every function writes one PNG atomically and returns its path. Figures are small (≈ 6×3.5 in at
100 dpi) so committed reports stay light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flrec.errors import FlrecError
from flrec.utils.io import atomic_path

DPI = 80


def _figure(width: float = 6.0, height: float = 3.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def bar_chart(path: str | Path, labels: Sequence[str], values: Sequence[float | None], *, errors: Sequence[float] | None = None,
              ylabel: str = "", title: str = "", highlight: str | None = None, log_scale: bool = False) -> Path:
    """One bar per label (``None`` values are drawn as empty slots); ``highlight`` is drawn darker."""
    if not labels:
        raise FlrecError(f"bar chart {path}: nothing to plot")
    fig = _figure(max(4.0, 0.7 * len(labels) + 2), 3.2)
    ax = fig.subplots()
    vals = [np.nan if v is None else float(v) for v in values]
    colors = ["#1f4e79" if lab == highlight else "#7aa6d6" for lab in labels]
    ax.bar(range(len(labels)), vals, yerr=errors, color=colors, capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def grouped_bars(path: str | Path, groups: Sequence[str], series: Mapping[str, Sequence[float | None]], *,
                 ylabel: str = "", title: str = "") -> Path:
    """Bars per group (x axis) for each series (legend), e.g. methods × {popular, unpopular}."""
    if not groups or not series:
        raise FlrecError(f"grouped bars {path}: nothing to plot")
    fig = _figure(max(4.5, 1.2 * len(groups) + 2), 3.2)
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.3)  # room for the legend above the bars
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8, ncols=min(len(series), 4))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def line_plot(path: str | Path, x: Sequence[float], series: Mapping[str, Sequence[float | None]], *,
              errors: Mapping[str, Sequence[float]] | None = None, xlabel: str = "", ylabel: str = "",
              title: str = "") -> Path:
    """One line per series over ``x`` (with error bars where given)."""
    if not len(x) or not series:
        raise FlrecError(f"line plot {path}: nothing to plot")
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    for name, vals in series.items():
        ys = [np.nan if v is None else v for v in vals]
        ax.errorbar(x, ys, yerr=(errors or {}).get(name), marker="o", capsize=3, label=name)
    ax.set_xticks(list(x))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def heatmap(path: str | Path, matrix, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str = "",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis", annotate: bool = True,
            colorbar_label: str = "") -> Path:
    """A labelled matrix (rows × columns); long column labels (titles) are shortened to 28 characters."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)) or m.size == 0:
        raise FlrecError(f"heatmap {path}: matrix {m.shape} does not match {len(row_labels)} × {len(col_labels)} labels")
    fig = _figure(max(5.0, 0.55 * m.shape[1] + 2.5), max(2.5, 0.45 * m.shape[0] + 1.8))
    ax = fig.subplots()
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    short = [c if len(c) <= 28 else c[:27] + "…" for c in col_labels]
    ax.set_xticks(range(m.shape[1]), short, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(m.shape[0]), row_labels, fontsize=8)
    if annotate and m.size <= 120:
        for (i, j), v in np.ndenumerate(m):
            r, g, b, _ = im.cmap(im.norm(v))  # light text on dark cells, whatever the colormap
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=colorbar_label)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def panels(path: str | Path, panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]], *,
           xlabel: str = "step", ncols: int = 2) -> Path:
    """Small multiples: each panel ``(title, {series: (x, y)})`` is one line chart."""
    panels = [p for p in panels if p[1]]
    if not panels:
        raise FlrecError(f"panels {path}: nothing to plot")
    nrows = (len(panels) + ncols - 1) // ncols
    fig = _figure(4.0 * ncols, 2.6 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (title, series) in zip(axes, panels, strict=False):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)
