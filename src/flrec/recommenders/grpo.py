"""Two-stage recommenders for ``flrec compare``: SFT, then latent-space GRPO (:mod:`flrec.training.grpo`).

* ``flr_grpo`` — FLR, then FLR-GRPO (hybrid reward, per-group baseline, preset ``flr``): the paper's method.
* ``lr_grpo`` — FLR, then LR-GRPO: LatentR3's stage 2 on the FLR model (negative-perplexity reward,
  global baseline, preset ``latentr3`` by default: one iteration, beta_KL 0, absolute sigma 1.5,
  only the reasoner's Q/K/V). ``grpo.preset: flr`` keeps FLR-GRPO's settings instead, so only the
  reward and the baseline differ from ``flr_grpo`` (the paper's Table 4 ablation as flrec first ran it).
* ``latentr3`` — LatentR3's two stages: its SFT (the ``latentr3_sft`` method's model), then its RL
  stage with its own settings (variant ``lr``, preset ``latentr3``, both fixed).

``fit`` trains the SFT stage exactly as the SFT-only method does (same config and seed, so the same
model), or starts from a trained SFT run (``sft_dir``, e.g. the comparison's ``flr`` / ``latentr3_sft``
cells), then runs :func:`flrec.training.grpo.run_grpo`; ranking is the SFT-only method's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from flrec.config import option
from flrec.data.items import item_popularity_weights
from flrec.data.schema import RecDataset
from flrec.errors import ConfigError
from flrec.recommenders.base import register_recommender
from flrec.recommenders.llm import LLMRecConfig, LLMRecommender, _load_model
from flrec.training.grpo import GRPOConfig, run_grpo


@dataclass
class GRPORecConfig(LLMRecConfig):
    """An LLM recommender trained by SFT and then latent-space GRPO."""

    method_keys: ClassVar[tuple[str, ...]] = ("from_run", "run_dir", "variant")  # grpo.* the method sets

    grpo: dict[str, Any] = option(
        factory=dict, help="GRPO settings (flrec config grpo), e.g. {group_size: 8, preset: flr, train: {max_steps: "
        "32}}; from_run, run_dir and variant (latentr3: also preset) are set by the method")
    sft_dir: str | None = option(
        None, help="start from this SFT run instead of training one in fit; {seed} is replaced by the seed, e.g. "
        "runs/cmp/cells/flr/seed{seed}/sft (the flr cells of the same comparison: the same start)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = set(self.method_keys) & set(self.grpo)
        if bad:
            raise ConfigError(f"grpo.{sorted(bad)[0]} is set by the method (flr_grpo / lr_grpo / latentr3); remove it")
        self.grpo_config("unset")  # validate the overrides now, not after the SFT stage

    def grpo_config(self, from_run: str, run_dir: str = "runs/grpo", variant: str = "flr",
                    preset: str | None = None) -> GRPOConfig:
        over: dict[str, Any] = {**self.grpo, "from_run": from_run, "run_dir": run_dir, "variant": variant}
        if preset is not None:
            over["preset"] = preset
        if self.seed is not None:
            over["seed"] = self.seed
            over["train"] = {**over.get("train", {}), "seed": self.seed}
        return GRPOConfig.from_dict(over, source="grpo")


@dataclass
class LatentR3RecConfig(GRPORecConfig):
    """LatentR3's two stages: its SFT, then its RL stage with its own settings (preset latentr3)."""

    method_keys: ClassVar[tuple[str, ...]] = ("from_run", "run_dir", "variant", "preset")


class _GRPORec(LLMRecommender):
    """SFT (the SFT-only method of the same reasoner), then :func:`run_grpo` with ``variant``/``preset``."""

    config_cls: ClassVar[type] = GRPORecConfig
    variant: ClassVar[str] = "flr"
    preset: ClassVar[str | None] = None  # None: the user's grpo.preset, else the variant's

    def __init__(self, catalogue=None, config: LLMRecConfig | None = None):
        if config is not None and not isinstance(config, self.config_cls):  # e.g. one LLM YAML for every method
            config = self.config_cls.from_dict(config.to_dict(), source=f"{self.name} config")
        super().__init__(catalogue, config)

    def grpo_settings(self, start: Path, out: str) -> GRPOConfig:
        """The GRPO stage's config (the hook a two-stage method overrides through its class variables)."""
        cfg: GRPORecConfig = self.config  # type: ignore[assignment]
        return cfg.grpo_config(str(start), out, self.variant, self.preset)

    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> _GRPORec:
        cfg: GRPORecConfig = self.config  # type: ignore[assignment]
        if cfg.sft_dir is not None:
            start = Path(cfg.sft_dir.replace("{seed}", str(cfg.seed if cfg.seed is not None else cfg.sft.seed)))
            self.catalogue = dataset.catalogue
            self.item_popularity = item_popularity_weights(dataset)
        else:
            super().fit(dataset, run_dir)  # the SFT-only method's training
            start = Path(run_dir) / "sft" if run_dir is not None else Path(cfg.sft.run_dir)
        out = str(Path(run_dir) / "grpo") if run_dir is not None else f"runs/{self.name}"
        result = run_grpo(self.grpo_settings(start, out), dataset)
        self._attach(*_load_model(result["model_dir"]), dataset)
        return self


@register_recommender("flr_grpo")
class FLRGRPORec(_GRPORec):
    reasoner = "flr"
    variant = "flr"


@register_recommender("lr_grpo")
class LRGRPORec(_GRPORec):
    reasoner = "flr"
    variant = "lr"  # default preset latentr3; grpo.preset: flr for FLR-GRPO's settings


@register_recommender("latentr3")
class LatentR3TwoStageRec(_GRPORec):
    """LatentR3 as its paper ran it: ``latentr3_sft``'s SFT, then its RL stage (notes §4)."""

    config_cls = LatentR3RecConfig
    reasoner = "latentr3"
    variant = "lr"
    preset = "latentr3"
