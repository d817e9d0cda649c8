"""Analyses of trained models and results (statistics and rendering; no training)."""
