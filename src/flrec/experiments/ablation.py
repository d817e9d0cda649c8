"""Ablations (paper Table 3) and the K sweep (Fig. 8) as comparisons of FLR variants.

``grid=regularisers`` runs FLR with every subset of ``{orth, div, sparse}`` (8 variants; the other
enabled regularisers, e.g. ``thought_sim``/``routing`` of flrec's default, stay on in every variant so
only the paper's three are ablated); ``grid=k`` runs ``flr.num_factors`` ∈ ``ks``. Each variant is a
named variant of the method (:attr:`CompareConfig.variants`) run by :func:`run_comparison`: the same
resumable cells (method × seed), mean ± std over seeds and the paired t-test (reference: the full
model / the configured K against the best other variant). The comparison's ``summary.json`` is
written as usual and copied, with the grid's description under ``grid``, to ``ablation.json`` or
``k_sweep.json`` in ``out``.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from flrec.config import ConfigBase, option
from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.experiments.compare import CellRunner, CompareConfig, run_comparison
from flrec.recommenders.base import get_recommender
from flrec.utils.io import atomic_write_json

ABLATED = ("orth", "div", "sparse")  # the paper's three regularisers (eqs. 5-7)
GRID_FILES = {"regularisers": "ablation.json", "k": "k_sweep.json"}


@dataclass
class AblateConfig(ConfigBase):
    data: str = option("", help="D3 dataset folder (info.txt + train/valid/test.csv) or embedded:synth")
    grid: Literal["regularisers", "k"] = option(
        "regularisers", help="regularisers: all 8 subsets of {orth, div, sparse} (Table 3); k: num_factors sweep (Fig. 8)")
    method: str = option("flr", help="the FLR-family method whose variants are compared")
    method_config: dict[str, Any] | str = option(
        factory=dict, help="the method's config (a mapping or a YAML path, as in compare's method_configs); every "
        "variant starts from it and changes only sft.flr.aux_losses or sft.flr.num_factors")
    ks: list[int] = option(factory=lambda: [1, 2, 3, 4], help="grid=k: the numbers of factors K to run")
    seeds: list[int] = option(factory=lambda: [1, 2, 3], help="training seeds; every variant runs every seed")
    limit: int | None = option(None, help="evaluate only the first N rows of the split (None = all)")
    split: str = option("test", help="split to evaluate")
    out: str = option("", help="output directory (default runs/ablate-<grid>)")
    batch_size: int = option(64, help="rows per recommend() call")
    beam: int = option(10, help="beam width = titles ranked per row")
    budget: dict[str, Any] = option(factory=dict, help="free-form compute budget, copied into the summary")
    domain: str | None = option(None, help="item word for LLM prompts, e.g. CD (default: the dataset's)")
    overwrite: bool = option(False, help="recompute cells whose settings changed (CLI: --force)")

    def __post_init__(self) -> None:
        if self.grid == "k":
            if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
                raise ConfigError(f"config key 'ks': {self.ks} must be distinct positive integers, e.g. 1,2,3,4")
        if not self.out:
            self.out = f"runs/ablate-{self.grid}"

    def base_config(self) -> dict[str, Any]:
        """The method config as a mapping (a YAML path is read here)."""
        mc = self.method_config
        if isinstance(mc, str):
            p = Path(mc)
            if not p.is_file():
                raise ConfigError(f"config key 'method_config': file {p} not found")
            mc = yaml.safe_load(p.read_text()) or {}
        if not isinstance(mc, dict):
            raise ConfigError(f"config key 'method_config': expected a mapping or a YAML path, got {type(mc).__name__}")
        return dict(mc)


def _resolved_flr(cfg: AblateConfig, base: dict[str, Any]):
    cls = get_recommender(cfg.method)
    config_cls = getattr(cls, "config_cls", None)
    if config_cls is None or "sft" not in {f.name for f in fields(config_cls)}:
        raise ConfigError(f"config key 'method': {cfg.method!r} is not an LLM recommender with an FLR module; use flr")
    rec_cfg = config_cls.from_dict(base, source="method_config")
    flr = rec_cfg.sft.flr.replace(reasoner=getattr(cls, "reasoner", rec_cfg.sft.flr.reasoner))
    if flr.reasoner != "flr":
        raise ConfigError(f"config key 'method': {cfg.method!r} has reasoner={flr.reasoner}; ablations need flr")
    return flr


def _with_flr(base: dict[str, Any], **flr: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.setdefault("sft", {}).setdefault("flr", {}).update(flr)
    return out


def build_grid(cfg: AblateConfig) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], str]:
    """``(variant configs, variant descriptions, reference variant)`` of the grid.

    Regulariser variants are named ``<method>-<terms>`` (``flr-orth+div+sparse`` ... ``flr-none``);
    K variants ``<method>-k<K>``. The reference is the full model / the config's K (else the largest K).
    """
    base = cfg.base_config()
    flr = _resolved_flr(cfg, base)
    configs: dict[str, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {}
    if cfg.grid == "regularisers":
        kept = [t for t in flr.aux if t not in ABLATED]  # not ablated: on in every variant
        for n in range(len(ABLATED), -1, -1):
            for subset in itertools.combinations(ABLATED, n):
                name = f"{cfg.method}-" + ("+".join(subset) if subset else "none")
                configs[name] = _with_flr(base, aux_losses=[*subset, *kept])
                described[name] = {"regularisers": list(subset), "also_on": kept}
        ref = f"{cfg.method}-" + "+".join(ABLATED)
    else:
        for k in cfg.ks:
            name = f"{cfg.method}-k{k}"
            configs[name] = _with_flr(base, num_factors=k)
            described[name] = {"num_factors": k}
        ref = f"{cfg.method}-k{flr.num_factors if flr.num_factors in cfg.ks else max(cfg.ks)}"
    return configs, described, ref


def compare_config(cfg: AblateConfig) -> tuple[CompareConfig, dict[str, dict[str, Any]]]:
    """The comparison that runs the grid, and the variants' descriptions."""
    configs, described, ref = build_grid(cfg)
    cc = CompareConfig(data=cfg.data, methods=list(configs), seeds=list(cfg.seeds), limit=cfg.limit, out=cfg.out,
                       method_configs=configs, split=cfg.split, reference=ref, batch_size=cfg.batch_size,
                       beam=cfg.beam, budget=dict(cfg.budget), domain=cfg.domain, overwrite=cfg.overwrite,
                       variants={name: cfg.method for name in configs})
    return cc, described


def run_ablation(cfg: AblateConfig, fit_and_eval: CellRunner | None = None, *, dataset: RecDataset | None = None,
                 load_dataset: Callable[[str], RecDataset] | None = None) -> dict:
    """Run the grid with the comparison runner; write and return ``ablation.json`` / ``k_sweep.json``.

    The result is the comparison's summary (``methods``, ``significance``, ``relative_improvement``,
    ``budget``) plus ``grid``: ``{"kind", "method", "reference", "variants": {name: description}}``.
    """
    cc, described = compare_config(cfg)
    summary = run_comparison(cc, fit_and_eval, dataset=dataset, load_dataset=load_dataset)
    result = {**summary, "grid": {"kind": cfg.grid, "method": cfg.method, "reference": cc.reference,
                                  "variants": described}}
    atomic_write_json(Path(cfg.out) / GRID_FILES[cfg.grid], result)
    return result


def format_grid(result: dict) -> str:
    """Markdown: the ablation (✓ per regulariser) or K-sweep table, mean ± std over seeds."""
    grid = result["grid"]
    metrics = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
    if grid["kind"] == "regularisers":
        head = ["L_orth", "L_div", "L_sparse"]
    else:
        head = ["K"]
    lines = ["| " + " | ".join(head + [m.upper() for m in metrics] + ["seeds"]) + " |",
             "|" + "---|" * len(head) + "---:|" * (len(metrics) + 1)]
    for name, desc in grid["variants"].items():
        st = result["methods"].get(name)
        if grid["kind"] == "regularisers":
            cells = ["✓" if t in desc["regularisers"] else "" for t in ABLATED]
        else:
            cells = [str(desc["num_factors"])]
        if not st or not st.get("n_seeds"):
            lines.append("| " + " | ".join(cells + ["failed"] * len(metrics) + ["0"]) + " |")
            continue
        n = st["n_seeds"]
        vals = [f"{st[m]['mean']:.4f}" + ("" if n == 1 else f" ± {st[m]['std']:.4f}") for m in metrics]
        lines.append("| " + " | ".join(cells + vals + [str(n)]) + " |")
    sig = result.get("significance", {})
    if sig.get("vs"):
        p = "n/a" if sig.get("p_value") is None else f"{sig['p_value']:.3g}"
        lines += ["", f"Paired t-test on per-row NDCG@10, {sig['reference']} vs. {sig['vs']}: p = {p}, n = {sig['n']}."]
    return "\n".join(lines) + "\n"


def load_grid(path: str | Path) -> dict:
    """Read an ``ablation.json`` / ``k_sweep.json`` written by :func:`run_ablation`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        data["grid"]["kind"], data["methods"]  # noqa: B018 - the keys every reader needs
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not an ablation/K-sweep result of `flrec ablate` ({e})") from None
    return data
