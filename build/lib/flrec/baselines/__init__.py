"""Every recommender (FLR and baselines) behind one contract; see :mod:`flrec.baselines.base`."""

from flrec.baselines.base import Recommender, available_recommenders, get_recommender, register_recommender

__all__ = ["Recommender", "available_recommenders", "get_recommender", "register_recommender"]
