"""FLR around *any* ``AutoModelForCausalLM`` (Llama, Qwen2, ...): refinement, scoring, prefill.

Batch layout (see :func:`flrec.data.prompts.collate_left_padded`): prompts are LEFT-padded so the
``<|Thought|>`` token sits in the last prompt column ``P−1`` of every row; targets are RIGHT-padded
after it. Position ids always come from the attention mask, so padding never shifts a row.

**Why a batch's prompts are encoded once, together.** The instruction that opens every prompt is the
same for every row; :mod:`flrec.models.sharing` moves it into the first columns and
:meth:`FLRRecommender._encode` runs it once per batch (``share_prefix``, exact).

**Why refinement is cheap.** Under causal attention the prompt positions before the thought never
see it, so their hidden states are identical in every refinement step. We therefore encode the
prefix once into a KV cache; each of the N steps re-runs only the thought position against that
cache (1 token instead of P), and the target is scored (teacher forcing) or decoded on top of
prefix + final thought. :meth:`FLRRecommender.forward_naive` runs the textbook N+1 full passes;
the tests check both agree in values and gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flrec.errors import ConfigError, FlrecError
from flrec.models.compat import cache_kwarg, crop_cache, expand_cache, fork_cache, new_cache
from flrec.models.deep_write import DeepThoughtWrite
from flrec.models.flr import EmbeddingScale, FactorizedLatentReasoner, ReasonerOutput, positions_from_mask  # noqa: F401
from flrec.models.flr_config import REASONER_DEFAULTS, FLRConfig  # noqa: F401  (re-exported: their old home)
from flrec.models.freeze import frozen_bottom_no_grad, parse_top, set_top_trainable
from flrec.models.health import health_stats
from flrec.models.losses import FLRObjective, title_bag
from flrec.models.persistence import load_model, save_model
from flrec.models.reasoners import build_reasoner
from flrec.models.sharing import hoist_shared_prefix, shared_head_len
from flrec.models.state import PrefillState


@dataclass
class PromptPrefix:
    """A batch of prompts encoded once by the backbone, up to (not including) the thought column.

    With the backbone frozen (GRPO) nothing here depends on a trained parameter, so one encoding
    serves the G noisy samples of each prompt, the N refinement steps, every optimisation pass over
    the rollouts and the reference model. Built by :meth:`FLRRecommender.encode_prompt` without
    gradients; every use forks ``cache`` (:func:`flrec.models.compat.fork_cache`), so it is never
    modified.
    """

    hidden: torch.Tensor  # (B, P-1, D) last-layer (post-norm) states of the prefix
    cache: object  # KV cache of the prefix: B rows, P-1 positions


@dataclass
class CompletionScores:
    """Teacher-forced scores of R = B*G completions (G consecutive rows per prompt, see
    :meth:`FLRRecommender.score_completion`)."""

    logprobs: torch.Tensor  # (R, T) log pi(y_t | x, thought, y_<t) at real completion tokens, 0 at padding
    logits: torch.Tensor  # (M, V) fp32 logits at the M real completion tokens, row-major over the mask
    steps: list[ReasonerOutput]  # the B prompts' refinement steps (not repeated over the group)
    aux_steps: list[ReasonerOutput]  # what the regularisers read (see FLRRecommender.refine)


class FLRRecommender(nn.Module):
    """A causal LM plus the latent reasoner, thought init vector and loss weights."""

    def __init__(self, backbone: nn.Module, config: FLRConfig, thought_token_id: int | None,
                 backbone_spec: str = ""):
        super().__init__()
        self.backbone, self.config, self.backbone_spec = backbone, config, backbone_spec
        self.thought_token_id = thought_token_id
        self.trainable_mode = "full"
        # Encode the prompt head shared by all rows once per batch (exact; see flrec.models.sharing).
        # A runtime switch, not part of the model: benchmarks and the parity tests turn it off.
        self.share_prefix = True
        self.frozen_blocks = 0  # bottom blocks run without autograd on the prompt (trainable=top:N)
        # How prompts were built in training (domain word, history length, token budget); saved with
        # the model so ranking and serving rebuild exactly the prompts the model was trained on.
        self.prompt_settings: dict = {}
        if config.uses_thought and thought_token_id is None:
            raise FlrecError("a thought token id is required; call flrec.models.backbone.add_thought_token first")
        emb = backbone.get_input_embeddings().weight
        d = emb.shape[1]
        if config.uses_thought:
            self.reasoner = build_reasoner(config, d)
            with torch.no_grad():
                rms = emb.float().pow(2).mean().sqrt().item()
                init = emb[thought_token_id].detach().float().clone()
            self.scale = EmbeddingScale(d, init_rms=rms, enabled=config.scale_thought)
            # E^(0)[thought]: a separate parameter so it trains even with a frozen embedding matrix.
            self.thought_init = nn.Parameter(init)
            if config.reasoner == "softprompt":  # the matched control: its constant starts where E0 does
                with torch.no_grad():
                    self.reasoner.vector.copy_(init)
            if config.residual:  # zero: the model starts as the soft-prompt control
                self.thought_gate = nn.Parameter(torch.zeros(d))
        if config.uses_thought and config.deep_write:
            self.deep_write = DeepThoughtWrite(self._decoder(), d)
            self.deep_write.attach()
        self.objective = FLRObjective(config.aux, config.loss_weighting, config.fixed_weights,
                                      warmup_steps=config.aux_warmup_steps,
                                      params={"entropy_floor": config.attn_entropy_floor,
                                              "nce_temperature": config.target_nce_temperature,
                                              "readout_temperature": config.readout_temperature})

    def _write_thought(self, z: torch.Tensor) -> torch.Tensor:
        """The thought embedding for the next step: ``scale(z)``, or with ``thought_residual``
        ``E0 + g ⊙ scale(z)``, a learned constant plus a per-dimension gate (zero at init) on the user part."""
        e = self.scale(z)
        if self.config.residual:
            e = self.thought_init.to(e.dtype) + self.thought_gate.to(e.dtype) * e
        return e

    def on_train_step(self, step: int) -> None:
        """Called by the trainer after each optimizer step: drives the regulariser warm-up and folds
        the step's key statistics into the reasoner's running key mean (used from the next step on)."""
        self.objective.step.fill_(step)
        commit = getattr(getattr(self, "reasoner", None), "commit_key_mean", None)
        if callable(commit):
            commit()

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def causal_lm(self) -> nn.Module:
        """The backbone's causal LM without a LoRA (PEFT) wrapper (output embeddings, cache, saving)."""
        get_base = getattr(self.backbone, "get_base_model", None)
        return get_base() if callable(get_base) else self.backbone

    def _decoder(self) -> nn.Module:
        return self.causal_lm.get_decoder()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids)

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        # Only the positions that need logits reach the vocabulary projection (it dominates CPU cost).
        return self.causal_lm.get_output_embeddings()(hidden)

    def _run(self, embeds, mask, positions, cache=None, thought_col: int | None = None):
        """Last-layer (post-norm) hidden states; appends to ``cache`` when one is given.

        ``thought_col``: the column of ``embeds`` that is the written thought; with ``flr.deep_write`` its
        keys and values get the thought's per-layer write in this pass (an intervention on the thought
        embedding therefore reaches every layer)."""
        dec = self._decoder()
        kw = {cache_kwarg(dec): cache} if cache is not None else {}
        deep = getattr(self, "deep_write", None)
        with deep.writing(thought_col, embeds[:, thought_col]) if deep is not None and thought_col is not None \
                else contextlib.nullcontext():
            out = dec(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                      **kw)
        return out.last_hidden_state

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Hidden states of prompt tokens ``ids`` (B, L) with ``mask`` (B, L), filling ``cache``.

        Leading columns identical in every row (the hoisted instruction head) run once as batch 1 and
        their cache is broadcast. With ``trainable=top:N`` the frozen bottom blocks run without
        autograd here: a prompt token's states there depend on no trained parameter.
        """
        n = shared_head_len(ids, mask) if self.share_prefix else 0
        with frozen_bottom_no_grad(self._decoder(), self.frozen_blocks):
            if n == 0:
                return self._run(self._embed(ids), mask, positions, cache)
            head = self._run(self._embed(ids[:1, :n]), mask[:1, :n], positions[:1, :n], cache)
            expand_cache(cache, ids.shape[0])
            rest = self._run(self._embed(ids[:, n:]), mask, positions[:, n:], cache)
        return torch.cat([head.expand(ids.shape[0], -1, -1), rest], dim=1)

    def layout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_items: torch.Tensor | None = None):
        """The batch in the layout the model computes in: the shared head hoisted (``share_prefix``)."""
        if not self.share_prefix:
            return prompt_ids, prompt_mask, prompt_items
        return hoist_shared_prefix(prompt_ids, prompt_mask, prompt_items)[:3]

    def _check_thought(self, prompt_ids: torch.Tensor) -> None:
        if not bool((prompt_ids[:, -1] == self.thought_token_id).all()):
            raise FlrecError("every prompt must end with <|Thought|> in its last (left-padded) column; "
                             "build batches with flrec.data.prompts.collate_left_padded")

    # ---------------------------------------------------------------------------------- refinement
    def _check_layout(self, prompt_ids: torch.Tensor, prompt_items: torch.Tensor | None) -> None:
        if self.config.needs_layout and (prompt_items is None or prompt_items.shape != prompt_ids.shape):
            raise FlrecError(f"flr.keys={self.config.keys} needs 'prompt_items' (the history-item index of each "
                             "prompt token); build batches with PromptBuilder.encode_rows + collate_left_padded")

    def _detach_aux(self) -> bool:
        """Whether the regularisers get their own reasoner pass over detached states (aux_to_backbone off)."""
        return bool(self.objective.enabled) and not self.config.aux_to_backbone and torch.is_grad_enabled()

    def refine(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, positions: torch.Tensor,
               prompt_items: torch.Tensor | None = None, prefix: PromptPrefix | None = None):
        """Encode the prefix once, then run N one-token refinement steps against its cache.

        Returns ``(thought_embedding (B, D), cache holding the prefix only, steps, aux_steps)``:
        ``steps`` are the reasoner outputs the thought was built from; ``aux_steps`` the ones the
        regularisers see (the same unless ``aux_to_backbone`` is off, then a second reasoner pass over
        detached hidden states, so their gradients stop at the reasoner). ``prefix`` (from
        :meth:`encode_prompt`) skips the prefix pass: only valid while the backbone is frozen.
        """
        self._check_thought(prompt_ids)
        self._check_layout(prompt_ids, prompt_items)
        p = prompt_ids.shape[1]
        if prefix is not None:
            cache, h_prefix = fork_cache(prefix.cache), prefix.hidden
        else:
            cache = new_cache(self.causal_lm)
            h_prefix = self._encode(prompt_ids[:, :-1], prompt_mask[:, :-1], positions[:, : p - 1], cache)
        e = self.thought_init.to(h_prefix.dtype).expand(prompt_ids.shape[0], -1)
        detach_aux = self._detach_aux()
        emb_prefix = self._embed(prompt_ids[:, :-1]) if self._values_from_embeddings else None
        steps: list[ReasonerOutput] = []
        aux_steps: list[ReasonerOutput] = []
        for _ in range(self.config.steps):
            h_t = self._run(e[:, None], prompt_mask, positions[:, p - 1 : p], cache, thought_col=0)
            crop_cache(cache, p - 1)  # drop this step's thought; the prefix stays as it was
            # Keys/values cover the prompt *including* the thought, so step n+1 sees a changed state.
            h = torch.cat([h_prefix, h_t], dim=1)
            emb = None if emb_prefix is None else torch.cat([emb_prefix, e[:, None].to(emb_prefix.dtype)], dim=1)
            out, aux = self._reason_step(h, prompt_mask, prompt_items, emb, detach_aux, h_prefix.dtype)
            steps.append(out)
            aux_steps.append(aux)
            e = out.thought
        return e, cache, steps, aux_steps

    @property
    def _values_from_embeddings(self) -> bool:
        return getattr(self.reasoner, "values", "hidden") == "embeddings"

    def _reason_step(self, h, mask, items, emb, detach_aux: bool, dtype: torch.dtype) -> tuple[ReasonerOutput, ReasonerOutput]:
        """One refinement step's reasoner outputs ``(out, aux)``, each with the thought it writes set.

        ``aux`` is what the regularisers read: ``out`` itself, or with ``detach_aux`` a second pass over
        detached states (its own written thought, so cross-row terms still reach the write path).
        ``dtype``: that of the embeddings the thought is fed back with."""
        out = self._reason(h, mask, items, emb)
        out.thought = self._write_thought(out.z).to(dtype)
        if not detach_aux:
            return out, out
        aux = self._reason(h.detach(), mask, items, None if emb is None else emb.detach())
        aux.thought = self._write_thought(aux.z)
        return out, aux

    def _reason(self, hidden, mask, items, embeds=None) -> ReasonerOutput:
        """One reasoner call; ``embeds`` (the positions' input embeddings) only for values=embeddings."""
        if embeds is None:
            return self.reasoner(hidden, mask, items)
        return self.reasoner(hidden, mask, items, embeds=embeds)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target_ids: torch.Tensor,
                target_mask: torch.Tensor, prompt_items: torch.Tensor | None = None, **_: object) -> dict:
        """Teacher-forced loss on the target tokens only (title, closing quote, newline, EOS)."""
        prompt_ids, prompt_mask, prompt_items = self.layout(prompt_ids, prompt_mask, prompt_items)
        mask = torch.cat([prompt_mask, target_mask], dim=1)
        positions = positions_from_mask(mask)
        p = prompt_ids.shape[1]
        if not self.config.uses_thought:
            cache = new_cache(self.causal_lm)
            h_prompt = self._encode(prompt_ids, prompt_mask, positions[:, :p], cache)
            h_target = self._run(self._embed(target_ids), mask, positions[:, p:], cache)
            pred = torch.cat([h_prompt[:, -1:], h_target[:, :-1]], dim=1)  # position t predicts token t+1
            steps: list[ReasonerOutput] = []
            aux_steps: list[ReasonerOutput] = []
        else:
            e, cache, steps, aux_steps = self.refine(prompt_ids, prompt_mask, positions, prompt_items)
            e = self._teacher_blend(e, target_ids, target_mask)
            embeds = torch.cat([e[:, None], self._embed(target_ids)], dim=1)
            hidden = self._run(embeds, self._history_dropout(mask, prompt_items), positions[:, p - 1 :], cache,
                               thought_col=0)
            pred = hidden[:, :-1]
            self._attach_target(aux_steps, hidden[:, 1:], target_ids, target_mask)
        return self._loss(pred, target_ids, target_mask, steps, aux_steps)

    def _teacher_blend(self, e: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """``(1 − α) e + α·teacher`` with ``α = 1 − step / flr.thought_teacher_steps`` (training only, while
        α > 0); the teacher is the next title's mean input embedding (:func:`~flrec.models.losses.title_bag`)
        at the embeddings' RMS: a thought worth reading, so the LM learns to read the channel early."""
        n = self.config.thought_teacher_steps
        alpha = max(0.0, 1.0 - float(self.objective.step) / n) if n and self.training else 0.0
        if alpha == 0.0:
            return e
        emb = self.backbone.get_input_embeddings().weight.detach()
        bag = title_bag(target_ids.masked_fill(~target_mask.bool(), -1), emb)  # fp32, from the rows it needs
        rms = torch.linalg.vector_norm(emb, dtype=torch.promote_types(emb.dtype, torch.float32)) / emb.numel() ** 0.5
        bag = bag * rms * torch.rsqrt(bag.pow(2).mean(-1, keepdim=True) + 1e-12)
        return (1 - alpha) * e + alpha * bag.to(e.dtype)

    def _history_dropout(self, mask: torch.Tensor, prompt_items: torch.Tensor | None) -> torch.Tensor:
        """The attention mask of the scored pass, with everything that has read the history hidden from
        a random ``flr.history_dropout`` share of the rows (training only).

        Why: the LM reads the whole history in its prompt, so a thought that repeats it is redundant
        and the LM learns to ignore it (issue #24: swapping users' thoughts changed nothing). For a
        dropped row the thought is the only route from the history to the answer (the refinement
        steps still read everything), so the reasoner must write, and the LM must learn to read, the
        user into it. Inference always sees the whole prompt.
        Hidden: every prompt column from the row's first history token up to (not including) the
        thought, i.e. the titles *and* the commas and fixed tail after them, whose states have read the
        titles under causal attention (hiding the titles alone leaves the history readable there).
        Only the instruction head before the history stays visible; it is the same for every user.
        """
        rate = self.config.history_dropout
        if not rate or not self.training:
            return mask
        return self._hide_history(mask, prompt_items, torch.rand(mask.shape[0], device=mask.device) < rate,
                                  "flr.history_dropout")

    @staticmethod
    def _hide_history(mask: torch.Tensor, prompt_items: torch.Tensor | None, drop: torch.Tensor,
                      option: str) -> torch.Tensor:
        """``mask`` with, in the rows where ``drop`` (B,) is True, every prompt column from the first
        history token up to (not including) the thought set to 0 (see :meth:`_history_dropout`).
        ``option`` names what asked for it in the error when the prompt layout is missing."""
        if prompt_items is None:
            raise FlrecError(f"{option} needs 'prompt_items' (the history-item index of each prompt token)")
        p = prompt_items.shape[1]
        has = prompt_items >= 0
        first = torch.where(has.any(1), has.int().argmax(1), p)  # rows with no history hide nothing
        col = torch.arange(mask.shape[1], device=mask.device)
        hide = (col[None] >= first[:, None]) & (col[None] < p - 1) & drop[:, None]
        return mask.masked_fill(hide, 0)

    def _attach_target(self, aux_steps: list[ReasonerOutput], target_hidden: torch.Tensor,
                       target_ids: torch.Tensor, target_mask: torch.Tensor) -> None:
        """Give the regularisers the next item: its own state (``target_nce``), its token ids and the
        input embeddings to read the thought with (``thought_readout``).

        The state is the mean last-layer state over the target's tokens, detached (a target, not
        something to move) and centred like the keys, so it lives where the factors' key states do.
        """
        if not aux_steps:
            return
        if {"thought_readout", "thought_bag"} & set(self.objective.enabled):
            ids = target_ids.masked_fill(~target_mask.bool(), -1)
            vocab = self.backbone.get_input_embeddings().weight.detach()
            for out in aux_steps:
                out.target_ids, out.readout_vocab = ids, vocab
        if "target_nce" not in self.objective.enabled:
            return
        state = target_hidden.detach()
        state = state.to(torch.promote_types(state.dtype, torch.float32))
        w = target_mask.to(state.dtype)[..., None]
        state = (state * w).sum(1) / w.sum(1).clamp(min=1)
        state = self.reasoner.center_state(state)
        for out in aux_steps:
            out.target_state = state

    def _loss(self, pred_hidden, target_ids, target_mask, steps, aux_steps=None) -> dict:
        sel = target_mask.bool()
        logits = self._lm_head(pred_hidden[sel])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        n_tokens = sel.sum()
        rec = F.cross_entropy(logits, target_ids[sel], reduction="sum") / n_tokens.clamp(min=1)
        aux_steps = steps if aux_steps is None else aux_steps
        aux = self.objective.aux_losses(aux_steps) if aux_steps else {}
        total = self.objective(rec, aux)
        logs = {"rec": rec.detach(), **{k: v.detach() for k, v in aux.items()}}
        logs.update({f"lambda_{k}": v for k, v in self.objective.weights().items()})
        if steps:
            logs.update(health_stats(steps[-1]))
        return {"loss": total, "rec_loss": rec, "aux": aux, "n_tokens": n_tokens, "logs": logs, "steps": steps,
                "target_logits": logits}

    def forward_naive(self, prompt_ids, prompt_mask, target_ids, target_mask, prompt_items=None) -> dict:
        """Reference: N+1 full passes over the whole sequence (what the paper's eqs. describe)."""
        if not self.config.uses_thought:
            return self.forward(prompt_ids, prompt_mask, target_ids, target_mask)
        self._check_thought(prompt_ids)
        self._check_layout(prompt_ids, prompt_items)
        mask = torch.cat([prompt_mask, target_mask], dim=1)
        positions = positions_from_mask(mask)
        p = prompt_ids.shape[1]
        base = self._embed(prompt_ids)
        e = self.thought_init.to(base.dtype).expand(prompt_ids.shape[0], -1)
        steps, aux_steps = [], []
        detach_aux = self._detach_aux()
        for _ in range(self.config.steps):
            embeds = torch.cat([base[:, :-1], e[:, None]], dim=1)
            h = self._run(embeds, prompt_mask, positions[:, :p], thought_col=p - 1)
            emb = embeds if self._values_from_embeddings else None
            out, aux = self._reason_step(h, prompt_mask, prompt_items, emb, detach_aux, base.dtype)
            steps.append(out)
            aux_steps.append(aux)
            e = out.thought
        embeds = torch.cat([base[:, :-1], e[:, None], self._embed(target_ids)], dim=1)
        hidden = self._run(embeds, mask, positions, thought_col=p - 1)
        self._attach_target(aux_steps, hidden[:, p:], target_ids, target_mask)
        return self._loss(hidden[:, p - 1 : -1], target_ids, target_mask, steps, aux_steps)

    @torch.no_grad()
    def row_losses(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target_ids: torch.Tensor,
                   target_mask: torch.Tensor, prompt_items: torch.Tensor | None = None,
                   thought: torch.Tensor | None = None, return_z: bool = False,
                   prefix: PromptPrefix | None = None, hide_history: bool = False):
        """Per-row teacher-forced rec loss (mean NLL over the row's target tokens) and the thought
        embedding the LM received, ``(losses (B,), e (B, D))`` (+ the last step's ``z`` with ``return_z``).

        ``thought`` (B, D) replaces the model's own: the refinement steps are skipped and the LM gets
        exactly this embedding at the thought position (the intervention of :mod:`flrec.models.health`).
        ``prefix`` (:meth:`encode_prompt` of the same prompts) reuses an encoded prompt.
        ``hide_history``: the answer cannot attend to the history (as a ``history_dropout`` row in
        training; the refinement steps still read it), so the thought is its only route to the user.
        """
        if not self.config.uses_thought:
            raise FlrecError("row_losses needs a thought token (reasoner=none has none)")
        prompt_ids, prompt_mask, prompt_items = self.layout(prompt_ids, prompt_mask, prompt_items)
        mask = torch.cat([prompt_mask, target_mask], dim=1)
        positions = positions_from_mask(mask)
        p = prompt_ids.shape[1]
        z = None
        if thought is None:
            e, cache, steps, _ = self.refine(prompt_ids, prompt_mask, positions, prompt_items, prefix=prefix)
            z = steps[-1].z
        else:
            self._check_thought(prompt_ids)
            if prefix is not None:
                cache, h = fork_cache(prefix.cache), prefix.hidden
            else:
                cache = new_cache(self.causal_lm)
                h = self._encode(prompt_ids[:, :-1], prompt_mask[:, :-1], positions[:, : p - 1], cache)
            e = thought.to(h.dtype)
        if hide_history:
            mask = self._hide_history(mask, prompt_items, torch.ones_like(mask[:, 0], dtype=torch.bool), "hide_history")
        hidden = self._run(torch.cat([e[:, None], self._embed(target_ids)], dim=1), mask, positions[:, p - 1 :], cache,
                           thought_col=0)
        logits = self._lm_head(hidden[:, :-1])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nll = F.cross_entropy(logits.transpose(1, 2), target_ids, reduction="none") * target_mask
        losses = nll.sum(1) / target_mask.sum(1).clamp(min=1)
        return (losses, e, z) if return_z else (losses, e)

    # ------------------------------------------------------------------- per-token scores (GRPO)
    @torch.no_grad()
    def encode_prompt(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      prompt_items: torch.Tensor | None = None) -> PromptPrefix:
        """Run the backbone once over each prompt's prefix (everything before the thought), no grad.

        Pass the same ``prompt_*`` to :meth:`score_completion` (both compute in :meth:`layout`)."""
        if not self.config.uses_thought:
            raise FlrecError("encode_prompt needs a thought token (reasoner=none has none)")
        self._check_thought(prompt_ids)
        prompt_ids, prompt_mask, _ = self.layout(prompt_ids, prompt_mask, prompt_items)
        positions = positions_from_mask(prompt_mask)
        cache = new_cache(self.causal_lm)
        hidden = self._encode(prompt_ids[:, :-1], prompt_mask[:, :-1], positions[:, :-1], cache)
        return PromptPrefix(hidden=hidden, cache=cache)

    def score_completion(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target_ids: torch.Tensor,
                         target_mask: torch.Tensor, prompt_items: torch.Tensor | None = None,
                         thought_noise: torch.Tensor | None = None, prefix: PromptPrefix | None = None,
                         group_size: int = 1) -> CompletionScores:
        """Per-token log-probs of completions given B prompts, each scored ``group_size`` (G) times.

        ``prompt_*`` hold B rows; ``target_*`` and ``thought_noise`` (R, D) hold R = B*G rows, the G
        completions of prompt b in rows ``b*G .. b*G+G-1``. The N refinement steps run once per
        prompt; the final thought is repeated G times and ``thought_noise`` is added to it (eq. 9)
        before the completion is scored. ``prefix`` (:meth:`encode_prompt`) reuses an encoded prompt.
        """
        prompt_ids, prompt_mask, prompt_items = self.layout(prompt_ids, prompt_mask, prompt_items)
        b, p = prompt_ids.shape
        g = group_size
        if g < 1 or target_ids.shape[0] != b * g:
            raise FlrecError(f"score_completion: {target_ids.shape[0]} completions for {b} prompts x group_size {g}")
        rep = (lambda x: x.repeat_interleave(g, 0)) if g > 1 else (lambda x: x)
        mask = torch.cat([rep(prompt_mask), target_mask], dim=1)
        positions = positions_from_mask(mask)
        steps: list[ReasonerOutput] = []
        aux_steps: list[ReasonerOutput] = []
        if not self.config.uses_thought:
            if thought_noise is not None or prefix is not None:
                raise FlrecError("reasoner=none has no thought to perturb or share; use a thought reasoner")
            hidden = self._run(self._embed(torch.cat([rep(prompt_ids), target_ids], 1)), mask, positions)
            pred = hidden[:, p - 1 : -1]
        else:
            e, cache, steps, aux_steps = self.refine(prompt_ids, prompt_mask, positions_from_mask(prompt_mask),
                                                     prompt_items, prefix=prefix)
            if g > 1:
                e, cache = e.repeat_interleave(g, 0), fork_cache(cache, g)
            if thought_noise is not None:
                e = e + thought_noise.to(e.dtype)
            hidden = self._run(torch.cat([e[:, None], self._embed(target_ids)], dim=1), mask, positions[:, p - 1 :],
                               cache, thought_col=0)
            pred = hidden[:, :-1]
        sel = target_mask.bool()
        logits = self._lm_head(pred[sel])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        picked = torch.log_softmax(logits, dim=-1).gather(1, target_ids[sel][:, None]).squeeze(1)
        logprobs = picked.new_zeros(target_ids.shape).masked_scatter(sel, picked)
        return CompletionScores(logprobs=logprobs, logits=logits, steps=steps, aux_steps=aux_steps)

    def token_logprobs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target_ids: torch.Tensor,
                       target_mask: torch.Tensor, prompt_items: torch.Tensor | None = None,
                       thought_noise: torch.Tensor | None = None, prefix: PromptPrefix | None = None,
                       group_size: int = 1) -> torch.Tensor:
        """(B*G, T) log-prob of every completion token (0 at padding); see :meth:`score_completion`."""
        return self.score_completion(prompt_ids, prompt_mask, target_ids, target_mask, prompt_items,
                                     thought_noise, prefix, group_size).logprobs

    @torch.no_grad()
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                prompt_items: torch.Tensor | None = None) -> PrefillState:
        """Refine, then feed the final thought: the cache holds prefix + thought, ready to decode.

        The state's ``attention_mask`` is in the model's layout (:meth:`layout`), matching its cache.
        """
        prompt_ids, prompt_mask, prompt_items = self.layout(prompt_ids, prompt_mask, prompt_items)
        positions = positions_from_mask(prompt_mask)
        cache = new_cache(self.causal_lm)
        if self.config.uses_thought:
            e, cache, _, _ = self.refine(prompt_ids, prompt_mask, positions, prompt_items)
            p = prompt_ids.shape[1]
            hidden = self._run(e[:, None], prompt_mask, positions[:, p - 1 : p], cache, thought_col=0)
        else:
            hidden = self._encode(prompt_ids, prompt_mask, positions, cache)
        logits = self._lm_head(hidden[:, -1]).float()
        return PrefillState(cache=cache, next_logits=logits, attention_mask=prompt_mask,
                            next_position=positions[:, -1] + 1)

    # --------------------------------------------------------------------------------- training mode
    def set_trainable(self, mode: str, lora_r: int = 8, lora_alpha: int = 16,
                      lora_targets: tuple[str, ...] = ("q_proj", "v_proj")) -> None:
        """full: everything trains (the paper's SFT); lora: peft adapters + FLR; frozen: FLR parts only;
        top:N: the top N blocks + final norm + FLR (the bottom runs without autograd on the prompt)."""
        top = parse_top(mode)
        if mode not in ("full", "lora", "frozen") and top is None:
            raise ConfigError(f"trainable mode '{mode}' unknown; use full, lora, frozen or top:N")
        self.frozen_blocks = 0
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            self._check_lora_targets(lora_targets)
            try:
                self.backbone = get_peft_model(self.backbone, LoraConfig(r=lora_r, lora_alpha=lora_alpha,
                                                                         target_modules=list(lora_targets)))
            except ValueError as e:  # peft's own refusals (r, unsupported layer types) are multi-line
                raise ConfigError(f"lora_r={lora_r}, lora_targets={list(lora_targets)}: "
                                  f"{' '.join(str(e).split())}") from None
        elif mode == "frozen":
            self.backbone.requires_grad_(False)
        elif top is not None:
            self.frozen_blocks = set_top_trainable(self._decoder(), self.causal_lm, top)
        else:
            self.backbone.requires_grad_(True)
        self.trainable_mode = mode

    def _check_lora_targets(self, targets: tuple[str, ...]) -> None:
        """Each LoRA target must name a linear layer of the backbone (peft matches name suffixes);
        otherwise a one-line error listing the names that would work."""
        linear = [n for n, m in self.backbone.named_modules() if isinstance(m, nn.Linear)]
        available = sorted({n.rsplit(".", 1)[-1] for n in linear})
        if not targets:
            raise ConfigError(f"lora_targets is empty; name the layers LoRA adapts, e.g. "
                              f"lora_targets=[q_proj,v_proj] (this backbone's linear layers: {', '.join(available)})")
        for t in targets:
            if not any(n == t or n.endswith(f".{t}") for n in linear):
                raise ConfigError(f"lora_targets: '{t}' names no linear layer of the backbone; "
                                  f"use some of: {', '.join(available)}")

    def flr_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    # ---------------------------------------------------------------------------------- persistence
    def save_pretrained(self, path: str | Path, tokenizer=None) -> None:
        """One directory: config, FLR weights, tokenizer additions, and the backbone if it changed
        (see :func:`flrec.models.persistence.save_model`)."""
        save_model(self, path, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, backbone_override: str | None = None):
        """Load a directory written by :meth:`save_pretrained`; returns ``(model, tokenizer)``
        (see :func:`flrec.models.persistence.load_model`)."""
        return load_model(cls, path, dtype, backbone_override)


__all__ = ["REASONER_DEFAULTS", "CompletionScores", "FLRConfig", "FLRRecommender", "FactorizedLatentReasoner", "PromptPrefix"]
