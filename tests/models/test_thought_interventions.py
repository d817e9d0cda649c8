"""Does the LM use the thought? The interventions of flrec.models.health, and the write-path options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flrec.models.health import derangement, paired_summary, thought_interventions, thought_user_share
from flrec.models.losses import FLRObjective, register_regulariser
from flrec.training.sft import SFTConfig
from tests.models.test_flr_model import THOUGHT, make_batch, make_model, tiny_backbone


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 7, 64, 193):
        for seed in range(3):
            p = derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n))
            assert bool((p != torch.arange(n)).all())
    with pytest.raises(ValueError):
        derangement(1)


def test_constant_thought_gives_exactly_zero_deltas():
    model = make_model(reasoner="softprompt")
    batches = [make_batch(seed=1), make_batch(lengths=(5, 8), target_lengths=(4, 2), seed=2)]
    rep = thought_interventions(model, batches, hidden_history=True)
    assert rep["rows"] == 5
    assert rep["thought_swap_delta"] == 0.0  # exactly: the same embedding through the same code path
    assert rep["thought_hidden_swap_delta"] == 0.0
    assert rep["thought_hidden_own_loss"] != rep["thought_own_loss"]  # the answer saw less
    assert rep["thought_const_delta"] == pytest.approx(0.0, abs=1e-8)  # the mean of equal rows rounds
    assert rep["thought_user_share"] == pytest.approx(0.0, abs=1e-12)
    assert rep["thought_cross_row_cosine"] == pytest.approx(1.0)


def test_thought_only_model_gives_large_swap_delta():
    """Hand-built: the written thought is a large multiple of the embedding of the row's own first target
    token, so with tied embeddings the LM's first prediction follows the thought alone."""
    backbone = tiny_backbone()
    backbone.config.tie_word_embeddings = True
    backbone.tie_weights()
    model = make_model(reasoner="flr", thought_residual=False, keys="tokens", aux_losses=[])
    model.backbone = backbone.double().eval()
    with torch.no_grad():  # large logits: a random tiny LM's are all near 0
        model.backbone.get_input_embeddings().weight.mul_(30.0)
    batch = make_batch(lengths=(7, 4, 9, 6), target_lengths=(1, 1, 1, 1), seed=3)  # the thought-led token only
    first = batch["target_ids"][:, 0]
    emb = model.backbone.get_input_embeddings().weight.detach()

    def own_target_thought(z):  # ignore z: the thought *is* the answer's first token, scaled up
        return 50.0 * emb[first]

    model._write_thought = own_target_thought
    rep = thought_interventions(model, [batch], hidden_history=True)
    assert rep["thought_swap_delta"] > 1.0
    assert rep["thought_hidden_swap_delta"] > 1.0
    assert "thought_hidden_swap_delta" not in thought_interventions(model, [batch])
    assert rep["thought_const_delta"] > 0.1
    assert rep["thought_user_share"] > 0.5


def test_row_losses_given_own_thought_match_the_model_path():
    model = make_model(reasoner="flr", thought_residual=False, keys="items")
    batch = make_batch()
    own, e = model.row_losses(**batch)
    again, _ = model.row_losses(**batch, thought=e)
    torch.testing.assert_close(own, again)
    # The mean of the per-row losses weighted by token counts is the model's rec loss.
    n = batch["target_mask"].sum(1).double()
    rec = model(**batch)["rec_loss"]
    torch.testing.assert_close((own * n).sum() / n.sum(), rec)


def test_paired_summary_hand_values():
    s = paired_summary(torch.tensor([1.0, 2.0, 3.0]))
    assert s["mean"] == pytest.approx(2.0)
    assert s["se"] == pytest.approx(1.0 / 3**0.5)
    assert 0.02 < s["p"] < 0.1  # t = 3.46 with 2 d.f.: p = 0.074
    assert thought_user_share(torch.tensor([[2.0, 0.0], [0.0, 2.0]])) == pytest.approx(0.5**0.5)


# ---------------------------------------------------------------------------- bounded weights
@pytest.mark.parametrize("value", [-0.7, 0.0])
def test_uncertainty_log_var_stays_bounded(value):
    register_regulariser("_const_test", ("z",), floor=0.0)(lambda z: z.new_zeros(()))
    obj = FLRObjective(("_const_test",), "uncertainty")
    opt = torch.optim.Adam(obj.parameters(), lr=0.1)
    for _ in range(1000):
        opt.zero_grad()
        obj(torch.zeros(()), {"_const_test": torch.tensor(value)}).backward()
        opt.step()
    s = float(obj.log_vars["_const_test"].detach())
    # Beyond the clamp its gradient is 0; Adam's momentum carries it a finite way further, then it stops.
    assert FLRObjective.S_MIN - 2.0 <= s <= FLRObjective.S_MAX + 2.0
    assert obj.weights()["_const_test"] <= 0.5 * 2.718281828 ** -FLRObjective.S_MIN + 1e-6


def test_routing_and_thought_sim_are_shifted_to_non_negative():
    from flrec.models.losses import REGULARISERS

    assert REGULARISERS["routing"][2] == -1.0 and REGULARISERS["thought_sim"][2] == -1.0
    assert REGULARISERS["thought_sim"][1] == ("thought", "z")  # acts on what the LM receives


# ---------------------------------------------------------------------------- key centring
def test_key_mean_updates_only_after_the_step():
    model = make_model(reasoner="flr", keys="items", center_keys=True).train()
    r = model.reasoner
    batch = make_batch()
    model(**batch)
    model(**batch)  # two forwards of one step: each read the mean of *earlier* steps (none yet)
    assert int(r.key_mean_batches) == 0 and float(r.key_mean.abs().sum()) == 0.0
    model.on_train_step(1)
    assert int(r.key_mean_batches) == 1 and float(r.key_mean.abs().sum()) > 0
    before = r.key_mean.clone()
    model(**batch)
    torch.testing.assert_close(r.key_mean, before)  # unchanged inside the step


# ---------------------------------------------------------------------------- write paths
def test_values_from_embeddings_write_a_mix_of_history_embeddings():
    model = make_model(reasoner="flr", keys="items", values="embeddings", thought_residual=False,
                       embed_scale=False, num_steps=1)
    batch = make_batch()
    _, _, steps, _ = model.refine(batch["prompt_ids"], batch["prompt_mask"],
                                  torch.cumsum(batch["prompt_mask"], -1) - 1, batch["prompt_items"])
    out = steps[-1]
    # W_v is the identity at init, so each factor is a convex mix of item-pooled input embeddings.
    emb = model.backbone.get_input_embeddings().weight
    ids = batch["prompt_ids"]
    for b in range(ids.shape[0]):
        items = batch["prompt_items"][b]
        pooled = torch.stack([emb[ids[b][items == i]].mean(0) for i in range(int(items.max()) + 1)])
        mix = out.attn[b, :, : pooled.shape[0]] @ pooled
        torch.testing.assert_close(out.factors[b], mix.to(out.factors.dtype))


def test_values_from_embeddings_cached_equals_naive():
    model = make_model(reasoner="flr", keys="items", values="embeddings", thought_residual=False)
    batch = make_batch()
    a, b = model(**batch), model.forward_naive(**batch)
    torch.testing.assert_close(a["rec_loss"], b["rec_loss"])


def test_softprompt_control_is_trained_like_e0():
    model = make_model(reasoner="softprompt")
    torch.testing.assert_close(model.reasoner.vector, model.thought_init)
    assert not model.config.scale_thought
    _, e = model.row_losses(**make_batch())
    torch.testing.assert_close(e[0], model.thought_init)


def test_paper_config_file_resolves_to_eqs_2_to_8():
    path = Path(__file__).parents[2] / "configs" / "flr-paper.yaml"
    cfg = SFTConfig.load(str(path))
    f = cfg.flr
    assert f.reasoner == "flr" and f.steps == 2 and f.num_factors == 4
    assert f.keys == "tokens" and f.key_positions == "absolute" and f.query == "prototypes"
    assert f.thought_key is True and f.residual is False and f.scale_thought is False
    assert f.values == "hidden" and f.center_keys is False and f.aux_to_backbone is True
    assert f.aux == ("orth", "div", "sparse") and f.loss_weighting == "uncertainty"
    assert f.attn_temperature == 1.0 and f.rope == 10000.0 and f.aux_warmup_steps == 0
    assert cfg.flr_lr_scale == 1.0 and cfg.trainable == "full"
    assert THOUGHT  # the test model's thought token id exists (import guard)


def test_supplied_own_thoughts_give_the_same_report():
    model = make_model(reasoner="flr", thought_residual=False, keys="items")
    batches = [make_batch(seed=4), make_batch(lengths=(5, 8), target_lengths=(4, 2), seed=5)]
    es, zs = zip(*[model.row_losses(**b, return_z=True)[1:] for b in batches], strict=True)
    a = thought_interventions(model, batches)
    b = thought_interventions(model, batches, own=(torch.cat(es), torch.cat(zs)))
    assert a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_history_dropout_hides_the_history_from_the_answer_only_in_training():
    model = make_model(reasoner="softprompt", history_dropout=0.999)  # the thought ignores the history here
    batch = make_batch(seed=6)
    other = {k: v.clone() for k, v in batch.items()}
    hist = other["prompt_items"] >= 0
    other["prompt_ids"][hist] = (other["prompt_ids"][hist] + 7) % 90 + 1  # other history titles, same layout

    def loss(b, train: bool):
        torch.manual_seed(0)
        return model.train(train)(**b)["rec_loss"].detach()

    torch.testing.assert_close(loss(batch, True), loss(other, True))  # the answer cannot see the history
    # Nor the tokens after it (commas, the fixed tail): under causal attention they have read it.
    tail = {k: v.clone() for k, v in batch.items()}
    tail_other = {k: v.clone() for k, v in other.items()}
    for b in (tail, tail_other):
        b["prompt_items"][:, -3:-1] = -1  # the last history tokens become a tail shared by both batches
        b["prompt_ids"][:, -3:-1] = batch["prompt_ids"][:, -3:-1]
    torch.testing.assert_close(loss(tail, True), loss(tail_other, True))
    assert not torch.allclose(loss(batch, False), loss(other, False))  # at inference it does
    with pytest.raises(Exception, match="history_dropout"):
        make_model(reasoner="none", history_dropout=0.5)
