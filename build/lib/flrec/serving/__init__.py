"""Loading trained LLM recommenders for ranking and serving."""

from flrec.serving.load import RecommendationService, load_llm_recommender

__all__ = ["RecommendationService", "load_llm_recommender"]
