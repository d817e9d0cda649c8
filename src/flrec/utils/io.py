"""Atomic file writes and directory locks: a crash never leaves a half-written checkpoint or result,
and two processes never write into one run directory at once."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flrec.errors import FlrecError

_UMASK_LOCK = threading.Lock()
LOCK_NAME = ".flrec.lock"


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps other threads from seeing the 0 in between.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def umask_dir_mode() -> int:
    """The mode ``mkdir`` would give a new directory (0777 minus the umask); ``mkdtemp`` gives 0700."""
    return 0o777 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success.

    The file gets the mode a plain ``open()`` would give it (0666 minus the umask): mkstemp creates
    0600 files, which would silently hide results from the rest of a team."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, default=_json_default) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_path)`` then move the result over ``path`` (e.g. ``torch.save``)."""
    with atomic_path(path) as tmp:
        writer(Path(tmp))


def read_jsonl_tolerant(path: str | os.PathLike) -> tuple[list[dict], bool]:
    """Rows of a JSONL log and whether a torn last line was dropped.

    A write cut short (out of space, SIGKILL) leaves a partial last line; that line is dropped so the
    run can continue. A bad line *before* the last one is real corruption and an error."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            if i == len(lines) - 1:
                return rows, True
            raise FlrecError(
                f"{path}, line {i + 1}: not a JSON object (corrupted log); delete the line or the file to continue"
            ) from None
        rows.append(row)
    return rows, False


@contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (``.flrec.lock`` inside it) for the duration.

    The OS releases the lock when the holder dies (even by SIGKILL), so a crash never leaves a
    stale lock behind. A second process gets a one-line error naming the holder's pid."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / LOCK_NAME, directory, what):
        yield


@contextmanager
def file_lock(path: str | os.PathLike, target: object, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing) guarding ``target``."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: run unguarded
        yield
        return
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FlrecError(
                f"{target}: this {what} is in use by another flrec process (pid {holder}, lock {path}); "
                "wait for it to finish or use another path"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()  # closing the descriptor releases the flock


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
