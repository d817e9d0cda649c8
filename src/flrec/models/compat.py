"""Small shims over transformers API drift (the cache keyword was renamed in 5.2x).

flrec supports transformers 5.x: newer releases take ``cache=`` and return ``out.cache``; older
ones take ``past_key_values=`` and return ``out.past_key_values``. Call models through
:func:`lm_forward` and read caches with :func:`out_cache` so both work.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
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
