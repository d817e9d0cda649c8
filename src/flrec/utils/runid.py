"""Run identity: a fingerprint of everything that determines a run's result.

Every run directory (SFT/training, evaluation folder, comparison cell) stores ``fingerprint.json``:
the resolved config as dotted keys (``train.lr``, ``flr.num_factors``) minus keys that cannot change
the result (progress bars, logging, where files go), plus the identity of the data (a content hash)
and of the model (a hash of its config and weight files). A rerun compares its fingerprint with the
stored one: equal -> resume or reuse; different -> refused with the differing keys named, unless
the caller asked to start over. Keys present on one side only (written by a flrec version that did
not know them) are not compared.

Code version is recorded in ``run_info.json`` but deliberately not compared: refusing every run
after any commit would make resume useless; results-changing code changes bump
:data:`FINGERPRINT_VERSION` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flrec.errors import ConfigError
from flrec.utils.io import atomic_write_json

FINGERPRINT = "fingerprint.json"
FINGERPRINT_VERSION = 1
_FULL_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed in full; bigger ones by size, mtime, head and tail
_EDGE = 1 << 20


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` with JSON-normal values (tuples -> lists, paths -> str)."""
    if hasattr(obj, "to_dict") and not isinstance(obj, Mapping):
        obj = obj.to_dict()
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(flatten(v, key))
            else:
                out[key] = json.loads(json.dumps(v, default=str))
        return out
    return {prefix: json.loads(json.dumps(obj, default=str))}


def config_identity(config: Any, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Flattened resolved config without the ``ignore`` keys (exact dotted keys or whole sections)."""
    ignore = tuple(ignore)
    return {k: v for k, v in flatten(config).items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)}


def dataset_hash(dataset: Any, splits: Iterable[str] | None = None) -> str:
    """A content hash of a :class:`~flrec.data.schema.RecDataset`: catalogue titles + rows of ``splits``.

    Independent of where the files live, so moving a dataset keeps its runs valid while editing a
    single row or title does not."""
    h = hashlib.sha256()
    for t in dataset.catalogue.titles:
        h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
    for name in sorted(splits if splits is not None else dataset.splits):
        h.update(f"\x01{name}\x01".encode())
        for r in dataset.splits.get(name, []):
            h.update(f"{r.user}\t{r.history}\t{r.target}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def file_identity(path: Path) -> str:
    """sha256 of a file; for files over 64 MiB: size + mtime + sha256 of the first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()[:32]
        h.update(f.read(_EDGE))
        f.seek(-_EDGE, os.SEEK_END)
        h.update(f.read(_EDGE))
    return f"size={st.st_size},mtime_ns={st.st_mtime_ns},edges={h.hexdigest()[:24]}"


def model_identity(spec: str | os.PathLike) -> dict[str, str]:
    """Identity of a model: a local folder -> its files' hashes; a file -> its hash; else the spec itself.

    Hub ids and built-in specs (``tiny:llama``, ``embedded:smollm2-135m``) are identified by name."""
    p = Path(spec)
    if p.is_file():
        return {"file": file_identity(p)}
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and not any(s.startswith(".") for s in q.relative_to(p).parts))
        h = hashlib.sha256()
        for q in files:
            h.update(f"{q.relative_to(p).as_posix()}={file_identity(q)}\n".encode())
        return {"files": h.hexdigest()[:32], "n_files": str(len(files))}
    return {"spec": str(spec)}


def make_fingerprint(config: Mapping[str, Any], /, **identity: Any) -> dict[str, Any]:
    """A flat fingerprint: the config keys as given plus ``identity`` sections (flattened)."""
    fp = dict(config)
    fp.update(flatten(identity))
    fp["fingerprint_version"] = FINGERPRINT_VERSION
    return fp


def diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ; keys present on one side only (another flrec version) are not compared."""
    return sorted(k for k in stored if k in current and stored[k] != current[k])


def describe_diff(stored: Mapping[str, Any], current: Mapping[str, Any], keys: list[str], limit: int = 4) -> str:
    """``train.lr 0.001 -> 0.0003, data.hash changed`` (hashes are not printed in full)."""
    parts = []
    for k in keys[:limit]:
        a, b = stored.get(k, "<unset>"), current.get(k, "<unset>")
        if k.startswith(("data.", "model.", "backbone.")) and isinstance(a, str) and len(a) > 16:
            parts.append(f"{k} changed")
        else:
            parts.append(f"{k} {_short(a)} -> {_short(b)}")
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def read_fingerprint(directory: str | os.PathLike, name: str = FINGERPRINT) -> dict[str, Any] | None:
    path = Path(directory) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None  # a corrupt fingerprint is treated as missing (the caller decides what that means)
    return data if isinstance(data, dict) else None


def write_fingerprint(directory: str | os.PathLike, fingerprint: Mapping[str, Any], name: str = FINGERPRINT) -> None:
    atomic_write_json(Path(directory) / name, dict(fingerprint))


def claim_status(directory: str | os.PathLike, stored: Mapping[str, Any] | None, current: Mapping[str, Any],
                 what: str, fix: str, overwrite: bool) -> str:
    """The one rule for reusing a folder: ``"new"`` (nothing recorded there), ``"same"`` (recorded with
    these settings: reuse or resume it) or ``"changed"`` (other settings and ``overwrite``: the caller
    wipes its own files). Other settings without ``overwrite`` raise a one-line :class:`ConfigError`
    naming the folder, the keys that differ and ``fix``; nothing is deleted behind the user's back.

    >>> claim_status("runs/x", None, {"a": 1}, "run", "", False)
    'new'
    >>> claim_status("runs/x", {"a": 1}, {"a": 1}, "run", "", False)
    'same'
    >>> claim_status("runs/x", {"a": 1}, {"a": 2}, "run", "use --force", True)
    'changed'
    """
    if stored is None:
        return "new"
    keys = diff(stored, current)
    if keys and not overwrite:
        raise ConfigError(mismatch_message(directory, what, stored, current, keys, fix))
    return "changed" if keys else "same"


def mismatch_message(directory: str | os.PathLike, what: str, stored: Mapping[str, Any],
                     current: Mapping[str, Any], keys: list[str], fix: str) -> str:
    """One line: where, which keys differ (old -> new), and how to override."""
    article = "an" if what[:1] in "aeiou" else "a"
    return (f"{directory} holds {article} {what} made with other settings ({describe_diff(stored, current, keys)}); "
            f"{fix}")
