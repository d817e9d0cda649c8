"""Backbone loading, the FLR module, its losses and the recommender wrapping any causal LM."""
