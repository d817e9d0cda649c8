"""Scoring variants, the text-free assistant, exclude-seen and the teacher-forced prior on a
hand-built trie whose next-token probabilities are set by hand (a bigram "model").

Catalogue: titles ``ab`` (items 0, 1), ``ac`` (item 2) and ``d`` (item 3). Each title's target ids
are its letters then EOS, so the trie is ``root -a-> A -b-> AB -eos-> .``, ``A -c-> AC -eos-> .``,
``root -d-> D -eos-> .``. Probabilities (the rest of the vocabulary shares what is left):

    root: a .6, d .3      A: b .5, c .2      AB: eos .9      AC: eos .5      D: eos .8
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flrec.decoding.beam import constrained_beam_search
from flrec.decoding.prior import TitlePrior, score_titles
from flrec.decoding.scoring import DecodingConfig, edge_weights
from flrec.decoding.trie import TitleTrie
from flrec.errors import ConfigError
from flrec.models.state import PrefillState

VOCAB = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4, "d": 5, "x": 6, "y": 7}
V = len(VOCAB)
TITLES = ["ab", "ac", "d"]
ITEM_TITLES = ["ab", "ab", "ac", "d"]  # item id -> title
ROOT = 6  # a pseudo token id whose row in the table is the distribution at the root (never in a title)


class CharTokenizer:
    """Letters -> ids; ignores the quotes and newline that target_text wraps a title in."""

    eos_token_id, pad_token_id = 1, 0

    def __len__(self) -> int:
        return V

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[VOCAB[ch] for ch in t if ch in "abcd"] for t in texts]}


def _table() -> torch.Tensor:
    """log-prob rows: next-token distribution given the last token fed (bigram)."""
    probs = {ROOT: {"a": .6, "d": .3}, VOCAB["a"]: {"b": .5, "c": .2}, VOCAB["b"]: {"<eos>": .9},
             VOCAB["c"]: {"<eos>": .5}, VOCAB["d"]: {"<eos>": .8}}
    t = torch.full((V, V), 0.0)
    for row in range(V):
        given = probs.get(row, {})
        rest = (1 - sum(given.values())) / (V - len(given))
        t[row] = rest
        for tok, p in given.items():
            t[row, VOCAB[tok]] = p
    return t.log()


class _Cache:
    def batch_repeat_interleave(self, n):
        pass

    def reorder_cache(self, idx):
        pass


class Bigram(torch.nn.Module):
    """Logits depend only on the last input token, so every score can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(_table(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep=0):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def state(rows: int = 1) -> PrefillState:
    m = Bigram()
    return PrefillState(cache=_Cache(), next_logits=m.table[ROOT].expand(rows, -1).clone(),
                        attention_mask=torch.ones(rows, 1, dtype=torch.long),
                        next_position=torch.ones(rows, dtype=torch.long))


@pytest.fixture(scope="module")
def trie() -> TitleTrie:
    return TitleTrie.build(CharTokenizer(), TITLES)


def search(trie, lp=0.0, beams=3, **kw):
    res = constrained_beam_search(Bigram(), state(), trie, beam_size=beams, length_penalty=lp, **kw)
    return {trie.titles[t]: s for t, s in res[0]}


L = math.log


def test_trie_structure_by_hand(trie):
    assert trie.subtree_titles().tolist()[0] == 3
    tok, length = trie.title_tokens()
    assert length.tolist() == [3, 3, 2]
    assert tok[0, :3].tolist() == [2, 3, 1] and tok[2, :2].tolist() == [5, 1]
    gain = {(int(p), int(t)): float(g) for p, t, g in zip(
        torch.repeat_interleave(torch.arange(trie.num_nodes), trie.child_ptr.diff()), trie.child_tok,
        trie.edge_information_gain(), strict=True)}
    root = 0
    assert gain[(root, 2)] == pytest.approx(L(3) - L(2)) and gain[(root, 5)] == pytest.approx(L(3))
    a_node = int(trie.advance(torch.tensor([0]), torch.tensor([2])))
    assert gain[(a_node, 3)] == pytest.approx(L(2)) and gain[(a_node, 4)] == pytest.approx(L(2))
    # forced tokens (EOS after a complete title) carry no information
    d_node = int(trie.advance(torch.tensor([0]), torch.tensor([5])))
    assert gain[(d_node, 1)] == pytest.approx(0.0)


@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_sum_scoring_by_hand(trie, lp):
    got = search(trie, lp)
    want = {"ab": L(.6) + L(.5) + L(.9), "ac": L(.6) + L(.2) + L(.5), "d": L(.3) + L(.8)}
    lens = {"ab": 3, "ac": 3, "d": 2}
    assert got == pytest.approx({t: s / lens[t] ** lp for t, s in want.items()}, abs=1e-5)


def test_trie_renorm_by_hand(trie):
    got = search(trie, scoring="trie_renorm")
    # root: a .6/.9, d .3/.9; at A: b .5/.7, c .2/.7; EOS is forced everywhere (costs 0)
    want = {"ab": L(2 / 3) + L(5 / 7), "ac": L(2 / 3) + L(2 / 7), "d": L(1 / 3)}
    assert got == pytest.approx(want, abs=1e-5)
    assert sum(math.exp(s) for s in got.values()) == pytest.approx(1.0, abs=1e-5)  # P(title | catalogue)


def test_info_gain_by_hand(trie):
    binary = DecodingConfig(scoring="info_gain")
    got = search(trie, scoring="info_gain", edge_weight=edge_weights(trie, binary))
    # weight 1 where the node has >= 2 children (root, A), 0 for the forced EOS and for d's EOS
    assert got == pytest.approx({"ab": L(.6) + L(.5), "ac": L(.6) + L(.2), "d": L(.3)}, abs=1e-5)
    half = DecodingConfig(scoring="info_gain", zero_gain_weight=0.5)
    got = search(trie, scoring="info_gain", edge_weight=edge_weights(trie, half))
    assert got["d"] == pytest.approx(L(.3) + 0.5 * L(.8), abs=1e-5)
    gain = DecodingConfig(scoring="info_gain", info_gain="gain")
    got = search(trie, scoring="info_gain", edge_weight=edge_weights(trie, gain))
    assert got == pytest.approx({"ab": (L(3) - L(2)) * L(.6) + L(2) * L(.5),
                                 "ac": (L(3) - L(2)) * L(.6) + L(2) * L(.2), "d": L(3) * L(.3)}, abs=1e-5)


def _mass(trie, item_probs):
    title_of_item = torch.tensor([trie.titles.index(t) for t in ITEM_TITLES])
    tm = torch.zeros(1, len(trie.titles), dtype=torch.float64).index_add_(1, title_of_item, item_probs[None])
    return trie.node_mass(tm)


def test_assistant_gamma_extremes(trie):
    q = torch.tensor([.1, .1, .5, .3], dtype=torch.float64)  # ID model: ab .2, ac .5, d .3
    mass = _mass(trie, q)
    plain = search(trie, lp=1.0)
    assert search(trie, lp=1.0, node_mass=mass, gamma=1.0) == plain  # gamma = 1: plain decoding
    cf = search(trie, node_mass=mass, gamma=0.0)
    assert list(cf) == ["ac", "d", "ab"]  # ranked by the ID model's title mass
    assert cf == pytest.approx({"ab": L(.2), "ac": L(.5), "d": L(.3)}, abs=1e-5)
    mix = search(trie, node_mass=mass, gamma=0.25)
    want_ab = .25 * (L(.6) + L(.5) + L(.9)) + .75 * (L(.7) + L(.2 / .7))
    assert mix["ab"] == pytest.approx(want_ab, abs=1e-5)


def test_exclude_seen_masks_leaves(trie):
    allowed = torch.tensor([[True, False, True]])  # "ac" seen: its leaf and the AC node are closed
    node_allowed = trie.node_mass(allowed.double()) > 0
    got = search(trie, node_allowed=node_allowed)
    assert set(got) == {"ab", "d"}
    assert got["ab"] == pytest.approx(L(.6) + L(.5) + L(.9), abs=1e-5)  # masking does not renormalise sum
    renorm = search(trie, scoring="trie_renorm", node_allowed=node_allowed)
    assert renorm["ab"] == pytest.approx(L(2 / 3), abs=1e-5)  # only b is allowed at A now: forced


@pytest.mark.parametrize("cfg", [DecodingConfig(), DecodingConfig(scoring="trie_renorm"),
                                 DecodingConfig(scoring="info_gain", info_gain="gain", zero_gain_weight=0.1)])
@pytest.mark.parametrize("lp", [0.0, 1.0])
def test_teacher_forcing_equals_beam(trie, cfg, lp):
    kw = {"scoring": cfg.scoring, "edge_weight": edge_weights(trie, cfg)}
    got = search(trie, lp, **kw)
    tf = score_titles(Bigram(), state, trie, [2, 0, 1], cfg, length_penalty=lp, batch_size=2)
    assert tf.tolist() == pytest.approx([got["d"], got["ab"], got["ac"]], abs=1e-5)


def test_prior_cache_is_lazy_and_persistent(trie, tmp_path):
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return torch.tensor([10.0 + i for i in idx])

    key = {"model": "m", "catalogue": "c"}
    p = TitlePrior(3, key, tmp_path)
    assert p.get([2, 0, 2], compute).tolist() == [12.0, 10.0, 12.0] and calls == [[0, 2]]
    again = TitlePrior(3, key, tmp_path)
    assert again.get([0, 1], compute).tolist() == [10.0, 11.0] and calls[-1] == [1]  # 0 came from disk
    other = TitlePrior(3, {"model": "other", "catalogue": "c"}, tmp_path)
    assert other.values.isnan().all() and other.path != p.path


def test_decoding_config_errors():
    with pytest.raises(ConfigError, match="gamma"):
        DecodingConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="scoring"):
        DecodingConfig.load(overrides=["scoring=mean"])
