"""Partial freezing (``trainable=top:N``): only the top N transformer blocks, the final norm and the FLR
parts train; the bottom blocks are frozen and, on the prompt, run without autograd.

Why the prompt only: with the bottom frozen, a prompt token's bottom-block states depend on no
trained parameter, so they need no stored activations and no backward. The thought and target
tokens still run with autograd through *every* block — the FLR module's gradient reaches it only
through the thought's input embedding at the bottom.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from flrec.errors import ConfigError


def decoder_blocks(decoder: nn.Module) -> nn.ModuleList:
    """The decoder's list of transformer blocks (``layers`` in Llama/Qwen2/Mistral/Gemma, ``h`` in GPT-2)."""
    for name in ("layers", "h", "blocks"):
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return blocks
    raise ConfigError(f"trainable=top:N: cannot find the transformer blocks of {type(decoder).__name__}; "
                      "use trainable=full, lora or frozen with this backbone")


def parse_top(mode: str) -> int | None:
    """``"top:N"`` -> N (> 0); any other mode -> None.

    >>> parse_top("top:6"), parse_top("full")
    (6, None)
    """
    if not mode.startswith("top:"):
        return None
    try:
        n = int(mode[4:])
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"trainable '{mode}': N must be a positive integer, e.g. top:6")
    return n


def set_top_trainable(decoder: nn.Module, causal_lm: nn.Module, top: int) -> int:
    """Freeze everything of ``causal_lm`` except the top ``top`` blocks and the final norm.

    Returns the number of frozen bottom blocks. The (often tied) embeddings and LM head stay frozen:
    the embedding matrix feeds the frozen bottom.
    """
    blocks = decoder_blocks(decoder)
    if top > len(blocks):
        raise ConfigError(f"trainable=top:{top}: the backbone has only {len(blocks)} blocks; use top:{len(blocks)} "
                          "or trainable=full")
    causal_lm.requires_grad_(False)
    for block in blocks[len(blocks) - top :]:
        block.requires_grad_(True)
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None)
    if isinstance(norm, nn.Module):
        norm.requires_grad_(True)
    return len(blocks) - top


@contextmanager
def frozen_bottom_no_grad(decoder: nn.Module, n_frozen: int) -> Iterator[None]:
    """Inside this context a forward of ``decoder`` runs its first ``n_frozen`` blocks under no_grad.

    Forward pre-hooks switch autograd off before block 0 and back on before block ``n_frozen``, so
    the blocks above record their graph as usual. A no-op when ``n_frozen`` is 0 or autograd is off.
    """
    if n_frozen <= 0 or not torch.is_grad_enabled():
        yield
        return
    blocks = decoder_blocks(decoder)

    def switch(on: bool):
        def hook(*_: object) -> None:  # a pre-hook returning a value would replace the block's input
            torch.set_grad_enabled(on)
        return hook

    handles = [blocks[0].register_forward_pre_hook(switch(False))]
    if n_frozen < len(blocks):
        handles.append(blocks[n_frozen].register_forward_pre_hook(switch(True)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        torch.set_grad_enabled(True)
