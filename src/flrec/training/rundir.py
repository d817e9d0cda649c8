"""A training run's directory: claiming it for this run's fingerprint (resume, reuse a finished identical
run, or refuse other settings unless ``overwrite``), recording resolved settings, and wiping it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from flrec.config import ConfigBase
from flrec.training.checkpoint import latest_checkpoint
from flrec.training.state import TrainResult
from flrec.utils.io import atomic_write_json
from flrec.utils.runid import FINGERPRINT, claim_status, read_fingerprint, write_fingerprint

FINISHED_FILE = "finished.json"  # written last: the run is complete and best/ is its model


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_inputs(run_config: ConfigBase | None) -> list[str]:
    """What a stage's config reads (``from_run`` of GRPO, a local ``data`` folder): never a run directory."""
    return [v for v in (getattr(run_config, "from_run", None), getattr(run_config, "data", None))
            if isinstance(v, str) and v]


def claim_output_dir(acc: Accelerator, out: Path, fp: Mapping[str, Any], overwrite: bool,
                     write_metadata: Callable[[], None] | None) -> TrainResult | None:
    """Check ``out`` against this run's fingerprint ``fp``; a finished identical run is returned.

    A fresh start (or a wiped run) gets ``write_metadata()`` (unless None) and the fingerprint."""
    status = claim_status(out, read_fingerprint(out), fp, "training run",
                          "rerun with --force (train.overwrite=true) to delete that run and start over, "
                          "or choose a new run directory", overwrite)
    if status == "changed":
        acc.wait_for_everyone()
        if acc.is_main_process:
            wipe_run(out)
    elif status == "same" and (out / FINISHED_FILE).is_file() and (out / "best").is_dir():
        info = json.loads((out / FINISHED_FILE).read_text(encoding="utf-8"))
        info.update(best_dir=Path(info["best_dir"]), history_path=Path(info["history_path"]), reused=True)
        return TrainResult(**{k: v for k, v in info.items() if k in TrainResult.__dataclass_fields__})
    acc.wait_for_everyone()
    if status != "same" and acc.is_main_process:
        # A run directory from an older flrec has checkpoints but no fingerprint: adopt it (the
        # resume keys below still guard exactness); otherwise this is a fresh start.
        if write_metadata is not None and latest_checkpoint(out) is None:
            write_metadata()
        write_fingerprint(out, fp)
    acc.wait_for_everyone()
    return None


def record_resolved(out: Path, resolved: Mapping[str, Any]) -> None:
    """Add what "auto" settings resolved to (e.g. mixed_precision) to run_info.json."""
    path = out / "run_info.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    info["resolved"] = dict(resolved)
    atomic_write_json(path, info)


def wipe_run(out: Path) -> None:
    """Delete what a training run wrote (only those files: anything else of the user's stays)."""
    for name in ("checkpoints", "best", "tb"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("log.jsonl", FINISHED_FILE, FINGERPRINT, "config.yaml", "run_info.json"):
        (out / name).unlink(missing_ok=True)
