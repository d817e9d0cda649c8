"""Shared-prefix encoding and top:N freezing are exact: same loss, gradients and rankings."""

from __future__ import annotations

import pytest
import torch
from test_flr_model import PAD, THOUGHT, VOCAB, make_model

from flrec.models.freeze import parse_top
from flrec.models.sharing import hoist_shared_prefix, shared_head_len

HEAD = [5, 6, 7, 8, 9, 10]  # the instruction every prompt opens with


def shared_batch(lengths=(9, 4, 12, 7), target_lengths=(3, 5, 2, 4), seed=3):
    """Left-padded prompts = HEAD + per-row history tokens (2 per item) + thought; mixed lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = [HEAD + torch.randint(11, VOCAB - 1, (n,), generator=g).tolist() + [THOUGHT] for n in lengths]
    p, t = max(map(len, rows)), max(target_lengths)
    b = len(rows)
    ids, mask = torch.full((b, p), PAD), torch.zeros(b, p, dtype=torch.long)
    items = torch.full((b, p), -1)
    tids, tmask = torch.full((b, t), PAD), torch.zeros(b, t, dtype=torch.long)
    for i, (r, lt) in enumerate(zip(rows, target_lengths, strict=True)):
        ids[i, p - len(r):] = torch.tensor(r)
        mask[i, p - len(r):] = 1
        n_hist = len(r) - len(HEAD) - 1
        items[i, p - 1 - n_hist : p - 1] = torch.arange(n_hist) // 2
        tids[i, :lt] = torch.randint(11, VOCAB - 1, (lt,), generator=g)
        tmask[i, :lt] = 1
    return dict(prompt_ids=ids, prompt_mask=mask, target_ids=tids, target_mask=tmask, prompt_items=items)


def test_hoist_keeps_every_rows_tokens_in_order():
    b = shared_batch()
    ids, mask, items, n = hoist_shared_prefix(b["prompt_ids"], b["prompt_mask"], b["prompt_items"])
    assert n == len(HEAD) and ids.shape == b["prompt_ids"].shape
    assert (ids[:, :n] == torch.tensor(HEAD)).all() and mask[:, :n].all()
    for i in range(ids.shape[0]):
        assert ids[i][mask[i].bool()].tolist() == b["prompt_ids"][i][b["prompt_mask"][i].bool()].tolist()
        assert items[i][mask[i].bool()].tolist() == b["prompt_items"][i][b["prompt_mask"][i].bool()].tolist()
    assert ids[:, -1].eq(THOUGHT).all()
    assert shared_head_len(ids, mask, items) == n


def test_nothing_shared_leaves_the_batch_alone():
    b = shared_batch()
    ids = b["prompt_ids"].clone()
    ids[0][ids[0] == HEAD[0]] = 99 % VOCAB  # row 0 opens differently
    out = hoist_shared_prefix(ids, b["prompt_mask"], b["prompt_items"])
    assert out[3] == 0 and out[0] is ids


def _loss_and_grads(model, batch, share: bool):
    model.share_prefix = share
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [dict(reasoner="flr", keys="items"), dict(reasoner="flr", keys="tokens", key_positions="absolute",
         center_keys=False, aux_to_backbone=True), dict(reasoner="latentr3"), dict(reasoner="none")]


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(str(v) for v in c.values())[:24])
def test_shared_prefix_loss_and_gradients_equal_unshared(cfg, mode):
    model = make_model(**cfg)
    if mode == "lora":
        model.set_trainable("lora")
        model.double()
    batch = shared_batch()
    ref_loss, ref_grads = _loss_and_grads(model, batch, share=False)
    loss, grads = _loss_and_grads(model, batch, share=True)
    assert torch.allclose(loss, ref_loss, atol=1e-10), (loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():  # HF attention takes its softmax in fp32: ~1e-8 noise in float64 runs
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(g, ref_grads[name], atol=1e-6 * scale + 1e-12, rtol=1e-5, msg=name)


def test_shared_prefix_prefill_and_ranking_equal_unshared():
    from flrec.decoding.beam import constrained_beam_search
    from flrec.decoding.trie import TitleTrie

    model = make_model(reasoner="flr")
    batch = shared_batch()
    class CharTokenizer:  # one token per character: enough for a trie over a few titles
        eos_token_id = 2

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[11 + ord(c) % 80 for c in t] for t in texts]}

    trie = TitleTrie.build(CharTokenizer(), ["Ab", "Ac", "B", "Cde", "Cdf"], vocab_size=VOCAB)
    results = []
    for share in (False, True):
        model.share_prefix = share
        state = model.prefill(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_items"])
        results.append((state.next_logits, constrained_beam_search(model.backbone, state, trie, beam_size=3)))
    (l0, r0), (l1, r1) = results
    assert torch.allclose(l0, l1, atol=1e-9)
    assert [[t for t, _ in row] for row in r0] == [[t for t, _ in row] for row in r1]
    assert torch.allclose(torch.tensor([[s for _, s in row] for row in r0]),
                          torch.tensor([[s for _, s in row] for row in r1]), atol=1e-8)


def test_top_n_trains_only_the_top_and_keeps_the_bottom_bit_identical():
    model = make_model(reasoner="flr")
    with torch.no_grad():  # trained W_c: the query reads the thought, so thought_init gets a gradient
        model.reasoner.w_c.weight.normal_(std=0.1)
    model.set_trainable("top:1")
    assert model.frozen_blocks == 1 and parse_top("top:1") == 1
    bottom = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.0." in n or "embed" in n}
    top_before = {n: p.detach().clone() for n, p in model.named_parameters()
                  if ".layers.1." in n or n in ("reasoner.prototypes", "thought_init")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**shared_batch())["loss"].backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in bottom:
            assert torch.equal(p, bottom[n]), n
        if n in top_before:
            assert not torch.equal(p, top_before[n]), n


def test_top_n_no_grad_bottom_gives_the_same_gradients():
    """Running the frozen bottom without autograd on the prompt must not change any gradient."""
    model = make_model(reasoner="flr")
    with torch.no_grad():  # trained W_c: the query reads the thought, so thought_init gets a gradient
        model.reasoner.w_c.weight.normal_(std=0.1)
    model.set_trainable("top:1")
    batch = shared_batch()
    ref = _loss_and_grads(_with_frozen(model, 0), batch, share=True)
    got = _loss_and_grads(_with_frozen(model, 1), batch, share=True)
    assert torch.allclose(ref[0], got[0], atol=1e-12)
    assert ref[1].keys() == got[1].keys()
    assert "reasoner.prototypes" in got[1] and "thought_init" in got[1]
    for name, g in got[1].items():
        torch.testing.assert_close(g, ref[1][name], atol=1e-12, rtol=1e-9, msg=name)


def _with_frozen(model, n):
    model.frozen_blocks = n
    return model


def test_bad_top_modes_are_one_line_errors():
    from flrec.errors import ConfigError

    model = make_model(reasoner="flr")
    for bad in ("top:0", "top:x", "top:9", "half"):
        with pytest.raises(ConfigError, match="top"):
            model.set_trainable(bad)


def test_plain_prefill_with_a_shared_prefix_equals_unshared():
    from flrec.decoding.beam import prefill_plain

    model = make_model(reasoner="none").backbone
    b = shared_batch()
    a = prefill_plain(model, b["prompt_ids"], b["prompt_mask"], share_prefix=False)
    s = prefill_plain(model, b["prompt_ids"], b["prompt_mask"])
    assert not torch.equal(a.attention_mask, s.attention_mask)  # the hoisted layout was used
    torch.testing.assert_close(s.next_logits, a.next_logits, atol=1e-6, rtol=1e-6)
    assert torch.equal(s.next_position, a.next_position)
