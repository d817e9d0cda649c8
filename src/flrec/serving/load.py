"""Turn a trained model directory into a ranker over a dataset's catalogue (``flrec evaluate``).

For new users without the dataset, export the run and use :func:`flrec.serving.load_recommender`.
"""

from __future__ import annotations

from pathlib import Path

from flrec.data.schema import RecDataset
from flrec.models.folder import resolve_model_dir
from flrec.recommenders.folder import open_model_dir
from flrec.recommenders.llm import LLMRecConfig, LLMRecommender

__all__ = ["load_llm_recommender", "resolve_model_dir"]


def load_llm_recommender(path: str | Path, dataset: RecDataset, dtype: str = "float32", beam: int = 10,
                         batch_size: int = 8) -> LLMRecommender:
    """An :class:`~flrec.recommenders.llm.LLMRecommender` over ``dataset``'s catalogue from a model dir."""
    cfg = LLMRecConfig(beam=beam, inference_dtype=dtype, batch_size=batch_size)
    return open_model_dir(path, dataset.catalogue, cfg, domain=dataset.domain)
