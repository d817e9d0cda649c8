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
