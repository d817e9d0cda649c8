"""The row parsers of a D3 split file (``train.csv`` / ``valid.csv`` / ``test.csv``; see :mod:`flrec.data.d3`).

Two parsers accept and reject the same rows: :class:`_FastRows` parses rows exactly as
:func:`~flrec.data.d3.write_d3` (and D3) write them with C-level string operations, a chunk at a
time, and gives up (None) on anything unusual; :func:`_parse_row` is the exact, slower parser that
accepts such a row or names its problem in a one-line :class:`~flrec.errors.DataError`.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import operator
import sys
from collections import Counter
from pathlib import Path

from flrec.data.schema import Interaction
from flrec.errors import DataError

HEADER: tuple[str, ...] = (
    "user_id", "item_asins", "item_asin", "history_item_id", "item_id", "history_item_title",
    "item_title", "history_rating", "rating", "history_timestamp", "timestamp",
)  # fmt: skip
_HISTORY_LISTS = (
    "item_asins",
    "history_item_id",
    "history_item_title",
    "history_rating",
    "history_timestamp",
)


class _ItemIds(dict):
    """'17' -> 17 for every valid item id, sharing one int object per id (a KeyError otherwise)."""

    def __init__(self, n: int):
        super().__init__((str(i), i) for i in range(n))


class _Floats(dict):
    """Text -> finite float, caching each distinct text (ratings take a handful of values)."""

    def __missing__(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or len(self) > 10_000:
            raise ValueError(text)
        self[text] = value
        return value


class _FastRows:
    """Parse rows exactly as written by :func:`write_d3` (and D3) with C-level string operations.

    Every list is split once with ``str.split`` and converted with ``map`` (no per-element Python
    code); ids are looked up in a table, which validates them and shares one int per id. A row that
    deviates in any way returns None and goes through the exact (slower) parser instead, so both
    paths accept and reject the same rows.
    """

    def __init__(self, titles: list[str]):
        self.titles = titles
        self.ids = _ItemIds(len(titles))
        self.floats = _Floats()
        # Each timestamp recurs in up to max_history rows; keeping one int object per value (a dict
        # from the int to itself) saves ~30 bytes per list element, ~0.2 KB a row.
        self.stamps: dict[int, int] = {}

    def parse(self, f: list[str]) -> Interaction | None:
        if len(f) != len(HEADER):
            return None
        user, asins, asin, hid, iid, htitles, ititle, hrat, rat, hts, ts = f
        if not (hid[:1] == hts[:1] == hrat[:1] == "[" and hid[-1:] == hts[-1:] == hrat[-1:] == "]"):
            return None
        if not (hts.isascii() and hrat.isascii() and ts.isascii()):
            return None  # int()/float() also take non-ASCII digits, which the exact parser refuses
        try:
            hist = list(map(self.ids.__getitem__, hid[1:-1].split(", ")))
            target = self.ids[iid]
            ratings = list(map(self.floats.__getitem__, hrat[1:-1].split(", ")))
            rating = self.floats[rat]
            stamps = list(map(int, hts[1:-1].split(", ")))
            timestamp = int(ts)
        except (KeyError, ValueError):
            return None
        raw = _fast_str_list(asins)
        n = len(hist)
        if raw is None or not len(raw) == len(ratings) == len(stamps) == n:
            return None
        titles = self.titles
        if htitles != str(list(map(titles.__getitem__, hist))) or ititle != titles[target]:
            return None  # CSV titles disagreeing with info.txt are counted by the exact parser
        return Interaction(
            sys.intern(user), hist, target, stamps, timestamp, ratings, rating, list(map(sys.intern, raw)),
            sys.intern(asin),
        )  # positional: the field order of Interaction


    def bulk(self, chunk: list[list[str]]) -> list[Interaction] | None:
        """All rows of ``chunk`` if every one is in the plain written form, else None.

        Each list column of the chunk is joined into one string, split once and converted with one
        ``map``; rows are then sliced out by their comma counts. Any deviation (a bracket or quote
        inside an element, an unknown id, a title that disagrees with info.txt) returns None.
        """
        if any(len(f) != len(HEADER) for f in chunk):
            return None
        users, asins, asin, hid, iid, htitles, ititle, hrat, rat, hts, ts = map(list, zip(*chunk, strict=True))
        n = len(chunk)
        counts = list(map(str.count, hid, itertools.repeat(",")))
        for col, sep in ((hts, ","), (hrat, ","), (asins, "', '")):
            if list(map(str.count, col, itertools.repeat(sep))) != counts:
                return None  # lists of one row differ in length: the exact parser names the field
        try:
            hist = _split_rows(list(map(self.ids.__getitem__, _flat(hid, n, "[", "]", ", "))), counts)
            flat_stamps = list(map(int, _flat(hts, n, "[", "]", ", ")))
            stamps = _split_rows(list(map(self.stamps.setdefault, flat_stamps, flat_stamps)), counts)
            ratings = _split_rows(list(map(self.floats.__getitem__, _flat(hrat, n, "[", "]", ", "))), counts)
            raw = _split_rows(list(map(sys.intern, _flat(asins, n, "['", "']", "', '"))), counts)
            targets = list(map(self.ids.__getitem__, iid))
            rating = list(map(self.floats.__getitem__, rat))
            timestamp = list(map(int, ts))
            timestamp = list(map(self.stamps.setdefault, timestamp, timestamp))
        except (KeyError, ValueError):
            return None
        if hist is None or stamps is None or ratings is None or raw is None:
            return None
        if not "".join(hts + hrat + ts).isascii():
            return None  # int()/float() also take non-ASCII digits, which the exact parser refuses
        get = self.titles.__getitem__
        expected = map(str, map(list, map(map, itertools.repeat(get), hist)))
        if not all(map(operator.eq, expected, htitles)) or not all(map(operator.eq, map(get, targets), ititle)):
            return None  # CSV titles that disagree with info.txt are counted by the exact parser
        return list(
            map(Interaction, map(sys.intern, users), hist, targets, stamps, timestamp, ratings, rating, raw,
                map(sys.intern, asin))
        )  # fmt: skip


def _flat(texts: list[str], n: int, open_: str, close: str, sep: str) -> list[str]:
    """The elements of ``n`` list literals (``open_`` a, ``sep`` b ``close``) in one split.

    Raises ValueError unless every text is exactly one such literal with no delimiter inside an
    element (then the counts of openers, closers and joints all agree).
    """
    joined = "".join(texts)
    joint = close + open_
    if (
        not (joined.startswith(open_) and joined.endswith(close))
        or joined.count(open_) != n
        or joined.count(close) != n
        or joined.count(joint) != n - 1
    ):
        raise ValueError("not plain list literals")
    if open_ == "['" and ('"' in joined or "\\" in joined):
        raise ValueError("quotes or escapes inside a string element")
    parts = joined[len(open_) : -len(close)].replace(joint, sep).split(sep)
    if open_ == "['" and joined.count("'") != 2 * len(parts):
        raise ValueError("a quote inside a string element")
    return parts


def _split_rows(flat: list, counts: list[int]) -> list[list] | None:
    """``flat`` cut into consecutive rows of ``count + 1`` elements (None if the total differs)."""
    sizes = [c + 1 for c in counts]
    ends = list(itertools.accumulate(sizes))
    if ends[-1] != len(flat):
        return None
    starts = [0, *ends[:-1]]
    return list(map(flat.__getitem__, map(slice, starts, ends)))


def _fast_str_list(text: str) -> list[str] | None:
    """``repr`` of a list of plain strings (no quotes or backslashes inside), else None."""
    if text.startswith("['") and text.endswith("']") and '"' not in text and "\\" not in text:
        parts = text[2:-2].split("', '")
        if text.count("'") == 2 * len(parts):
            return parts
    return None


def _check_header(path: Path, header: list[str] | None) -> None:
    expected = ",".join(HEADER)
    if header is None:
        raise DataError(path, f"file is empty; expected the header {expected}", line=1)
    header = [h.strip().lstrip("\ufeff") for h in header]
    if tuple(header) == HEADER:
        return
    col = next((i for i, (a, b) in enumerate(zip(header, HEADER, strict=False)) if a != b), None)
    col = min(len(header), len(HEADER)) if col is None else col
    got = repr(header[col]) if col < len(header) else "missing"
    want = repr(HEADER[col]) if col < len(HEADER) else "nothing"
    raise DataError(
        path, f"wrong header: column {col + 1} is {got}, expected {want} (header: {expected})", line=1
    )


def _parse_row(fields: list[str], titles: list[str], path: Path, line: int) -> tuple[Interaction, int]:
    """One validated CSV row and how many of its titles disagree with info.txt."""
    if len(fields) != len(HEADER):
        raise DataError(
            path,
            f"expected {len(HEADER)} fields, found {len(fields)}; quote fields holding commas",
            line=line,
        )
    rec = dict(zip(HEADER, fields, strict=True))
    hist_raw = _str_list(rec["item_asins"], path, line, "item_asins")
    hist = _num_list(rec["history_item_id"], int, path, line, "history_item_id")
    hist_titles = _str_list(rec["history_item_title"], path, line, "history_item_title")
    hist_ratings = _num_list(rec["history_rating"], float, path, line, "history_rating")
    hist_ts = _num_list(rec["history_timestamp"], int, path, line, "history_timestamp")
    lists = (hist_raw, hist, hist_titles, hist_ratings, hist_ts)
    lengths = {name: len(v) for name, v in zip(_HISTORY_LISTS, lists, strict=True)}
    usual = Counter(lengths.values()).most_common(1)[0][0]
    odd = next((name for name, n in lengths.items() if n != usual), None)
    if odd is not None:
        raise DataError(
            path, f"history lists differ in length {lengths}; give one entry per item", line=line, field=odd
        )
    if not hist:
        raise DataError(
            path, "empty history; every row needs a history item", line=line, field="history_item_id"
        )
    target = _scalar(rec["item_id"], int, path, line, "item_id")
    for name, ids in (("history_item_id", hist), ("item_id", (target,))):
        bad = next((i for i in ids if not 0 <= i < len(titles)), None)
        if bad is not None:
            msg = f"item id {bad} is not in info.txt (ids 0..{len(titles) - 1}); regenerate split or info.txt"
            raise DataError(path, msg, line=line, field=name)
    mismatches = sum(t != titles[i] for t, i in zip(hist_titles, hist, strict=True))
    mismatches += rec["item_title"] != titles[target]
    row = Interaction(
        user=rec["user_id"],
        history=hist,
        target=target,
        history_timestamps=hist_ts,
        timestamp=_scalar(rec["timestamp"], int, path, line, "timestamp"),
        history_ratings=hist_ratings,
        rating=_scalar(rec["rating"], float, path, line, "rating"),
        history_raw=hist_raw,
        target_raw=rec["item_asin"],
    )
    return row, mismatches


def _str_list(text: str, path: Path, line: int, field: str) -> list[str]:
    # Fast path for repr() output without quotes/backslashes inside elements: every element is then
    # delimited by single quotes that cannot occur inside it, so splitting on "', '" is exact.
    parts = _fast_str_list(text)
    if parts is not None:
        return parts
    if text == "[]":
        return []
    value = _literal(text, path, line, field)
    if not all(isinstance(v, str) for v in value):
        raise DataError(path, "expected a list of strings", line=line, field=field)
    return value


def _num_list(text: str, kind: type, path: Path, line: int, field: str) -> list:
    try:
        value = json.loads(text)  # numeric Python list literals are valid JSON and json is ~10x faster
    except ValueError:
        value = _literal(text, path, line, field)
    if not isinstance(value, list):
        raise DataError(path, f"expected a list like [1, 2], got {text[:40]!r}", line=line, field=field)
    return [_coerce(v, kind, path, line, field) for v in value]


def _literal(text: str, path: Path, line: int, field: str) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise DataError(
            path, f"list does not parse as a Python literal: {text[:40]!r}", line=line, field=field
        ) from None
    if not isinstance(value, list):
        raise DataError(path, f"expected a list literal, got {type(value).__name__}", line=line, field=field)
    return value


def _coerce(v: object, kind: type, path: Path, line: int, field: str) -> int | float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DataError(path, f"{v!r} is not a number", line=line, field=field)
    if not math.isfinite(v):
        raise DataError(path, f"{v!r} is not a finite number", line=line, field=field)
    if kind is int:
        if v != int(v):
            raise DataError(path, f"{v!r} is not an integer", line=line, field=field)
        return int(v)
    return float(v)


def _scalar(text: str, kind: type, path: Path, line: int, field: str) -> int | float:
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass  # maybe "1.5e9" or "3.0": parsed as float and checked below
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"{text[:40]!r} is not a number", line=line, field=field) from None
    return _coerce(value, kind, path, line, field)
