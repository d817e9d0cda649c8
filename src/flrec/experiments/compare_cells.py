"""One comparison cell, a (method, seed) pair in ``cells/<method>/seed<seed>/``: what its result
depends on (:func:`cell_fingerprint`), whether an existing folder may be reused, and running it
(fit, save, evaluate) with a failure kept to its own ``error.txt``; see :mod:`flrec.experiments.compare`."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.evaluation.records import RANKS, SUMMARY
from flrec.experiments.compare_config import CompareConfig
from flrec.experiments.runner import PARTIAL, PROGRESS, EvalConfig, evaluate
from flrec.recommenders.base import get_recommender
from flrec.utils.io import atomic_write_json, atomic_write_text
from flrec.utils.runid import (
    FINGERPRINT,
    claim_status,
    config_identity,
    make_fingerprint,
    model_identity,
    read_fingerprint,
    write_fingerprint,
)
from flrec.utils.seed import seed_everything

log = logging.getLogger("flrec.experiments.compare")  # one logger for the whole comparison

_CELL_KEYS = ("split", "limit", "beam")  # what a cell from an older flrec (no fingerprint.json) must match
CELL_FINGERPRINT = "cell_fingerprint.json"  # beside the evaluation's own fingerprint.json in the cell folder
# Method-config keys that cannot change a cell's result (anywhere in the nested config). Not
# "batch_size": for the ID models it is the *training* batch.
_COSMETIC_LEAVES = {"progress", "log_every", "tensorboard", "num_workers", "resume", "save_every", "keep_last",
                    "overwrite", "output_dir", "run_dir", "data"}

# fit_and_eval(method, seed, dataset, cell_dir, method_config, eval_cfg) -> evaluate()'s summary;
# it must leave ranks.jsonl and summary.json in cell_dir (evaluate(run_dir=cell_dir) does).
CellRunner = Callable[[str, int, RecDataset, Path, dict[str, Any], EvalConfig], dict]


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
    return claim_status(cell_dir, stored, fp, "comparison cell",
                        "rerun with --force (overwrite=true) to recompute the changed cells, or use another --out",
                        cfg.overwrite)


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
