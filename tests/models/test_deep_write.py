"""flr.deep_write: the thought also written into every layer's keys/values at its position."""

from __future__ import annotations

import copy

import pytest
import torch

from flrec.errors import ConfigError
from flrec.models.deep_write import DeepThoughtWrite
from tests.models.test_flr_model import make_batch, make_model

CFG = dict(num_factors=3, keys="items", thought_residual=False)


def _opened(model, seed: int = 0):
    """The deep write with non-zero weights (zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.deep_write.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.5)
    return model


def test_zero_init_is_the_input_only_model():
    batch = make_batch()
    plain, deep = make_model(**CFG), make_model(**CFG, deep_write=True)
    deep.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(deep(**batch)["rec_loss"], plain(**batch)["rec_loss"])


def test_cached_equals_naive_and_ranking_prefill_agrees():
    """The refinement cache, the N+1-pass reference and the ranking prefill all write the same thought."""
    model = _opened(make_model(**CFG, deep_write=True))
    batch = make_batch()
    cached = model(**batch)
    torch.testing.assert_close(cached["rec_loss"], model.forward_naive(**batch)["rec_loss"])
    assert cached["rec_loss"] != make_model(**CFG)(**batch)["rec_loss"]  # the write changed the answer
    state = model.prefill(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_items"])
    first = model.score_completion(**batch).logprobs[:, 0]
    expect = torch.log_softmax(state.next_logits.double(), -1).gather(1, batch["target_ids"][:, :1]).squeeze(1)
    torch.testing.assert_close(first, expect.to(first.dtype))


def test_swapping_the_thought_reaches_every_layer_and_a_copy_writes_its_own():
    """A swapped thought changes the losses through the deep write too (its effect differs from the
    input-only write's), and a deep copy of the model writes through its own modules."""
    batch = make_batch()
    model = _opened(make_model(**CFG, deep_write=True))
    own, e = model.row_losses(**batch)
    swapped, _ = model.row_losses(**batch, thought=e.roll(1, 0))
    with torch.no_grad():
        model.deep_write.proj.weight.zero_()
    own0, _ = model.row_losses(**batch, thought=e)
    swapped0, _ = model.row_losses(**batch, thought=e.roll(1, 0))
    assert ((swapped - own) - (swapped0 - own0)).abs().max() > 1e-4
    twin = copy.deepcopy(_opened(model))
    torch.testing.assert_close(twin.row_losses(**batch)[0], _opened(model).row_losses(**batch)[0])
    with torch.no_grad():
        twin.deep_write.proj.weight.zero_()  # the copy's hooks read the copy's write, not the original's
    torch.testing.assert_close(twin.row_losses(**batch, thought=e)[0], own0)


def test_frozen_backbone_trains_the_write():
    model = make_model(**CFG, deep_write=True)
    model.set_trainable("frozen")
    model.train()
    model(**make_batch())["loss"].backward()
    grad = model.deep_write.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone."))


def test_a_backbone_without_kv_projections_is_refused():
    with pytest.raises(ConfigError, match="deep_write"):
        DeepThoughtWrite(torch.nn.Module(), 8)
