"""Most-popular baseline: every row gets the same ranking by train target count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from flrec.config import ConfigBase, save_run_metadata
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import FlrecError
from flrec.recommenders.base import Recommender, register_recommender
from flrec.recommenders.sequential import read_checkpoint, targets_of, write_checkpoint


@dataclass
class PopConfig(ConfigBase):
    """Pop has no options (kept for a uniform ``Cls(catalogue, config)`` interface)."""


@register_recommender("pop")
class Pop(Recommender):
    """Ranks items by how often they are a *train target* (history items are not counted).

    Ties are broken by the smaller item id. :meth:`score` returns ``n_items - rank`` (rank 0 = most
    popular) rather than raw counts, so every item has a distinct, exactly representable score and
    any top-k gives the same deterministic order; :attr:`counts` keeps the counts.
    """

    config_cls = PopConfig

    def __init__(self, catalogue: Catalogue | None = None, config: PopConfig | None = None):
        self.catalogue = catalogue  # type: ignore[assignment]  # set by fit() when None
        self.config = config or PopConfig()
        self.counts: Tensor | None = None

    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> Pop:
        if self.catalogue is None:
            self.catalogue = dataset.catalogue
        n = len(self.catalogue)
        if not dataset.splits.get("train"):
            raise FlrecError(f"dataset '{dataset.name}' has no train rows; Pop counts train targets")
        if run_dir is not None:
            save_run_metadata(run_dir, self.config, stage="fit-pop")
        self.counts = torch.bincount(targets_of(dataset["train"], n), minlength=n)
        return self

    @property
    def _ranking_scores(self) -> Tensor:
        if self.counts is None:
            raise FlrecError("pop is not fitted; call fit() or load() first")
        n = len(self.counts)
        # Stable sort by descending count keeps ascending item id among ties.
        order = torch.sort(self.counts, descending=True, stable=True).indices
        scores = torch.empty(n)
        scores[order] = torch.arange(n, 0, -1, dtype=torch.float)
        return scores

    def score(self, rows: Sequence[Interaction]) -> Tensor:
        return self._ranking_scores.expand(len(rows), -1).clone()

    def save(self, path: str | Path) -> None:
        if self.counts is None:
            raise FlrecError("pop is not fitted; nothing to save")
        write_checkpoint(path, "pop", self.config, self.catalogue, {"counts": self.counts})

    @classmethod
    def load(cls, path: str | Path) -> Pop:
        cfg, catalogue, state, _ = read_checkpoint(path, "pop", PopConfig)
        rec = cls(catalogue, cfg)
        rec.counts = state["counts"]
        return rec
