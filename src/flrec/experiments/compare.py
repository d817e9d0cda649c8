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
files are kept as ``*.title-protocol.*`` and its saved model is evaluated again. ``item_ndcg@10``
is always present: the title-level NDCG@10 with a hit on a title that m items share counted 1/m (the
expectation when a title stands for one of its items at random; no item ranking needed).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from flrec.config import ConfigBase, apply_overrides, option, save_run_metadata
from flrec.data.schema import SPLITS, RecDataset
from flrec.errors import ConfigError
from flrec.evaluation.analysis import (
    average_groups,
    item_level_row_metric,
    paired_ttest_values,
    per_row_metric,
    relative_improvement,
    summarise_seeds,
)
from flrec.evaluation.metrics import EVAL_KS
from flrec.evaluation.records import RANKS, SUMMARY, load_ranks
from flrec.experiments.runner import PARTIAL, PROGRESS, EvalConfig, evaluate
from flrec.recommenders.base import available_recommenders, get_recommender
from flrec.utils.io import atomic_write_json, atomic_write_text, dir_lock
from flrec.utils.runid import (
    FINGERPRINT,
    config_identity,
    dataset_hash,
    diff,
    make_fingerprint,
    mismatch_message,
    model_identity,
    read_fingerprint,
    write_fingerprint,
)
from flrec.utils.seed import seed_everything
from flrec.utils.text import format_seconds, markdown_table

log = logging.getLogger(__name__)

TABLE_METRICS: tuple[str, ...] = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
SIG_METRIC = "ndcg@10"
ITEM_TABLE_METRICS: tuple[str, ...] = ("hr@10", "ndcg@10")  # item-protocol columns of the Markdown table
ITEM_METRIC = "ndcg@10"  # also reported with shared-title hits discounted (analysis.item_level_row_metric)
_CELL_KEYS = ("split", "limit", "beam")  # what a cell from an older flrec (no fingerprint.json) must match
CELL_FINGERPRINT = "cell_fingerprint.json"  # beside the evaluation's own fingerprint.json in the cell folder
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # variant names become cell folders
MIN_ROWS_FOR_TEST = 30  # below this many rows the t-test's p-value is printed with a caveat
# Method-config keys that cannot change a cell's result (anywhere in the nested config). Not
# "batch_size": for the ID models it is the *training* batch.
_COSMETIC_LEAVES = {"progress", "log_every", "tensorboard", "num_workers", "resume", "save_every", "keep_last",
                    "overwrite", "output_dir", "run_dir", "data"}

# fit_and_eval(method, seed, dataset, cell_dir, method_config, eval_cfg) -> evaluate()'s summary;
# it must leave ranks.jsonl and summary.json in cell_dir (evaluate(run_dir=cell_dir) does).
CellRunner = Callable[[str, int, RecDataset, Path, dict[str, Any], EvalConfig], dict]


@dataclass
class CompareConfig(ConfigBase):
    data: str = option("", help="D3 dataset folder (info.txt + train/valid/test.csv)")
    methods: list[str] = option(factory=list, help="methods to compare, e.g. flr,latentr3_sft,sasrec,pop (latentr3: its SFT + RL stage)")
    seeds: list[int] = option(factory=lambda: [1, 2, 3], help="training seeds; every method runs every seed")
    method_seeds: dict[str, list[int]] = option(
        factory=dict, help="seeds of particular methods, overriding seeds (e.g. {flr: [0]} for a costly method "
        "under a compute budget); the table reports each method's number of seeds")
    limit: int | None = option(None, help="evaluate only the first N rows of the split (None = all)")
    out: str = option("runs/compare", help="output directory (cells/, summary.json, summary.md)")
    method_configs: dict[str, Any] = option(
        factory=dict, help="per-method config: {method: {key: value}}, {method: path/to/config.yaml}, or a file "
        "plus dotted overrides, {method: {file: path/to/config.yaml, inference_dtype: auto, sft.train.lr: 1e-4}}"
    )
    split: str = option("test", help="split to evaluate")
    reference: str = option("flr", help="method tested for significance against the best other method")
    batch_size: int = option(64, help="rows per recommend() call")
    beam: int = option(10, help="titles requested per row (beam width for generative methods)")
    budget: dict[str, Any] = option(
        factory=dict, help="free-form description of the compute budget (training rows, device, ...), copied "
        "into summary.json's budget next to the measured wall time of every cell")
    domain: str | None = option(None, help="item word for LLM prompts, e.g. CD (default: the dataset's dataset.json)")
    protocol: Literal["title", "item"] = option(
        "item", help="item: every cell also ranks items (eval.protocol=item) and the table has item-level HR@10/"
        "NDCG@10 beside the title-level columns; title: the paper's title-level protocol only (cheaper for "
        "LLM methods; the table then shows the 1/m-discounted item NDCG@10)")
    overwrite: bool = option(False, help="recompute cells whose settings changed since they ran (CLI: --force); "
                             "without it such cells are refused; unchanged finished cells are always reused")
    variants: dict[str, str] = option(
        factory=dict, help="named variants of registered methods, {name: method} (e.g. {flr-k2: flr}): a variant "
        "runs its method with its own method_configs entry and is listed under its name (flrec ablate uses this)")

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("config key 'methods': empty; name at least one method, e.g. methods=pop,sasrec")
        known = available_recommenders()
        for name, base in self.variants.items():
            if base not in known:
                raise ConfigError(f"config key 'variants.{name}': unknown method {base!r}; available: {', '.join(known)}")
            if name in known or not _SAFE_NAME.fullmatch(name):
                raise ConfigError(f"config key 'variants': name {name!r} must differ from every registered method and "
                                  "use only letters, digits and . _ + - (it becomes a folder name)")
        unknown = [m for m in self.methods if self.base_method(m) not in known]
        if unknown:  # checked before any work: a typo must not cost a finished cell, nor become a path
            raise ConfigError(f"config key 'methods': unknown method {unknown[0]!r}; available: {', '.join(known)}")
        for key in ("methods", "seeds"):
            vals = getattr(self, key)
            if len(set(vals)) != len(vals):
                raise ConfigError(f"config key '{key}': {vals} has duplicates")
        if not self.seeds:
            raise ConfigError("config key 'seeds': empty; give at least one seed, e.g. seeds=1,2,3")
        for key in ("method_configs", "method_seeds"):
            # entries of methods not run now are fine (--methods runs a subset of a config); a name that
            # is neither a method nor a variant is a typo
            extra = sorted(set(getattr(self, key)) - set(self.methods) - set(known) - set(self.variants))
            if extra:
                raise ConfigError(f"config key '{key}': '{extra[0]}' is neither a method nor a variant; "
                                  f"methods here: {self.methods}")
        for method, seeds in self.method_seeds.items():  # from YAML/CLI already coerced to lists of ints
            if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(x, int) for x in seeds):
                raise ConfigError(f"config key 'method_seeds.{method}': {seeds} must be a non-empty list of "
                                  "distinct integer seeds, e.g. [0]")
        if self.split not in SPLITS:
            raise ConfigError(f"config key 'split': {self.split!r} is not one of {list(SPLITS)}")
        self.eval_config()  # validates limit, batch_size and beam early

    def base_method(self, name: str) -> str:
        """The registered method behind ``name`` (itself unless ``name`` is a variant)."""
        return self.variants.get(name, name)

    def seeds_of(self, method: str) -> list[int]:
        """The seeds ``method`` runs: ``method_seeds[method]`` if given, else ``seeds``."""
        return list(self.method_seeds.get(method, self.seeds))

    def eval_config(self) -> EvalConfig:
        # The table needs @5 and @10, so EvalConfig's check asks for beam >= 10.
        return EvalConfig(split=self.split, limit=self.limit, batch_size=self.batch_size, beam=self.beam,
                          ks=list(EVAL_KS), protocol=self.protocol)

    def method_config(self, method: str) -> dict[str, Any]:
        """The override dict for ``method`` (a YAML path is read here)."""
        mc = self.method_configs.get(method, {})
        if isinstance(mc, str):
            mc = {"file": mc}
        if not isinstance(mc, dict):
            raise ConfigError(f"method_configs.{method}: expected a mapping or a YAML path, got {type(mc).__name__}")
        if "file" not in mc:
            return dict(mc)
        # {file: path, key: value, ...}: the file's config with dotted overrides on top, so a variant
        # of a shipped config (another dtype, a reused model) does not copy the whole file.
        p = Path(str(mc["file"]))
        if not p.is_file():
            raise ConfigError(f"method_configs.{method}: file {p} not found")
        base = yaml.safe_load(p.read_text()) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"method_configs.{method}: {p} is not a mapping of config keys")
        over = [f"{k}={json.dumps(v)}" for k, v in mc.items() if k != "file"]
        return apply_overrides(base, over)


def build_recommender(method: str, dataset: RecDataset, method_config: dict[str, Any], seed: int):
    """``get_recommender(method)(catalogue, config)``.

    ``config`` is built from the overrides by the class's ``config_cls`` (a :class:`ConfigBase`),
    with ``seed`` set when that config has the key. A class without ``config_cls`` is built as
    ``cls(catalogue)`` and accepts no overrides.
    """
    cls = get_recommender(method)
    config_cls = getattr(cls, "config_cls", None)
    if config_cls is None:
        if method_config:
            raise ConfigError(f"method_configs.{method}: '{method}' declares no config_cls, so it takes no options")
        return cls(dataset.catalogue)
    mc = {**method_config, "seed": seed} if "seed" in {f.name for f in fields(config_cls)} else method_config
    return cls(dataset.catalogue, config_cls.from_dict(mc, source=f"method_configs.{method}"))


def default_fit_and_eval(
    method: str, seed: int, dataset: RecDataset, cell_dir: Path, method_config: dict[str, Any], eval_cfg: EvalConfig
) -> dict:
    """Build, fit on ``dataset`` (train/valid), save to ``cell_dir/model`` and evaluate one cell.

    A retried cell whose model was saved loads it and resumes the interrupted evaluation; without
    a saved model it refits and discards any partial evaluation (its rows came from another fit).
    """
    model_dir = cell_dir / "model"
    if model_dir.is_dir():
        rec = get_recommender(method).load(model_dir)
    else:
        seed_everything(seed)
        rec = build_recommender(method, dataset, method_config, seed)
        rec.fit(dataset, run_dir=cell_dir)
        rec.save(model_dir)
        for name in (PARTIAL, PROGRESS):
            (cell_dir / name).unlink(missing_ok=True)
    # identity={}: the cell's own fingerprint (method config, seed, data) already names this model.
    return evaluate(rec, dataset, eval_cfg.replace(seed=seed), run_dir=cell_dir, identity={})


def _default_loader(data: str) -> RecDataset:
    from flrec.data.load import load_dataset  # lazy: D3 folder or embedded:synth

    return load_dataset(data)


def cell_fingerprint(method: str, seed: int, cfg: CompareConfig, data_hash: str) -> dict:
    """What one cell's result depends on: method, seed, resolved method config, rows and data."""
    mc = cfg.method_config(method)
    config_cls = getattr(get_recommender(cfg.base_method(method)), "config_cls", None)
    resolved: dict[str, Any] = dict(mc)
    inputs: dict[str, Any] = {}
    if config_cls is not None:
        with_seed = {**mc, "seed": seed} if "seed" in {f.name for f in fields(config_cls)} else mc
        method_cfg = config_cls.from_dict(with_seed, source=f"method_configs.{method}")
        resolved = method_cfg.to_dict()
        # A reused trained model (llm_dir, assistant_dir) decides the result by its files, e.g. a
        # decoding.json that tune-decoding rewrites: hash them, not just the path.
        dirs = method_cfg.input_dirs() if hasattr(method_cfg, "input_dirs") else {}
        inputs = {key: model_identity(path) for key, path in dirs.items()}
        for key in method_cfg.inert_keys() if hasattr(method_cfg, "inert_keys") else ():
            resolved.pop(key, None)
    conf = {k: v for k, v in config_identity(resolved).items() if not _COSMETIC_LEAVES & set(k.split("."))}
    ev = cfg.eval_config()
    base = {"method": method, "seed": seed, "split": ev.split, "limit": ev.limit, "beam": ev.beam}
    if cfg.base_method(method) != method:
        base["variant_of"] = cfg.base_method(method)
    return make_fingerprint(base, config=conf, data={"hash": data_hash}, **({"inputs": inputs} if inputs else {}))


def _check_cell(cell_dir: Path, fp: dict, cfg: CompareConfig) -> str:
    """``"new"``, ``"same"`` or ``"changed"`` (refused unless overwrite) for an existing cell folder."""
    if not cell_dir.is_dir() or not any(cell_dir.iterdir()):
        return "new"
    stored = read_fingerprint(cell_dir, CELL_FINGERPRINT)
    if stored is None:  # a cell of an older flrec: only its rows were recorded
        if not (cell_dir / SUMMARY).is_file():
            return "changed" if cfg.overwrite else "same"
        prev = json.loads((cell_dir / SUMMARY).read_text()).get("eval_config", {})
        stored = {**fp, **{k: prev.get(k) for k in _CELL_KEYS if k in prev}}
    keys = diff(stored, fp)
    if keys and not cfg.overwrite:
        raise ConfigError(mismatch_message(cell_dir, "comparison cell", stored, fp, keys,
                                           "rerun with --force (overwrite=true) to recompute the changed cells, "
                                           "or use another --out"))
    return "changed" if keys else "same"


def _run_cell(method: str, seed: int, cell_dir: Path, dataset: RecDataset, cfg: CompareConfig,
              runner: CellRunner, fp: dict | None = None) -> dict:
    """Run or reuse one cell; returns its budget entry (status, wall time, error)."""
    if fp is not None and read_fingerprint(cell_dir, CELL_FINGERPRINT) is None:
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_fingerprint(cell_dir, fp, CELL_FINGERPRINT)
    if cfg.protocol == "item" and _needs_item_ranks(cell_dir):
        _set_title_protocol_aside(cell_dir)
    if (cell_dir / SUMMARY).is_file():
        prev = json.loads((cell_dir / SUMMARY).read_text())
        want = cfg.eval_config().to_dict()
        stale = {k: v for k, v in prev.get("eval_config", {}).items() if k in _CELL_KEYS and want[k] != v}
        if stale:  # reusing a cell run on other rows would silently mix protocols
            msg = f"finished with {stale}, now {({k: want[k] for k in stale})}; delete {cell_dir} or use another out"
            log.error("cell %s/seed%d %s", method, seed, msg)
            return {"status": "failed", "reused": True, "wall_seconds": None, "error": f"stale cell: {msg}"}
        return {"status": "ok", "reused": True, "wall_seconds": prev.get("wall_seconds")}
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        # A variant's cell runs its registered method (the folder and table keep the variant's name).
        runner(cfg.base_method(method), seed, dataset, cell_dir, cfg.method_config(method), cfg.eval_config())
        summary = json.loads((cell_dir / SUMMARY).read_text())
    except Exception as e:  # one broken method must not lose the other cells
        wall = time.perf_counter() - t0
        (cell_dir / SUMMARY).unlink(missing_ok=True)
        atomic_write_text(cell_dir / "error.txt", traceback.format_exc())
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.error("cell %s/seed%d failed (%s); see %s", method, seed, msg, cell_dir / "error.txt")
        return {"status": "failed", "reused": False, "wall_seconds": wall, "error": msg}
    wall = time.perf_counter() - t0
    atomic_write_json(cell_dir / SUMMARY, {**summary, "wall_seconds": wall})
    return {"status": "ok", "reused": False, "wall_seconds": wall}


def _needs_item_ranks(cell_dir: Path) -> bool:
    """Whether ``cell_dir`` holds an evaluation (finished or partial) made with the title protocol."""
    if (cell_dir / SUMMARY).is_file():
        return "item_metrics" not in json.loads((cell_dir / SUMMARY).read_text())
    stored = read_fingerprint(cell_dir)  # the evaluation's own fingerprint (a partial evaluation)
    return stored is not None and stored.get("protocol", "title") != "item"


_TITLE_ONLY = (SUMMARY, RANKS, FINGERPRINT, PARTIAL, PROGRESS)


def _set_title_protocol_aside(cell_dir: Path) -> None:
    """Rename a cell's title-protocol evaluation files to ``NAME.title-protocol.EXT`` (kept, never
    deleted) so the cell's saved model is evaluated again with item ranks; the fit is reused."""
    log.warning("cell %s: evaluated with the title protocol; re-ranking it for item-level metrics "
                "(the model is reused; the old files are kept as *.title-protocol.*)", cell_dir)
    for name in _TITLE_ONLY:
        src = cell_dir / name
        if src.is_file():
            stem, dot, ext = name.partition(".")
            src.replace(cell_dir / f"{stem}.title-protocol{dot}{ext}")


def _seed_averaged_rows(cell_dirs: list[Path], metric: str, rank_key: str = "rank") -> dict[int, float]:
    per_seed = [per_row_metric(load_ranks(d / RANKS), metric, rank_key) for d in cell_dirs]
    rows = set(per_seed[0])
    for d, vals in zip(cell_dirs, per_seed, strict=True):
        if set(vals) != rows:
            raise ConfigError(f"{d / RANKS} covers other rows than {cell_dirs[0] / RANKS}; delete the stale cell")
    return {r: sum(v[r] for v in per_seed) / len(per_seed) for r in rows}


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
    # Check every existing cell before any work: a refusal must not come after hours of other cells.
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

    methods: dict[str, dict] = {}
    for method, dirs in done.items():
        summaries = [json.loads((d / SUMMARY).read_text()) for d in dirs]
        methods[method] = {
            m: summarise_seeds([s["metrics"][m] for s in summaries]) if summaries else None for m in TABLE_METRICS
        }
        methods[method].update(
            n_seeds=len(summaries),
            n_rows=summaries[0]["n_rows"] if summaries else 0,
            # cost and the generic-title diagnostic, averaged over seeds (None where a cell lacks them)
            seconds_per_user=_mean([(s.get("inference") or {}).get("seconds_per_user") for s in summaries]),
            top1_distinct_share=_mean([(s.get("diagnostics") or {}).get("top1_distinct_share") for s in summaries]),
            # popular / unpopular target groups (the long-tail analysis, flrec.analysis.longtail), seed means
            popularity=average_groups(summaries) if summaries else None,
            **{f"item_{ITEM_METRIC}": _item_level(dirs, dataset)},
            # the item protocol (eval.protocol=item): None unless every finished cell has item ranks
            item_metrics={m: summarise_seeds([s["item_metrics"][m] for s in summaries]) for m in TABLE_METRICS}
            if summaries and all("item_metrics" in s for s in summaries) else None,
        )

    ok = [m for m in cfg.methods if methods[m]["n_seeds"] > 0]
    ref = cfg.reference
    others = [m for m in ok if m != ref]
    significance = _significance(cfg, methods, done, ok, others, item=False)
    with_items = [m for m in ok if methods[m]["item_metrics"] is not None]
    significance_item = _significance(cfg, methods, done, with_items, [m for m in with_items if m != ref], item=True)
    significance_all = _significance_all(ref, ok, done)
    rel: dict[str, dict[str, float | None]] = {}
    if ref in ok:  # no relative improvement over a zero baseline: it would print +0.00 or -100.00
        for m in others:
            rel[m] = {k: _rel(methods[ref][k], methods[m][k]) for k in TABLE_METRICS}
            if m in with_items and ref in with_items:
                rel[m][f"item_{ITEM_METRIC}"] = _rel(methods[ref]["item_metrics"][ITEM_METRIC],
                                                     methods[m]["item_metrics"][ITEM_METRIC])

    summary = {
        "methods": methods,
        "significance": significance,
        "significance_item": significance_item,
        "significance_all": significance_all,
        "relative_improvement": rel,
        "budget": {**cfg.budget, **(budget or {}), "machine": _machine(), "cells": cells, "wall_seconds": time.perf_counter() - t_start,
                   "cell_wall_seconds": sum(c["wall_seconds"] or 0.0 for c in cells.values())},
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_markdown(summary))
    return summary


def _significance(cfg: CompareConfig, methods: dict[str, dict], done: dict[str, list[Path]], ok: list[str],
                  others: list[str], item: bool) -> dict[str, Any]:
    """Paired t-test of the reference against the best other method on per-row NDCG@10 (averaged
    over seeds); ``item=True`` uses the item-level ranks (``item_metrics``) of both."""
    ref = cfg.reference
    out: dict[str, Any] = {"metric": f"item_{SIG_METRIC}" if item else SIG_METRIC, "reference": ref, "vs": None,
                           "p_value": None, "t": None, "n": 0}
    if ref not in ok:
        out["skipped"] = f"reference method '{ref}' " + (
            ("has no item-level ranks (eval.protocol=item)" if item else "has no finished seed")
            if ref in cfg.methods else "is not among the methods")
        return out
    if not others:
        out["skipped"] = "no other method finished" + (" with item-level ranks" if item else "")
        return out
    stat = (lambda m: methods[m]["item_metrics"][SIG_METRIC]["mean"]) if item else (lambda m: methods[m][SIG_METRIC]["mean"])
    best = max(others, key=stat)
    key = "item_rank" if item else "rank"
    test = paired_ttest_values(_seed_averaged_rows(done[ref], SIG_METRIC, key),
                               _seed_averaged_rows(done[best], SIG_METRIC, key))
    out.update(vs=best, p_value=test["p_value"], t=test["t"], n=test["n"])
    return out


def _significance_all(ref: str, ok: list[str], done: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """The reference paired against *every* other finished method on per-row NDCG@10 (seed-averaged):
    ``{method: {"t", "p_value", "n"}}``; empty when the reference has no finished seed."""
    if ref not in ok:
        return {}
    mine = _seed_averaged_rows(done[ref], SIG_METRIC, "rank")
    out = {}
    for m in ok:
        if m != ref:
            test = paired_ttest_values(mine, _seed_averaged_rows(done[m], SIG_METRIC, "rank"))
            out[m] = {"t": test["t"], "p_value": test["p_value"], "n": test["n"]}
    return out


def _rel(ref: dict, other: dict) -> float | None:
    return None if other["mean"] == 0 else relative_improvement(ref["mean"], other["mean"])


def _item_level(cell_dirs: list[Path], dataset: RecDataset) -> dict[str, float] | None:
    if not cell_dirs:
        return None
    vals = [item_level_row_metric(load_ranks(d / RANKS), dataset.catalogue, ITEM_METRIC) for d in cell_dirs]
    return summarise_seeds([sum(v.values()) / max(len(v), 1) for v in vals])


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


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


def _fmt(stat: dict | None, n: int = 2) -> str:
    if stat is None:
        return "failed"
    # One seed has no spread to report: "± 0.0000" would claim a measured zero variance.
    return f"{stat['mean']:.4f} ± –" if n == 1 else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def format_markdown(summary: dict) -> str:
    """The results table of a comparison summary (mean ± std over seeds), improvements, p-value."""
    sig = summary["significance"]
    ref = sig["reference"]
    rel = summary["relative_improvement"]
    item = f"item_{ITEM_METRIC}"
    # With item-level ranks (protocol=item) the item columns are that protocol's HR/NDCG@10; a summary
    # without them (protocol=title, older runs) keeps its one 1/m-discounted column, as first published.
    ranked = any(st.get("item_metrics") for st in summary["methods"].values())
    item_cols = ITEM_TABLE_METRICS if ranked else (ITEM_METRIC,)
    head = ["method", *[m.upper() for m in TABLE_METRICS], *[f"item {m.upper()}" for m in item_cols], "seeds", "rows",
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
            icells = ["" if st.get(item) is None else _fmt(st[item], n)]
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
        lines += ["", "Item columns: the rank of the target *item* (a title shared by m items is split over them; "
                  "ID models rank items)" + ("; n/a: cells evaluated with the title protocol only." if na else ".")]
    if rel:
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

