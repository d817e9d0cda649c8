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
    """An empty DynamicCache configured for ``model``.

    Sliding-window layers are set to record their past: they otherwise drop the oldest token as soon
    as a refinement step adds its thought, and :func:`crop_cache` could not restore the prefix."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older signature
        return DynamicCache()
    for layer in getattr(cache, "layers", None) or []:
        if getattr(layer, "is_sliding", False) and hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    return cache


def crop_cache(cache, keep: int) -> None:
    """Keep only the first ``keep`` positions of every layer of a dynamic cache (in place).

    Slicing (not in-place truncation) keeps autograd intact: the prefix tensors that earlier
    steps' graphs hold are never modified. ``DynamicCache.crop``'s argument changed meaning across
    releases (absolute length vs. negative count), so we slice the layers directly when we can.
    Sliding-window layers (Mistral, Qwen2/Gemma with sliding windows) hold only the newest tokens
    and count all tokens seen in ``cumulative_length``; both are updated here.
    """
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is None or not layer.keys.numel():
                continue
            if getattr(layer, "is_sliding", False) and hasattr(layer, "cumulative_length"):
                _crop_sliding(layer, keep)
            else:
                layer.keys = layer.keys[..., :keep, :]
                layer.values = layer.values[..., :keep, :]
        return
    cache.crop(keep)  # pragma: no cover - transformers < 4.56 layout


def _crop_sliding(layer, keep: int) -> None:
    total, stored = int(layer.cumulative_length), layer.keys.shape[-2]
    if keep >= total:
        return
    # The stored entries are the last `stored` of `total` tokens. After the crop the layer must look
    # as if it had seen exactly `keep` tokens: the newest min(keep, window - 1) of them.
    end = stored - (total - keep)
    need = min(keep, layer.sliding_window - 1)
    if end - need < 0:
        raise RuntimeError(
            "crop_cache: this sliding-window cache layer no longer holds the tokens to keep; "
            "create the cache with flrec.models.compat.new_cache (it records the past for cropping)"
        )
    layer.keys = layer.keys[..., end - need : end, :]
    layer.values = layer.values[..., end - need : end, :]
    layer.cumulative_length = keep


def expand_cache(cache, batch: int) -> None:
    """Broadcast a batch-1 cache to ``batch`` rows (in place) as views: no copy, and autograd sums the
    rows' gradients back into the one shared entry (what shared-prefix encoding relies on)."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # pragma: no cover - transformers < 4.56 layout
        cache.batch_repeat_interleave(batch)
        return
    for layer in layers:
        if getattr(layer, "keys", None) is None or not layer.keys.numel():
            continue
        layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
        layer.values = layer.values.expand(batch, *layer.values.shape[1:])
