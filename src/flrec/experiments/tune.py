"""``flrec tune-decoding``: choose the decoding of a trained LLM recommender on validation rows.

The decoding options themselves live in :mod:`flrec.decoding.scoring`; this is the experiment that
searches them (it loads a recommender, hence its place above the recommenders).

The grid is ``scorings × length_penalties × gammas`` beam searches (``gammas`` only with an
assistant; ``gamma = 1`` is plain decoding) times ``alphas`` (the PMI prior only re-ranks a search's
candidates, so every alpha reuses that search). Each point is scored on the *validation* split
(the test split is refused) by ``metric`` under ``protocol`` (item-level by default: the issue's
problem is generic titles that name many items), with title-level and item-level HR/NDCG, and
the distinct-top-1 share recorded beside it. The best point wins; ties go to the earlier point
of the grid, whose first point is today's decoding. With ``title_floor`` only points whose
title-level metric is at least that factor times the first point's qualify (the issue's goal: more
item-level quality without losing title-level quality); with ``distinct_floor`` only points whose
distinct-top-1 share reaches it (against generic-title collapse). When no point qualifies, the
first point is chosen. :func:`choose` is the selection alone, so a finished search can be
re-selected under other floors without decoding again.

Outputs, in the model directory (never overwritten without ``force``):

* ``decoding.json`` — the best plain decoding (gamma = 1), which loading applies
  (:meth:`~flrec.recommenders.llm.LLMRecommender.apply_decoding_file`);
* ``decoding+assistant.json`` — with an assistant: the best point overall, used only by the
  assisted method (``flr+sasrec``), never by plain FLR;
* the whole search (every point, its metrics, the chosen ones) as JSON (``decoding_search.json``
  by default). A rerun resumes from ``<search>.partial.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from flrec.config import ConfigBase, option
from flrec.data.items import item_popularity_weights
from flrec.data.schema import RecDataset
from flrec.decoding.scoring import SCORINGS, DecodingConfig
from flrec.errors import ConfigError, FlrecError
from flrec.evaluation.metrics import TUNE_KS, metrics_from_ranks, target_rank
from flrec.models.folder import ASSISTED_DECODING_FILE, DECODING_FILE, SEARCH_FILE, resolve_model_dir
from flrec.recommenders.folder import open_model_dir
from flrec.recommenders.llm import LLMRecConfig, load_saved_recommender
from flrec.utils.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class TuneConfig(ConfigBase):
    """What ``flrec tune-decoding`` searches and how it scores a point."""

    split: str = option("valid", help="rows to tune on: valid (or train); test is refused")
    limit: int | None = option(500, help="tune on the first N rows of the split (None = all)")
    scorings: list[str] = option(factory=lambda: list(SCORINGS), help="token scorings to try")
    length_penalties: list[float] = option(
        factory=lambda: [1.0, 0.0], help="length normalisation exponents to try (1.0 = HF default, 0.0 = plain sum)")
    alphas: list[float] = option(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], help="PMI prior weights to try")
    gammas: list[float] = option(
        factory=lambda: [1.0, 0.75, 0.5, 0.25, 0.0], help="assistant weights to try (only with an assistant)")
    base: DecodingConfig = option(
        factory=DecodingConfig, help="the options that are not searched (exclude_seen, item_tiebreak, zero_gain_weight...)")
    protocol: Literal["title", "item"] = option("item", help="protocol of the objective: title or item ranks")
    metric: str = option("ndcg@10", help="objective: hr@K or ndcg@K (mean over the rows)")
    title_floor: float = option(
        0.0, help="a point qualifies only if its title-level metric >= title_floor x that of the grid's first "
        "point (with the default grid: today's decoding); e.g. 1.0 = never trade title-level quality for the "
        "objective. 0 = no constraint")
    distinct_floor: float = option(
        0.0, help="a point qualifies only if its distinct-top-1 share (distinct first titles / rows) >= this; "
        "e.g. 0.5 keeps decodings that do not collapse onto a few generic titles. 0 = no constraint")
    batch_size: int = option(8, help="users decoded together")
    out: str | None = option(None, help="search JSON (default: MODEL_DIR/decoding_search.json)")
    force: bool = option(False, help="overwrite an existing decoding.json / search file")

    def __post_init__(self) -> None:
        if self.split == "test":
            raise ConfigError("config key 'split': tuning on test would leak it into the reported results; use valid")
        if self.split not in ("train", "valid"):
            raise ConfigError(f"config key 'split': {self.split!r} is not valid or train")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"config key 'limit': {self.limit} must be >= 1, or null for all rows")
        bad = [s for s in self.scorings if s not in SCORINGS]
        if bad or not self.scorings:
            raise ConfigError(f"config key 'scorings': {bad or '[]'} — use a non-empty subset of {list(SCORINGS)}")
        for key in ("length_penalties", "alphas", "gammas"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}': empty; give at least one value")
        if any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ConfigError(f"config key 'gammas': {self.gammas} must lie in [0, 1]")
        name, _, k = self.metric.partition("@")
        if name not in ("hr", "ndcg") or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"config key 'metric': {self.metric!r}; use hr@K or ndcg@K, e.g. ndcg@10")
        if self.title_floor < 0:
            raise ConfigError(f"config key 'title_floor': {self.title_floor} must be >= 0 (0 = no constraint)")
        if not 0.0 <= self.distinct_floor <= 1.0:
            raise ConfigError(f"config key 'distinct_floor': {self.distinct_floor} must lie in [0, 1] (0 = no constraint)")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'batch_size': {self.batch_size} must be >= 1")


def _point_key(p: dict) -> str:
    return json.dumps([p["decoding"]["scoring"], p["length_penalty"], p["decoding"]["gamma"],
                       p["decoding"]["pmi_alpha"]])


def check_tune_outputs(model_dir: Path, cfg: TuneConfig, assisted: bool) -> tuple[Path, list[Path]]:
    """The search file and the decoding file(s) a tuning writes; refused (before any work) when they exist
    and ``cfg.force`` is not set."""
    out = Path(cfg.out) if cfg.out else model_dir / SEARCH_FILE
    targets = [model_dir / DECODING_FILE] + ([model_dir / ASSISTED_DECODING_FILE] if assisted else [])
    existing = [p for p in [*targets, out] if p.exists()]
    if existing and not cfg.force:
        raise FlrecError(f"{existing[0]} exists; pass --force (force=true) to replace it, or --out for another search file")
    return out, targets


def tune_decoding(recommender, dataset: RecDataset, cfg: TuneConfig, model_dir: str | Path) -> dict:
    """Search the grid of ``cfg`` with ``recommender`` (an LLM recommender; its ``assistant`` enables
    ``gammas``) on ``dataset[cfg.split]``; write the choice(s) into ``model_dir`` and return the search."""
    model_dir = Path(model_dir)
    assisted = recommender.assistant is not None
    out, targets = check_tune_outputs(model_dir, cfg, assisted)
    if cfg.split not in dataset.splits or not dataset[cfg.split]:
        raise ConfigError(f"split '{cfg.split}' is missing or empty in dataset '{dataset.name}'; tune needs its rows")
    rows = dataset[cfg.split][: cfg.limit]
    k = int(cfg.metric.partition("@")[2])
    beam = recommender.config.beam
    if beam < k:
        raise ConfigError(f"the recommender's beam ({beam}) < the metric's K ({k}); raise beam or lower the metric's K")
    if recommender.item_popularity is None:
        recommender.item_popularity = item_popularity_weights(dataset)
    recommender.config = recommender.config.replace(batch_size=cfg.batch_size)

    settings = {"split": cfg.split, "rows": len(rows), "beam": beam, "protocol": cfg.protocol, "metric": cfg.metric,
                "base": cfg.base.to_dict(), "assistant": getattr(recommender.assistant, "name", None)}
    partial = out.with_name(out.name + ".partial")
    points: dict[str, dict] = {}
    if partial.is_file():
        prev = json.loads(partial.read_text())
        if prev.get("settings") != settings:
            raise FlrecError(f"{partial} was written with other settings; delete it or re-run with the same ones")
        points = {_point_key(p): p for p in prev["points"]}

    gammas = cfg.gammas if assisted else [1.0]
    searches = [(s, lp, g) for g in gammas for s in cfg.scorings for lp in cfg.length_penalties]
    ks = sorted({*TUNE_KS, k})
    for scoring, lp, gamma in tqdm(searches, desc="tune-decoding", unit="search", disable=None):
        dec = cfg.base.replace(scoring=scoring, gamma=gamma, pmi_alpha=0.0)
        todo = [a for a in cfg.alphas if _point_key(_point(dec.replace(pmi_alpha=a), lp)) not in points]
        if not todo:
            continue
        cands, probs = recommender.decode_candidates(rows, dec, lp)
        for alpha in todo:
            d = dec.replace(pmi_alpha=alpha)
            titles, items = recommender.finalise(rows, cands, probs, d, lp, k=beam)
            p = _point(d, lp)
            p.update(_measure(dataset, rows, titles, items, ks))
            points[_point_key(p)] = p
        atomic_write_json(partial, {"settings": settings, "points": list(points.values())})

    ordered = [points[_point_key(_point(cfg.base.replace(scoring=s, gamma=g, pmi_alpha=a), lp))]
               for s, lp, g in searches for a in cfg.alphas]
    choices = choose(ordered, cfg, assisted)
    result = {"settings": settings, "objective": f"{cfg.protocol}:{cfg.metric}", "search_file": str(out),
              "title_floor": {"factor": cfg.title_floor, "reference": ordered[0],
                              "value": _title_floor_value(ordered, cfg)},
              "distinct_floor": cfg.distinct_floor,
              "points": ordered,
              "chosen": {name: {**p, "file": str(model_dir / name)} for name, p in choices.items()}}
    obj = _objective_key(cfg)
    for name, p in choices.items():
        atomic_write_json(model_dir / name, {
            "length_penalty": p["length_penalty"], "decoding": p["decoding"],
            "selected_on": {"split": cfg.split, "rows": len(rows), "objective": result["objective"],
                            "value": p[obj][cfg.metric]},
            "search": str(out)})
    atomic_write_json(out, result)
    partial.unlink(missing_ok=True)
    return result


def _objective_key(cfg: TuneConfig) -> str:
    return "item_metrics" if cfg.protocol == "item" else "title_metrics"


def _title_floor_value(points: list[dict], cfg: TuneConfig) -> float:
    return cfg.title_floor * points[0]["title_metrics"][cfg.metric]


def choose(points: list[dict], cfg: TuneConfig, assisted: bool = False) -> dict[str, dict]:
    """The chosen point(s) of a search, ``points`` in grid order (the first is the reference).

    A point qualifies when title ``metric`` >= ``title_floor`` × the first point's and
    ``top1_distinct_share`` >= ``distinct_floor``; the qualifying point with the best objective wins,
    the earlier one on ties, the first point when none qualifies. Returns ``{decoding.json: best with
    gamma = 1}`` plus, when ``assisted``, ``{decoding+assistant.json: best overall}``.
    """
    obj, metric = _objective_key(cfg), cfg.metric
    floor = _title_floor_value(points, cfg)

    def best(cands: list[dict]) -> dict:
        ok = [p for p in cands if p["title_metrics"][metric] >= floor
              and p["top1_distinct_share"] >= cfg.distinct_floor] or [points[0]]
        return max(ok, key=lambda p: p[obj][metric])  # max keeps the first of equals: grid order

    choices = {DECODING_FILE: best([p for p in points if p["decoding"]["gamma"] >= 1.0])}
    if assisted:
        choices[ASSISTED_DECODING_FILE] = best(points)
    return choices


def _point(dec: DecodingConfig, lp: float) -> dict[str, Any]:
    return {"decoding": dec.to_dict(), "length_penalty": float(lp)}


def _measure(dataset: RecDataset, rows, titles, items, ks) -> dict:
    cat = dataset.catalogue
    t_ranks = [target_rank([t for t, _ in r], cat.title(row.target)) for row, r in zip(rows, titles, strict=True)]
    i_ranks = [target_rank([i for i, _ in r], row.target) for row, r in zip(rows, items, strict=True)]
    top1 = Counter(r[0][0] for r in titles if r)
    return {"title_metrics": metrics_from_ranks(t_ranks, ks), "item_metrics": metrics_from_ranks(i_ranks, ks),
            "top1_distinct_share": len(top1) / max(sum(top1.values()), 1)}


def tune_model_dir(model: str | Path, dataset: RecDataset, cfg: TuneConfig, assistant: str | Path | None = None,
                   dtype: str = "float32") -> dict:
    """Load the model at ``model`` (a run dir or model dir; see :func:`flrec.models.folder.resolve_model_dir`),
    optionally an assistant saved by an ID recommender's ``save``, and run :func:`tune_decoding`."""
    model_dir = resolve_model_dir(model)
    check_tune_outputs(model_dir, cfg, assistant is not None)  # before the model is read, not after the search
    rec_cfg = LLMRecConfig(inference_dtype=dtype, batch_size=cfg.batch_size, use_tuned_decoding=False)
    rec = open_model_dir(model_dir, dataset.catalogue, rec_cfg, domain=dataset.domain)
    if assistant is not None:
        rec.attach_assistant(load_saved_recommender(assistant))
    return tune_decoding(rec, dataset, cfg, model_dir)
