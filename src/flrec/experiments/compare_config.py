"""The configuration of a comparison (:class:`CompareConfig`: methods, seeds, per-method configs,
variants, the evaluation protocol); see :mod:`flrec.experiments.compare`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from flrec.config import ConfigBase, apply_overrides, option
from flrec.data.schema import SPLITS
from flrec.errors import ConfigError
from flrec.evaluation.metrics import EVAL_KS
from flrec.experiments.runner import EvalConfig
from flrec.recommenders.base import available_recommenders

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # variant names become cell folders


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
        "LLM methods; the table then shows the 1/m-discounted \"expected item NDCG@10\")")
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
