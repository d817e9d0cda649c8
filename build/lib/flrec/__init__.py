"""flrec: Factorized Latent Reasoning for LLM-based sequential recommendation."""

__version__ = "0.1.0"
