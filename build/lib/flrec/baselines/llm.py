"""LLM recommenders behind the common contract: FLR, LatentR3-style, BIGRec-style and Base.

They differ only in :class:`~flrec.models.recommender.FLRConfig` (``reasoner``) and in whether
they train; all share SFT (:mod:`flrec.training.sft`) and constrained beam-search ranking.

* ``flr`` — K factors, gate, N=2 refinement steps, three regularisers (the paper).
* ``latentr3`` — one attention head queried by the pre-thought state, one step, no regularisers.
* ``bigrec`` — the same SFT without a thought token; grounding by the title trie (as the paper's
  protocol does for every generative method).
* ``base`` — the untuned backbone with the same prompt and constrained decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from flrec.baselines.base import Ranked, Recommender, register_recommender
from flrec.config import ConfigBase, option
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError
from flrec.training.sft import DTYPES, SFTConfig, build_model, run_sft


@dataclass
class LLMRecConfig(ConfigBase):
    """Training (SFT) and ranking settings of an LLM recommender."""

    sft: SFTConfig = option(factory=SFTConfig, help="the SFT stage (data is taken from the dataset passed to fit)")
    beam: int = option(10, help="beam width of constrained decoding = number of ranked titles (>= the largest K)")
    length_penalty: float = option(1.0, help="HF-style length normalisation of finished beams (1.0 = HF default)")
    batch_size: int = option(8, help="users decoded together (results do not depend on it)")
    inference_dtype: Literal["float32", "bfloat16"] = option(
        "float32", help="weights dtype for ranking; bfloat16 is ~2x faster on CPUs with native bf16")
    seed: int | None = option(None, help="if set, overrides sft.seed and sft.train.seed (flrec compare sets it per cell)")

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ConfigError("beam must be >= 1 (the paper uses 10)")
        if self.seed is not None:
            self.sft = self.sft.replace(seed=self.seed, train=self.sft.train.replace(seed=self.seed))


class LLMRecommender(Recommender):
    """Shared implementation; subclasses pick the reasoner and whether ``fit`` trains."""

    reasoner: ClassVar[str] = "flr"
    trains: ClassVar[bool] = True
    config_cls: ClassVar[type] = LLMRecConfig

    def __init__(self, catalogue: Catalogue | None = None, config: LLMRecConfig | None = None):
        self.config = config or LLMRecConfig()
        self.config.sft.flr = self.config.sft.flr.replace(reasoner=self.reasoner)
        self.catalogue = catalogue
        self.model = self.tokenizer = self.builder = self._trie = None
        self.last_generated_tokens = 0  # tokens of the titles returned by the last recommend(); the runner's tokens/s

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> LLMRecommender:
        self.catalogue = dataset.catalogue
        sft = self.config.sft
        if run_dir is not None:
            sft = sft.replace(run_dir=str(Path(run_dir) / "sft"))
        if not self.trains:
            model, tokenizer, _ = build_model(sft, dataset)
            self._attach(model, tokenizer, dataset)
            return self
        result = run_sft(sft, dataset)
        self._attach(*_load_model(result["model_dir"]), dataset)
        return self

    def _attach(self, model, tokenizer, dataset: RecDataset | None, domain: str | None = None) -> None:
        from flrec.data.prompts import PromptBuilder

        # Prompts must be built exactly as in training: the model carries its prompt settings; the
        # config (and then the dataset) only fill in what an older/untrained model does not say.
        sft = self.config.sft
        ps = dict(model.prompt_settings)
        ps.setdefault("domain", sft.domain or domain or (dataset.domain if dataset else "item"))
        ps.setdefault("max_history", sft.max_history)
        ps.setdefault("max_prompt_tokens", sft.max_prompt_tokens)
        self.config.sft = sft.replace(**ps)  # a saved recommender then rebuilds identical prompts
        self.model, self.tokenizer = model, tokenizer
        self.builder = PromptBuilder(tokenizer, use_thought=model.config.uses_thought, **ps)
        self._trie = None

    # ------------------------------------------------------------------------------------ ranking
    def _prepare(self) -> None:
        from flrec.decoding.trie import TitleTrie

        if self.model is None:
            raise ConfigError(f"{self.name}: no model yet; call fit() or load() first")
        dtype = DTYPES[self.config.inference_dtype]
        if next(self.model.parameters()).dtype != dtype:
            self.model.to(dtype)
        self.model.eval()
        if self._trie is None:
            vocab = self.model._causal_lm().get_output_embeddings().weight.shape[0]
            self._trie = TitleTrie.build(self.tokenizer, self.catalogue.unique_titles, vocab_size=vocab)
            self._title_len = self._trie.title_lengths().tolist()

    @torch.inference_mode()
    def recommend(self, rows: Sequence[Interaction], k: int = 20, batch_size: int | None = None) -> list[Ranked]:
        """Top titles per row by trie-constrained beam search (beam = ``config.beam``; k <= beam)."""
        from flrec.data.prompts import collate_left_padded
        from flrec.decoding.beam import constrained_beam_search

        self._prepare()
        self.last_generated_tokens = 0
        bs = batch_size or self.config.batch_size
        # Decoding is driven by the recommender's own batch size: beam search memory grows with
        # users x beams, so an evaluation runner's large batch is split here.
        bs = min(bs, self.config.batch_size)
        out: list[Ranked] = []
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            examples = self.builder.encode_rows(chunk, self.catalogue)
            batch = collate_left_padded(examples, self.tokenizer.pad_token_id)
            state = self.model.prefill(batch["prompt_ids"], batch["prompt_mask"])
            ranked = constrained_beam_search(self.model.backbone, state, self._trie, beam_size=self.config.beam,
                                             length_penalty=self.config.length_penalty)
            for hyps in ranked:
                out.append([(self._trie.titles[i], s) for i, s in hyps[:k]])
                self.last_generated_tokens += sum(self._title_len[i] for i, _ in hyps)
        return out

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        from flrec.utils.io import atomic_write_text

        path = Path(path)
        self.model.save_pretrained(path / "model", self.tokenizer)
        atomic_write_text(path / "recommender.yaml", self.config.to_yaml())
        atomic_write_text(path / "catalogue.txt", "\n".join(self.catalogue.titles) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LLMRecommender:
        path = Path(path)
        rec = cls(config=LLMRecConfig.load(path / "recommender.yaml"))
        rec.catalogue = Catalogue((path / "catalogue.txt").read_text().split("\n")[:-1])
        rec._attach(*_load_model(path / "model"), None)
        return rec

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, catalogue: Catalogue, config: LLMRecConfig | None = None,
                       domain: str | None = None) -> LLMRecommender:
        """Wrap an SFT run's ``best/`` directory for ranking (what ``flrec evaluate --model`` does)."""
        model, tokenizer = _load_model(model_dir)
        rec = cls(catalogue, config)
        rec._attach(model, tokenizer, None, domain=domain)
        return rec


def _load_model(model_dir: str | Path):
    from flrec.models.recommender import FLRRecommender

    return FLRRecommender.from_pretrained(model_dir)


@register_recommender("flr")
class FLRRec(LLMRecommender):
    reasoner = "flr"


@register_recommender("latentr3")
class LatentR3Rec(LLMRecommender):
    reasoner = "latentr3"


@register_recommender("bigrec")
class BIGRecRec(LLMRecommender):
    reasoner = "none"


@register_recommender("base")
class BaseLLMRec(LLMRecommender):
    reasoner = "none"
    trains = False
