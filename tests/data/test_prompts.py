"""Prompt builder: wording, order, truncation, caching, targets and the left-padded batch layout."""

from __future__ import annotations

import pytest
import torch

from flrec.data.prompts import (
    THOUGHT_TOKEN,
    EncodedExample,
    PromptBuilder,
    collate_left_padded,
    encode_target,
)
from flrec.data.schema import Catalogue, Interaction
from flrec.errors import FlrecError
from flrec.models.backbone import add_thought_token
from flrec.models.testing import build_tiny, tiny_tokenizer

TITLES = ["Abbey Road", "Kind of Blue", "Blue Train", "Rumours (Remastered)", "OK Computer"]


@pytest.fixture(scope="module")
def tok():
    model, tok = build_tiny("llama")
    add_thought_token(model, tok)
    return tok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_render_names_domain_and_quotes_titles_oldest_first(tok):
    text = PromptBuilder(tok, domain="CD").render(TITLES[:3])
    assert "list of CDs" in text and "a new CD " in text
    assert 'before: "Abbey Road", "Kind of Blue", "Blue Train"\n\n### Response:\n' + THOUGHT_TOKEN in text
    assert text.endswith(THOUGHT_TOKEN) and text.startswith("Below is an instruction")
    assert "palyed" not in text and "recetenly" not in text and "<s>" not in text
    movie = PromptBuilder(tok, domain="movie", domain_plural="films", use_thought=False).render(TITLES[:1])
    assert "list of films" in movie and "a new movie " in movie and movie.endswith("### Response:\n")


def test_encode_matches_render_and_ends_with_thought(tok):
    builder = PromptBuilder(tok, domain="CD")
    ids = builder.encode(TITLES)
    assert ids[-1] == builder.thought_token_id == tok.convert_tokens_to_ids(THOUGHT_TOKEN)
    assert ids.count(builder.thought_token_id) == 1 and tok.bos_token_id not in ids
    assert tok.decode(ids) == builder.render(TITLES)  # byte-level BPE decodes exactly
    plain = PromptBuilder(tok, domain="CD", use_thought=False).encode(TITLES)
    assert plain == ids[:-1]


def test_segments_are_tokenised_separately_and_cached_identically(tok):
    builder = PromptBuilder(tok, domain="CD")
    batch = builder.encode_batch([TITLES[:2], TITLES[1:], TITLES[:2]])
    expected = (
        _ids(tok, builder._head_text)
        + _ids(tok, ' "Abbey Road"')
        + _ids(tok, ",")
        + _ids(tok, ' "Kind of Blue"')
        + _ids(tok, "\n\n### Response:\n")
        + [builder.thought_token_id]
    )
    assert batch[0] == expected and batch[2] == expected
    fresh = [PromptBuilder(tok, domain="CD").encode(h) for h in (TITLES[:2], TITLES[1:])]
    assert batch[:2] == fresh
    assert set(builder._segments) == set(TITLES)  # each distinct title tokenised once


def test_max_history_keeps_newest(tok):
    builder = PromptBuilder(tok, max_history=2)
    assert builder.render(TITLES) == PromptBuilder(tok).render(TITLES[-2:])


def test_overlong_prompt_drops_whole_oldest_titles(tok):
    full = PromptBuilder(tok, domain="CD")
    n_full = len(full.encode(TITLES))
    n_two = len(full.encode(TITLES[-2:]))
    limit = n_two + 2  # room for the two newest titles but not a third
    builder = PromptBuilder(tok, domain="CD", max_prompt_tokens=limit)
    ids = builder.encode(TITLES)
    assert n_full > limit and len(ids) == n_two <= limit
    assert ids == full.encode(TITLES[-2:])
    text = builder.render(TITLES)
    assert 'before: "Rumours (Remastered)", "OK Computer"\n' in text and "Blue" not in text


def test_newest_title_too_long_is_a_clear_error(tok):
    builder = PromptBuilder(tok, max_prompt_tokens=len(PromptBuilder(tok).encode(["A"])) - 1)
    with pytest.raises(FlrecError, match=r"history 0.*max_prompt_tokens=\d+; raise max_prompt_tokens") as e:
        builder.encode(["A"])
    assert "\n" not in str(e.value)
    with pytest.raises(FlrecError, match="max_prompt_tokens"):
        builder.render(["A"])


def test_missing_thought_token_and_empty_history_errors(tok):
    bare = tiny_tokenizer()  # no thought token added
    with pytest.raises(FlrecError, match="add_thought_token"):
        PromptBuilder(bare).encode(TITLES)
    assert PromptBuilder(bare, use_thought=False).encode(TITLES)  # the no-thought baseline needs none
    with pytest.raises(FlrecError, match="empty history"):
        PromptBuilder(tok).encode([])
    with pytest.raises(FlrecError, match="empty history"):
        PromptBuilder(tok).render([])


def test_encode_rows_targets_round_trip(tok):
    cat = Catalogue(TITLES)
    rows = [Interaction("u1", [0, 1, 2], 3), Interaction("u2", [4], 0), Interaction("u3", [1, 2], 3)]
    builder = PromptBuilder(tok, domain="CD")
    examples = builder.encode_rows(rows, cat)
    assert [e.row_index for e in examples] == [0, 1, 2]
    assert examples[0].prompt_ids == builder.encode(TITLES[:3])
    for e, row in zip(examples, rows, strict=True):
        title = cat.titles[row.target]
        assert e.target_ids == encode_target(tok, title)
        assert tok.decode(e.target_ids) == f'"{title}"\n' + tok.eos_token
    with pytest.raises(FlrecError, match=r"row 1 \(user 'u9'\).*empty history"):
        builder.encode_rows([rows[0], Interaction("u9", [], 1)], cat)


def test_collate_left_pads_prompts_and_right_pads_targets(tok):
    builder = PromptBuilder(tok, domain="CD")
    examples = builder.encode_rows(
        [Interaction("a", [0, 1, 2, 3], 4), Interaction("b", [4], 0)], Catalogue(TITLES)
    )
    pad = tok.pad_token_id
    batch = collate_left_padded(examples, pad)
    p, pm, t, tm = batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"], batch["target_mask"]
    assert (p[:, -1] == builder.thought_token_id).all()  # the thought sits in the last column
    lens = [len(e.prompt_ids) for e in examples]
    assert p.shape == (2, max(lens)) and pm.sum(1).tolist() == lens
    assert p[1, : p.shape[1] - lens[1]].eq(pad).all() and pm[1, : p.shape[1] - lens[1]].eq(0).all()
    assert p[1, -lens[1] :].tolist() == examples[1].prompt_ids
    tl = [len(e.target_ids) for e in examples]
    assert tm.sum(1).tolist() == tl and t[0, : tl[0]].tolist() == examples[0].target_ids
    short = min(range(2), key=tl.__getitem__)
    assert t[short, tl[short] :].eq(pad).all() and tm[short, tl[short] :].eq(0).all()
    assert all(v.dtype == torch.long for v in batch.values())


def test_collate_plain_examples():
    batch = collate_left_padded([EncodedExample([5, 6, 7], [8], 0), EncodedExample([9], [1, 2], 1)], 0)
    assert batch["prompt_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["target_ids"].tolist() == [[8, 0], [1, 2]]
    assert batch["target_mask"].tolist() == [[1, 0], [1, 1]]
