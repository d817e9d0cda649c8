"""Open a trained model folder as a recommender: the one place that maps a model's reasoner to its
method and wraps the folder over a catalogue (``flrec evaluate``, ``flrec tune-decoding``,
``flrec export``, the inference-cost analysis).

The folder is a model directory or a run directory leading to one
(:func:`flrec.models.folder.resolve_model_dir`); its ``flr_config.json`` names the reasoner, and
:data:`METHOD_BY_REASONER` the method that ranks with it.
"""

from __future__ import annotations

from pathlib import Path

from flrec.data.schema import Catalogue
from flrec.errors import FlrecError
from flrec.models.folder import model_reasoner, resolve_model_dir
from flrec.recommenders.base import get_recommender
from flrec.recommenders.llm import LLMRecConfig, LLMRecommender

# The method that ranks with a trained model of each reasoner (a model folder does not say whether
# it was trained as latentr3_sft or latentr3, or as bigrec or base: these are the defaults).
METHOD_BY_REASONER = {"flr": "flr", "latentr3": "latentr3", "softprompt": "softprompt", "none": "bigrec"}


def method_for_reasoner(reasoner: str) -> str:
    """The method of :data:`METHOD_BY_REASONER` for ``reasoner``; an unknown one is refused."""
    try:
        return METHOD_BY_REASONER[reasoner]
    except KeyError:
        raise FlrecError(f"a model with reasoner {reasoner!r}, which this flrec does not know "
                         f"(known: {', '.join(METHOD_BY_REASONER)}); was it saved by a newer flrec?") from None


def open_model_dir(path: str | Path, catalogue: Catalogue, config: LLMRecConfig | None = None,
                   domain: str | None = None) -> LLMRecommender:
    """The LLM recommender of the model at ``path`` (a model dir or a run dir) over ``catalogue``.

    ``config`` sets the ranking (beam, dtype, batch size...; default :class:`LLMRecConfig`); its tuned
    decoding (``decoding.json``) applies only with ``config.use_tuned_decoding``. ``domain`` is the
    prompt's item word when the model does not record one.
    """
    model_dir = resolve_model_dir(path)
    cls = get_recommender(method_for_reasoner(model_reasoner(model_dir)))
    return cls.from_model_dir(model_dir, catalogue, config, domain=domain)
