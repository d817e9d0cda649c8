"""``cot``: a self-generated rationale before the title (explicit reasoning's cost, the paper's Fig. 9).

What it is: the LM first writes a free-text rationale after the prompt and ``rationale_prefix``
(greedy, until it starts the answer — a newline or EOS — or ``rationale_tokens``, a generous safety cap
of 256), then ``answer_prefix``, then the title under the catalogue trie exactly as for the other
generative methods. Training is BIGRec's SFT (no thought token, no rationales): the rationale is the
model's own, written only at inference. What it is not: the paper's CoT baseline, which fine-tunes on
rationales distilled from a large LM (Rec-SAVER, Tsai et al.); its accuracy here says nothing about
that one. Its cost is the point: ``last_generated_tokens`` counts rationale and title tokens,
``last_rationale_tokens`` / ``last_rationale_capped`` the rationale tokens and the rows that hit the cap
in the last ranking call (:mod:`flrec.analysis.cost` reports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from flrec.config import option
from flrec.errors import ConfigError
from flrec.models.compat import lm_forward, out_cache
from flrec.models.flr import positions_from_mask
from flrec.models.state import PrefillState
from flrec.recommenders.base import register_recommender
from flrec.recommenders.llm import LLMRecConfig, LLMRecommender


@dataclass
class CoTRecConfig(LLMRecConfig):
    """An LLM recommender that writes its own rationale before the constrained title."""

    rationale_tokens: int = option(
        256, help="cap on the self-generated rationale per user (greedy); a row's rationale ends earlier when the "
        "model starts the answer (a newline or EOS). The default is a safety cap, not a length: a smaller one "
        "truncates rationales and understates CoT's cost (the cost analysis reports the rows that hit it)")
    rationale_prefix: str = option("Let's think step by step about what the user wants next:",
                                   help="text appended after the prompt before the rationale")
    answer_prefix: str = option("\nAnswer:\n", help="text appended after the rationale, before the title")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rationale_tokens < 1:
            raise ConfigError(f"rationale_tokens must be >= 1, got {self.rationale_tokens} (use bigrec for none)")


@register_recommender("cot")
class CoTRec(LLMRecommender):
    """BIGRec-style SFT; ranking = a self-generated rationale (free greedy generation) + trie-constrained title."""

    reasoner = "none"
    config_cls: ClassVar[type] = CoTRecConfig

    def __init__(self, catalogue=None, config: CoTRecConfig | None = None):
        super().__init__(catalogue, config)
        self._stop_ids: torch.Tensor | None = None
        self.last_rationale_tokens = 0  # rationale tokens written in the last ranking call, all rows
        self.last_rationale_capped = 0  # rows of that call whose rationale hit rationale_tokens

    def decode_candidates(self, rows, *args, **kwargs):
        self.last_rationale_tokens = self.last_rationale_capped = 0
        return super().decode_candidates(rows, *args, **kwargs)

    def _stop_tokens(self, vocab: int) -> torch.Tensor:
        """Bool (V,): tokens that end a rationale (EOS, or any token whose text holds a newline)."""
        if self._stop_ids is None or self._stop_ids.shape[0] != vocab:
            stop = torch.zeros(vocab, dtype=torch.bool)
            for i in range(min(vocab, len(self.tokenizer))):
                if "\n" in self.tokenizer.decode([i]):
                    stop[i] = True
            if self.tokenizer.eos_token_id is not None:
                stop[self.tokenizer.eos_token_id] = True
            self._stop_ids = stop
        return self._stop_ids

    def _feed(self, state: PrefillState, ids: torch.Tensor, step_mask: torch.Tensor) -> PrefillState:
        """Append ``ids`` (B, T) to the cache; ``step_mask`` (B, T) is 0 where a row only pads."""
        mask = torch.cat([state.attention_mask, step_mask.to(state.attention_mask.dtype)], 1)
        pos = state.next_position[:, None] + positions_from_mask(step_mask)
        out = lm_forward(self.model.backbone, cache=state.cache, input_ids=ids, attention_mask=mask,
                         position_ids=pos, use_cache=True, logits_to_keep=1)
        return PrefillState(cache=out_cache(out), next_logits=out.logits[:, -1].float(), attention_mask=mask,
                            next_position=state.next_position + step_mask.long().sum(1))

    def _text_ids(self, text: str, b: int) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids] * b, dtype=torch.long)

    def _prefill(self, batch: dict[str, torch.Tensor]) -> PrefillState:
        cfg: CoTRecConfig = self.config
        state = super()._prefill(batch)
        b = state.next_logits.shape[0]
        prefix = self._text_ids(cfg.rationale_prefix, b)
        if prefix.shape[1]:
            state = self._feed(state, prefix, torch.ones_like(prefix))
        stop = self._stop_tokens(state.next_logits.shape[1])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        done = torch.zeros(b, dtype=torch.bool)
        for _ in range(cfg.rationale_tokens):
            tok = state.next_logits.argmax(-1)
            live = ~done
            self.last_generated_tokens += int(live.sum())
            self.last_rationale_tokens += int(live.sum())
            ids = torch.where(live, tok, torch.full_like(tok, pad))[:, None]
            state = self._feed(state, ids, live[:, None].long())
            done |= stop[tok] & live
            if bool(done.all()):
                break
        self.last_rationale_capped += int((~done).sum())
        answer = self._text_ids(cfg.answer_prefix, b)
        if answer.shape[1]:
            state = self._feed(state, answer, torch.ones_like(answer))
        return state
