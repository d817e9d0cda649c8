"""Prompt and target formatting (the one place these strings live).

The full builder (domain wording, over-length handling, batched + cached tokenisation) is
completed in this module; the constants and target helpers below are the shared contract used by
training, the decoding trie and evaluation, so a title is tokenised identically everywhere.
"""

from __future__ import annotations

THOUGHT_TOKEN = "<|Thought|>"


def target_text(title: str) -> str:
    """The response string the model is trained to produce for ``title`` (EOS is added as an id)."""
    return f'"{title}"\n'


def encode_target(tokenizer, title: str) -> list[int]:
    """Token ids of a whole target: ``"Title"`` + newline + EOS, tokenised as one string.

    Tokenising the whole string (not title pieces) keeps BPE merges at the quote boundaries
    identical between training targets and the decoding trie.
    """
    ids = tokenizer(target_text(title), add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]
