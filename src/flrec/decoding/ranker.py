"""The ranking pipeline of the LLM recommenders: a trained FLR model ranks catalogue titles for a row.

``prefill`` (read the prompt; :meth:`TitleRanker._prefill`, a subclass may generate first, e.g. the
``cot`` recommender) → ``candidates`` (trie-constrained beam search, :mod:`flrec.decoding.beam`, with
the decoding options of :class:`~flrec.decoding.scoring.DecodingConfig`: token score, exclude-seen,
the text-free assistant's mixing) → ``finalise`` (the PMI prior correction, :mod:`flrec.decoding.prior`,
then the titles split over their items, :func:`~flrec.data.items.expand_titles_to_items`).

:class:`TitleRanker` holds that pipeline and its state (the title trie, edge weights, cached priors).
The LLM recommenders (:class:`flrec.recommenders.llm.LLMRecommender`) are rankers with training,
persistence and tuned decoding on top; SFT's validation ranking (:mod:`flrec.training.sft`) builds a
bare ranker around the model it is training, so training never imports a recommender.

A ranker reads its settings from ``self.config``: ``beam``, ``length_penalty``, ``batch_size``,
``jump_forward``, ``shared_prompt``, ``inference_dtype`` and ``decoding`` (:class:`RankSettings`, or the recommender's
``LLMRecConfig``, which has the same fields with the same defaults).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from flrec.data.items import ItemRanked, Ranked, expand_titles_to_items
from flrec.data.prompts import PromptBuilder, collate_left_padded
from flrec.data.schema import Catalogue, Interaction
from flrec.decoding.beam import SearchStats, constrained_beam_search
from flrec.decoding.prior import TitlePrior, catalogue_hash, model_fingerprint, score_titles
from flrec.decoding.scoring import DecodingConfig, edge_weights
from flrec.decoding.trie import TitleTrie
from flrec.errors import ConfigError
from flrec.utils.dtypes import DTYPES
from flrec.utils.precision import resolve_inference_dtype

Candidates = list[list[tuple[int, float]]]  # per row: (title index in the trie, beam score)


@dataclass
class RankSettings:
    """The settings a bare :class:`TitleRanker` ranks with; the defaults are ``LLMRecConfig``'s."""

    beam: int = 10
    length_penalty: float = 1.0
    batch_size: int = 8
    jump_forward: bool = True
    shared_prompt: bool = True
    inference_dtype: str = "float32"
    decoding: DecodingConfig = field(default_factory=DecodingConfig)

    def replace(self, **changes: Any) -> RankSettings:
        return replace(self, **changes)


class TitleRanker:
    """Trie-constrained ranking of catalogue titles (and items) by an FLR model; see the module docstring.

    Needs ``model`` (an :class:`~flrec.models.recommender.FLRRecommender`), ``tokenizer``, ``builder``
    (the model's :class:`~flrec.data.prompts.PromptBuilder`), ``catalogue`` and ``config``. Optional:
    ``assistant`` (anything with ``score(rows)`` over the catalogue, mixed into decoding) and
    ``item_popularity`` (weights that share a title among its items; None = equal shares).
    """

    config: Any

    def __init__(self, model, tokenizer, catalogue: Catalogue, config: RankSettings | None = None,
                 builder: PromptBuilder | None = None):
        self.config = config or RankSettings()
        self.catalogue = catalogue
        self.model, self.tokenizer = model, tokenizer
        self.builder = builder or PromptBuilder(tokenizer, use_thought=model.config.uses_thought,
                                                **model.prompt_settings)
        self._init_ranking_state()

    def _init_ranking_state(self) -> None:
        self._trie = None
        self.last_generated_tokens = 0  # tokens of the titles returned by the last recommend(); the runner's tokens/s
        self.last_item_rankings: list[ItemRanked] | None = None  # items of the last recommend() (item protocol)
        self.last_search_stats = None  # flrec.decoding.beam.SearchStats of the last decode_candidates()
        self.assistant = None  # an ID model mixed into decoding (flr+sasrec)
        self.item_popularity: np.ndarray | None = None  # train count + 1 per item: shares a title among its items
        self._priors: dict[str, Any] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------------------------ ranking
    def _prepare(self) -> None:
        if self.model is None:
            raise ConfigError(f"{getattr(self, 'name', 'ranker')}: no model yet; call fit() or load() first")
        dtype = DTYPES[resolve_inference_dtype(self.config.inference_dtype)]
        if next(self.model.parameters()).dtype != dtype:
            self.model.to(dtype)
            self._fingerprint = None
        self.model.eval()
        if self._trie is None:
            vocab = self.model.causal_lm.get_output_embeddings().weight.shape[0]
            self._trie = TitleTrie.build(self.tokenizer, self.catalogue.unique_titles, vocab_size=vocab)
            self._title_len = self._trie.title_lengths().tolist()
            index = {t: i for i, t in enumerate(self._trie.titles)}
            self._item_title = torch.tensor([index[t] for t in self.catalogue.titles], dtype=torch.long)
            self._title_size = torch.bincount(self._item_title, minlength=len(index))
            self._edge_w: dict[str, torch.Tensor | None] = {}

    @torch.inference_mode()
    def recommend(self, rows: Sequence[Interaction], k: int = 20, batch_size: int | None = None) -> list[Ranked]:
        """Top titles per row by trie-constrained beam search (beam = ``config.beam``; k <= beam).

        Also sets :attr:`last_item_rankings` (the same rows as ranked items, see
        :func:`~flrec.data.items.expand_titles_to_items`).
        """
        cands, probs = self.decode_candidates(rows, batch_size=batch_size)
        titles, items = self.finalise(rows, cands, probs, k=k)
        self.last_item_rankings = items
        return titles

    def recommend_items(self, rows: Sequence[Interaction], k: int = 20, batch_size: int | None = None) -> list[ItemRanked]:
        """Top-``k`` *items* per row: the beam's titles split over the items they name
        (``decoding.item_split`` / ``item_tiebreak``; history items dropped with ``exclude_seen``)."""
        self.recommend(rows, k=k, batch_size=batch_size)
        return self.last_item_rankings

    def decode_candidates(self, rows: Sequence[Interaction], decoding: DecodingConfig | None = None,
                          length_penalty: float | None = None, batch_size: int | None = None
                          ) -> tuple[Candidates, list[torch.Tensor | None]]:
        """Beam-search candidates per row (before the prior correction) and, where the assistant is
        used, its item distribution per row. ``decoding``/``length_penalty`` default to the config's."""
        dec = decoding or self.config.decoding
        lp = self.config.length_penalty if length_penalty is None else length_penalty
        self._prepare()
        self.last_generated_tokens = 0
        self.last_search_stats = SearchStats()  # sequential forwards per user etc. (counted, for benchmarks)
        # Decoding is driven by the recommender's own batch size: beam search memory grows with
        # users x beams, so an evaluation runner's large batch is split here.
        bs = min(batch_size or self.config.batch_size, self.config.batch_size)
        cands: Candidates = []
        probs: list[torch.Tensor | None] = []
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            q = self._assistant_probs(chunk, dec)
            extra: dict[str, Any] = {}
            if dec.exclude_seen:
                seen, allowed = self._seen(chunk)
                extra["node_allowed"] = self._trie.node_mass(allowed.double()) > 0
                if q is not None:
                    q = q.masked_fill(seen, 0.0)  # the assistant's mass of seen items must not pull beams
            if q is not None and dec.gamma < 1.0:
                tm = torch.zeros(len(chunk), len(self._trie.titles), dtype=torch.float64)
                extra["node_mass"] = self._trie.node_mass(tm.index_add_(1, self._item_title, q))
                extra["gamma"] = dec.gamma
            examples = self.builder.encode_rows(chunk, self.catalogue)
            batch = collate_left_padded(examples, self.tokenizer.pad_token_id)
            state = self._prefill(batch)
            ranked = constrained_beam_search(self.model.backbone, state, self._trie, beam_size=self.config.beam,
                                             length_penalty=lp, scoring=dec.scoring,
                                             edge_weight=self._edge_weights(dec),
                                             jump_forward=self.config.jump_forward,
                                             shared_prompt=self.config.shared_prompt,
                                             stats=self.last_search_stats, **extra)
            for r, hyps in enumerate(ranked):
                cands.append(hyps)
                probs.append(None if q is None else q[r])
                self.last_generated_tokens += sum(self._title_len[i] for i, _ in hyps)
        return cands, probs

    def _prefill(self, batch: dict[str, torch.Tensor]):
        """The decoding state after reading the prompt (a subclass may generate more first, e.g. ``cot``).

        The batch goes to the model's device (a model on a GPU, e.g. SFT's validation ranking)."""
        dev = next(self.model.parameters()).device
        items = batch.get("prompt_items")
        return self.model.prefill(batch["prompt_ids"].to(dev), batch["prompt_mask"].to(dev),
                                  None if items is None else items.to(dev))

    def finalise(self, rows: Sequence[Interaction], cands: Candidates, probs: Sequence[torch.Tensor | None],
                 decoding: DecodingConfig | None = None, length_penalty: float | None = None, k: int = 20
                 ) -> tuple[list[Ranked], list[ItemRanked]]:
        """Apply the prior correction to the candidates and return the top-``k`` titles and items per row."""
        dec = decoding or self.config.decoding
        lp = self.config.length_penalty if length_penalty is None else length_penalty
        if dec.pmi_alpha != 0.0:
            used = sorted({t for hyps in cands for t, _ in hyps})
            prior = dict(zip(used, self.title_prior(used, dec, lp).tolist(), strict=True))
            cands = [sorted(((t, s - dec.pmi_alpha * prior[t]) for t, s in hyps), key=lambda x: -x[1])
                     for hyps in cands]
        titles = self._trie.titles
        out_titles = [[(titles[i], s) for i, s in hyps[:k]] for hyps in cands]
        pop = self.item_popularity if self.item_popularity is not None else np.ones(len(self.catalogue))
        out_items = []
        for row, hyps, q in zip(rows, cands, probs, strict=True):
            w = q.numpy() if dec.item_tiebreak == "assistant" and q is not None else pop
            excl = set(row.history) if dec.exclude_seen else ()
            out_items.append(expand_titles_to_items([(titles[i], s) for i, s in hyps], self.catalogue, w,
                                                    dec.item_split, excl, k))
        return out_titles, out_items

    def _edge_weights(self, dec: DecodingConfig) -> torch.Tensor | None:
        key = json.dumps(dec.signature(), sort_keys=True)
        if key not in self._edge_w:
            self._edge_w[key] = edge_weights(self._trie, dec)
        return self._edge_w[key]

    def _assistant_probs(self, chunk: Sequence[Interaction], dec: DecodingConfig) -> torch.Tensor | None:
        if self.assistant is None or (dec.gamma >= 1.0 and dec.item_tiebreak != "assistant"):
            return None
        scores = self.assistant.score(chunk).double().cpu()
        return torch.softmax(scores / dec.cf_temperature, dim=1)

    def _seen(self, chunk: Sequence[Interaction]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_items) history items, (B, T) titles that still name an unseen item."""
        seen = torch.zeros(len(chunk), len(self.catalogue), dtype=torch.bool)
        for r, row in enumerate(chunk):
            seen[r, row.history] = True
        per_title = torch.zeros(len(chunk), len(self._title_size), dtype=torch.long)
        per_title.index_add_(1, self._item_title, seen.long())
        return seen, per_title < self._title_size

    # ----------------------------------------------------------------------------------- PMI prior
    @torch.inference_mode()  # always: the cached values are then never mixed with autograd tensors
    def title_prior(self, titles: Sequence[int], decoding: DecodingConfig | None = None,
                    length_penalty: float | None = None) -> torch.Tensor:
        """``S_0`` of trie titles ``titles`` under the empty-history prompt with the same decoding
        (cached on disk per model, catalogue, decoding and prompt; see :mod:`flrec.decoding.prior`)."""
        dec = decoding or self.config.decoding
        lp = self.config.length_penalty if length_penalty is None else length_penalty
        self._prepare()
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        key = {"model": self._fingerprint, "catalogue": catalogue_hash(self._trie.titles),
               "decoding": dec.signature(), "length_penalty": lp, "dtype": resolve_inference_dtype(self.config.inference_dtype),
               "prompt": {"domain": self.builder.domain, "thought": self.builder.use_thought}}
        k = json.dumps(key, sort_keys=True)
        if k not in self._priors:
            self._priors[k] = TitlePrior(len(self._trie.titles), key, dec.prior_cache_dir)

        def compute(missing: list[int]) -> torch.Tensor:
            return score_titles(self.model.backbone, self._empty_prefill, self._trie, missing, dec, lp,
                                batch_size=max(1, self.config.batch_size))

        return self._priors[k].get(titles, compute)

    def _empty_prefill(self):
        # The prompt with an empty history: head + tail (+ thought), the same pieces the builder
        # joins around history titles (PromptBuilder refuses empty histories for dataset rows).
        b = self.builder
        ids = b._head + b._tail + ([b.thought_token_id] if b.use_thought else [])
        t = torch.tensor([ids], dtype=torch.long)
        return self.model.prefill(t, torch.ones_like(t), torch.full_like(t, -1))  # no token is in a history item
