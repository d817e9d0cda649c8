"""FLR-GRPO on tiny random backbones: rewards, advantages, rollouts, the objective, resume (never the 135M model)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import assert_same_flr_state, crash_after_first_checkpoint
from transformers import LlamaConfig, LlamaForCausalLM

from flrec.errors import ConfigError
from flrec.models.recommender import FLRConfig, FLRRecommender
from flrec.training.grpo import PRESETS, GRPOConfig, build_grpo_trainer, noise_sigma, read_log, run_grpo
from flrec.training.rewards import (
    RewardInputs,
    get_advantage,
    get_reward,
    greedy_trie_match,
    zero_advantage_share,
)
from flrec.training.sft import SFTConfig, run_sft

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, THOUGHT = 96, 95


# ------------------------------------------------------------------------------ rewards, advantages
def test_rewards_against_hand_computed_values():
    # one group of G = 3: rows 0 (noise-free), 1, 2; row 2 has one padded token
    x = RewardInputs(token_logprobs=torch.tensor([[-1.0, -1.0, -1.0], [-3.0, 0.0, -3.0], [-0.5, -1.5, 0.0]]),
                     target_mask=torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
                     greedy_match=torch.tensor([[True, True, True], [True, False, True], [True, True, True]]),
                     group_size=3)
    # token confidence: -1, -2, -1; exact match: 1, 0, 1
    assert get_reward("token_confidence")(x).tolist() == [-1.0, -2.0, -1.0]
    assert get_reward("exact_match")(x).tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(get_reward("hybrid")(x), torch.tensor([0.9, -0.2, 0.9]))
    torch.testing.assert_close(get_reward("hybrid")(x, alpha=1.0, beta=0.0), torch.tensor([-1.0, -2.0, -1.0]))
    # rank: one miss in a group with hits -> the rank-0 penalty -1 / (1 + 1/log2 3 + 1/2)
    pen = -1.0 / (1 + 1 / torch.log2(torch.tensor(3.0)) + 0.5)
    torch.testing.assert_close(get_reward("rank")(x), torch.tensor([1.0, float(pen), 1.0]))
    torch.testing.assert_close(get_reward("neg_perplexity")(x), -torch.exp(torch.tensor([1.0, 2.0, 1.0])))
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        get_reward("nope")


def test_advantages_against_hand_computed_values():
    r = torch.tensor([[0.5, 1.5, 0.5, 0.5, -1.5], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # group 1: deviations (0, 1, 0, 0, -2), norm sqrt(5); group 2: all equal -> all zero
    a = get_advantage("group_baseline")(r, 1e-6)
    s5 = 5 ** 0.5
    torch.testing.assert_close(a, torch.tensor([[0, 1 / s5, 0, 0, -2 / s5], [0.0] * 5]), atol=1e-5, rtol=0)
    assert float(zero_advantage_share(a)) == 0.5
    # LR-GRPO: baseline (0.5 + 1.0) / 2 = 0.75 for every row, one norm over all ten deviations
    g = get_advantage("global_baseline")(r, 1e-6)
    dev = r - 0.75
    torch.testing.assert_close(g, dev / dev.norm(), atol=1e-5, rtol=0)
    assert float(zero_advantage_share(g)) == 0.0


def test_exact_match_is_the_argmax_under_the_trie_mask():
    from flrec.decoding.trie import TitleTrie
    from flrec.models.backbone import load_backbone

    _, tok = load_backbone("tiny:llama")
    titles = ["Blue Moon", "Blue Sky", "Red Sun"]
    trie = TitleTrie.build(tok, titles)
    ids, lengths = trie.title_tokens()
    target = ids[:1].clamp(min=0)  # "Blue Moon"
    mask = (torch.arange(ids.shape[1]) < lengths[0]).long()[None]
    m, v = int(mask.sum()), trie.vocab_size
    logits = torch.zeros(m, v)
    logits[torch.arange(m), target[0, :m]] = 1.0  # the target token wins among the allowed ones
    outside = next(t for t in range(v) if not bool(trie.allowed_mask(torch.tensor([0]))[0, t]))
    logits[:, outside] = 9.0  # ...but a token the trie never allows wins overall: it must be ignored
    assert greedy_trie_match(trie, target, mask, logits).all()
    # where "Blue" branches (Moon / Sky), let the sibling beat the target: no exact match there
    node, branch = torch.zeros(1, dtype=torch.long), None
    for j in range(m):
        kids, real = trie.children(node)
        if int(real.sum()) > 1:
            branch = j
            sibling = int(kids[0][real[0] & (kids[0] != target[0, j])][0])
            break
        node = trie.advance(node, target[:, j])
    assert branch is not None
    logits[branch, sibling] = 2.0
    match = greedy_trie_match(trie, target, mask, logits)
    assert not match[0, branch] and int(match[0].sum()) == match.shape[1] - 1


# ------------------------------------------------------------------------------------ model API
def tiny_model() -> FLRRecommender:
    torch.manual_seed(0)
    backbone = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB))
    return FLRRecommender(backbone, FLRConfig(num_factors=3, gate_hidden=16, keys="tokens"), THOUGHT).double().eval()


def test_shared_prompt_rollouts_equal_unshared_in_values_and_gradients():
    model = tiny_model()
    model.backbone.requires_grad_(False)  # GRPO's setting: the prefix depends on no trained parameter
    g, b = 4, 3
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(1, VOCAB - 1, (b, 9), generator=gen)
    prompt[:, -1] = THOUGHT
    pmask = torch.ones(b, 9, dtype=torch.long)
    pmask[0, :3] = 0
    pmask[2, :1] = 0
    target = torch.randint(1, VOCAB - 1, (b * g, 4), generator=gen)
    tmask = torch.ones(b * g, 4, dtype=torch.long)
    tmask[5, 2:] = 0
    noise = torch.randn(b * g, 32, generator=gen, dtype=torch.float64) * 0.1
    weights = torch.randn(b * g, 4, generator=gen, dtype=torch.float64)

    def run(shared: bool):
        model.zero_grad()
        if shared:
            lp = model.token_logprobs(prompt, pmask, target, tmask, thought_noise=noise,
                                      prefix=model.encode_prompt(prompt, pmask), group_size=g)
        else:  # every sample encodes its own copy of the prompt
            lp = model.token_logprobs(prompt.repeat_interleave(g, 0), pmask.repeat_interleave(g, 0), target, tmask,
                                      thought_noise=noise)
        (lp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach(), grads

    lp_shared, g_shared = run(True)
    lp_plain, g_plain = run(False)
    torch.testing.assert_close(lp_shared, lp_plain, atol=1e-10, rtol=1e-9)
    assert (lp_shared[5, 2:] == 0).all() and (lp_shared[tmask.bool()] < 0).all()
    assert set(g_shared) == set(g_plain) and any(n.startswith("reasoner.") for n in g_shared)
    for n in g_shared:  # the reasoner's attention and gates run in fp32 even here: fp32 rounding, batch-size dependent
        torch.testing.assert_close(g_shared[n], g_plain[n], atol=1e-7, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    # and G = 1 without noise is exactly the SFT loss's per-token terms
    out = model(prompt, pmask, target[::g], tmask[::g])
    lp = model.token_logprobs(prompt, pmask, target[::g], tmask[::g])
    torch.testing.assert_close(-lp.sum() / tmask[::g].sum(), out["rec_loss"].detach())


# ------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("sft") / "run"
    cfg = SFTConfig.from_dict({"backbone": "tiny:llama", "run_dir": str(run), "train_limit": 32, "valid_limit": 8,
                               "flr": {"num_factors": 3, "gate_hidden": 16},
                               "train": {"max_steps": 3, "micro_batch_size": 8, "lr": 3e-3, "mixed_precision": "no",
                                         "progress": False}})
    run_sft(cfg, tiny_data)
    return run


def grpo_cfg(sft_run, out, **over) -> GRPOConfig:
    base = {"from_run": str(sft_run), "run_dir": str(out), "group_size": 4, "prompts_per_step": 4,
            "prompts_per_micro_batch": 2, "train_limit": 8, "valid_limit": 4, "seed": 1,
            "train": {"max_steps": 4, "lr": 2e-2, "mixed_precision": "no", "progress": False, "log_every": 1,
                      "save_every": 2, "eval_every": 2}}
    for k, v in over.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return GRPOConfig.from_dict(base)


def test_first_member_of_each_group_is_noise_free(sft_run, tiny_data, tmp_path):
    trainer = build_grpo_trainer(grpo_cfg(sft_run, tmp_path / "g"), tiny_data)
    batch = next(iter(trainer.train_loader))
    ro = trainer.make_rollout(batch, (0, 0))
    g, b = ro.group_size, batch["prompt_ids"].shape[0]
    assert ro.noise.shape[0] == b * g == ro.target_ids.shape[0]
    assert (ro.noise[::g] == 0).all()
    noisy = ro.noise.view(b, g, -1)[:, 1:]
    assert (noisy.norm(dim=-1) > 0).all()
    # sigma is relative to the embedding scale: the noise RMS is noise_scale x the embedding RMS
    emb = trainer.accelerator.unwrap_model(trainer.model).model.backbone.get_input_embeddings().weight
    ratio = float(noisy.pow(2).mean().sqrt() / emb.pow(2).mean().sqrt())
    assert 0.4 < ratio < 0.6
    # the baseline sample is the plain noise-free score; the noisy ones differ from it
    inner = trainer.accelerator.unwrap_model(trainer.model).model
    plain = inner.token_logprobs(batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"], batch["target_mask"],
                                 batch.get("prompt_items"))
    torch.testing.assert_close(ro.old_logprobs[::g], plain)
    assert not torch.allclose(ro.old_logprobs[1::g], plain)
    # eq. 11 per group: the baseline's own advantage is 0; a rollout is reproducible from its position
    assert (ro.advantages[::g] == 0).all()
    again = trainer.make_rollout(batch, (0, 0))
    assert torch.equal(again.noise, ro.noise) and torch.equal(again.rewards, ro.rewards)


def test_lr_grpo_variant_uses_one_global_baseline(sft_run, tiny_data, tmp_path):
    cfg = grpo_cfg(sft_run, tmp_path / "g", variant="lr")
    assert (cfg.reward_name, cfg.advantage_name) == ("neg_perplexity", "global_baseline")
    trainer = build_grpo_trainer(cfg, tiny_data)
    batch = next(iter(trainer.train_loader))
    ro = trainer.make_rollout(batch, (0, 0))
    base = ro.old_logprobs.sum(1) / ro.target_mask.sum(1)
    torch.testing.assert_close(ro.rewards, -torch.exp(-base))
    dev = ro.rewards - ro.rewards[::ro.group_size].mean()
    torch.testing.assert_close(ro.advantages, dev / (dev.norm() + 1e-6))
    assert (ro.advantages[::ro.group_size] != 0).any()  # unlike eq. 11, baselines get advantages too


def _flr_and_backbone(model_dir):
    state = load_file(f"{model_dir}/flr_state.safetensors")
    backbone = load_file(next(iter(sorted((model_dir / "backbone").glob("*.safetensors")))))
    return state, backbone


@pytest.fixture(scope="module")
def grpo_run(sft_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "run"
    return run_grpo(grpo_cfg(sft_run, out), tiny_data), out


def _train_rows(out):
    return [r for r in read_log(out) if "reward" in r]


def test_grpo_run_logs_its_signals(grpo_run):
    res, out = grpo_run
    assert res["steps"] == 4 and res["reward"] == "hybrid" and res["advantage"] == "group_baseline"
    rows = _train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward", "exact_match", "adv_abs", "zero_adv", "kl", "clip_frac", "policy_loss"):
        assert all(key in r for r in rows), key
    assert any(r.get("valid_loss") is not None for r in read_log(out))  # validation: noise-free reward


def test_kl_is_zero_at_the_first_step(grpo_run):
    rows = _train_rows(grpo_run[1])
    assert rows[0]["kl"] == 0.0  # the policy starts as the frozen reference
    assert rows[1]["kl"] > 0  # ...and leaves it after one update


def test_clip_fraction_positive_with_two_iterations(grpo_run):
    rows = _train_rows(grpo_run[1])
    assert rows[0]["clip_frac"] == 0.0  # first pass over a rollout: ratio 1
    assert max(r["clip_frac"] for r in rows) > 0  # num_iterations = 2: the second pass is clipped


def test_only_flr_parameters_change(grpo_run, sft_run):
    res, out = grpo_run
    sft_state, sft_backbone = _flr_and_backbone(sft_run / "best")
    new_state, new_backbone = _flr_and_backbone(out / "best")
    assert sft_backbone.keys() == new_backbone.keys()
    for k in sft_backbone:  # backbone and LM head bit-identical to the SFT model's
        assert torch.equal(sft_backbone[k], new_backbone[k]), k
    moved = [k for k in sft_state if k.startswith("reasoner.") and not torch.equal(sft_state[k], new_state[k])]
    assert moved
    model, _ = FLRRecommender.from_pretrained(res["model_dir"])  # loads as an ordinary FLR model
    assert model.config.num_factors == 3


def test_one_iteration_never_clips(sft_run, tiny_data, tmp_path):
    res = run_grpo(grpo_cfg(sft_run, tmp_path / "g", num_iterations=1,
                            train={"eval_every": 0, "save_every": 0, "max_steps": 3}), tiny_data)
    rows = [r for r in read_log(tmp_path / "g") if "clip_frac" in r]
    assert res["steps"] == 3 and len(rows) == 3 and rows[1]["kl"] > 0  # the policy moved, yet nothing clipped
    assert all(r["clip_frac"] == 0.0 for r in rows)


def test_grpo_resume_equals_uninterrupted(grpo_run, sft_run, tiny_data, tmp_path):
    full, _ = grpo_run
    part = grpo_cfg(sft_run, tmp_path / "b")
    with crash_after_first_checkpoint():
        run_grpo(part, tiny_data)
    assert (tmp_path / "b" / "checkpoints" / "step-2").is_dir()
    resumed = run_grpo(part, tiny_data)
    assert resumed["steps"] == full["steps"] == 4
    assert_same_flr_state(full["model_dir"], resumed["model_dir"])
    again = run_grpo(part, tiny_data)  # same settings: the finished run is reused
    assert again["reused"]


def test_cli_train_grpo(grpo_run, sft_run, tmp_path, capsys, monkeypatch, tiny_data):
    from flrec import cli

    monkeypatch.setattr("flrec.data.load.load_dataset", lambda spec: tiny_data)
    out = tmp_path / "cli"
    rc = cli.main(["train", "grpo", "--from", str(sft_run), "--json", f"run_dir={out}", "group_size=2",
                   "prompts_per_step=2", "train_limit=4", "valid_limit=2", "train.max_steps=2",
                   "train.mixed_precision=no", "train.progress=false"])
    assert rc in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 2 and (out / "best" / "flr_config.json").is_file()
    assert cli.main(["train", "grpo", "group_size=2"]) == 2
    assert "from_run is empty" in capsys.readouterr().err


def test_grpo_config_fix_it_errors(sft_run):
    ok = {"from_run": str(sft_run)}
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        GRPOConfig.from_dict({**ok, "group_size": 1})
    with pytest.raises(ConfigError, match="multiple of prompts_per_micro_batch"):
        GRPOConfig.from_dict({**ok, "prompts_per_step": 6, "prompts_per_micro_batch": 4})
    with pytest.raises(ConfigError, match="multiple of num_iterations"):
        GRPOConfig.from_dict({**ok, "num_iterations": 3, "train": {"max_steps": 10}})
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        GRPOConfig.from_dict({**ok, "train": {"micro_batch_size": 3}})
    with pytest.raises(ConfigError, match="unknown reward"):
        GRPOConfig.from_dict({**ok, "reward": "nope"})
    cfg = GRPOConfig.from_dict({**ok, "prompts_per_step": 8, "prompts_per_micro_batch": 2, "group_size": 16})
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum_steps) == (2, 4)  # G does not enter the batch sizes


@pytest.mark.parametrize("method", ["flr_grpo", "lr_grpo", "latentr3"])
def test_compare_methods_fit_from_the_same_sft_start_and_rank(method, sft_run, latentr3_sft_run, tiny_data, tmp_path):
    from flrec.experiments.compare import CompareConfig
    from flrec.recommenders.base import get_recommender

    CompareConfig(methods=["flr", "flr_grpo", "lr_grpo", "latentr3_sft", "latentr3"])  # known to flrec compare
    cls = get_recommender(method)
    cfg = cls.config_cls.from_dict({
        "sft_dir": str(latentr3_sft_run if method == "latentr3" else sft_run), "seed": 0, "beam": 5, "batch_size": 4, "sft": {"backbone": "tiny:llama", "max_history": 4},
        "grpo": {"group_size": 2, "prompts_per_step": 2, "train_limit": 4, "valid_limit": 2,
                 "train": {"max_steps": 2, "mixed_precision": "no", "progress": False}}})
    rec = cls(tiny_data.catalogue, cfg).fit(tiny_data, run_dir=tmp_path / method)
    info = json.loads((tmp_path / method / "grpo" / "finished.json").read_text())
    assert info["steps_done"] == 2
    fp = json.loads((tmp_path / method / "grpo" / "fingerprint.json").read_text())
    assert (fp["variant"], fp["preset"]) == {"flr_grpo": ("flr", "flr"), "lr_grpo": ("lr", "latentr3"),
                                             "latentr3": ("lr", "latentr3")}[method]
    ranked = rec.recommend(tiny_data["test"][:3], k=5)
    titles = set(tiny_data.catalogue.titles)
    assert len(ranked) == 3 and all(r and all(t in titles for t, _ in r) for r in ranked)
    rec.save(tmp_path / "saved")
    again = cls.load(tmp_path / "saved")
    assert [t for t, _ in again.recommend(tiny_data["test"][:3], k=5)[0]] == [t for t, _ in ranked[0]]
    with pytest.raises(ConfigError, match="set by the method"):
        cls.config_cls.from_dict({"grpo": {"variant": "lr"}})
    if method == "latentr3":  # LatentR3's own RL settings are not a knob of the two-stage method
        with pytest.raises(ConfigError, match="grpo.preset is set by the method"):
            cls.config_cls.from_dict({"grpo": {"preset": "flr"}})


def test_shipped_grpo_config_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml"
    cfg = GRPOConfig.load(path, ["from_run=runs/demo/sft"])
    assert cfg.num_iterations > 1 and cfg.group_size == 8 and cfg.train.max_steps % cfg.num_iterations == 0
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum_steps) == (4, 2)


def test_shipped_grpo_comparison_configs_load():
    from pathlib import Path

    from flrec.experiments.compare import CompareConfig
    from flrec.recommenders.grpo import GRPORecConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    cmp = CompareConfig.load(root / "compare" / "cds-grpo-cpu.yaml")
    assert cmp.methods.index("flr") < cmp.methods.index("flr_grpo")  # the start is trained first
    rec = GRPORecConfig.load(root / "recommenders" / "grpo-cds-cpu.yaml")
    assert "{seed}" in rec.sft_dir and rec.sft_dir.startswith(cmp.out)
    assert rec.grpo_config("x").train.max_steps % rec.grpo_config("x").num_iterations == 0


# ------------------------------------------------------------------- LatentR3's RL stage, LR-GRPO presets
@pytest.fixture(scope="module")
def latentr3_sft_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("sft-latentr3") / "run"
    cfg = SFTConfig.from_dict({"backbone": "tiny:llama", "run_dir": str(run), "train_limit": 32, "valid_limit": 8,
                               "flr": {"reasoner": "latentr3"},
                               "train": {"max_steps": 3, "micro_batch_size": 8, "lr": 3e-3, "mixed_precision": "no",
                                         "progress": False}})
    run_sft(cfg, tiny_data)
    return run


def test_presets_resolve_to_the_documented_values(sft_run):
    ok = {"from_run": str(sft_run)}
    flr = {"num_iterations": 2, "beta_kl": 0.04, "noise": "relative", "noise_scale": 0.5, "trainable": "flr"}
    latentr3 = {"num_iterations": 1, "beta_kl": 0.0, "noise": "absolute", "noise_scale": 1.5, "trainable": "qkv"}
    assert PRESETS == {"flr": flr, "latentr3": latentr3}

    def knobs(cfg):
        return cfg.preset, {k: getattr(cfg, k) for k in flr}, (cfg.reward_name, cfg.advantage_name)

    assert knobs(GRPOConfig.from_dict(ok)) == ("flr", flr, ("hybrid", "group_baseline"))  # FLR-GRPO
    lr = ("neg_perplexity", "global_baseline")
    assert knobs(GRPOConfig.from_dict({**ok, "variant": "lr"})) == ("latentr3", latentr3, lr)  # LR-GRPO's default
    assert knobs(GRPOConfig.from_dict({**ok, "variant": "lr", "preset": "flr"})) == ("flr", flr, lr)  # the other
    mixed = GRPOConfig.from_dict({**ok, "variant": "lr", "num_iterations": 2, "train": {"max_steps": 4}})
    assert (mixed.num_iterations, mixed.beta_kl) == (2, 0.0)  # a key that is set wins over the preset
    again = GRPOConfig.from_dict(mixed.to_dict())  # resolved values round-trip
    assert knobs(again) == knobs(mixed)
    # the recommenders: lr_grpo defaults to LatentR3's stage 2 and takes preset flr; latentr3 fixes it
    from flrec.recommenders.base import get_recommender

    lr_rec = get_recommender("lr_grpo")
    assert lr_rec.config_cls().grpo_config("x", variant="lr").preset == "latentr3"
    assert lr_rec.config_cls.from_dict({"grpo": {"preset": "flr"}}).grpo_config("x", variant="lr").beta_kl == 0.04
    two = get_recommender("latentr3")
    assert two.variant == "lr" and two.preset == "latentr3" and two.reasoner == "latentr3"
    assert get_recommender("latentr3_sft").reasoner == "latentr3"


@pytest.fixture(scope="module")
def latentr3_rl(latentr3_sft_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("latentr3-rl") / "run"
    cfg = grpo_cfg(latentr3_sft_run, out, variant="lr", train={"max_steps": 3, "save_every": 0, "eval_every": 0})
    return cfg, run_grpo(cfg, tiny_data), out


def test_latentr3_rl_stage_changes_only_qkv(latentr3_rl, latentr3_sft_run):
    cfg, res, out = latentr3_rl
    assert (res["preset"], res["trainable"], res["steps"]) == ("latentr3", "qkv", 3)
    sft_state, sft_backbone = _flr_and_backbone(latentr3_sft_run / "best")
    new_state, new_backbone = _flr_and_backbone(out / "best")
    for k in sft_backbone:
        assert torch.equal(sft_backbone[k], new_backbone[k]), k
    moved = {k for k in sft_state if not torch.equal(sft_state[k], new_state[k])}
    qkv = {k for k in sft_state if k.startswith(("reasoner.w_q.", "reasoner.w_k.", "reasoner.w_v."))}
    assert moved and moved <= qkv  # scale.gain, thought_init and the backbone stay the SFT model's
    assert set(sft_state) - qkv  # there were other FLR parameters that could have moved


def test_latentr3_rl_stage_is_one_iteration_without_kl(latentr3_rl):
    _, _, out = latentr3_rl
    rows = _train_rows(out)
    assert len(rows) == 3
    assert all(r["ratio_dev"] == 0.0 and r["clip_frac"] == 0.0 for r in rows)  # the ratio is exactly 1
    assert all("kl" not in r for r in rows)  # beta_KL = 0: no reference pass


def test_latentr3_rl_stage_noise_is_absolute_and_baseline_global(latentr3_rl, latentr3_sft_run, tiny_data, tmp_path):
    cfg, _, _ = latentr3_rl
    trainer = build_grpo_trainer(cfg.replace(run_dir=str(tmp_path / "t")), tiny_data)
    inner = trainer.accelerator.unwrap_model(trainer.model).model
    assert trainer.sigma == 1.5
    emb = inner.backbone.get_input_embeddings().weight
    with torch.no_grad():
        emb.mul_(10.0)  # another embedding scale: an absolute sigma does not follow it, a relative one does
    assert noise_sigma(cfg, inner) == 1.5
    rel = cfg.replace(noise="relative", noise_scale=0.5)
    assert noise_sigma(rel, inner) == pytest.approx(0.5 * float(emb.pow(2).mean().sqrt()), rel=1e-5)
    with torch.no_grad():
        emb.div_(10.0)
    batch = next(iter(trainer.train_loader))
    ro = trainer.make_rollout(batch, (0, 0))
    g = ro.group_size
    assert (ro.noise[::g] == 0).all()
    noisy = ro.noise.view(-1, g, ro.noise.shape[-1])[:, 1:]
    assert 1.3 < float(noisy.pow(2).mean().sqrt()) < 1.7
    # one baseline for all groups (the mean of their noise-free rewards), one L2 norm
    dev = ro.rewards - ro.rewards[::g].mean()
    torch.testing.assert_close(ro.advantages, dev / (dev.norm() + cfg.adv_eps))


def test_shipped_five_row_config_gives_each_method_its_own_settings():
    from pathlib import Path

    from flrec.experiments.compare import CompareConfig
    from flrec.recommenders.base import get_recommender

    root = Path(__file__).resolve().parents[2]
    cmp = CompareConfig.load(root / "configs" / "compare" / "synth-latent-rl-cpu.yaml")
    assert sorted(cmp.methods) == sorted(["latentr3_sft", "latentr3", "flr", "flr_grpo", "lr_grpo"])
    assert len(cmp.seeds) >= 3 and cmp.limit is None and cmp.data == "embedded:synth"
    order = cmp.methods.index
    assert order("flr") < min(order("flr_grpo"), order("lr_grpo")) and order("latentr3_sft") < order("latentr3")
    want = {"flr_grpo": ("flr", "flr", 2, "relative", "flr"), "lr_grpo": ("flr", "latentr3", 1, "absolute", "qkv"),
            "latentr3": ("latentr3_sft", "latentr3", 1, "absolute", "qkv")}
    for method, (start, preset, iters, noise, trainable) in want.items():
        cls = get_recommender(method)
        cfg = cls.config_cls.from_dict({**cmp.method_config(method), "seed": 1})
        assert cfg.sft_dir == f"{cmp.out}/cells/{start}/seed{{seed}}/sft", method
        g = cls(None, cfg).grpo_settings(Path("start"), "out")
        assert (g.preset, g.num_iterations, g.noise, g.trainable) == (preset, iters, noise, trainable), method
    # the earlier Table 4 configs keep FLR-GRPO's settings for lr_grpo (what they measured)
    for name in ("grpo-synth-cpu.yaml", "grpo-cds-cpu.yaml"):
        rec = get_recommender("lr_grpo").config_cls.load(root / "configs" / "recommenders" / name)
        assert rec.grpo_config("x", variant="lr").preset == "flr"
