"""Turn a trained model directory into a ranker: for ``flrec evaluate`` and for serving."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from flrec.data.schema import Interaction, RecDataset
from flrec.errors import FlrecError

_CLASS_BY_REASONER = {"flr": "flr", "latentr3": "latentr3", "none": "bigrec"}


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model dir or an SFT run dir (whose ``best/`` is the model)."""
    from flrec.models.recommender import CONFIG_NAME

    p = Path(path)
    for cand in (p, p / "best", p / "sft" / "best", p / "model"):
        if (cand / CONFIG_NAME).is_file():
            return cand
    raise FlrecError(f"{p}: no trained flrec model here (looked for {CONFIG_NAME} in ., best/, sft/best/, model/); "
                     "pass the run directory of `flrec train sft` or its best/ folder")


def load_llm_recommender(path: str | Path, dataset: RecDataset, dtype: str = "float32", beam: int = 10,
                         batch_size: int = 8):
    """An :class:`~flrec.baselines.llm.LLMRecommender` over ``dataset``'s catalogue from a model dir."""
    from flrec.baselines.base import get_recommender
    from flrec.baselines.llm import LLMRecConfig
    from flrec.models.recommender import CONFIG_NAME

    model_dir = resolve_model_dir(path)
    reasoner = json.loads((model_dir / CONFIG_NAME).read_text())["flr"]["reasoner"]
    cls = get_recommender(_CLASS_BY_REASONER[reasoner])
    cfg = LLMRecConfig(beam=beam, inference_dtype=dtype, batch_size=batch_size)
    return cls.from_model_dir(model_dir, dataset.catalogue, cfg, domain=dataset.domain)


class RecommendationService:
    """Rank catalogue titles for raw histories of titles (what an online service calls)."""

    def __init__(self, model_path: str | Path, dataset: RecDataset, dtype: str = "bfloat16", beam: int = 10):
        self.dataset = dataset
        self.recommender = load_llm_recommender(model_path, dataset, dtype=dtype, beam=beam)

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[tuple[str, float]]]:
        """``histories``: per user, titles oldest first; each must be a catalogue title."""
        cat = self.dataset.catalogue
        rows = []
        for u, titles in enumerate(histories):
            if not titles:
                raise FlrecError(f"history {u} is empty; give at least one title the user interacted with")
            ids = []
            for t in titles:
                match = cat.item_ids(t)
                if not match:
                    raise FlrecError(f"history {u}: title {t!r} is not in the catalogue; use exact catalogue titles")
                ids.append(match[0])
            rows.append(Interaction(user=str(u), history=ids, target=ids[-1]))
        return self.recommender.recommend(rows, k=k)
