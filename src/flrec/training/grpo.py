"""Stage 2: latent-space GRPO — FLR-GRPO (paper §4.2, eqs. 9–13) and LR-GRPO (LatentR3's stage 2).

``flrec train grpo --from RUN_DIR --config configs/grpo.yaml`` is :func:`run_grpo` on a
:class:`GRPOConfig`. It starts from an SFT'd model; the backbone and LM head stay frozen and only the
parameters ``trainable`` names train. The loop is the generic :class:`~flrec.training.trainer.Trainer`;
this module only overrides its hooks.

**What it optimises.** There is no sampling. Each prompt is repeated G times; the *completion of
every sample is the ground-truth title* (teacher forcing, as LatentR3 and eq. 12 do) and exploration
is noise on the thought embedding: sample 1 of a group keeps the noise-free thought, samples 2..G get
``thought + N(0, sigma^2 I)`` (eq. 9). The reward of a sample scores the target under its noisy
thought (eq. 10), the advantage compares it with the noise-free one (eq. 11), and the loss is the
clipped surrogate on the target's token log-probs (eq. 12). Its gradient is therefore an
*advantage-weighted likelihood* of the ground truth — it raises the target's probability under the
thoughts that scored it better — not an unbiased policy gradient of the expected reward (the
"actions" are never sampled from the policy). The k3 KL term likewise compares the two modules on
the target tokens only.

**Settings that are ours, not the paper's** (two presets, :data:`PRESETS`): ``num_iterations`` (optimizer
steps per rollout batch: the paper gives the clip bounds but not how often a rollout is reused; with
1 the ratio is exactly 1 and the clip never acts), ``beta_kl`` (the paper has a KL term but gives no
weight; 0.04 is DeepSeekMath's), the noise scale and unit (no sigma in the paper) and which
parameters train. ``preset=flr`` is flrec's FLR-GRPO (2 iterations, beta 0.04, sigma 0.5 relative to
the embedding RMS, all FLR parameters); ``preset=latentr3`` is LatentR3's stage 2 as its code runs it
(1 iteration, beta 0, an absolute sigma of 1.5, only the reasoner attention's Q/K/V).
``variant`` picks reward and advantage (flr: eq. 10 hybrid + eq. 11 per-group; lr: negative
perplexity + one global baseline) and the default preset (flr -> flr, lr -> latentr3).

Hooks:

* ``prepare_batch`` turns B prompts into a :class:`Rollout`: each prompt's prefix is encoded once
  by the frozen backbone, without gradients (:meth:`FLRRecommender.encode_prompt`), and shared by
  its G samples; the N refinement steps run once per prompt; the noise is stored so every
  optimisation pass reuses it. One scoring pass gives the rewards (:mod:`flrec.training.rewards`),
  the old log-probs and the reference log-probs.
* ``compute_loss`` re-runs only the refinement and the thought + target positions against the
  shared prefix, with gradients: the clipped surrogate with asymmetric bounds (eq. 12), the k3
  reverse-KL estimate to a frozen copy of the SFT module (the backbone is shared, never copied) and
  the regularisers under their learned weights (eq. 13). With ``num_iterations=1`` the old log-probs
  are the current ones detached, so the ratio is exactly 1 (REINFORCE with a baseline).
* ``make_train_sampler`` repeats every rollout batch ``num_iterations`` times in a row, so the
  loop's exact-resume bookkeeping (data position, RNG, checkpoints) covers GRPO unchanged.

Batching: ``prompts_per_step`` (per process) and ``group_size`` are independent; a micro-batch holds
``prompts_per_micro_batch`` whole groups, so a group is never split across micro-batches or
processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from flrec.config import ConfigBase, load_yaml, option
from flrec.data.load import load_dataset
from flrec.data.prompts import PromptBuilder, collate_left_padded
from flrec.decoding.trie import TitleTrie
from flrec.errors import ConfigError, FlrecError
from flrec.models.recommender import FLRRecommender, PromptPrefix
from flrec.training.probe import THOUGHT_PROBE_NAMES, probe_batches, run_probe
from flrec.training.rewards import (
    RewardInputs,
    get_advantage,
    get_reward,
    greedy_trie_match,
    zero_advantage_share,
)
from flrec.training.sft import subsample
from flrec.training.trainer import TRAIN_COSMETIC, TrainConfig, Trainer, TrainState
from flrec.utils.dtypes import DTYPES
from flrec.utils.runid import config_identity, dataset_hash, make_fingerprint, model_identity

# variant -> (reward, advantage estimator, preset): what "flr" and "lr" mean for the keys left null.
VARIANTS = {
    "flr": ("hybrid", "group_baseline", "flr"),  # the paper: eq. 10 reward, eq. 11 per-group advantage
    "lr": ("neg_perplexity", "global_baseline", "latentr3"),  # LatentR3: negative perplexity, one batch baseline
}
# preset -> the optimisation settings it gives the keys left null (none of them is in the paper).
PRESETS: dict[str, dict[str, Any]] = {
    # flrec's FLR-GRPO: the clip acts on a rollout's second pass, DeepSeekMath's KL weight, noise in the
    # embedding's own unit, every FLR parameter trains (the paper: "update only the FLR parameters").
    "flr": {"num_iterations": 2, "beta_kl": 0.04, "noise": "relative", "noise_scale": 0.5, "trainable": "flr"},
    # LatentR3's stage 2 as its code runs it (notes §4): ratio always 1, no reference model,
    # randn * 1.5 on the thought, only the attention's Q/K/V.
    "latentr3": {"num_iterations": 1, "beta_kl": 0.0, "noise": "absolute", "noise_scale": 1.5, "trainable": "qkv"},
}
# trainable -> which parameters of the GRPOPolicy (whose FLR model is ``model.``) train
TRAINABLE_PREFIXES = {
    "flr": ("model.",),  # everything but the backbone (excluded below)
    "qkv": ("model.reasoner.w_q.", "model.reasoner.w_k.", "model.reasoner.w_v."),
}
_TRAIN_DEFAULTS = TrainConfig()


def trains(trainable: str, name: str) -> bool:
    """Whether GRPO with ``trainable`` (flr | qkv) trains the policy parameter ``name`` (never the backbone)."""
    return name.startswith(TRAINABLE_PREFIXES[trainable]) and not name.startswith("model.backbone.")


@dataclass
class GRPOConfig(ConfigBase):
    """One GRPO run: the SFT start, exploration, reward, objective, batching and the optimisation.

    The completions are the teacher-forced ground-truth titles scored under noisy thoughts, so the
    objective is an advantage-weighted likelihood of the target (see the module doc), not an unbiased
    policy gradient. Keys left null take the ``variant``'s / ``preset``'s values (:data:`PRESETS`).
    """

    from_run: str = option("", help="the SFT run directory to start from (its best/ model), or a model directory "
                           "(one holding flr_config.json)")
    data: str | None = option(None, help="D3 dataset directory or embedded:synth (null = the SFT run's data, "
                              "read from its config.yaml)")
    run_dir: str = option("runs/grpo", help="run directory (checkpoints, log.jsonl, best/ = the trained model)")
    seed: int = option(0, help="seed of the row subsample, the thought noise and training")
    variant: Literal["flr", "lr"] = option(
        "flr", help="reward and advantage of null reward/advantage, and the default preset. flr: FLR-GRPO (hybrid "
        "reward, eq. 10; per-group noise-free baseline, eq. 11; preset flr). lr: LR-GRPO, LatentR3's stage 2 "
        "(negative-perplexity reward; one baseline = the mean noise-free reward of all groups of a micro-batch, "
        "gathered over processes, and one L2 norm over all their deviations; preset latentr3)")
    preset: Literal["flr", "latentr3"] | None = option(
        None, help="the values of null num_iterations, beta_kl, noise, noise_scale and trainable (null = the "
        "variant's). flr: 2 / 0.04 / relative / 0.5 / flr (flrec's FLR-GRPO); latentr3: 1 / 0 / absolute / 1.5 / "
        "qkv (LatentR3's code). LR-GRPO with preset=flr isolates reward and baseline against FLR-GRPO")
    group_size: int = option(
        8, help="G, samples per prompt (sample 1 noise-free, 2..G with noise on the thought). No sample is decoded: "
        "every sample's completion is the ground-truth title (teacher forcing, as eq. 12 and LatentR3), scored "
        "under its thought, so the loss is an advantage-weighted likelihood of the target, not an unbiased "
        "policy gradient of the expected reward")
    prompts_per_step: int = option(8, help="prompts whose rollouts make one optimizer step, per process "
                                   "(independent of group_size: a step scores prompts_per_step x group_size samples)")
    prompts_per_micro_batch: int | None = option(
        None, help="prompts (with all their G samples) per forward/backward pass; prompts_per_step must be a multiple "
        "(null = prompts_per_step). Lower it to save memory; the noise draws, the cross-row regularisers and "
        "LR-GRPO's batch baseline are per micro-batch, so the result changes slightly")
    num_iterations: int | None = option(
        None, help="optimizer steps per batch of rollouts, each a full pass over it (null = the preset's: flr 2, "
        "latentr3 1). Not from the paper, which gives clip bounds but not this. With 1 the old log-probs are the "
        "current ones detached: the ratio is exactly 1 and the clip never acts (LatentR3's setting, REINFORCE "
        "with a baseline); 2 is the smallest value where the asymmetric clip bounds the second update, and it "
        "halves the rollout cost per step")
    noise: Literal["relative", "absolute"] | None = option(
        None, help="unit of noise_scale (null = the preset's). relative: sigma = noise_scale x the RMS of the input "
        "embedding matrix (the scale the thought is rescaled to), the same perturbation on any backbone; "
        "absolute: sigma = noise_scale per dimension, as LatentR3's randn * 1.5")
    noise_scale: float | None = option(
        None, help="sigma of the thought noise on samples 2..G, in the unit of noise (null = the preset's: flr 0.5 "
        "relative, i.e. the noise's RMS is about half the thought's; latentr3 1.5 absolute). Not in the paper")
    trainable: Literal["flr", "qkv"] | None = option(
        None, help="what trains, the backbone and LM head always frozen (null = the preset's). flr: every FLR "
        "parameter (reasoner, gate, prototypes, thought scale and initial thought, regulariser weights), the "
        "paper's choice; qkv: only the reasoner attention's Q/K/V projections, as LatentR3's stage 2")
    reward: str | None = option(None, help="registered reward (flrec.training.rewards.REWARDS: hybrid, "
                                "token_confidence, exact_match, rank, neg_perplexity; null = the variant's)")
    reward_params: dict[str, float] = option(
        factory=dict, help="keyword arguments of the reward, e.g. {alpha: 0.1, beta: 1.0} for hybrid (the paper's "
        "defaults) or {gated: 0} for rank")
    advantage: str | None = option(None, help="advantage estimator: group_baseline (eq. 11) or global_baseline "
                                   "(LatentR3); null = the variant's")
    adv_eps: float = option(1e-6, help="epsilon in the advantage's denominator (eq. 11)")
    clip_low: float = option(0.2, help="epsilon_l: the ratio is clipped below at 1 - clip_low (eq. 12)")
    clip_high: float = option(0.28, help="epsilon_h: the ratio is clipped above at 1 + clip_high (DAPO's 0.28)")
    beta_kl: float | None = option(
        None, help="weight of the k3 estimate of the reverse KL to the frozen SFT module, on the target tokens "
        "(0 = no reference pass; null = the preset's: flr 0.04, DeepSeekMath's GRPO weight, as the paper names a "
        "KL term but no weight; latentr3 0, LatentR3 has no reference model)")
    train_limit: int | None = option(None, help="train on a random subset of this many rows (None = all)")
    valid_limit: int | None = option(256, help="validation rows (random subset; None = all); validation scores "
                                     "the noise-free thought")
    thought_probe_rows: int = option(
        64, help="at each validation, measure on the first N validation rows whether the LM uses the user's thought "
        "(valid_thought_swap_delta etc., flrec.training.probe); 0 = off. Does not change training")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", help="weight dtype; keep float32 and use train.mixed_precision=bf16 for autocast")
    train: TrainConfig = option(
        factory=TrainConfig, help="optimisation, schedule, checkpoints (run_dir overrides output_dir; "
        "micro_batch_size and grad_accum_steps follow from the prompt counts above). The paper's GRPO lr grid: "
        "1e-4, 5e-4, 1e-5, 5e-5")

    def __post_init__(self) -> None:
        if self.thought_probe_rows < 0:
            raise ConfigError(f"thought_probe_rows must be >= 0 (0 = off), got {self.thought_probe_rows}")
        self.preset = self.preset or VARIANTS[self.variant][2]
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if not self.from_run:
            raise ConfigError("from_run is empty; pass the SFT run directory (flrec train grpo --from RUN_DIR)")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (one noise-free sample plus noisy ones), got {self.group_size}")
        for key in ("prompts_per_step", "num_iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        per_mb = self.prompts_per_micro_batch or self.prompts_per_step
        if per_mb < 1 or self.prompts_per_step % per_mb:
            raise ConfigError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of "
                              f"prompts_per_micro_batch ({per_mb}); e.g. set prompts_per_micro_batch to a divisor")
        if not self.noise_scale > 0 or not math.isfinite(self.noise_scale):
            raise ConfigError(f"noise_scale must be a finite number > 0, got {self.noise_scale}")
        if not 0 <= self.clip_low < 1 or not self.clip_high >= 0:
            raise ConfigError(f"clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}/{self.clip_high}")
        if self.beta_kl < 0 or not self.adv_eps > 0:
            raise ConfigError(f"beta_kl must be >= 0 and adv_eps > 0, got {self.beta_kl}/{self.adv_eps}")
        get_reward(self.reward_name)
        get_advantage(self.advantage_name)
        for key in ("train_limit", "valid_limit"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1 or null (all rows), got {v}")
        derived = {"micro_batch_size": per_mb, "grad_accum_steps": self.prompts_per_step // per_mb}
        for key, value in derived.items():
            given = getattr(self.train, key)
            if given not in (value, getattr(_TRAIN_DEFAULTS, key)):
                raise ConfigError(f"train.{key} ({given}) is set by prompts_per_step/prompts_per_micro_batch "
                                  f"({value}) in GRPO; remove train.{key} and set those instead")
        mu = self.num_iterations
        for key in ("max_steps", "save_every"):
            v = getattr(self.train, key)
            if v and v % mu:
                raise ConfigError(f"train.{key} ({v}) must be a multiple of num_iterations ({mu}): a checkpoint "
                                  "lies between two batches of rollouts, so a resumed run equals an uninterrupted one")
        self.train = self.train.replace(output_dir=self.run_dir, **derived)

    @property
    def reward_name(self) -> str:
        return self.reward or VARIANTS[self.variant][0]

    @property
    def advantage_name(self) -> str:
        return self.advantage or VARIANTS[self.variant][1]


@dataclass
class Rollout:
    """One micro-batch of rollouts: G teacher-forced samples of each of B prompts.

    R = B*G rows; the samples of prompt b are rows ``b*G .. b*G+G-1`` and row ``b*G`` is its
    noise-free baseline. P prompt columns, T target columns, D hidden size.
    """

    prompt_ids: torch.Tensor  # (B, P) left-padded, ending in <|Thought|>
    prompt_mask: torch.Tensor  # (B, P)
    prompt_items: torch.Tensor | None  # (B, P) history item of each prompt token (flr.keys != tokens)
    target_ids: torch.Tensor  # (R, T) the ground-truth title of each row's prompt, right-padded
    target_mask: torch.Tensor  # (R, T)
    noise: torch.Tensor  # (R, D) added to the final thought; zero on rows b*G
    prefix: PromptPrefix  # the B prompts encoded once (no grad), shared by all passes
    old_logprobs: torch.Tensor  # (R, T) under the parameters that made the rollout (pi_old)
    ref_logprobs: torch.Tensor | None  # (R, T) under the frozen SFT FLR module (None when beta_kl = 0)
    rewards: torch.Tensor  # (R,)
    advantages: torch.Tensor  # (R,)
    group_size: int  # G
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # scalars logged with the step

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`GRPOPolicy` (= ``FLRRecommender.score_completion``)."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "target_ids": self.target_ids,
                "target_mask": self.target_mask, "prompt_items": self.prompt_items, "thought_noise": self.noise,
                "prefix": self.prefix, "group_size": self.group_size}


class GRPOPolicy(nn.Module):
    """The FLR model as the trainer sees it: ``forward`` scores a rollout (so a DDP wrapper is called
    and gradients are synchronised across processes; LatentR3 bypassed it).

    The inner model stays in eval mode: its only train-mode behaviour is the key-centering EMA,
    which would otherwise move between the rollout and the gradient pass (the backbone is frozen, so
    the key statistics it estimated in SFT still hold).
    """

    def __init__(self, model: FLRRecommender):
        super().__init__()
        self.model = model
        self.train()  # and the inner model to eval (a loaded model starts in train mode)

    def train(self, mode: bool = True) -> GRPOPolicy:
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, **inputs: Any) -> dict[str, Any]:
        s = self.model.score_completion(**inputs)
        aux = self.model.objective.aux_losses(s.aux_steps) if s.aux_steps else {}
        return {"logprobs": s.logprobs, "logits": s.logits, "aux": aux, "steps": s.steps}

    # No on_train_step: the regularisers' warm-up ramp stays where SFT left it (GRPO's step count
    # restarts at 0, which would switch them off again).


class RolloutRepeatSampler(Sampler[int]):
    """Shuffled rows, cut into chunks of ``chunk`` (one rollout batch of every process), each chunk
    yielded ``repeats`` times in a row (``num_iterations`` passes over the same rollouts). Rows that do
    not fill a last chunk are left out of that epoch; the shuffle changes which."""

    def __init__(self, n: int, seed: int, shuffle: bool, chunk: int, repeats: int):
        self.n, self.seed, self.shuffle, self.chunk, self.repeats, self.epoch = n, seed, shuffle, chunk, repeats, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(self.n))
        for c in range(self.n // self.chunk):
            block = order[c * self.chunk : (c + 1) * self.chunk]
            for _ in range(self.repeats):
                yield from block

    def __len__(self) -> int:
        return (self.n // self.chunk) * self.chunk * self.repeats


def noise_sigma(cfg: GRPOConfig, model: FLRRecommender) -> float:
    """The thought noise's sigma: ``noise_scale`` itself (absolute) or times the input embeddings' RMS
    (relative; the thought is rescaled to that RMS, see EmbeddingScale)."""
    if cfg.noise == "absolute":
        return float(cfg.noise_scale)
    with torch.no_grad():
        emb = model.backbone.get_input_embeddings().weight
        return cfg.noise_scale * emb.float().pow(2).mean().sqrt().item()


class GRPOTrainer(Trainer):
    """The generic trainer with GRPO's hooks (see the module doc). ``model`` is a :class:`GRPOPolicy`
    whose inner FLR model's backbone is frozen by the trainable filter."""

    def __init__(self, model: GRPOPolicy, train_dataset, valid_dataset, collate_fn, config: TrainConfig,
                 grpo: GRPOConfig, trie, **kwargs: Any):
        self.grpo, self.trie = grpo, trie
        inner = model.model
        if not inner.config.uses_thought:
            raise FlrecError("GRPO explores by perturbing the thought; this model has none (reasoner=none)")
        self.sigma = noise_sigma(grpo, inner)
        if not any(trains(grpo.trainable, n) for n, _ in model.named_parameters()):
            raise ConfigError(f"trainable={grpo.trainable}: this model's reasoner ({inner.config.reasoner}) has no such "
                              "parameters; set trainable=flr (or preset=flr)")
        # The reference: a frozen copy of the SFT FLR parameters and buffers (not the backbone, which
        # the policy shares and never changes); evaluated with torch.func.functional_call.
        self.ref_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                          if not k.startswith("model.backbone.")}
        self._buffer: dict[int, tuple[tuple[int, int], Rollout]] = {}
        self.start_dir: Path | None = None  # the SFT model directory (set by build_grpo_trainer)
        self.probe_batches: list[dict] = []  # validation batches for the thought probe (build_grpo_trainer)
        super().__init__(model, train_dataset, valid_dataset, collate_fn, config,
                         trainable_filter=lambda name, _p: trains(grpo.trainable, name), **kwargs)
        if len(self._sampler) == 0:
            need = self._chunk()
            raise FlrecError(f"GRPO needs at least prompts_per_step x processes = {need} training rows, got "
                             f"{self._sampler.n}; lower prompts_per_step or raise train_limit")
        self.ref_state = {k: v.to(self.accelerator.device) for k, v in self.ref_state.items()}

    # ------------------------------------------------------------------------------------- hooks
    def _chunk(self) -> int:
        return self.grpo.prompts_per_step * self.accelerator.num_processes

    def make_train_sampler(self, n: int) -> RolloutRepeatSampler:
        return RolloutRepeatSampler(n, self.data_seed, self.config.shuffle, self._chunk(), self.grpo.num_iterations)

    def prepare_batch(self, batch: dict[str, Any], state: TrainState) -> Rollout:
        """A fresh rollout on the first pass over a rollout batch, the stored one on later passes."""
        per_step = self.config.grad_accum_steps  # micro-batches of one rollout batch, per process
        cycle = per_step * self.grpo.num_iterations
        pos = state.batch_in_epoch % cycle
        slot, cycle_id = pos % per_step, (state.epoch, state.batch_in_epoch // cycle)
        if pos < per_step:
            self._buffer[slot] = (cycle_id, self.make_rollout(batch, (state.epoch, state.batch_in_epoch)))
            return self._buffer[slot][1]
        stored = self._buffer.get(slot)
        if stored is None or stored[0] != cycle_id:
            raise FlrecError(f"{self.output_dir}: this checkpoint lies inside a batch of rollouts (saved after a "
                             "non-finite loss?), so the run cannot resume exactly; start over with --force")
        return stored[1]

    @torch.no_grad()
    def make_rollout(self, batch: dict[str, Any], position: tuple[int, int]) -> Rollout:
        """Encode the prompts once, draw the noise, score all samples, compute rewards and advantages."""
        g, acc = self.grpo.group_size, self.accelerator
        inner = acc.unwrap_model(self.model).model
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        target_ids = batch["target_ids"].repeat_interleave(g, 0)
        target_mask = batch["target_mask"].repeat_interleave(g, 0)
        r = target_ids.shape[0]
        # Noise from its own generator, seeded by the data position: the same rollout after a resume
        # and on any device, whatever else drew from the global RNG. The position is the global
        # micro-batch index (accelerate deals micro-batches round-robin), so 2 processes draw what
        # 1 process with the same global batch draws.
        epoch, local = position
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [self.grpo.seed, epoch, local * acc.num_processes + acc.process_index]).generate_state(1)[0]))
        noise = torch.randn(r, inner.thought_init.shape[-1], generator=gen) * self.sigma
        noise[::g] = 0.0  # sample 1 of every group: the noise-free baseline (eq. 9)
        noise = noise.to(acc.device)
        with acc.autocast():
            prefix = inner.encode_prompt(prompt_ids, prompt_mask, batch.get("prompt_items"))
            rollout = Rollout(prompt_ids, prompt_mask, batch.get("prompt_items"), target_ids, target_mask, noise,
                              prefix, old_logprobs=target_ids.new_zeros(()), ref_logprobs=None,
                              rewards=noise.new_zeros(r), advantages=noise.new_zeros(r), group_size=g)
            out = self.model(**rollout.model_inputs())
            if self.grpo.beta_kl > 0:
                ref = torch.func.functional_call(acc.unwrap_model(self.model), self.ref_state, (),
                                                 rollout.model_inputs(), strict=False)
                rollout.ref_logprobs = ref["logprobs"]
        rollout.old_logprobs = out["logprobs"]
        rewards, match = self.rewards(out["logprobs"], out["logits"], target_ids, target_mask, g)
        adv = self.advantages(rewards.view(-1, g))
        rollout.rewards, rollout.advantages = rewards, adv.reshape(-1)
        base = slice(0, None, g)
        rollout.stats = {"reward": rewards.mean(), "reward_base": rewards[base].mean(),
                         "exact_match": match[base].float().mean(), "adv_abs": adv.abs().mean(),
                         "zero_adv": zero_advantage_share(adv)}
        return rollout

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """(B, G) advantages of this process's groups. A per-group estimator (eq. 11) needs nothing
        else; ``global_baseline`` (LatentR3) sees the rewards of every process's micro-batch, as
        LatentR3 gathered them across GPUs (the sampler gives every process equally many groups)."""
        fn = get_advantage(self.grpo.advantage_name)
        acc = self.accelerator
        if self.grpo.advantage_name != "global_baseline" or acc.num_processes == 1:
            return fn(rewards, self.grpo.adv_eps)
        b = rewards.shape[0]
        everyone = fn(acc.gather(rewards.contiguous()), self.grpo.adv_eps)
        return everyone[acc.process_index * b : (acc.process_index + 1) * b]

    def rewards(self, logprobs: torch.Tensor, logits: torch.Tensor, target_ids: torch.Tensor,
                target_mask: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(R,) rewards of the configured function and (R,) exact-match flags."""
        greedy = greedy_trie_match(self.trie, target_ids, target_mask, logits)
        inputs = RewardInputs(logprobs.float(), target_mask, greedy, group_size)
        reward = get_reward(self.grpo.reward_name)(inputs, **self.grpo.reward_params).float()
        return reward, inputs.exact_match()

    def extra_validation_names(self) -> tuple[str, ...]:
        return THOUGHT_PROBE_NAMES if self.probe_batches else ()

    def extra_validation(self, step: int) -> dict[str, float]:
        """Whether the LM uses the user's thought (:mod:`flrec.training.probe`), at every validation."""
        if not self.probe_batches:
            return {}
        return run_probe(self.accelerator.unwrap_model(self.model).model, self.probe_batches, self.accelerator.device)

    def compute_loss(self, batch: Rollout | dict[str, Any]) -> dict[str, Any]:
        if not self.model.training:
            return self._validation_loss(batch)
        ro, cfg = batch, self.grpo
        out = self.model(**ro.model_inputs())
        logp = out["logprobs"]
        mask = ro.target_mask.to(logp.dtype)
        # one pass per rollout: pi_old is the current policy, so the ratio is exactly 1 (its gradient
        # is grad log pi); recomputed log-probs could differ from the rollout's in the last bit
        old = logp.detach() if cfg.num_iterations == 1 else ro.old_logprobs
        ratio = torch.exp(logp - old)
        adv = ro.advantages[:, None].to(logp.dtype)
        clipped = torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)  # eq. 12, negated (we minimise)
        logs = dict(ro.stats)
        if ro.ref_logprobs is not None:
            delta = ro.ref_logprobs - logp
            # k3 (Schulman): >= 0; an unbiased KL estimator only for tokens sampled from the policy, and
            # these are the teacher-forced targets, so it is a penalty on their log-prob gap, not the KL
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + cfg.beta_kl * kl
            logs["kl"] = ((kl * mask).sum() / mask.sum()).detach()
        # GRPO's aggregation: mean over each sample's tokens, then over samples
        policy_loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
        inner = self.accelerator.unwrap_model(self.model).model
        total = inner.objective(policy_loss, out["aux"])  # eq. 13: + the regularisers' weighted terms
        active = ((ratio < 1 - cfg.clip_low) & (adv < 0)) | ((ratio > 1 + cfg.clip_high) & (adv > 0))
        logs["clip_frac"] = ((active.to(mask.dtype) * mask).sum() / mask.sum()).detach()
        logs["ratio_dev"] = ((ratio - 1).abs() * mask).amax().detach()  # exactly 0 with num_iterations=1
        logs["policy_loss"] = policy_loss.detach()
        logs.update({k: v.detach() for k, v in out["aux"].items()})
        logs.update({f"lambda_{k}": v for k, v in inner.objective.weights().items()})
        return {"loss": total, "logs": logs}

    def _validation_loss(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Noise-free scoring of validation rows: the reward (negated: lower is better), the exact-match
        rate and the target NLL."""
        out = self.model(prompt_ids=batch["prompt_ids"], prompt_mask=batch["prompt_mask"],
                         target_ids=batch["target_ids"], target_mask=batch["target_mask"],
                         prompt_items=batch.get("prompt_items"))
        reward, match = self.rewards(out["logprobs"], out["logits"], batch["target_ids"], batch["target_mask"], 1)
        n_tok = batch["target_mask"].sum()
        rows = torch.tensor(float(reward.shape[0]), device=reward.device)
        return {"loss": -reward.mean(), "neg_reward": -reward.mean(), "rec_loss": -out["logprobs"].sum() / n_tok,
                "n_tokens": rows,  # evaluate_all weights by this: a row-weighted mean over batches
                "logs": {"exact_match": match.float().mean()}}

    def select_metric(self, out: dict[str, Any]) -> str:
        """``auto`` selects on the validation reward (noise-free thought), else ``train.select_metric``."""
        return "neg_reward" if self.config.select_metric == "auto" else self._select_key(out)


# ---------------------------------------------------------------------------------------- recipe
def sft_model_dir(from_run: str | Path) -> Path:
    """The model directory of an SFT run (``RUN/best``), or ``from_run`` itself if it is a model dir."""
    p = Path(from_run)
    for cand in (p / "best", p):
        if (cand / "flr_config.json").is_file():
            return cand
    raise FlrecError(f"{p}: no trained FLR model here (no best/flr_config.json); pass a finished SFT run "
                     "directory (flrec train sft ...) or its best/ folder to --from")


def _run_data(from_run: str | Path) -> str:
    """The dataset an SFT run trained on (its config.yaml's ``data``)."""
    for cfg_path in (Path(from_run) / "config.yaml", Path(from_run).parent / "config.yaml"):
        if cfg_path.is_file():
            data = (load_yaml(cfg_path.read_text(encoding="utf-8"), str(cfg_path)) or {}).get("data")
            if data:
                return str(data)
    raise ConfigError(f"{from_run}: no config.yaml naming the SFT run's data; set data=DIR")


def grpo_fingerprint(cfg: GRPOConfig, dataset, model_dir: Path) -> dict:
    """The config (minus paths, progress and logging), the train/valid rows and the SFT model's files."""
    ignore = ("run_dir", "data", "from_run", "thought_probe_rows", *(f"train.{k}" for k in TRAIN_COSMETIC))
    return make_fingerprint(config_identity(cfg, ignore), data={"hash": dataset_hash(dataset, ("train", "valid"))},
                            start=model_identity(model_dir))


def build_grpo_trainer(cfg: GRPOConfig, dataset=None) -> GRPOTrainer:
    """The SFT model, the encoded rows, the title trie and the trainer (nothing is written yet)."""
    model_dir = sft_model_dir(cfg.from_run)
    dataset = dataset or load_dataset(cfg.data or _run_data(cfg.from_run))
    model, tokenizer = FLRRecommender.from_pretrained(model_dir, dtype=DTYPES[cfg.dtype])
    builder = PromptBuilder(tokenizer, use_thought=True, **model.prompt_settings)
    train_ex = builder.encode_rows(subsample(dataset["train"], cfg.train_limit, cfg.seed), dataset.catalogue)
    valid_rows = subsample(dataset["valid"], cfg.valid_limit, cfg.seed)
    valid_ex = builder.encode_rows(valid_rows, dataset.catalogue) if valid_rows else None
    vocab = model.backbone.get_output_embeddings().weight.shape[0]
    trie = TitleTrie.build(tokenizer, dataset.catalogue.titles, vocab_size=vocab)

    def save_fn(policy: GRPOPolicy, path: Path) -> None:
        policy.model.save_pretrained(path, tokenizer)

    collate = partial(collate_left_padded, pad_id=tokenizer.pad_token_id)
    trainer = GRPOTrainer(GRPOPolicy(model), train_ex, valid_ex, collate,
                          cfg.train, cfg, trie, save_fn=save_fn, run_config=cfg, stage="grpo",
                          fingerprint=grpo_fingerprint(cfg, dataset, model_dir))
    trainer.probe_batches = probe_batches(valid_ex or [], cfg.thought_probe_rows,
                                          cfg.prompts_per_micro_batch or cfg.prompts_per_step, collate)
    trainer.trie = trie.to(trainer.accelerator.device)
    trainer.start_dir = model_dir
    return trainer


def run_grpo(cfg: GRPOConfig, dataset=None) -> dict:
    """Train FLR-GRPO (or LR-GRPO, or LatentR3's stage 2) from an SFT run; the best model goes to ``run_dir/best``."""
    trainer = build_grpo_trainer(cfg, dataset)
    result = trainer.train()
    return {"run_dir": cfg.run_dir, "model_dir": str(result.best_dir), "start": str(trainer.start_dir),
            "best_step": result.best_step, "best_valid_neg_reward": result.best_valid_loss, "steps": result.steps_done,
            "prompts_seen": result.samples_seen // cfg.num_iterations, "train_rows": trainer._data_sizes["train_rows"],
            "valid_rows": trainer._data_sizes["valid_rows"] or 0, "mixed_precision": result.mixed_precision,
            "reused": result.reused, "variant": cfg.variant, "preset": cfg.preset, "reward": cfg.reward_name,
            "advantage": cfg.advantage_name, "num_iterations": cfg.num_iterations, "beta_kl": cfg.beta_kl,
            "noise": f"{cfg.noise} {cfg.noise_scale}", "trainable": cfg.trainable}


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of a GRPO run's ``log.jsonl`` (training rows carry reward, kl, clip_frac, zero_adv...)."""
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
