"""LLM recommenders behind the common contract: FLR, LatentR3-style, BIGRec-style and Base.

They differ only in :class:`~flrec.models.flr_config.FLRConfig` (``reasoner``) and in whether
they train; all share SFT (:mod:`flrec.training.sft`) and constrained beam-search ranking.

* ``flr`` — K factors, gate, N=2 refinement steps, three regularisers (the paper).
* ``latentr3_sft`` — LatentR3's SFT stage only: one attention head queried by the pre-thought state,
  one step, no regularisers. ``latentr3`` (:mod:`flrec.recommenders.grpo`) adds its RL stage.
* ``bigrec`` — the same SFT without a thought token; grounding by the title trie (as the paper's
  protocol does for every generative method).
* ``base`` — the untuned backbone with the same prompt and constrained decoding.
* ``flr+sasrec`` — FLR decoded with a text-free assistant (D3): an ID model (SASRec by default)
  mixed into every token's score (``decoding.gamma``). It is its own method, never "FLR".

Decoding options (``decoding.*``, :class:`~flrec.decoding.scoring.DecodingConfig`) choose the token
score, the PMI prior correction, exclude-seen and how titles become ranked items; their defaults
are today's decoding. ``flrec tune-decoding`` (:mod:`flrec.experiments.tune`) picks them on validation
rows and writes them to the model directory as ``decoding.json``. Loading applies it only when asked
(``use_tuned_decoding: true``; ``flrec evaluate --use-tuned-decoding``): it then logs the decoding it
adopted, and :meth:`LLMRecommender.decoding_info` (an evaluation's summary and fingerprint) records it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from flrec.config import ConfigBase, option
from flrec.data.items import ItemRanked, item_popularity_weights
from flrec.data.prompts import PromptBuilder
from flrec.data.schema import Catalogue, RecDataset
from flrec.decoding.ranker import Candidates, TitleRanker
from flrec.decoding.scoring import DecodingConfig
from flrec.errors import ConfigError, FlrecError
from flrec.models.folder import ASSISTED_DECODING_FILE, DECODING_FILE, resolve_model_dir
from flrec.models.recommender import FLRRecommender
from flrec.recommenders.base import Recommender, get_recommender, register_recommender
from flrec.training.sft import SFTConfig, build_model, run_sft
from flrec.utils.io import atomic_write_json, atomic_write_text
from flrec.utils.precision import resolve_inference_dtype

__all__ = ["ASSISTED_DECODING_FILE", "DECODING_FILE", "Candidates", "ItemRanked", "LLMRecConfig", "LLMRecommender",
           "load_saved_recommender", "resolve_inference_dtype"]

log = logging.getLogger(__name__)


@dataclass
class LLMRecConfig(ConfigBase):
    """Training (SFT) and ranking settings of an LLM recommender."""

    sft: SFTConfig = option(factory=SFTConfig, help="the SFT stage (data is taken from the dataset passed to fit)")
    beam: int = option(10, help="beam width of constrained decoding = number of ranked titles (>= the largest K)")
    length_penalty: float = option(1.0, help="HF-style length normalisation of finished beams (1.0 = HF default)")
    batch_size: int = option(8, help="users decoded together (results do not depend on it)")
    jump_forward: bool = option(
        True, help="beam search feeds forced trie chains (the rest of a unique title) in one multi-token forward "
        "instead of a step per token; exact: same titles, order and scores (false = the step-by-step reference)")
    shared_prompt: bool = option(
        True, help="beam search keeps each user's prompt in the KV cache once, not once per beam (a beam reorder "
        "then moves only the generated suffixes); exact up to float rounding; used where the backbone has "
        "full-attention layers, else the per-beam cache (false = always the per-beam cache)")
    inference_dtype: Literal["float32", "bfloat16", "auto"] = option(
        "float32", help="weights dtype for ranking; bfloat16 is ~2x faster on CPUs with native bf16 and much slower "
        "(emulated) on CPUs without; auto = bfloat16 where native (a bf16 GPU, or a CPU with AVX512-BF16/AMX), "
        "else float32")
    seed: int | None = option(None, help="if set, overrides sft.seed and sft.train.seed (flrec compare sets it per cell)")
    decoding: DecodingConfig = option(
        factory=DecodingConfig, help="decoding scoring, PMI prior, assistant mixing, exclude-seen, item-level split")
    use_tuned_decoding: bool = option(
        False, help="when loading a model directory, apply the decoding.json that flrec tune-decoding wrote there "
        "(off: a file in the folder never changes the ranking unless asked for; on: the adopted decoding is "
        "logged and recorded in the evaluation's summary and fingerprint)")
    llm_dir: str | None = option(
        None, help="use this trained model (a run dir or model dir, e.g. a comparison's flr cell) instead of "
        "training one in fit; its tuned decoding applies with use_tuned_decoding=true. A comparison "
        "fingerprints the folder's files, so re-tuning or retraining it reruns the cell")

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ConfigError("beam must be >= 1 (the paper uses 10)")
        if self.seed is not None:
            self.sft = self.sft.replace(seed=self.seed, train=self.sft.train.replace(seed=self.seed))

    def inert_keys(self) -> tuple[str, ...]:
        """Keys that cannot change what ``fit`` yields here (a comparison cell's fingerprint leaves them
        out): ``use_tuned_decoding`` unless a trained model is loaded (``llm_dir``), ``jump_forward`` and
        ``shared_prompt`` (how the search runs, not what it returns)."""
        how = ("jump_forward", "shared_prompt")
        return ("use_tuned_decoding", *how) if self.llm_dir is None else how

    def input_dirs(self) -> dict[str, str]:
        """Folders whose contents (not only whose names) decide what ``fit`` yields: ``{key: path}``
        (``llm_dir`` resolved to its model folder, so the run's logs and checkpoints do not count)."""
        if self.llm_dir is None:
            return {}
        try:
            return {"llm_dir": str(resolve_model_dir(self.llm_dir))}
        except FlrecError:  # not there (yet): fit says so; the fingerprint keeps the path
            return {"llm_dir": self.llm_dir}


class LLMRecommender(TitleRanker, Recommender):
    """Shared implementation; subclasses pick the reasoner and whether ``fit`` trains. The ranking
    (``recommend``, ``decode_candidates``, ``finalise``, ``title_prior``) is :class:`~flrec.decoding.ranker.TitleRanker`'s."""

    reasoner: ClassVar[str] = "flr"
    trains: ClassVar[bool] = True
    config_cls: ClassVar[type] = LLMRecConfig

    def __init__(self, catalogue: Catalogue | None = None, config: LLMRecConfig | None = None):
        config = config or self.config_cls()
        # A copy: the caller's config (e.g. one YAML shared by flr, latentr3 and bigrec in a
        # comparison) keeps its own reasoner.
        self.config = config.replace(sft=config.sft.replace(flr=config.sft.flr.replace(reasoner=self.reasoner)))
        self.catalogue = catalogue
        self.model = self.tokenizer = self.builder = None
        self._init_ranking_state()  # trie, caches, the last call's outputs, assistant, item_popularity

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> LLMRecommender:
        self.catalogue = dataset.catalogue
        self.item_popularity = item_popularity_weights(dataset)
        if self.config.llm_dir is not None:  # reuse a trained model (e.g. to rank it with a tuned decoding)
            self._attach_trained(self.config.llm_dir, dataset)
            return self
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

    def _attach_trained(self, path: str | Path, dataset: RecDataset) -> None:
        model_dir = resolve_model_dir(path)
        model, tokenizer = _load_model(model_dir)
        got = model.config.reasoner
        if got != self.reasoner:
            raise ConfigError(f"llm_dir {path}: a model with reasoner '{got}', but '{self.name}' needs "
                              f"'{self.reasoner}'; point llm_dir at a {self.name} model")
        self._attach(model, tokenizer, dataset)
        self._apply_tuned(model_dir)

    def _attach(self, model, tokenizer, dataset: RecDataset | None, domain: str | None = None) -> None:
        # Prompts must be built exactly as in training: the model carries its prompt settings; the
        # config (and then the dataset) only fill in what an older/untrained model does not say.
        sft = self.config.sft
        ps = dict(model.prompt_settings)
        ps.setdefault("domain", sft.domain or domain or (dataset.domain if dataset else "item"))
        ps.setdefault("max_history", sft.max_history)
        ps.setdefault("max_prompt_tokens", sft.max_prompt_tokens)
        ps.setdefault("template", sft.prompt_template)
        # a saved recommender then rebuilds identical prompts
        self.config = self.config.replace(
            sft=sft.replace(**{("prompt_template" if k == "template" else k): v for k, v in ps.items()}))
        self.model, self.tokenizer = model, tokenizer
        self.builder = PromptBuilder(tokenizer, use_thought=model.config.uses_thought, **ps)
        self._trie = None
        self._fingerprint = None

    def attach_assistant(self, assistant: Recommender) -> None:
        """Use ``assistant`` (any recommender with :meth:`Recommender.score`) as the text-free assistant."""
        if self.catalogue is not None and assistant.catalogue.titles != self.catalogue.titles:
            raise ConfigError(f"the assistant '{assistant.name}' was trained on another catalogue ({len(assistant.catalogue)} "
                              f"items, here {len(self.catalogue)}); train it on the same dataset")
        self.assistant = assistant

    def apply_decoding_file(self, path: str | Path) -> None:
        """Adopt the decoding stored in ``path`` (``{"length_penalty": .., "decoding": {..}}``, as
        written by ``flrec tune-decoding``); keys it does not name keep their current values."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise FlrecError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); re-run flrec tune-decoding") from None
        if not isinstance(data, dict) or not isinstance(data.get("decoding", {}), dict):
            raise FlrecError(f"{path}: expected {{\"length_penalty\": .., \"decoding\": {{..}}}}; re-run flrec tune-decoding")
        dec = DecodingConfig.from_dict({**self.config.decoding.to_dict(), **data.get("decoding", {})},
                                       source=f"{path} decoding")
        lp = data.get("length_penalty", self.config.length_penalty)
        if not isinstance(lp, int | float):
            raise FlrecError(f"{path}: length_penalty {lp!r} is not a number")
        self.config = self.config.replace(decoding=dec, length_penalty=float(lp))
        self._tuned_from = str(path)

    def decoding_info(self) -> dict[str, Any]:
        """The decoding in use (recorded in evaluation summaries): options, length penalty, where
        they came from (``tuned_from``: the decoding file applied at load, if any) and the assistant."""
        return {"length_penalty": self.config.length_penalty, **self.config.decoding.to_dict(),
                "use_tuned_decoding": self.config.use_tuned_decoding, "tuned_from": getattr(self, "_tuned_from", None),
                "assistant": None if self.assistant is None else self.assistant.name}

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path / "model", self.tokenizer)
        atomic_write_text(path / "recommender.yaml", self.config.to_yaml())
        atomic_write_text(path / "catalogue.txt", "\n".join(self.catalogue.titles) + "\n")
        if self.item_popularity is not None:
            atomic_write_json(path / "item_popularity.json", [float(x) for x in self.item_popularity])

    @classmethod
    def load(cls, path: str | Path) -> LLMRecommender:
        path = Path(path)
        rec = cls(config=cls.config_cls.load(path / "recommender.yaml"))
        rec.catalogue = Catalogue((path / "catalogue.txt").read_text().split("\n")[:-1])
        rec._attach(*_load_model(path / "model"), None)
        if (path / "item_popularity.json").is_file():
            rec.item_popularity = np.asarray(json.loads((path / "item_popularity.json").read_text()), dtype=np.float64)
        rec._apply_tuned(path / "model")
        return rec

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, catalogue: Catalogue, config: LLMRecConfig | None = None,
                       domain: str | None = None) -> LLMRecommender:
        """Wrap an SFT run's ``best/`` directory for ranking (what ``flrec evaluate --model`` does);
        its ``decoding.json`` (``flrec tune-decoding``) is applied only with ``config.use_tuned_decoding``."""
        model, tokenizer = _load_model(model_dir)
        rec = cls(catalogue, config)
        rec._attach(model, tokenizer, None, domain=domain)
        rec._apply_tuned(Path(model_dir))
        return rec

    @classmethod
    def from_model(cls, model, tokenizer, catalogue: Catalogue, config: LLMRecConfig | None = None,
                   dataset: RecDataset | None = None) -> LLMRecommender:
        """Wrap an in-memory model (e.g. the one SFT is training, for its validation ranking); prompts
        follow ``model.prompt_settings``, as for a loaded model. No tuned decoding is applied."""
        rec = cls(catalogue, config)
        rec._attach(model, tokenizer, dataset)
        return rec

    tuned_file: ClassVar[str] = DECODING_FILE

    def _apply_tuned(self, model_dir: Path) -> None:
        if self.config.use_tuned_decoding:
            self.apply_tuned_decoding(model_dir)

    def apply_tuned_decoding(self, model_dir: str | Path) -> bool:
        """Adopt ``model_dir``'s tuned decoding file (``decoding.json``) and log it; False (and a
        warning) when there is none. Sets ``use_tuned_decoding`` so the config says what ranks."""
        path = Path(model_dir) / self.tuned_file
        self.config = self.config.replace(use_tuned_decoding=True)
        if not path.is_file():
            log.warning("use_tuned_decoding: %s has no %s (run flrec tune-decoding); ranking with the configured "
                        "decoding", model_dir, self.tuned_file)
            return False
        self.apply_decoding_file(path)
        chosen = {k: v for k, v in self.decoding_info().items() if k not in ("tuned_from", "use_tuned_decoding")}
        log.warning("%s: ranking with the tuned decoding %s", path, json.dumps(chosen, sort_keys=True))
        return True


def _load_model(model_dir: str | Path):
    return FLRRecommender.from_pretrained(model_dir)


@register_recommender("flr")
class FLRRec(LLMRecommender):
    reasoner = "flr"


@register_recommender("latentr3_sft")
class LatentR3SFTRec(LLMRecommender):
    """LatentR3's SFT stage alone (``latentr3`` is both stages)."""

    reasoner = "latentr3"


@register_recommender("bigrec")
class BIGRecRec(LLMRecommender):
    reasoner = "none"


@register_recommender("softprompt")
class SoftPromptRec(LLMRecommender):
    """The control: one learned constant thought, trained exactly as FLR trains its E0."""

    reasoner = "softprompt"


@register_recommender("base")
class BaseLLMRec(LLMRecommender):
    reasoner = "none"
    trains = False


@dataclass
class AssistedLLMRecConfig(LLMRecConfig):
    """An LLM recommender plus the ID model that assists its decoding (``decoding.gamma``)."""

    assistant: str = option("sasrec", help="the ID-model method mixed into decoding (any method with item scores)")
    assistant_config: dict[str, Any] = option(factory=dict, help="the assistant's config overrides, e.g. {max_epochs: 50}")
    assistant_dir: str | None = option(
        None, help="use this saved assistant (the folder its save() wrote, e.g. a comparison's sasrec cell "
        "model/) instead of training one in fit")

    def input_dirs(self) -> dict[str, str]:
        dirs = super().input_dirs()
        return {**dirs, "assistant_dir": self.assistant_dir} if self.assistant_dir is not None else dirs


@register_recommender("flr+sasrec")
class FLRAssistedRec(FLRRec):
    """FLR with a text-free assistant (D3): per token ``gamma * LLM + (1 - gamma) * log p_CF``.

    ``fit`` trains FLR and the assistant (``assistant``, SASRec by default) on the same data, or
    reuses trained ones (``llm_dir`` / ``assistant_dir``, e.g. a comparison's ``flr`` and ``sasrec``
    cells); ``save``/``load`` keep the assistant in ``assistant/``. Items of a shared title are ordered by
    the assistant when ``decoding.item_tiebreak=assistant``.
    """

    config_cls = AssistedLLMRecConfig
    tuned_file = ASSISTED_DECODING_FILE

    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> FLRAssistedRec:
        super().fit(dataset, run_dir)  # with llm_dir: the trained FLR and its decoding+assistant.json
        if self.config.assistant_dir is not None:
            self.attach_assistant(load_saved_recommender(self.config.assistant_dir))
            return self
        cls = get_recommender(self.config.assistant)
        config_cls = getattr(cls, "config_cls", None)
        over = dict(self.config.assistant_config)
        if config_cls is not None and self.config.seed is not None and "seed" in {f.name for f in fields(config_cls)}:
            over.setdefault("seed", self.config.seed)
        cfg = config_cls.from_dict(over, source="assistant_config") if config_cls is not None else None
        assistant = cls(dataset.catalogue, cfg) if cfg is not None else cls(dataset.catalogue)
        self.attach_assistant(assistant.fit(dataset, run_dir=None if run_dir is None else Path(run_dir) / "assistant"))
        return self

    def _prepare(self) -> None:
        if self.assistant is None:
            raise ConfigError(f"{self.name}: no assistant; call fit(), load() or attach_assistant() first")
        super()._prepare()

    def save(self, path: str | Path) -> None:
        super().save(path)
        self.assistant.save(Path(path) / "assistant")

    @classmethod
    def load(cls, path: str | Path) -> FLRAssistedRec:
        rec = super().load(path)
        rec.attach_assistant(get_recommender(rec.config.assistant).load(Path(path) / "assistant"))
        return rec


def load_saved_recommender(path: str | Path) -> Recommender:
    """A recommender from the folder an ID model's ``save()`` wrote (its ``config.json`` names the method)."""
    path = Path(path)
    meta = path / "config.json"
    if not meta.is_file():
        raise FlrecError(f"{path}: no config.json; pass the folder an ID recommender's save() wrote "
                         "(e.g. a comparison's cells/sasrec/seed1/model)")
    try:
        method = json.loads(meta.read_text(encoding="utf-8")).get("method")
    except json.JSONDecodeError as e:
        raise FlrecError(f"{meta}: not valid JSON ({e.msg}); re-save the recommender") from None
    return get_recommender(str(method)).load(path)
