"""``flr_grpo`` and ``lr_grpo``: FLR after SFT and then FLR-GRPO / LR-GRPO, for ``flrec compare``.

``fit`` trains the SFT stage exactly as the ``flr`` method does (same config and seed, so the same
model), or starts from a trained SFT run (``sft_dir``, e.g. the comparison's ``flr`` cells), then runs
:func:`flrec.training.grpo.run_grpo`; ranking is the ``flr`` method's. Both variants from the same
start give the paper's Table 4 ablation (SFT -> LR-GRPO -> FLR-GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from flrec.config import option
from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.recommenders.base import register_recommender
from flrec.recommenders.llm import FLRRec, LLMRecConfig, _load_model
from flrec.training.grpo import GRPOConfig, run_grpo


@dataclass
class GRPORecConfig(LLMRecConfig):
    """An FLR recommender trained by SFT and then GRPO."""

    grpo: dict[str, Any] = option(
        factory=dict, help="GRPO settings (flrec config grpo), e.g. {group_size: 8, train: {max_steps: 32}}; "
        "from_run, run_dir and variant are set by the method")
    sft_dir: str | None = option(
        None, help="start from this SFT run instead of training one in fit; {seed} is replaced by the seed, e.g. "
        "runs/cmp/cells/flr/seed{seed}/sft (the flr cells of the same comparison: the same start)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = {"from_run", "run_dir", "variant"} & set(self.grpo)
        if bad:
            raise ConfigError(f"grpo.{sorted(bad)[0]} is set by the method (flr_grpo / lr_grpo); remove it")
        self.grpo_config("unset")  # validate the overrides now, not after the SFT stage

    def grpo_config(self, from_run: str, run_dir: str = "runs/grpo", variant: str = "flr") -> GRPOConfig:
        over: dict[str, Any] = {**self.grpo, "from_run": from_run, "run_dir": run_dir, "variant": variant}
        if self.seed is not None:
            over["seed"] = self.seed
            over["train"] = {**over.get("train", {}), "seed": self.seed}
        return GRPOConfig.from_dict(over, source="grpo")


class _GRPORec(FLRRec):
    config_cls = GRPORecConfig
    variant: ClassVar[str] = "flr"

    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> _GRPORec:
        cfg: GRPORecConfig = self.config  # type: ignore[assignment]
        if cfg.sft_dir is not None:
            from flrec.evaluation.analysis import item_popularity_weights

            start = Path(cfg.sft_dir.replace("{seed}", str(cfg.seed if cfg.seed is not None else cfg.sft.seed)))
            self.catalogue = dataset.catalogue
            self.item_popularity = item_popularity_weights(dataset)
        else:
            super().fit(dataset, run_dir)  # the flr method's SFT
            start = Path(run_dir) / "sft" if run_dir is not None else Path(cfg.sft.run_dir)
        out = str(Path(run_dir) / "grpo") if run_dir is not None else f"runs/{self.name}"
        result = run_grpo(cfg.grpo_config(str(start), out, self.variant), dataset)
        self._attach(*_load_model(result["model_dir"]), dataset)
        return self


@register_recommender("flr_grpo")
class FLRGRPORec(_GRPORec):
    variant = "flr"


@register_recommender("lr_grpo")
class LRGRPORec(_GRPORec):
    variant = "lr"
