"""Compare methods over seeds: one resumable cell per (method, seed), then a results table.

Layout under ``out``::

    cells/<method>/seed<seed>/   cell_fingerprint.json, fit outputs, model/, ranks.jsonl, summary.json
                                 (cell done) or error.txt
    summary.json                 {"methods", "significance", "significance_item", "significance_all",
                                  "relative_improvement", "budget"}
    summary.md                   the Markdown table (:func:`format_markdown`)

Every cell stores ``fingerprint.json`` (method, seed, the resolved method config without keys that
cannot change results, split/limit/beam and a content hash of the dataset). Before any work, every
existing cell is checked: a changed cell is refused with the differing keys named (``overwrite=True``
/ ``--force`` recomputes the changed cells), a finished identical one is reused. A cell that raises
is logged to its ``error.txt`` and reported as failed without stopping the other cells. Method names
are checked against the registry first (an unknown name is an error, and never becomes a path). Significance follows the
paper: a paired t-test of the reference method against the best other method (by mean NDCG@10)
on per-row NDCG@10, each row's value averaged over seeds first; ``significance_all`` holds the same
test of the reference against every other method (``{method: {"t", "p_value", "n"}}``).

**Both protocols in every table.** With ``protocol=item`` (the default) every cell is evaluated with
``eval.protocol=item``: besides the paper's title-level ranks, each row gets the rank of the target
*item* (titles split over their items; ID models rank items directly), and each method's summary has
``item_metrics`` (HR/NDCG@5/10, mean ± std over seeds) beside the title-level ones, and
``significance_item`` repeats the t-test on per-row item NDCG@10. A finished cell evaluated with the
title protocol (an older flrec, or ``protocol=title``) is re-ranked, not retrained: its title-level
files are kept as ``*.title-protocol.*`` and its saved model is evaluated again. ``expected_item_ndcg@10``
is always present: the title-level NDCG@10 with a hit on a title that m items share counted 1/m (the
expectation when a title stands for one of its items at random; no item ranking needed; tables call it
"expected item NDCG@10"). Not to be confused with the item protocol's NDCG@10 (``item_metrics``,
"item NDCG@10"; ``item_protocol_ndcg@10`` in ``significance_item`` and ``relative_improvement``).
Summaries written before the two had distinct names are read through
:func:`~flrec.experiments.compare_stats.upgrade_summary`.

The parts: :mod:`~flrec.experiments.compare_config` (the config), :mod:`~flrec.experiments.compare_cells`
(one cell: fingerprint, reuse, run), :mod:`~flrec.experiments.compare_stats` (seed means, t-tests,
improvements) and :mod:`~flrec.experiments.compare_table` (``summary.md``); this module runs them.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flrec.config import save_run_metadata
from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.evaluation.records import SUMMARY
from flrec.experiments.compare_cells import (
    CELL_FINGERPRINT,
    CellRunner,
    _check_cell,
    _needs_item_ranks,
    _run_cell,
    build_recommender,
    cell_fingerprint,
    default_fit_and_eval,
    log,
)
from flrec.experiments.compare_config import CompareConfig
from flrec.experiments.compare_stats import (
    ITEM_METRIC,
    SIG_METRIC,
    TABLE_METRICS,
    method_stats,
    reference_tests,
)
from flrec.experiments.compare_table import ITEM_TABLE_METRICS, MIN_ROWS_FOR_TEST, format_markdown
from flrec.utils.io import atomic_write_json, atomic_write_text, dir_lock
from flrec.utils.runid import dataset_hash
from flrec.utils.text import format_seconds

__all__ = [
    "CELL_FINGERPRINT", "ITEM_METRIC", "ITEM_TABLE_METRICS", "MIN_ROWS_FOR_TEST", "SIG_METRIC", "TABLE_METRICS",
    "CellRunner", "CompareConfig", "build_recommender", "cell_fingerprint", "default_fit_and_eval",
    "format_markdown", "run_comparison",
]  # fmt: skip


def _default_loader(data: str) -> RecDataset:
    from flrec.data.load import load_dataset  # lazy: D3 folder or embedded:synth

    return load_dataset(data)


def run_comparison(
    cfg: CompareConfig,
    fit_and_eval: CellRunner | None = None,
    *,
    dataset: RecDataset | None = None,
    budget: dict[str, Any] | None = None,
    load_dataset: Callable[[str], RecDataset] | None = None,
) -> dict:
    """Run every (method, seed) cell, aggregate, test significance, write ``summary.json``/``summary.md``.

    ``dataset`` skips loading ``cfg.data``; ``budget`` (e.g. device, planned hours) is merged into
    the summary's ``budget`` next to the measured wall time of each cell. Returns the summary.
    """
    runner = fit_and_eval or default_fit_and_eval
    if dataset is None:
        if not cfg.data:
            raise ConfigError("config key 'data': empty; pass --data DIR")
        dataset = (load_dataset or _default_loader)(cfg.data)
        if cfg.domain:
            dataset.domain = cfg.domain
    out = Path(cfg.out)
    with dir_lock(out, "comparison folder"):
        return _run_comparison(cfg, runner, dataset, budget, out)


def _run_comparison(cfg: CompareConfig, runner: CellRunner, dataset: RecDataset, budget: dict[str, Any] | None,
                    out: Path) -> dict:
    plan = _plan(cfg, dataset, out)
    rerank = {d for _m, _s, d, _f, _st in plan if cfg.protocol == "item" and _needs_item_ranks(d)}
    finished = sum(1 for _m, _s, d, _f, _st in plan if (d / SUMMARY).is_file() and d not in rerank)
    save_run_metadata(out, cfg, "compare")
    rows = "all" if cfg.limit is None else cfg.limit
    _say(f"compare: {len(plan)} cells ({len(cfg.methods)} methods), {finished} finished (reused), "
         f"{len(plan) - finished} to run on {rows} {cfg.split} rows each"
         + (f" ({sum((d / SUMMARY).is_file() for d in rerank)} finished with the title protocol: re-ranked for "
            "item-level metrics, not retrained)" if any((d / SUMMARY).is_file() for d in rerank) else "")
         + _estimate(out, plan))
    t_start = time.perf_counter()
    cells, done = _run_cells(plan, rerank, dataset, cfg, runner, t_start)
    methods = {method: method_stats(dirs, dataset) for method, dirs in done.items()}
    summary = {
        "methods": methods,
        **reference_tests(cfg, methods, done),
        "budget": {**cfg.budget, **(budget or {}), "machine": _machine(), "cells": cells, "wall_seconds": time.perf_counter() - t_start,
                   "cell_wall_seconds": sum(c["wall_seconds"] or 0.0 for c in cells.values())},
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_markdown(summary))
    return summary


def _plan(cfg: CompareConfig, dataset: RecDataset, out: Path) -> list[tuple]:
    """``(method, seed, cell_dir, fingerprint, status)`` of every cell, each existing cell checked and a
    changed one (with overwrite) deleted: a refusal must not come after hours of other cells."""
    data_hash = dataset_hash(dataset)
    plan = []
    for method in cfg.methods:
        for seed in cfg.seeds_of(method):
            cell_dir = out / "cells" / method / f"seed{seed}"
            fp = cell_fingerprint(method, seed, cfg, data_hash)
            plan.append((method, seed, cell_dir, fp, _check_cell(cell_dir, fp, cfg)))
    for method, seed, cell_dir, _fp, status in plan:
        if status == "changed":
            log.warning("cell %s/seed%d: settings changed, recomputing (overwrite)", method, seed)
            shutil.rmtree(cell_dir)
    return plan


def _run_cells(plan: list[tuple], rerank: set[Path], dataset: RecDataset, cfg: CompareConfig, runner: CellRunner,
               t_start: float) -> tuple[dict[str, dict], dict[str, list[Path]]]:
    """Run (or reuse) every cell in order: ``(budget entry per "method/seedN", finished cell folders per method)``."""
    cells: dict[str, dict] = {}
    done: dict[str, list[Path]] = {m: [] for m in cfg.methods}
    walls: dict[str, list[float]] = {}
    for i, (method, seed, cell_dir, fp, _status) in enumerate(plan, 1):
        todo = [m for m, _s, d, _f, _st in plan[i - 1:] if not (d / SUMMARY).is_file() or d in rerank]
        eta = _eta(todo, walls)
        _say(f"cell {i}/{len(plan)} {method} seed {seed}"
             + (" (finished, reused)" if (cell_dir / SUMMARY).is_file() and cell_dir not in rerank else "")
             + f"; elapsed {format_seconds(time.perf_counter() - t_start)}" + (f", ETA ~{eta}" if eta else ""))
        cells[f"{method}/seed{seed}"] = entry = _run_cell(method, seed, cell_dir, dataset, cfg, runner, fp)
        if entry["status"] == "ok":
            done[method].append(cell_dir)
            if not entry["reused"] and entry["wall_seconds"]:
                walls.setdefault(method, []).append(entry["wall_seconds"])
    return cells, done


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _say(msg: str) -> None:
    """Progress for people: stderr, so stdout stays the table (or one JSON document)."""
    print(msg, file=sys.stderr, flush=True)


def _eta(todo: list[str], walls: dict[str, list[float]]) -> str | None:
    """Remaining time from the mean wall time of cells run so far (per method, else overall)."""
    if not walls or not todo:
        return None
    overall = [w for ws in walls.values() for w in ws]
    mean_all = sum(overall) / len(overall)
    total = sum(sum(walls[m]) / len(walls[m]) if m in walls else mean_all for m in todo)
    return format_seconds(total)


def _estimate(out: Path, plan: list) -> str:
    """An up-front estimate from the wall times a previous run of this folder recorded, if any."""
    prev = out / "summary.json"
    if not prev.is_file():
        return "; no timing from an earlier run yet (an ETA follows after the first cell)"
    try:
        cells = json.loads(prev.read_text()).get("budget", {}).get("cells", {})
    except ValueError:
        return ""
    per_method: dict[str, list[float]] = {}
    for key, c in cells.items():
        if c.get("wall_seconds") and not c.get("reused"):
            per_method.setdefault(key.split("/")[0], []).append(c["wall_seconds"])
    todo = [m for m, _s, d, _f, _st in plan if not (d / SUMMARY).is_file()]
    eta = _eta(todo, per_method)
    return f"; estimated {eta} from the previous run's cell times" if eta else ""
