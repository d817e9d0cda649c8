"""Every recommender (FLR and baselines) behind one contract; see :mod:`flrec.recommenders.base`."""

from flrec.recommenders.base import Recommender, available_recommenders, get_recommender, register_recommender

__all__ = ["Recommender", "available_recommenders", "get_recommender", "register_recommender"]
