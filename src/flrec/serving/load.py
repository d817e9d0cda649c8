"""Turn a trained model directory into a ranker over a dataset's catalogue (``flrec evaluate``).

For new users without the dataset, export the run and use :func:`flrec.serving.load_recommender`.
"""

from __future__ import annotations

import json
from pathlib import Path

from flrec.data.schema import RecDataset
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
    """An :class:`~flrec.recommenders.llm.LLMRecommender` over ``dataset``'s catalogue from a model dir."""
    from flrec.models.recommender import CONFIG_NAME
    from flrec.recommenders.base import get_recommender
    from flrec.recommenders.llm import LLMRecConfig

    model_dir = resolve_model_dir(path)
    reasoner = json.loads((model_dir / CONFIG_NAME).read_text())["flr"]["reasoner"]
    cls = get_recommender(_CLASS_BY_REASONER[reasoner])
    cfg = LLMRecConfig(beam=beam, inference_dtype=dtype, batch_size=batch_size)
    return cls.from_model_dir(model_dir, dataset.catalogue, cfg, domain=dataset.domain)
