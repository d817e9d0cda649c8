"""Issue #9: factor diagnostics against hand-computed cases, key spans, regularisers, selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flrec.analysis.factors import (
    PlantedIntents,
    active_factors,
    argmax_histogram,
    collect,
    gate_usage_entropy_ratio,
    item_attention,
    mutual_information,
    permutation_mi,
    summarize,
    target_intent_share,
    thought_cross_row_cosine,
)
from flrec.data.prompts import PromptBuilder
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.errors import ConfigError
from flrec.models.backbone import add_thought_token
from flrec.models.flr import FactorizedLatentReasoner, item_keys
from flrec.models.losses import (
    REGULARISERS,
    FLRObjective,
    attention_entropy_floor_loss,
    routing_loss,
    thought_similarity_loss,
)
from flrec.models.recommender import FLRConfig, FLRRecommender
from flrec.models.testing import build_tiny
from flrec.training import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------ statistics by hand
def test_cross_row_cosine_hand_values():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2 -> mean sqrt2/3
    assert float(thought_cross_row_cosine(z)) == pytest.approx(math.sqrt(2) / 3, rel=1e-6)
    assert float(thought_cross_row_cosine(torch.tensor([[2.0, 1.0]] * 5))) == pytest.approx(1.0)


def test_gate_usage_active_factors_and_histogram_hand_values():
    one_factor = torch.tensor([[0.0, 1.0, 0.0]] * 4)
    assert float(gate_usage_entropy_ratio(one_factor)) == pytest.approx(0.0, abs=1e-9)
    even = torch.eye(3)  # each row its own factor: mean gate uniform
    assert float(gate_usage_entropy_ratio(even)) == pytest.approx(1.0)
    g = torch.tensor([[0.5, 0.45, 0.05], [0.05, 0.05, 0.9]])
    # mean [0.275, 0.25, 0.475]
    m = torch.tensor([0.275, 0.25, 0.475], dtype=torch.float64)
    assert float(gate_usage_entropy_ratio(g)) == pytest.approx(float(-(m * m.log()).sum() / math.log(3)), rel=1e-6)
    assert active_factors(g) == pytest.approx((2 + 1) / 2)
    assert argmax_histogram(g) == {0: 1, 1: 0, 2: 1}


def test_item_attention_and_target_intent_share_hand_case():
    # 1 row, K=2, keys: [instr, item0, item0, item1, item2, thought]
    attn = torch.tensor([[[0.1, 0.2, 0.2, 0.4, 0.0, 0.1],
                          [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]])
    key_items = torch.tensor([[-1, 0, 0, 1, 2, -1]])
    ia = item_attention(attn, key_items, 4)
    torch.testing.assert_close(ia, torch.tensor([[[0.4, 0.4, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]]))
    gates = torch.tensor([[0.75, 0.25]])
    in_hist = torch.tensor([[True, True, True, False]])
    in_intent = torch.tensor([[True, False, False, False]])  # only item 0 is of the target's intent
    share, uniform, used = target_intent_share(ia, gates, in_intent, in_hist)
    # factor 0: 0.4 of its 0.8 history mass on item 0 -> 0.5; factor 1: 0 -> share 0.75*0.5 = 0.375
    assert share == pytest.approx(0.375) and uniform == pytest.approx(1 / 3) and used == 1
    # a row without any target-intent item is left out
    share, uniform, used = target_intent_share(ia, gates, torch.zeros_like(in_intent), in_hist)
    assert used == 0 and math.isnan(share)


def test_mutual_information_and_permutation_p():
    assert mutual_information([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(math.log(2))
    assert mutual_information([0, 1, 0, 1], [5, 5, 7, 7]) == pytest.approx(0.0, abs=1e-12)
    a = [0, 1] * 30
    mi, p = permutation_mi(a, a, n_perm=200)
    assert mi == pytest.approx(math.log(2)) and p < 0.01
    _, p_none = permutation_mi(a, [0] * 60, n_perm=50)
    assert p_none == 1.0


# ------------------------------------------------------------------------------ regularisers
def test_cross_row_regularisers_hand_values_and_registry():
    assert {"orth", "div", "sparse", "thought_sim", "routing", "attn_entropy"} <= set(REGULARISERS)
    assert float(thought_similarity_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))) == pytest.approx(-1.0)
    assert float(routing_loss(torch.tensor([[0.3, 0.7]] * 3))) == pytest.approx(0.0, abs=1e-5)
    # a nearly constant gate still gets a unit-scale gradient (its point: I(row; factor) would not)
    g = torch.tensor([[0.5 + 1e-3, 0.5 - 1e-3], [0.5 - 1e-3, 0.5 + 1e-3]], requires_grad=True)
    routing_loss(g).backward()
    assert g.grad.abs().max() > 0.1
    uniform = torch.full((1, 2, 4), 0.25)
    assert float(attention_entropy_floor_loss(uniform, None, 0.9)) == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([[True, True, False, False]])  # 2 real keys: one-hot has entropy 0, floor 0.5 ln 2
    one_hot = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    assert float(attention_entropy_floor_loss(one_hot, mask, 0.5)) == pytest.approx(0.5)


def test_warmup_ramps_the_regulariser_weight():
    obj = FLRObjective(("orth",), "fixed", {"orth": 1.0}, warmup_steps=4).train()
    rec, aux = torch.tensor(0.0), {"orth": torch.tensor(2.0)}
    totals = []
    for step in range(6):  # the trainer sets the step after each optimizer step
        totals.append(float(obj(rec, aux)))
        obj.step.fill_(step + 1)
    assert totals == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


# ------------------------------------------------------------------------------ key spans
def test_history_keys_put_zero_attention_on_instruction_tokens():
    torch.manual_seed(0)
    r = FactorizedLatentReasoner(16, num_factors=3, gate_hidden=8, keys="history")
    items = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, -1, -1]])  # instruction, two titles, tail, thought
    out = r(torch.randn(1, 9, 16), torch.ones(1, 9), items)
    outside = (items == -1).clone()
    outside[0, -1] = False  # the thought stays a key
    assert out.attn[:, :, outside[0]].abs().max() == 0
    assert out.attn[:, :, ~outside[0]].sum(-1).allclose(torch.ones(1, 3))


def test_item_keys_pool_each_title():
    h = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)
    items = torch.tensor([[-1, 0, 0, 1, -1, -1]])
    keys, key_mask, key_items, pos = item_keys(h, items, torch.ones(1, 6))
    torch.testing.assert_close(keys, torch.tensor([[[3.0, 4.0], [6.0, 7.0], [10.0, 11.0]]]))
    assert key_mask.tolist() == [[True, True, True]] and key_items.tolist() == [[0, 1, -1]]
    assert pos.tolist() == [[0, 1, 2]]


def test_latentr3_runs_one_step_and_explicit_two_is_refused():
    cfg = FLRConfig(reasoner="latentr3")
    assert cfg.steps == 1 and cfg.aux == () and cfg.scale_thought is False and cfg.rope == 1000.0
    with pytest.raises(ConfigError, match="num_steps must be 1"):
        FLRConfig(reasoner="latentr3", num_steps=2)
    assert FLRConfig().steps == 2 and FLRConfig().aux == ("orth", "div", "thought_sim", "routing", "target_nce")


def test_aux_losses_stop_at_the_backbone_when_configured():
    def grads(aux_to_backbone: bool) -> float:
        model, tok = build_tiny("llama")
        thought = add_thought_token(model, tok)
        # Only the regularisers in the objective: the rec loss is taken out by a zero target mask.
        m = FLRRecommender(model, FLRConfig(num_factors=3, gate_hidden=8, aux_to_backbone=aux_to_backbone), thought)
        ids = torch.tensor([[5, 6, 7, 8, thought]])
        out = m(ids, torch.ones_like(ids), torch.tensor([[9]]), torch.zeros(1, 1, dtype=torch.long),
                prompt_items=torch.tensor([[-1, 0, 0, 1, -1]]))
        out["loss"].backward()
        assert m.reasoner.prototypes.grad is not None and m.reasoner.prototypes.grad.abs().sum() > 0
        return sum(float(p.grad.abs().sum()) for p in m.backbone.parameters() if p.grad is not None)

    assert grads(True) > 0
    assert grads(False) == 0


# ------------------------------------------------------------------------------ end to end on a tiny model
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_synthetic(SynthConfig(n_items=40, n_users=30, seq_len_min=4, seq_len_max=7,
                                          min_intent_items=2, n_intents=6), out)


def tiny_flr(**cfg):
    model, tok = build_tiny("llama")
    thought = add_thought_token(model, tok)
    m = FLRRecommender(model, FLRConfig(num_factors=3, gate_hidden=8, **cfg), thought).eval()
    return m, PromptBuilder(tok, max_history=5)


def test_constant_thought_gives_cosine_one_and_usage_zero(synth):
    m, builder = tiny_flr()
    with torch.no_grad():  # values ignore the input and the gate always picks factor 0
        m.reasoner.w_v.weight.zero_()
        m.reasoner.w_v.bias.fill_(0.3)
        m.reasoner.gate[2].bias.copy_(torch.tensor([30.0, 0.0, 0.0]))
    rows = synth["test"][:12]
    rep = summarize(collect(m, builder, rows, synth.catalogue, batch_size=5), rows, PlantedIntents(synth.root / "intents.json"),
                    n_perm=20)
    assert rep["z_cross_row_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rep["gate_usage_entropy_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert rep["argmax_histogram"] == {0: 12, 1: 0, 2: 0}


def test_diagnostics_independent_of_batch_size_and_intents_checked(synth):
    m, builder = tiny_flr(keys="items")
    rows = synth["valid"][:10]
    truth = PlantedIntents(synth.root / "intents.json")
    a = summarize(collect(m, builder, rows, synth.catalogue, batch_size=3), rows, truth, n_perm=20)
    b = summarize(collect(m, builder, rows, synth.catalogue, batch_size=10), rows, truth, n_perm=20)
    for k in ("z_cross_row_cosine", "gate_usage_entropy_ratio", "target_intent_share",
              "target_intent_share_uniform"):
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert 0 <= a["target_intent_share"] <= 1 and a["z_cross_row_cosine"] < 1
    refs = a["target_intent_share_references"]  # fixed attention rules on the same rows
    assert refs["uniform"] == pytest.approx(a["target_intent_share_uniform"])
    assert all(0 <= v <= 1 for v in refs.values())
    assert a["target_intent_share_gain_oracle"] == pytest.approx(refs["dominant_oracle"] - refs["uniform"])


# ------------------------------------------------------------------------------ selection
class AuxToy(nn.Module):
    """rec falls every step while the auxiliary term grows: total and rec disagree on the best step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))
        self.seen_steps: list[int] = []

    def on_train_step(self, step: int) -> None:  # the trainer's per-optimizer-step hook
        self.seen_steps.append(step)

    def forward(self, x: torch.Tensor) -> dict:
        rec = self.w**2 * x.mean()
        aux = (100.0 * (3.0 - self.w) ** 2).detach()  # in the value, not in the gradient
        return {"loss": rec + aux, "rec_loss": rec, "logs": {"rec": rec.detach(), "aux": aux}}


def test_selection_uses_the_rec_loss_not_the_total(tmp_path):
    data = [{"x": torch.ones(1)} for _ in range(8)]

    def collate(rows):
        return {"x": torch.stack([r["x"] for r in rows])}

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), lr=0.3, micro_batch_size=4, max_steps=6, eval_every=1,
                      early_stopping_patience=2, mixed_precision="no", progress=False, log_every=1)
    toy = AuxToy()
    res = Trainer(toy, data, data, collate, cfg).train()
    assert toy.seen_steps == [1, 2, 3, 4, 5, 6]
    # The total (rec + a growing aux term) is best at step 1 and would stop training early;
    # the rec loss keeps improving, so the last step is the best and training does not stop.
    assert res.best_step == 6 and not res.stopped_early
    total_cfg = cfg.replace(output_dir=str(tmp_path / "total"), select_metric="loss")
    res_total = Trainer(AuxToy(), data, data, collate, total_cfg).train()
    assert res_total.best_step == 1 and res_total.stopped_early


def test_centered_keys_remove_the_shared_component():
    torch.manual_seed(0)
    shared = 20.0 * torch.randn(16)
    hidden = shared + torch.randn(6, 5, 16)  # every state = a large common vector + a small row part
    mask = torch.ones(6, 5)

    def cosine(center: bool) -> float:
        torch.manual_seed(1)
        r = FactorizedLatentReasoner(16, num_factors=2, gate_hidden=8, center=center)
        r.train()(hidden, mask)  # one training batch...
        r.commit_key_mean()  # ...sets the running mean after its step (used from the next step on)
        return float(thought_cross_row_cosine(r.eval()(hidden, mask).z))

    assert cosine(False) > 0.95 and cosine(True) < 0.5
    r = FactorizedLatentReasoner(16, num_factors=2, gate_hidden=8, center=True).eval()
    r(hidden, mask)
    assert int(r.key_mean_batches) == 0 and r.key_mean.abs().sum() == 0  # frozen at inference


def test_flr_lr_scale_gives_the_flr_parts_their_own_learning_rate():
    from test_flr_model import make_model

    from flrec.training.sft import SFTConfig, param_groups

    model = make_model(reasoner="flr")
    assert param_groups(model, 1e-4, 1.0) is None
    groups = param_groups(model, 1e-4, 10.0)
    flr_ids = {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}
    for g in groups:
        in_flr = {id(p) in flr_ids for p in g["params"]}
        assert len(in_flr) == 1  # a group never mixes backbone and FLR parameters
        assert g.get("lr", 1e-4) == (1e-3 if in_flr.pop() else 1e-4)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="flr_lr_scale"):
        SFTConfig(flr_lr_scale=0)


def test_model_saved_under_older_defaults_loads_as_it_trained(tmp_path):
    """A saved config with aux_losses=null and without query / thought_key meant the defaults of its day:
    the saved loss weights name its regularisers, and the missing options load as the paper's."""
    import json

    m, _ = tiny_flr(aux_losses=["orth", "div", "sparse", "thought_sim", "routing"], query="prototypes",
                    thought_key=True, thought_residual=False, center_keys=False)
    tok = build_tiny("llama")[1]
    add_thought_token(build_tiny("llama")[0], tok)
    m.save_pretrained(tmp_path, tok)
    meta = json.loads((tmp_path / "flr_config.json").read_text())
    meta["flr"]["aux_losses"] = None
    del meta["flr"]["query"], meta["flr"]["thought_key"], meta["flr"]["thought_residual"]
    (tmp_path / "flr_config.json").write_text(json.dumps(meta))
    loaded, _ = FLRRecommender.from_pretrained(tmp_path)
    cfg = loaded.config
    assert cfg.aux == ("orth", "div", "sparse", "thought_sim", "routing")
    assert cfg.query == "prototypes" and cfg.thought_key is True and cfg.thought_residual is False
    for k, v in m.flr_state_dict().items():
        torch.testing.assert_close(loaded.flr_state_dict()[k], v.to(loaded.flr_state_dict()[k].dtype), msg=k)
