"""Serving trained recommenders: export, load, recommend (CLI, batch files) and the HTTP service.

* :func:`export` — ``flrec export RUN_DIR --out DIR``: a self-contained directory per recommender.
* :func:`load_recommender` — load such a directory (no dataset needed) as a :class:`ServedRecommender`.
* :meth:`ServedRecommender.recommend` — ``flrec recommend``; :func:`recommend_file` — JSONL batches.
* :func:`create_app` / :func:`serve` — ``flrec serve`` (FastAPI; needs the ``serve`` extra).
* :func:`load_llm_recommender` — a model directory over a dataset's catalogue (``flrec evaluate``).
"""

from flrec.serving.batch import recommend_file
from flrec.serving.export import export
from flrec.serving.load import load_llm_recommender
from flrec.serving.service import Query, RequestError, ServedRecommender, load_recommender


def create_app(*args, **kwargs):
    """:func:`flrec.serving.app.create_app` (imported lazily: FastAPI is an optional extra)."""
    from flrec.serving.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs) -> None:
    """:func:`flrec.serving.app.serve` (imported lazily: uvicorn is an optional extra)."""
    from flrec.serving.app import serve as _serve

    _serve(*args, **kwargs)


__all__ = ["Query", "RequestError", "ServedRecommender", "create_app", "export",
           "load_llm_recommender", "load_recommender", "recommend_file", "serve"]
