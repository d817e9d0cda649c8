"""Trie + batched constrained beam search vs brute force and vs HF generate (tiny random model)."""

from __future__ import annotations

import random

import pytest
import torch

from flrec.data.prompts import encode_target
from flrec.decoding.beam import constrained_beam_search, hf_reference_search, prefill_plain
from flrec.decoding.trie import TitleTrie
from flrec.errors import DataError

K = 5  # beams in the search tests (small catalogue, fast)
# one very long title makes the trie deep, so rows stop (and are dropped from the batch) at
# different steps long before the depth limit — the path HF never takes
LONG = "The Complete Recordings of the Lost Orchestra, Volumes One Through Twelve, Remastered Deluxe Box"


def _titles(n: int = 120) -> list[str]:
    rng = random.Random(0)
    words = (
        "Best Live Blue Night Song Love Gold Hits Road Sun Dream Fire Rain Soul Jazz Time Home "
        "Heart Star Moon"
    ).split()
    artists = ["Miles", "Nina", "Otis", "Aretha", "Bob", "Joni", "Prince", "Bjork", "Sade", "Tom"]
    pats = ["Greatest Hits - {a}", "The Best of {a}", "{a} Live", "{w} {w2}", "{a}: {w} {w2}", "{w}"]
    out: dict[str, None] = {}
    while len(out) < n:
        out[rng.choice(pats).format(a=rng.choice(artists), w=rng.choice(words), w2=rng.choice(words))] = None
    return list(out)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([f'"{t}"\n' for t in _titles(300)] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # a large init range makes the random model's distributions peaked, so rankings have no near-ties
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def trie(tok):
    return TitleTrie.build(tok, [*_titles(), LONG])


def _prompts(tok, n: int, seed: int = 1, extra_pad: int = 0):
    """``n`` left-padded random prompts of different lengths (``extra_pad`` more pad columns)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(4, 12, (n,), generator=g)
    width = int(lens.max()) + extra_pad
    ids = torch.full((n, width), tok.pad_token_id)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, n_i in enumerate(lens.tolist()):
        ids[i, width - n_i :] = torch.randint(2, len(tok), (n_i,), generator=g)
        mask[i, width - n_i :] = 1
    return ids, mask


def _decode(model, trie, ids, mask, beams=K):
    return constrained_beam_search(model, prefill_plain(model, ids, mask), trie, beam_size=beams)


def _prefix_table(tok, titles) -> dict[tuple[int, ...], set[int]]:
    table: dict[tuple[int, ...], set[int]] = {}
    for t in titles:
        ids = encode_target(tok, t)
        for i in range(len(ids)):
            table.setdefault(tuple(ids[:i]), set()).add(ids[i])
    return table


# ---------------------------------------------------------------- trie


def test_trie_matches_brute_force(tok, trie):
    table = _prefix_table(tok, trie.titles)
    # walk every title path, remembering each node's prefix
    prefix_of = {0: ()}
    for i, t in enumerate(trie.titles):
        node, ids = torch.tensor([0]), encode_target(tok, t)
        for j, x in enumerate(ids):
            node = trie.advance(node, torch.tensor([x]))
            prefix_of[int(node)] = tuple(ids[: j + 1])
        assert int(trie.title_of(node)) == i
    assert len(prefix_of) == trie.num_nodes
    g = torch.Generator().manual_seed(0)
    nodes = torch.cat([torch.randint(0, trie.num_nodes, (200,), generator=g), torch.tensor([-1])])
    mask = trie.allowed_mask(nodes)
    for r, n in enumerate(nodes.tolist()):
        want = table.get(prefix_of[n], set()) if n >= 0 else set()
        assert set(mask[r].nonzero().squeeze(1).tolist()) == want
    # advance: every allowed edge lands on the node of the longer prefix; others give -1
    toks = torch.randint(0, trie.vocab_size, (nodes.numel(),), generator=g)
    nxt = trie.advance(nodes, toks)
    for n, x, c in zip(nodes.tolist(), toks.tolist(), nxt.tolist(), strict=True):
        ok = n >= 0 and x in table.get(prefix_of[n], set())
        assert c == (trie.advance(torch.tensor([n]), torch.tensor([x])).item() if ok else -1)
        if ok:
            assert prefix_of[c] == prefix_of[n] + (x,)
    assert trie.depth == max(len(encode_target(tok, t)) for t in trie.titles)
    assert trie.title_lengths().tolist() == [len(encode_target(tok, t)) for t in trie.titles]


def test_trie_dedupes_and_rejects_bad_input(tok, tmp_path):
    tr = TitleTrie.build(tok, ["A", "B", "A"])
    assert tr.titles == ["A", "B"]
    with pytest.raises(DataError):
        TitleTrie.build(tok, [])
    with pytest.raises(DataError, match="EOS"):
        TitleTrie.build(tok, ["x <eos> y"])
    tr.save(tmp_path / "t.pt")
    back = TitleTrie.load(tmp_path / "t.pt")
    assert back.titles == tr.titles and torch.equal(back.child_tok, tr.child_tok)


# ---------------------------------------------------------------- beam search


def test_beams_are_distinct_catalogue_titles(model, tok, trie):
    ids, mask = _prompts(tok, 4)
    res = _decode(model, trie, ids, mask)
    for row in res:
        assert len(row) == K
        titles = [trie.titles[i] for i, _ in row]
        assert len(set(titles)) == K
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


def test_batch_and_padding_invariance(model, tok, trie):
    ids, mask = _prompts(tok, 6, seed=2)
    full = _decode(model, trie, ids, mask)
    for bs in (1, 2):
        parts = []
        for i in range(0, 6, bs):
            sub_ids, sub_mask = ids[i : i + bs], mask[i : i + bs]
            keep = sub_mask.any(0)  # strip columns that are padding for every row of this chunk
            parts += _decode(model, trie, sub_ids[:, keep], sub_mask[:, keep])
        assert [[t for t, _ in r] for r in parts] == [[t for t, _ in r] for r in full]
        for a, b in zip(parts, full, strict=True):
            assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)
    pad_ids, pad_mask = _prompts(tok, 6, seed=2, extra_pad=5)
    padded = _decode(model, trie, pad_ids, pad_mask)
    assert [[t for t, _ in r] for r in padded] == [[t for t, _ in r] for r in full]


@pytest.mark.parametrize("beams", [K, 10])
def test_agrees_with_hf_generate(model, tok, trie, beams):
    ids, mask = _prompts(tok, 6, seed=3)
    rows = []
    hook = model.register_forward_hook(
        lambda m, a, kw, o: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        ours = _decode(model, trie, ids, mask, beams=beams)
    finally:
        hook.remove()
    assert 6 * beams > min(rows[1:]) > 0 and len(rows) < trie.depth  # some rows stopped early
    ref = hf_reference_search(model, tok, trie, ids, mask, beam_size=beams)
    assert all(len(r) == beams for r in ref)
    assert [[t for t, _ in r] for r in ours] == [[t for t, _ in r] for r in ref]
    for a, b in zip(ours, ref, strict=True):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_small_catalogue_returns_fewer_not_duplicates(model, tok):
    small = TitleTrie.build(tok, ["Blue", "Gold", "Blue Moon"])
    ids, mask = _prompts(tok, 2, seed=4)
    res = _decode(model, small, ids, mask, beams=5)
    assert all(sorted(t for t, _ in r) == [0, 1, 2] for r in res)


def test_bf16_weights_and_short_budget(model, tok, trie):
    import copy

    ids, mask = _prompts(tok, 3, seed=5)
    res = _decode(copy.deepcopy(model).to(torch.bfloat16), trie, ids, mask)
    assert all(len({t for t, _ in r}) == K for r in res)
    # a budget shorter than the trie depth only ever returns titles that end (EOS) within it
    state = prefill_plain(model, ids, mask)
    short = constrained_beam_search(model, state, trie, beam_size=K, max_new_tokens=6)
    assert all(len(encode_target(tok, trie.titles[t])) <= 6 for r in short for t, _ in r)
    assert any(short)
