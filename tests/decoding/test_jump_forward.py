"""Jump-forward and shared-prompt beam search vs the step-by-step reference with a per-beam prompt
cache (the search before either existed): the same titles, order and scores.

fp64 tiny random models (peaked: large init range, so no near-ties) over a catalogue with mixed
title lengths, shared prefixes and titles that are prefixes of others, under every score-shaping
option of the search; for plain LMs and for FLR, LatentR3-style and BIGRec-style (reasoner=none)
models, whose prefill differs but whose search is the same.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from flrec.data.prompts import encode_target
from flrec.decoding.beam import (
    SearchStats,
    _jump_width,
    _sliding_cache,
    constrained_beam_search,
    prefill_plain,
)
from flrec.decoding.scoring import DecodingConfig, edge_weights
from flrec.decoding.trie import TitleTrie
from flrec.models.backbone import add_thought_token
from flrec.models.recommender import FLRConfig, FLRRecommender
from flrec.models.testing import build_tiny, tiny_tokenizer

K = 5
TITLES = [
    "Blue", "Blue Moon", "Blue Moon Live", "Blue Moon Live - Deluxe Edition (Remastered 2011)",
    "Greatest Hits", "Greatest Hits Vol 2", "Greatest Hits Vol 2 Disc 1", "Greatest Hits Vol 2 Disc 2",
    "The Best of Jazz", "The Best of Blues", "The Best of Rock and Soul, Volume Three",
    "Christmas Classics", "Christmas", "Love Songs", "Rock", "Original Soundtrack: The Movie",
    "Live at the Office, Part One", "Live at the Office, Part Two", "Zz", "Album 7 - Artist 7",
    "An Extremely Long Collection of Songs That Nobody Asked For, Remastered Deluxe Box",
]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _backbone(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(cfg).double().eval()


@pytest.fixture(scope="module")
def lm(tok):
    return _backbone(tok)


@pytest.fixture(scope="module")
def trie(tok):
    return TitleTrie.build(tok, TITLES)


def _prompts(n: int, vocab: int, seed: int = 1, last: int | None = None):
    """``n`` left-padded random prompts of different lengths (ending in ``last`` if given)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(4, 12, (n,), generator=g)
    ids = torch.zeros(n, int(lens.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n_i in enumerate(lens.tolist()):
        ids[i, -n_i:] = torch.randint(3, vocab, (n_i,), generator=g)
        mask[i, -n_i:] = 1
    if last is not None:
        ids[:, -1] = last
    return ids, mask


def _search(model, prefill, trie, ids, mask, stats=None, **kw):
    return constrained_beam_search(model, prefill(ids, mask), trie, beam_size=K, stats=stats, **kw)


def _same(a, b, tol: float = 1e-5) -> None:
    assert [[t for t, _ in r] for r in a] == [[t for t, _ in r] for r in b]
    for x, y in zip(a, b, strict=True):
        assert [s for _, s in x] == pytest.approx([s for _, s in y], abs=tol)


def test_forced_chains_match_brute_force(tok, trie):
    only_tok, only_child, length, ends = trie.forced_chains()
    table: dict[tuple[int, ...], set[int]] = {}
    for t in trie.titles:
        ids = encode_target(tok, t)
        for i in range(len(ids)):
            table.setdefault(tuple(ids[:i]), set()).add(ids[i])
    for t in trie.titles:
        ids, node = encode_target(tok, t), torch.tensor([0])
        for i in range(len(ids)):
            nxt = table[tuple(ids[:i])]
            forced = len(nxt) == 1 and ids[i] != tok.eos_token_id
            assert int(only_tok[node]) == (ids[i] if forced else -1)
            # chain length: consecutive forced, non-EOS tokens from here
            n = 0
            while n + i < len(ids) and len(table[tuple(ids[: i + n])]) == 1 and ids[i + n] != tok.eos_token_id:
                n += 1
            assert int(length[node]) == n
            # ends: after the chain, the only way on is EOS (the rest of a unique title)
            assert bool(ends[node]) == (table[tuple(ids[: i + n])] == {tok.eos_token_id})
            child = trie.advance(node, torch.tensor([ids[i]]))
            if forced:
                assert int(only_child[node]) == int(child)
            node = child


def test_jump_width_keeps_the_fill():
    w = torch.tensor([1, 5, 5, 5])
    assert _jump_width(w, 1.0) == 1  # no padding at all
    assert _jump_width(w, 0.75) == 5  # 16 real of 20 slots
    assert _jump_width(torch.tensor([1, 1, 1, 9]), 0.75) == 1
    assert _jump_width(torch.tensor([1, 1, 1, 9]), 0.0) == 9


OPTIONS = {
    "sum": dict(),
    "sum_lp0": dict(length_penalty=0.0),
    "sum_lp2": dict(length_penalty=2.0),
    "trie_renorm": dict(scoring="trie_renorm"),
    "info_gain": dict(scoring="info_gain", length_penalty=0.5),
    "short_budget": dict(max_new_tokens=12),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_plain_lm_jump_equals_steps(lm, tok, trie, option):
    kw = dict(OPTIONS[option])
    if kw.get("scoring") == "info_gain":
        kw["edge_weight"] = edge_weights(trie, DecodingConfig(scoring="info_gain"))
    ids, mask = _prompts(6, len(tok))
    prefill = lambda i, m: prefill_plain(lm, i, m)  # noqa: E731
    old, new = SearchStats(), SearchStats()
    ref = _search(lm, prefill, trie, ids, mask, old, jump_forward=False, shared_prompt=False, **kw)
    got = _search(lm, prefill, trie, ids, mask, new, **kw)
    _same(got, ref)
    assert all(ref) if "max_new_tokens" not in kw else any(ref)
    assert new.forwards <= old.forwards and new.steps_per_user < old.steps_per_user
    assert old.padded_slots == 0 and old.token_slots == sum(old.row_forwards) * K
    # every width rule and cap gives the same rankings
    for extra in (dict(jump_min_fill=0.0), dict(jump_min_fill=1.0), dict(jump_max_tokens=2)):
        _same(_search(lm, prefill, trie, ids, mask, **kw, **extra), ref)


def test_exclude_seen_and_assistant_mass(lm, tok, trie):
    ids, mask = _prompts(4, len(tok), seed=7)
    g = torch.Generator().manual_seed(3)
    allowed = torch.rand(4, len(trie.titles), generator=g) > 0.3
    mass = torch.rand(4, len(trie.titles), generator=g, dtype=torch.float64) * allowed
    kw = dict(node_allowed=trie.node_mass(allowed.double()) > 0, node_mass=trie.node_mass(mass), gamma=0.5)
    prefill = lambda i, m: prefill_plain(lm, i, m)  # noqa: E731
    ref = _search(lm, prefill, trie, ids, mask, jump_forward=False, shared_prompt=False, **kw)
    _same(_search(lm, prefill, trie, ids, mask, jump_min_fill=0.0, **kw), ref)
    for r, row in enumerate(ref):
        assert all(bool(allowed[r, t]) for t, _ in row)


def test_whole_small_catalogue_with_prefix_titles(lm, tok):
    """Beam >= catalogue: every title comes back, each prefix title beside its extension."""
    small = TitleTrie.build(tok, ["Blue", "Blue Moon", "Blue Moon Live - Deluxe", "Gold"])
    ids, mask = _prompts(3, len(tok), seed=4)
    prefill = lambda i, m: prefill_plain(lm, i, m)  # noqa: E731
    ref = _search(lm, prefill, small, ids, mask, jump_forward=False, shared_prompt=False)
    got = _search(lm, prefill, small, ids, mask, jump_min_fill=0.0)
    _same(got, ref)
    assert all(sorted(t for t, _ in r) == [0, 1, 2, 3] for r in got)


def test_batch_size_and_early_leavers(lm, tok, trie):
    """Rankings do not depend on the batch; a row that leaves early keeps the result it has alone."""
    ids, mask = _prompts(6, len(tok), seed=2)
    prefill = lambda i, m: prefill_plain(lm, i, m)  # noqa: E731
    st = SearchStats()
    full = _search(lm, prefill, trie, ids, mask, st, length_penalty=0.0)
    assert len(set(st.row_forwards)) > 1  # rows left the batch at different forwards
    assert st.stopped_in_jump > 0  # ... some on a forced token inside a jump
    ref = _search(lm, prefill, trie, ids, mask, jump_forward=False, shared_prompt=False, length_penalty=0.0)
    _same(full, ref)
    for bs in (1, 4):
        parts = []
        for i in range(0, 6, bs):
            sub_ids, sub_mask = ids[i : i + bs], mask[i : i + bs]
            keep = sub_mask.any(0)
            parts += _search(lm, prefill, trie, sub_ids[:, keep], sub_mask[:, keep], length_penalty=0.0)
        _same(parts, full)


def _reasoner(tok, kind: str) -> tuple[FLRRecommender, int | None]:
    backbone = _backbone(tok, seed=1)
    tk = tiny_tokenizer()
    if kind == "none":
        return FLRRecommender(backbone, FLRConfig(reasoner="none"), None).double().eval(), None
    thought = add_thought_token(backbone, tk)
    cfg = FLRConfig(num_factors=3, gate_hidden=16, keys="tokens") if kind == "flr" else FLRConfig(
        reasoner="latentr3", keys="tokens")
    return FLRRecommender(backbone, cfg, thought).double().eval(), thought


@pytest.mark.parametrize("kind", ["flr", "latentr3", "none"])
def test_reasoners_jump_equals_steps(tok, kind):
    model, thought = _reasoner(tok, kind)
    vocab = model.causal_lm.get_output_embeddings().weight.shape[0]
    trie = TitleTrie.build(tok, TITLES, vocab_size=vocab)
    ids, mask = _prompts(5, len(tok), seed=5, last=thought)
    old, new = SearchStats(), SearchStats()
    ref = _search(model.backbone, model.prefill, trie, ids, mask, old, jump_forward=False, shared_prompt=False)
    got = _search(model.backbone, model.prefill, trie, ids, mask, new)
    _same(got, ref)
    assert new.steps_per_user < old.steps_per_user
    one = []
    for i in range(5):  # batch size 1, jump-forward: the same rankings
        keep = mask[i : i + 1].any(0)
        one += _search(model.backbone, model.prefill, trie, ids[i : i + 1, keep], mask[i : i + 1, keep])
    _same(one, ref)


def test_qwen2_backbone_jump_equals_steps(tok, trie):
    qwen = build_tiny("qwen2", seed=2)[0].double()
    ids, mask = _prompts(4, len(tok), seed=9)
    prefill = lambda i, m: prefill_plain(qwen, i, m)  # noqa: E731
    _same(_search(qwen, prefill, trie, ids, mask, jump_min_fill=0.0),
          _search(qwen, prefill, trie, ids, mask, jump_forward=False, shared_prompt=False))


def test_sliding_window_backbone_jumps_without_padding(tok, trie):
    """A sliding window counts cache slots, so masked padding would move it: such caches jump only
    by counts every row shares, and still rank exactly as steps do."""
    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, use_sliding_window=True,
                      sliding_window=8, max_window_layers=0, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    assert _sliding_cache(DynamicCache(config=cfg))
    qwen = Qwen2ForCausalLM(cfg).double().eval()
    ids, mask = _prompts(4, len(tok), seed=11)
    prefill = lambda i, m: prefill_plain(qwen, i, m)  # noqa: E731
    st, old = SearchStats(), SearchStats()
    got = _search(qwen, prefill, trie, ids, mask, st, jump_min_fill=0.0)
    _same(got, _search(qwen, prefill, trie, ids, mask, old, jump_forward=False, shared_prompt=False))
    assert st.padded_slots == 0 and st.forwards < old.forwards


@pytest.mark.parametrize("jump", [False, True])
def test_shared_prompt_equals_per_beam_cache(lm, tok, trie, jump):
    """One prompt per user (the default where supported) ranks exactly as a prompt copy per beam."""
    ids, mask = _prompts(6, len(tok), seed=13)
    prefill = lambda i, m: prefill_plain(lm, i, m)  # noqa: E731
    st = SearchStats()
    got = _search(lm, prefill, trie, ids, mask, st, jump_forward=jump, length_penalty=0.0)
    assert st.shared_forwards == st.forwards > 0 and len(set(st.row_forwards)) > 1  # users left early
    _same(got, _search(lm, prefill, trie, ids, mask, jump_forward=False, shared_prompt=False, length_penalty=0.0))
    assert lm.config._attn_implementation != "flrec_shared_prompt"  # restored after the search


def test_shared_prompt_falls_back_under_a_sliding_window(tok, trie):
    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                      max_window_layers=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    qwen = Qwen2ForCausalLM(cfg).double().eval()
    ids, mask = _prompts(2, len(tok), seed=11)
    st = SearchStats()
    _search(qwen, lambda i, m: prefill_plain(qwen, i, m), trie, ids, mask, st)
    assert st.forwards > 0 and st.shared_forwards == 0


def test_other_forwards_during_a_search_are_unchanged(lm, tok):
    """While a search has switched the model's attention (nested searches too), an ordinary padded
    forward of the same model gives the logits it gives outside, and the last search out restores."""
    from flrec.decoding.shared_prompt import shared_prompt_attention

    ids, mask = _prompts(3, len(tok), seed=21)
    before = lm.config._attn_implementation
    with torch.no_grad():
        ref = lm(input_ids=ids, attention_mask=mask).logits
        with shared_prompt_attention(lm):
            with shared_prompt_attention(lm):
                inner = lm(input_ids=ids, attention_mask=mask).logits
            assert lm.config._attn_implementation == "flrec_shared_prompt"  # the outer search still runs
            outer = lm(input_ids=ids, attention_mask=mask).logits
    assert lm.config._attn_implementation == before
    real = mask.bool()
    torch.testing.assert_close(inner[real], ref[real])
    torch.testing.assert_close(outer[real], ref[real])
