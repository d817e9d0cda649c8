"""Constrained generative ranking: catalogue title trie and batched beam search."""
