"""One guard for every write that can replace something of the user's.

* :func:`check_output` refuses, before any work, an output that *is*, *contains* or *lies inside* one
  of the command's inputs (the source run, a data file), a file where a folder is expected (or the
  reverse), and a non-empty folder that is to be replaced without ``--overwrite`` -- or with it, when
  flrec did not write that folder (no marker) or the user has since put other files in it.
* :func:`staged_dir` builds a folder beside its destination and swaps it in whole (atomic): a crash
  leaves the old folder exactly as it was, and the old one is deleted only once the new one is there.
* :func:`mark_output` writes the marker (``.flrec_output.json``: what flrec wrote, and which entries)
  that lets a later ``--overwrite`` replace the folder.

Nothing here imports torch or anything above ``flrec.utils``: every layer may use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flrec.errors import FlrecError
from flrec.utils.io import LOCK_NAME, umask_dir_mode

OUTPUT_MARKER = ".flrec_output.json"
# Files that only flrec writes, and what else flrec writes beside them: datasets carry no marker file
# (their listing stays the D3 format's), exports of older flrec versions predate it.
KNOWN_FOLDERS = {
    "dataset.json": ("info.txt", "train.csv", "valid.csv", "test.csv", "dataset.json", "convert_report.json",
                     "intents.json", "prepare_report.json"),
    "flrec_export.json": ("flrec_export.json", "catalogue.json", "recommender", "metrics.json", "README.md"),
}


def _inputs(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    out = []
    for p in inputs:
        if p is None or str(p) == "" or ":" in str(p) and not Path(p).exists():  # embedded:synth, tiny:llama
            continue
        out.append(Path(p).resolve())
    return out


def check_overlap(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, option: str = "--out",
                  allow_inside: bool = False, allow_contains: bool = False) -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs`` (``allow_inside`` /
    ``allow_contains``: for commands that only add their own named files to ``out``)."""
    o = Path(out).resolve()
    for p in _inputs(inputs):
        if o == p:
            why = "is"
        elif o in p.parents and not allow_contains:
            why = "contains"
        elif p in o.parents and not allow_inside:
            why = "lies inside"
        else:
            continue
        raise FlrecError(f"{option} {out} {why} the input {p}; writing there could destroy it: "
                         f"choose an {option} outside every input")


def flrec_entries(folder: Path) -> list[str] | None:
    """The entries flrec recorded writing into ``folder`` ([] for a legacy flrec folder), or None if not flrec's."""
    marker = folder / OUTPUT_MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            return [str(e) for e in data.get("entries", [])]
        except (OSError, ValueError, AttributeError):
            return []
    for name, entries in KNOWN_FOLDERS.items():
        if (folder / name).is_file():
            return list(entries)
    return None


def check_output(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                 kind: str = "dir", option: str = "--out", replace: bool = True, allow_inside: bool = False,
                 allow_contains: bool = False, flag: str = "--overwrite") -> Path:
    """Refuse (before any work) an output that would destroy something; returns ``Path(out)``.

    ``kind``: ``"dir"`` or ``"file"``. ``replace``: the command replaces a non-empty folder as a whole
    (export, convert); ``False`` for folders the command resumes into or adds named files to.
    """
    out = Path(out)
    check_overlap(out, inputs, option=option, allow_inside=allow_inside, allow_contains=allow_contains)
    if kind == "dir" and out.exists() and not out.is_dir():
        raise FlrecError(f"{option} {out} is a file, but a folder is expected; choose a folder path")
    if kind == "file":
        if out.is_dir():
            raise FlrecError(f"{option} {out} is a folder, but a file is expected; pass a file path")
        if out.exists() and not overwrite:
            raise FlrecError(f"{option} {out} exists; pass {flag} to replace it, or choose another path")
        if not out.parent.is_dir() and out.parent.exists():
            raise FlrecError(f"{option} {out}: {out.parent} is not a folder")
        return out
    if not replace or not out.is_dir() or not any(e.name != LOCK_NAME for e in out.iterdir()):
        return out
    if not overwrite:
        raise FlrecError(f"{option} {out} exists and is not empty; pass {flag} to replace it (only a folder "
                         "flrec wrote can be replaced), or choose a new folder")
    entries = flrec_entries(out)
    if entries is None:
        raise FlrecError(f"{option} {out} exists and was not written by flrec (no {OUTPUT_MARKER}); {flag} "
                         "replaces only folders flrec wrote: choose a new folder, or empty this one yourself")
    extra = sorted(e.name for e in out.iterdir()
                   if entries and e.name not in entries and e.name not in (OUTPUT_MARKER, LOCK_NAME))
    if extra:
        raise FlrecError(f"{option} {out} holds files flrec did not write ({', '.join(extra[:5])}); {flag} would "
                         "delete them: move them away, or choose a new folder")
    return out


def mark_output(folder: str | os.PathLike, kind: str) -> None:
    """Record that flrec wrote ``folder`` (a ``kind`` output) and which entries it holds now."""
    folder = Path(folder)
    entries = sorted(e.name for e in folder.iterdir() if e.name not in (OUTPUT_MARKER, LOCK_NAME))
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": "flrec", "kind": kind, "entries": entries}) + "\n",
                                        encoding="utf-8")


@contextmanager
def staged_dir(out: str | os.PathLike, *, kind: str, overwrite: bool = False,
               inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out",
               mark: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; on success it is marked (unless ``mark`` is False: a
    folder of :data:`KNOWN_FOLDERS`) and replaces ``out`` whole.

    A failure (bad data, a full disk, Ctrl-C) leaves ``out`` exactly as it was; with ``overwrite``
    the old folder is moved aside and deleted only after the new one is in place.
    """
    inputs = list(inputs)
    out = check_output(out, inputs=inputs, overwrite=overwrite, option=option)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, umask_dir_mode())  # mkdtemp creates 0700; an output folder follows the umask
    try:
        yield tmp
        if mark:
            mark_output(tmp, kind)
        check_output(out, inputs=inputs, overwrite=overwrite, option=option)  # something may have appeared meanwhile
        old = None
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        elif out.is_dir():
            out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old / out.name, out)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
