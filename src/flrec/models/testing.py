"""Tiny random backbones for tests (``tiny:llama`` / ``tiny:qwen2``): seeded, 2 layers, built in milliseconds.

The tokenizer is a ~500-token byte-level BPE trained on a fixed corpus, so it is deterministic and
offline; :func:`flrec.models.backbone.load_backbone` builds these for ``tiny:ARCH`` specs.
"""

from __future__ import annotations

import string
from functools import lru_cache

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flrec.errors import FlrecError

TINY_ARCHS: tuple[str, ...] = ("llama", "qwen2")

_TINY_WORDS = (
    "the of and to a in is you that it for on are as with be this have from or by not what all we "
    "can an which do how if will up about out many then them so some would make like into time has "
    "more see no way could people than first been who its now find long down day did get come made "
    "may part new best love live music song songs album band rock jazz blues greatest hits vol edition "
    "collection remastered deluxe original soundtrack christmas classic classics volume disc game "
    "movie book office product user has interacted with following before given list recently enjoyed "
    "please write that buy below instruction describes task paired input provides further context "
    "response appropriately completes request"
).split()


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Serialised byte-level BPE (vocab 512) trained on a fixed corpus: deterministic, ~20 ms."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [string.ascii_letters, string.digits, string.punctuation, " ".join(_TINY_WORDS)]
    corpus += [f' "{w.title()}"' for w in _TINY_WORDS] + _TINY_WORDS
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of the tiny test tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )


def build_tiny(arch: str = "llama", seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised 2-layer ``arch`` model (hidden 64) and the tiny tokenizer.

    Same ``seed`` -> identical weights; the global RNG state is left untouched.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in TINY_ARCHS:
        raise FlrecError(f"unknown tiny backbone 'tiny:{arch}'; choose one of tiny:{', tiny:'.join(TINY_ARCHS)}")
    tok = tiny_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,  # as SmolLM2 and Qwen2.5-1.5B
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, tok
