"""Reading users' text files and writing dataset folders without tracebacks or data loss.

* :func:`iter_csv` reads a delimited file and turns every way it can fail (a folder, no
  permission, the wrong encoding, a gzip file, UTF-16, a NUL byte, a field over the size limit)
  into a one-line :class:`~flrec.errors.DataError` that names the file, the line and the fix.
* :func:`check_sep` / :func:`check_encoding` validate the ``--sep`` / ``--encoding`` options
  before any file is opened.
* :func:`staged_output_dir` writes a whole dataset folder into a temporary sibling and swaps it
  in only when complete, refusing an input, a non-empty folder without ``overwrite``, and (even with
  it) a folder flrec did not write (:mod:`flrec.utils.outputs`).

Nothing here imports torch: the data layer stays cheap to import (``flrec data stats``).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flrec.errors import ConfigError, DataError
from flrec.utils.outputs import check_output, staged_dir

# The csv module refuses fields over 131,072 characters by default, yet a D3 row's history-title
# list holds up to max_history titles. Reader and writer share this one limit: write_d3 refuses to
# write a longer field, and every reader here accepts anything up to it.
FIELD_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))

_GZIP_MAGIC = b"\x1f\x8b"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def check_sep(sep: str, option: str = "sep") -> str:
    """A one-character delimiter; ``\\t`` as typed in a shell means a tab."""
    if sep in ("\\t", "tab", "TAB"):
        return "\t"
    if not isinstance(sep, str) or len(sep) != 1:
        hint = (
            " (for multi-character separators such as MovieLens-1M's '::', rewrite the file first, "
            "e.g. sed 's/::/\\t/g', then pass --sep '\\t')"
            if isinstance(sep, str) and len(sep) > 1
            else ""
        )
        raise ConfigError(f"{option} must be exactly one character, got {sep!r}{hint}")
    if sep in ('"', "\r", "\n"):
        raise ConfigError(f"{option} {sep!r} cannot separate fields; use ',', ';', '|' or '\\t'")
    return sep


def check_encoding(encoding: str) -> str:
    """The codec name if Python knows it, else a ConfigError listing common ones."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        raise ConfigError(
            f"unknown encoding {encoding!r}; use e.g. utf-8, latin-1, cp1252 or utf-16"
        ) from None
    return encoding


def _bad_line(path: Path, encoding: str) -> int | None:
    """The first line that does not decode (only computed on the error path)."""
    n = 0
    try:
        dec = codecs.getincrementaldecoder(encoding)()
        with open(path, "rb") as f:
            for raw in f:
                n += 1
                dec.decode(raw)
    except UnicodeDecodeError:
        return n
    except (OSError, LookupError):
        return None
    return None


def decode_error(path: Path, encoding: str, fix: str) -> DataError:
    """A one-line error for a file that is not ``encoding`` text, guessing what it is instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head.startswith(_GZIP_MAGIC):
        return DataError(path, "is gzip-compressed; decompress it first (gunzip)")
    if head.startswith(_UTF16_BOMS) and "16" not in encoding:
        return DataError(path, f"is UTF-16 text (it starts with a byte-order mark), not {encoding}; {fix}")
    return DataError(path, f"is not valid {encoding} text; {fix}", line=_bad_line(path, encoding))


def open_error(path: Path, e: OSError) -> DataError:
    """A one-line error for a file that cannot be opened or read."""
    if isinstance(e, IsADirectoryError) or path.is_dir():
        return DataError(path, "is a folder, but a file is expected here; pass the file inside it")
    if isinstance(e, FileNotFoundError):
        return DataError(path, "file not found")
    if isinstance(e, PermissionError):
        return DataError(path, "cannot be read (permission denied); check the file's permissions")
    return DataError(path, f"cannot be read ({e.strerror or type(e).__name__}); check the file")


def iter_csv(
    path: Path,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    allow_gzip: bool = False,
    encoding_fix: str = "pass its encoding (e.g. --encoding latin-1) or re-save it as UTF-8",
) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every record of a delimited text file, header included.

    ``allow_gzip`` reads a gzip-compressed file transparently (detected by its magic bytes).
    Every failure is a one-line :class:`DataError`.
    """
    path = Path(path)
    reader = None
    gz = False
    try:
        with open(path, "rb") as probe:
            gz = probe.read(2) == _GZIP_MAGIC
        if gz and not allow_gzip:
            raise DataError(path, "is gzip-compressed; decompress it first (gunzip)")
        f = (
            gzip.open(path, "rt", encoding=encoding, newline="")
            if gz
            else open(path, encoding=encoding, newline="")
        )
        with f:
            reader = csv.reader(f, delimiter=delimiter)
            for fields in reader:
                yield reader.line_num, fields
    except UnicodeDecodeError:
        if gz:
            raise DataError(path, f"decompressed, it is not valid {encoding} text; {encoding_fix}") from None
        raise decode_error(path, encoding, encoding_fix) from None
    except csv.Error as e:
        msg = str(e)
        if "field larger" in msg:
            msg = f"a field is longer than {FIELD_LIMIT:,} characters; is the separator right?"
        elif "NUL" in msg:
            msg = "contains a NUL byte: is it a binary or UTF-16 file? Re-save it as UTF-8 text"
        else:
            msg = f"malformed CSV ({msg}); check quoting"
        raise DataError(path, msg, line=reader.line_num + 1 if reader is not None else None) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(path, f"truncated or corrupt gzip file ({e}); re-download it") from None
    except OSError as e:
        raise open_error(path, e) from None


# --------------------------------------------------------------------------------- output folders


def check_output_dir(out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse (before any work) an output folder that would destroy something (see
    :func:`flrec.utils.outputs.check_output`: a file, an input, a folder flrec did not write)."""
    return check_output(out, inputs=inputs, overwrite=overwrite)


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False,
                      inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; on success it replaces ``out`` as a whole
    (:func:`flrec.utils.outputs.staged_dir`; ``dataset.json`` marks it as flrec's)."""
    with staged_dir(out, kind="dataset", overwrite=overwrite, inputs=inputs, mark=False) as tmp:
        yield tmp
