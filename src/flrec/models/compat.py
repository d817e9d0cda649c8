"""Small shims over transformers API drift (the cache keyword was renamed in 5.2x).

flrec supports transformers 5.x: newer releases take ``cache=`` and return ``out.cache``; older
ones take ``past_key_values=`` and return ``out.past_key_values``. Call models through
:func:`lm_forward` and read caches with :func:`out_cache` so both work.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch


@cache
def _cache_kw(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword this model's ``forward`` uses for the KV cache."""
    base = getattr(model, "get_base_model", None)
    m = base() if callable(base) else model
    return _cache_kw(type(m))


def lm_forward(model: torch.nn.Module, cache=None, **kwargs):
    """``model(**kwargs)`` passing ``cache`` under the keyword this transformers version expects."""
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    return model(**kwargs)


def out_cache(out) -> object:
    """The cache returned by a forward, whatever the attribute is called."""
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


def new_cache(model: torch.nn.Module):
    """An empty DynamicCache configured for ``model``."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signature
        return DynamicCache()


def crop_cache(cache, keep: int) -> None:
    """Keep only the first ``keep`` positions of every layer of a dynamic cache (in place).

    Slicing (not in-place truncation) keeps autograd intact: the prefix tensors that earlier
    steps' graphs hold are never modified. ``DynamicCache.crop``'s argument changed meaning across
    releases (absolute length vs. negative count), so we slice the layers directly when we can.
    """
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., :keep, :]
                layer.values = layer.values[..., :keep, :]
        return
    cache.crop(keep)  # pragma: no cover - transformers < 4.56 layout
