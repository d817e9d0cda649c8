"""The recommender contract (RecBole-style): ``fit`` / ``score`` / ``recommend`` / ``save`` / ``load``.

Evaluation is title-level for every method (the field's protocol for generative recommenders):
``recommend`` returns, per row, distinct catalogue titles best first with a score. ID models get
this for free from :meth:`Recommender.score` (full ranking over every item, then the first
occurrence of each title is kept). Generative models override :meth:`recommend` (constrained beam
search) and may leave :meth:`score` unimplemented.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from flrec.data.items import Ranked  # distinct titles, best first, with the method's score
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError

_REGISTRY: dict[str, type[Recommender]] = {}


def register_recommender(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    def deco(cls: type[Recommender]) -> type[Recommender]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_recommenders() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_recommender(name: str) -> type[Recommender]:
    _import_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _import_builtin() -> None:
    import importlib

    for mod in ("pop", "sequential", "alpharec", "llm", "grpo", "cot"):
        try:
            importlib.import_module(f"flrec.recommenders.{mod}")
        except ModuleNotFoundError as e:  # a module not built yet is simply not registered
            if e.name != f"flrec.recommenders.{mod}":
                raise


class Recommender(ABC):
    """One recommender. Subclasses set ``name`` via :func:`register_recommender`."""

    name: ClassVar[str] = "base"
    catalogue: Catalogue

    @abstractmethod
    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> Recommender:
        """Train on ``dataset['train']`` with early stopping on ``dataset['valid']``; return self."""

    def score(self, rows: Sequence[Interaction]) -> torch.Tensor:
        """Scores over the whole catalogue, shape ``(len(rows), n_items)``; higher is better."""
        raise NotImplementedError(f"{self.name} ranks by generation; use recommend()")

    def recommend(self, rows: Sequence[Interaction], k: int = 20, batch_size: int = 256) -> list[Ranked]:
        """Top-``k`` distinct titles per row (full ranking over the catalogue)."""
        out: list[Ranked] = []
        titles = self.catalogue.titles
        for start in range(0, len(rows), batch_size):
            scores = self.score(rows[start : start + batch_size]).float()
            # Take enough items that k distinct titles survive de-duplication.
            top = torch.topk(scores, min(scores.shape[1], k * 4 + 16), dim=1)
            for vals, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                seen: dict[str, float] = {}
                for v, i in zip(vals, idx, strict=True):
                    t = titles[i]
                    if t not in seen:
                        seen[t] = v
                        if len(seen) == k:
                            break
                out.append(list(seen.items()))
        return out

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write everything needed to :meth:`load` into directory ``path`` (atomically)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Recommender:
        """Restore a recommender saved by :meth:`save`."""
