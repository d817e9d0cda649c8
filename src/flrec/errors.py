"""User-facing errors.

Every problem caused by the user's input (a file, a config key, a CLI flag) raises
:class:`FlrecError` with a one-line message that names the culprit and says what to do.
The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
"""

from __future__ import annotations


class FlrecError(Exception):
    """A bad input the user can fix; the message is one line and actionable."""


class DataError(FlrecError):
    """A data file is malformed; the message names file, line and field."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = path, line, field


class ConfigError(FlrecError):
    """A config key or value is wrong; the message names the key and the fix."""


def disk_full_error(exc: BaseException, where: object = None) -> FlrecError | None:
    """A one-line :class:`FlrecError` when ``exc`` is a write that failed for lack of space, else None.

    Out of space surfaces three ways: an ``OSError`` (ENOSPC/EDQUOT), safetensors' ``SafetensorError``
    quoting "os error 28", and torch's zip writer, which loses the errno and raises
    ``RuntimeError: [enforce fail at inline_container.cc…] unexpected pos …`` (a short write)."""
    import errno

    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))) or (
        type(exc).__name__ == "SafetensorError" and ("os error 28" in text or "No space left" in text)
    ):
        what = "out of disk space while writing"
    elif isinstance(exc, RuntimeError) and "inline_container" in text and "enforce fail" in text:
        what = "a file write failed, most likely out of disk space"  # torch does not say why
    else:
        return None
    target = f"{where}: " if where is not None else ""
    detail = " ".join(text.split())[:160] or type(exc).__name__
    return FlrecError(
        f"{target}{what} ({detail}); free space (or write to another disk) and rerun the same command: "
        "finished files are kept, and training and evaluation resume where they stopped"
    )
