"""The embedded default dataset: generated from a seed by :mod:`flrec.data.synth`, cached once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$FLREC_CACHE`` or ``~/.cache/flrec`` (shared with the converted backbones)."""
    return Path(os.environ.get("FLREC_CACHE", Path.home() / ".cache" / "flrec"))


def embedded_dataset_dir(name: str = "synth") -> Path:
    """Directory of the embedded dataset ``name`` (only ``synth``), generating it on first use."""
    from flrec.data.synth import SynthConfig, generate_synthetic
    from flrec.errors import FlrecError
    from flrec.utils.io import umask_dir_mode

    if name != "synth":
        raise FlrecError(f"unknown embedded dataset '{name}'; the only one is embedded:synth")
    cfg = SynthConfig()
    dest = cache_root() / "datasets" / f"synth-seed{cfg.seed}"
    if (dest / "test.csv").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=dest.parent))
    try:
        tmp.chmod(umask_dir_mode())  # mkdtemp's 0700 would hide a shared $FLREC_CACHE from the team
        generate_synthetic(cfg, tmp)
        if dest.exists():  # a concurrent run finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
