"""FLR module, losses and the recommender on tiny random backbones."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from flrec.errors import ConfigError, FlrecError
from flrec.models.flr import FactorizedLatentReasoner, apply_rope, positions_from_mask
from flrec.models.losses import FLRObjective, attention_diversity_loss, orthogonality_loss, sparsity_loss
from flrec.models.recommender import FLRConfig, FLRRecommender

VOCAB, THOUGHT, PAD = 96, 95, 0


def tiny_backbone(kind: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def make_batch(lengths=(7, 4, 9), target_lengths=(3, 5, 2), seed=1):
    """Left-padded prompts ending in the thought token, right-padded targets."""
    g = torch.Generator().manual_seed(seed)
    p, t = max(lengths), max(target_lengths)
    b = len(lengths)
    prompt_ids = torch.full((b, p), PAD)
    prompt_mask = torch.zeros(b, p, dtype=torch.long)
    target_ids = torch.full((b, t), PAD)
    target_mask = torch.zeros(b, t, dtype=torch.long)
    # Layout: one instruction token, then history items of two tokens each, then the thought.
    prompt_items = torch.full((b, p), -1)
    for i, (lp, lt) in enumerate(zip(lengths, target_lengths, strict=True)):
        prompt_ids[i, p - lp :] = torch.randint(1, VOCAB - 1, (lp,), generator=g)
        prompt_ids[i, -1] = THOUGHT
        prompt_mask[i, p - lp :] = 1
        prompt_items[i, p - lp + 1 : p - 1] = torch.arange(lp - 2) // 2
        target_ids[i, :lt] = torch.randint(1, VOCAB - 1, (lt,), generator=g)
        target_mask[i, :lt] = 1
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, target_ids=target_ids, target_mask=target_mask,
                prompt_items=prompt_items)


def make_model(kind="llama", **cfg):
    # eval(): the key-centering EMA (flr.center_keys) would otherwise move between the calls a test compares
    cfg.setdefault("gate_hidden", 16)
    return FLRRecommender(tiny_backbone(kind), FLRConfig(**cfg), THOUGHT).double().eval()


# ------------------------------------------------------------------------------------------- losses
def test_orthogonality_loss_zero_for_orthonormal_and_hand_value():
    eye = torch.eye(4)[None, :3]  # 3 orthonormal factors in R^4
    assert orthogonality_loss(eye * 5.0).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(1, 2, 3)  # two identical factors: gram = [[1,1],[1,1]] -> ||.-I||^2 = 2
    assert orthogonality_loss(same).item() == pytest.approx(2.0)


def test_diversity_loss_zero_for_disjoint_maps_and_hand_value():
    disjoint = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    assert attention_diversity_loss(disjoint).item() == pytest.approx(0.0)
    a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # cos = 1/sqrt(2), K=2 -> 2/(2*1) * cos
    assert attention_diversity_loss(a).item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)


def test_sparsity_loss_zero_for_one_hot_and_log_k_for_uniform():
    assert sparsity_loss(torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert sparsity_loss(torch.full((2, 4), 0.25)).item() == pytest.approx(math.log(4), rel=1e-5)


def test_uncertainty_weighting_formula_and_fixed():
    obj = FLRObjective(("orth", "sparse"))
    with torch.no_grad():
        obj.log_vars["orth"].fill_(math.log(2.0))
    rec = torch.tensor(1.0)
    aux = {"orth": torch.tensor(4.0), "sparse": torch.tensor(2.0)}
    # orth: exp(-log2)/2*4 + log2/2 = 1 + 0.3466; sparse: 1/2*2 + 0 = 1
    assert obj(rec, aux).item() == pytest.approx(1 + 1 + math.log(2) / 2 + 1)
    assert obj.weights()["orth"] == pytest.approx(0.25)
    fixed = FLRObjective(("orth",), "fixed", {"orth": 0.3})
    assert fixed(rec, {"orth": torch.tensor(2.0)}).item() == pytest.approx(1.6)


# ------------------------------------------------------------------------------------------- module
def test_reasoner_padding_side_invariant():
    torch.manual_seed(0)
    r = FactorizedLatentReasoner(16, num_factors=3, gate_hidden=8).double()
    h = torch.randn(1, 5, 16, dtype=torch.float64)
    left = torch.cat([torch.randn(1, 3, 16, dtype=torch.float64) * 1e3, h], 1)
    right = torch.cat([h, torch.full((1, 3, 16), float("nan"), dtype=torch.float64)], 1)
    m_left = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    m_right = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    a, b = r(left, m_left), r(right, m_right)
    torch.testing.assert_close(a.z, b.z)
    torch.testing.assert_close(a.attn[..., 3:], b.attn[..., :5])
    assert a.attn[..., :3].abs().max() == 0 and a.gates.sum(-1).allclose(torch.ones(1, dtype=torch.float64))


def test_rope_is_a_rotation_with_relative_positions():
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    pos = torch.arange(4)[None]
    y = apply_rope(x, pos, 100.0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, pos * 0, 100.0), x)
    assert positions_from_mask(torch.tensor([[0, 0, 1, 1]])).tolist() == [[0, 0, 0, 1]]


def test_factors_start_distinct():
    torch.manual_seed(0)
    r = FactorizedLatentReasoner(32, num_factors=4, gate_hidden=8)
    out = r(torch.randn(2, 12, 32), torch.ones(2, 12))
    # Uniform attention would make all factors equal (L_orth = K^2 - K = 12).
    assert orthogonality_loss(out.factors).item() < 11.0


# ------------------------------------------------------------------------------------- recommender
def test_thought_query_starts_as_the_paper_then_reads_the_thought():
    torch.manual_seed(0)
    paper = FactorizedLatentReasoner(16, num_factors=3, gate_hidden=8, keys="items").double()
    cond = FactorizedLatentReasoner(16, num_factors=3, gate_hidden=8, keys="items", query="thought").double()
    missing, unexpected = cond.load_state_dict(paper.state_dict(), strict=False)
    assert missing == ["w_c.weight"] and not unexpected
    h = torch.randn(2, 7, 16, dtype=torch.float64)
    mask, items = torch.ones(2, 7), torch.tensor([[-1, 0, 0, 1, 1, 2, -1]] * 2)
    torch.testing.assert_close(cond(h, mask, items).z, paper(h, mask, items).z)  # W_c = 0 at init
    h2 = h.clone()
    h2[:, -1] += torch.randn(2, 16, dtype=torch.float64)  # another thought state, the same history
    with torch.no_grad():
        cond.w_c.weight.normal_(std=0.5)

    def history_ratios(r, x):  # attention between history items, the thought key left out
        a = r(x, mask, items).attn[..., :3]
        return a / a.sum(-1, keepdim=True)

    # static prototypes: where the factors look among the items does not depend on the thought
    torch.testing.assert_close(history_ratios(paper, h), history_ratios(paper, h2))
    assert (history_ratios(cond, h) - history_ratios(cond, h2)).abs().max() > 1e-3


def test_thought_key_off_gives_the_thought_no_attention_but_still_the_query():
    torch.manual_seed(0)
    r = FactorizedLatentReasoner(16, num_factors=3, gate_hidden=8, keys="items", query="thought",
                                 thought_key=False, center=True).double()
    with torch.no_grad():
        r.w_c.weight.normal_(std=0.5)
    h = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = torch.ones(2, 7)
    items = torch.tensor([[-1, 0, 0, 1, 1, 2, -1], [-1, -1, -1, -1, -1, -1, -1]])  # row 1: no history item
    out = r(h, mask, items)
    assert out.attn[0, :, -1].abs().max() == 0  # the thought key takes no mass where items exist
    torch.testing.assert_close(out.attn[1, :, -1], torch.ones(3, dtype=torch.float64))  # else it is the key
    h2 = h.clone()
    h2[0, -1] += torch.randn(16, dtype=torch.float64)  # another thought state, the same history
    assert (r(h2, mask, items).attn[0] - out.attn[0]).abs().max() > 1e-3  # the query still reads it


def test_target_nce_trains_the_reasoner_not_the_backbone():
    """The target state is attached in both forward paths, the loss is finite and its gradient stops
    at the reasoner (aux_to_backbone=false) while the rec loss still reaches the backbone."""
    model = make_model(num_factors=3, keys="items", query="thought", thought_key=False,
                       aux_losses=["target_nce"]).train()
    batch = make_batch()
    out = model(**batch)
    nce = out["aux"]["target_nce"]
    assert torch.isfinite(nce) and nce.item() > 0
    nce.backward(retain_graph=True)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("reasoner.") for n in grads) and not any(n.startswith("backbone.") for n in grads)
    model.eval()
    torch.testing.assert_close(model(**batch)["aux"]["target_nce"], model.forward_naive(**batch)["aux"]["target_nce"])


@pytest.mark.parametrize("name", ["thought_readout", "thought_bag"])
@pytest.mark.parametrize("residual", [False, True])
def test_thought_readout_trains_the_write_path_not_the_backbone(residual, name):
    """thought_readout / thought_bag read the written thought (so with the residual write they reach the
    gate) and their gradient stops before the backbone; they ignore padding and a token every row has."""
    model = make_model(num_factors=3, keys="items", query="thought", thought_key=False, values="embeddings",
                       thought_residual=residual, aux_losses=[name]).train()
    batch = make_batch()
    out = model(**batch)
    loss = out["aux"][name]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward(retain_graph=True)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not any(n.startswith("backbone.") for n in grads)
    # The residual write starts with a zero gate: the readout opens the gate first, then reaches the reasoner.
    assert ("thought_gate" in grads) == residual and any(n.startswith("reasoner.") for n in grads) != residual
    model.eval()
    torch.testing.assert_close(model(**batch)["aux"][name], model.forward_naive(**batch)["aux"][name])
    if name == "thought_readout":
        same = dict(batch, target_ids=torch.full_like(batch["target_ids"], 7))  # every row: the same token
        assert model(**same)["aux"][name].item() == 0.0


def test_thought_teacher_replaces_then_releases_the_thought():
    """flr.thought_teacher_steps: at step 0 the LM gets the teacher alone (the reasoner cannot move the
    loss), from step N on the reasoner's thought alone (as in evaluation), halfway a blend."""
    model = make_model(num_factors=3, keys="items", thought_residual=False, thought_teacher_steps=4,
                       aux_losses=[]).train()
    batch = make_batch()
    at0 = model(**batch)["rec_loss"]
    with torch.no_grad():
        for p in model.reasoner.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    torch.testing.assert_close(model(**batch)["rec_loss"], at0)
    model.objective.step.fill_(4)
    released = model(**batch)["rec_loss"]
    torch.testing.assert_close(released, model.eval()(**batch)["rec_loss"])
    model.train().objective.step.fill_(2)
    half = model(**batch)["rec_loss"]
    assert abs(half - at0) > 1e-6 and abs(half - released) > 1e-6


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("reasoner,keys,query", [("flr", "tokens", "prototypes"), ("flr", "history", "prototypes"),
                                                 ("flr", "items", "prototypes"), ("flr", "items", "thought"),
                                                 ("latentr3", "tokens", "prototypes"),
                                                 ("softprompt", "tokens", "prototypes")])
def test_cached_refinement_equals_naive_values_and_gradients(kind, reasoner, keys, query):
    """Prefix cache + one-token steps == N+1 full passes.

    Float64 model; logits agree to 1e-9. transformers computes RMSNorm and RoPE in fp32 even in a
    float64 model, so gradients (summed in a different order) agree to 1e-6 of their scale.
    """
    model = make_model(kind, reasoner=reasoner, num_factors=3, keys=keys, query=query,
                       aux_losses=None if reasoner == "flr" else [])
    if query == "thought":  # W_c starts at zero (= the paper): give it weights so its path is checked
        with torch.no_grad():
            model.reasoner.w_c.weight.normal_(std=0.1)
    batch = make_batch()
    fast = model(**batch)
    fast["loss"].backward()
    # (A parameter that reaches the loss only through a cropped cache entry gets an all-zero gradient
    # in the cached path and none in the naive one: both mean "no effect".)
    g_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    model.zero_grad()
    slow = model.forward_naive(**batch)
    slow["loss"].backward()
    g_slow = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    torch.testing.assert_close(fast["target_logits"], slow["target_logits"], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(fast["loss"], slow["loss"], atol=1e-9, rtol=1e-9)
    assert g_fast.keys() == g_slow.keys()
    assert any(n.startswith("reasoner.") for n in g_fast) and any(n.startswith("backbone.") for n in g_fast)
    for n in g_fast:
        scale = g_slow[n].abs().max().item()
        torch.testing.assert_close(g_fast[n], g_slow[n], atol=1e-6 * scale + 1e-12, rtol=1e-5, msg=n)


@pytest.mark.parametrize("thought_key", [True, False])
def test_second_step_changes_the_thought(thought_key):
    """Step 2 sees step 1's thought: through the thought key, or (the default, no thought key) through the
    query, once W_c has weights. W_c starts at zero, so without the thought key the two steps start equal."""
    model = make_model(num_steps=2, thought_key=thought_key)
    batch = make_batch()
    pos = positions_from_mask(torch.cat([batch["prompt_mask"], batch["target_mask"]], 1))

    def zs():
        _, _, steps, _ = model.refine(batch["prompt_ids"], batch["prompt_mask"], pos, batch["prompt_items"])
        return steps[0].z, steps[1].z

    with torch.no_grad():  # the default writes E0 + g * scale(z), g = 0 at init: open the gate
        model.thought_gate.fill_(1.0)
    assert torch.allclose(*zs()) is (not thought_key)
    with torch.no_grad():
        model.reasoner.w_c.weight.normal_(std=0.1)
    assert not torch.allclose(*zs())


def test_rows_independent_of_padding_and_batch():
    model = make_model(num_steps=2)
    batch = make_batch(lengths=(7, 4, 9), target_lengths=(3, 5, 2))
    full = model(**batch)["target_logits"]
    one = {k: v[1:2] for k, v in batch.items()}
    # strip row 1's extra padding entirely
    one = {"prompt_ids": one["prompt_ids"][:, -4:], "prompt_mask": one["prompt_mask"][:, -4:],
           "target_ids": one["target_ids"], "target_mask": one["target_mask"],
           "prompt_items": one["prompt_items"][:, -4:]}
    alone = model(**one)["target_logits"]
    torch.testing.assert_close(full[3:8], alone, atol=1e-9, rtol=1e-9)


def test_frozen_mode_trains_only_flr_parts():
    model = make_model()
    with torch.no_grad():  # trained W_c: the query reads the thought, so thought_init gets a gradient
        model.reasoner.w_c.weight.normal_(std=0.1)
    model.set_trainable("frozen")
    out = model(**make_batch())
    out["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.thought_init.grad is not None and model.reasoner.prototypes.grad is not None
    assert {"rec", "orth", "div", "target_nce", "lambda_orth"} <= set(out["logs"])


def test_prefill_matches_teacher_forcing_first_token():
    model = make_model()
    batch = make_batch(target_lengths=(1, 1, 1))
    state = model.prefill(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_items"])
    tf = model(**batch)["target_logits"]
    torch.testing.assert_close(state.next_logits.double(), tf, atol=1e-6, rtol=1e-6)  # prefill returns fp32
    assert state.cache.get_seq_length() == batch["prompt_ids"].shape[1]


def test_bad_config_and_missing_thought():
    with pytest.raises(ConfigError, match="aux_losses"):
        FLRConfig(aux_losses=["orth", "bogus"])
    with pytest.raises(ConfigError, match="num_steps"):
        FLRConfig(num_steps=0)
    model = make_model()
    batch = make_batch()
    batch["prompt_ids"][:, -1] = 5
    with pytest.raises(FlrecError, match="Thought"):
        model(**batch)


def test_no_thought_variant_scores_targets():
    torch.manual_seed(0)
    model = FLRRecommender(tiny_backbone(), FLRConfig(reasoner="none"), None).double()
    batch = make_batch()
    batch["prompt_ids"][:, -1] = 7
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and out["aux"] == {}


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_cached_refinement_equals_naive_with_sliding_window_attention(kind):
    """Sliding-window layers (window 4 < prompts of up to 9 tokens) keep parity with the full passes:
    crop_cache must restore their stored window and cumulative length after each thought step."""
    from transformers import MistralConfig, MistralForCausalLM

    from flrec.models.compat import new_cache

    common = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    torch.manual_seed(0)
    if kind == "mistral":
        backbone = MistralForCausalLM(MistralConfig(**common, sliding_window=4)).eval()
    else:
        backbone = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=4,
                                                max_window_layers=0)).eval()
    assert any(getattr(layer, "is_sliding", False) for layer in new_cache(backbone).layers)
    model = FLRRecommender(backbone, FLRConfig(gate_hidden=16, num_factors=3, num_steps=2), THOUGHT).double().eval()
    batch = make_batch()
    fast = model(**batch)
    fast["loss"].backward()
    g_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    slow = model.forward_naive(**batch)
    slow["loss"].backward()
    torch.testing.assert_close(fast["target_logits"], slow["target_logits"], atol=1e-9, rtol=1e-9)
    for n, p in model.named_parameters():
        if p.grad is not None:
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(g_fast[n], p.grad, atol=1e-6 * scale + 1e-12, rtol=1e-5, msg=n)


def test_thought_residual_starts_as_a_constant_thought_and_learns_its_gate():
    model = make_model(num_factors=3, thought_residual=True)
    batch = make_batch()
    pos = positions_from_mask(torch.cat([batch["prompt_mask"], batch["target_mask"]], 1))
    e, _, _, _ = model.refine(batch["prompt_ids"], batch["prompt_mask"], pos, batch["prompt_items"])
    torch.testing.assert_close(e, model.thought_init.expand_as(e))  # g = 0: every row gets E0
    model(**batch)["rec_loss"].backward()
    assert model.thought_gate.grad.abs().sum() > 0  # the rec loss opens the gate if the thought helps
    with torch.no_grad():
        model.thought_gate.fill_(1.0)
    e1, _, _, _ = model.refine(batch["prompt_ids"], batch["prompt_mask"], pos, batch["prompt_items"])
    assert not torch.allclose(e1[0], e1[1])  # an open gate lets each row's thought through
