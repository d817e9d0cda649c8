"""Read and write the D3 / LatentR3 dataset format.

A dataset folder holds ``info.txt`` (one ``title<TAB>item_id`` line per item, ids 0..n-1),
``train.csv`` / ``valid.csv`` / ``test.csv`` (one sliding-window row per line, list columns as
Python literals, CRLF line ends as written by :mod:`csv`) and optionally ``dataset.json``
(``name``, ``domain``, ``domain_plural``, ``quirks``).

Malformed input raises a one-line :class:`~flrec.errors.DataError` naming file, line and field.
Known quirks of the published files (duplicate rows, scraped-HTML titles, HTML entities, targets
already in the history, CSV titles that disagree with ``info.txt``) are kept and counted in
``RecDataset.quirks`` — dropping them would change the published evaluation splits.
"""

from __future__ import annotations

import ast
import csv
import gc
import itertools
import json
import math
import numbers
import operator
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flrec.data.schema import SPLITS, Catalogue, Interaction, RecDataset, title_problem
from flrec.data.textio import FIELD_LIMIT, decode_error, iter_csv, open_error
from flrec.errors import DataError
from flrec.utils.io import atomic_path, atomic_write_json

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

# Titles scraped from HTML markup instead of text: a tag opening (``<span class=...``) or an
# attribute remnant closing the title (``Artist,Album,Label" />``).
JUNK_TITLE = re.compile(r"<[A-Za-z/!]|/>\s*$")
HTML_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);")
_UTF8_FIX = "D3 files are UTF-8; convert it (e.g. iconv -f latin1 -t utf-8) or regenerate the folder"
# The item word of the published folders that carry no dataset.json (as in configs/*.yaml).
KNOWN_DOMAINS: dict[str, str] = {
    "CDs": "CD", "CDs_and_Vinyl": "CD", "Office": "office product", "Office_Products": "office product",
    "ml-100k": "movie", "ml-1m": "movie",
}  # fmt: skip


def is_junk_title(title: str) -> bool:
    """True when ``title`` looks like scraped HTML rather than a product name."""
    return bool(JUNK_TITLE.search(title))


def has_html_entity(title: str) -> bool:
    return bool(HTML_ENTITY.search(title))


# --------------------------------------------------------------------------------------------- read


def read_dataset_meta(root: str | Path) -> dict:
    """The optional ``dataset.json`` of a dataset folder as a dict (``{}`` if absent)."""
    path = Path(root) / "dataset.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise decode_error(path, "utf-8", _UTF8_FIX) from None
    except OSError as e:
        raise open_error(path, e) from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise DataError(path, f"not valid JSON ({str(e)[:80]}); fix or delete the file") from None
    if not isinstance(meta, dict):
        raise DataError(path, "must hold a JSON object with keys like 'name' and 'domain'")
    for key in ("name", "domain", "domain_plural"):
        if key in meta and not (isinstance(meta[key], str) and meta[key].strip()):
            raise DataError(path, "must be a non-empty string", field=key)
    return meta


def read_catalogue(path: str | Path) -> Catalogue:
    """Read ``info.txt``: ``title<TAB>item_id`` per line, ids exactly 0..n-1 in any order."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            path, "item file not found; every D3 dataset folder needs info.txt (title<TAB>item_id)"
        )
    titles: dict[int, str] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                _catalogue_line(line, lineno, path, titles)
    except UnicodeDecodeError:
        raise decode_error(path, "utf-8", _UTF8_FIX) from None
    except OSError as e:
        raise open_error(path, e) from None
    n = len(titles)
    if n == 0:
        raise DataError(path, "no items; write one 'title<TAB>item_id' line per item")
    if min(titles) != 0 or max(titles) != n - 1:
        missing = sorted(set(range(n)) - set(titles))[:5] or sorted(titles)[-1:]
        raise DataError(
            path, f"item ids must be 0..{n - 1} without gaps (check id {missing[0]}); re-index the items"
        )
    return Catalogue([titles[i] for i in range(n)])


def _catalogue_line(line: str, lineno: int, path: Path, titles: dict[int, str]) -> None:
    line = line.rstrip("\r\n")
    if not line.strip():
        return
    title, tab, raw_id = line.rpartition("\t")  # titles may contain tabs; the id never does
    if not tab:
        raise DataError(path, "expected 'title<TAB>item_id' but found no tab", line=lineno)
    try:
        item_id = int(raw_id)
    except ValueError:
        raise DataError(path, f"item id {raw_id[:40]!r} is not an integer", line=lineno, field="item_id") from None
    if item_id in titles:
        raise DataError(path, f"item id {item_id} appears twice; ids must be unique", line=lineno, field="item_id")
    problem = title_problem(title)
    if problem:
        raise DataError(path, f"item {item_id}: {problem}", line=lineno, field="title")
    titles[item_id] = title


def read_d3(
    root: str | Path,
    *,
    name: str | None = None,
    domain: str | None = None,
    splits: Iterable[str] = SPLITS,
) -> RecDataset:
    """Read a D3 dataset folder (all ``splits`` must exist).

    ``name``/``domain`` override ``dataset.json``; without either: the folder name and the item word of
    a known published folder (:data:`KNOWN_DOMAINS`, e.g. CDs -> "CD"), else "item".
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            root, "dataset folder not found; pass a folder holding info.txt and train/valid/test.csv"
        )
    meta = read_dataset_meta(root)
    catalogue = read_catalogue(root / "info.txt")
    data: dict[str, list[Interaction]] = {}
    mismatches = 0
    for split in splits:
        path = root / f"{split}.csv"
        if not path.exists():
            raise DataError(
                path, f"split file not found; create it or leave '{split}' out of the splits to read"
            )
        data[split], m = _read_split(path, catalogue)
        mismatches += m
    # info.txt is the source of truth for titles; CSV copies that disagree are counted, not used.
    with _gc_paused():
        counts = {s: split_counts(rows) for s, rows in data.items()}
        quirks = {**count_quirks(catalogue, data, counts), "title_mismatches": mismatches}
    ds = RecDataset(
        catalogue=catalogue,
        splits=data,
        name=name or meta.get("name") or root.resolve().name,
        domain=domain or meta.get("domain") or KNOWN_DOMAINS.get(root.resolve().name, "item"),
        root=root,
        quirks=quirks,
    )
    ds.memo.update({("split_counts", s): (rows, len(rows), counts[s]) for s, rows in data.items()})
    return ds


def count_quirks(
    catalogue: Catalogue, splits: dict[str, list[Interaction]], counts: dict[str, tuple[int, int]] | None = None
) -> dict[str, int]:
    """Count the known quirks of ``catalogue`` and ``splits`` (kept in the data, reported here).

    ``counts``: :func:`split_counts` per split when already computed.
    """
    collisions = catalogue.colliding_titles()
    counts = counts or {s: split_counts(rows) for s, rows in splits.items()}
    return {
        "junk_titles": sum(map(is_junk_title, catalogue.titles)),
        "html_entity_titles": sum(map(has_html_entity, catalogue.titles)),
        "colliding_titles": len(collisions),
        "items_with_colliding_titles": sum(len(v) for v in collisions.values()),
        "duplicate_rows": sum(c[0] for c in counts.values()),
        "repeated_targets": sum(c[1] for c in counts.values()),
    }


def split_counts(rows: list[Interaction]) -> tuple[int, int]:
    """``(duplicate rows, rows whose target is already in their history)`` of one split."""
    repeated = sum(map(operator.contains, map(_HISTORY, rows), map(_TARGET, rows)))
    return duplicate_rows(rows), repeated


def cached_split_counts(ds: RecDataset, split: str) -> tuple[int, int]:
    """:func:`split_counts` of ``ds[split]``, computed once while that list is unchanged."""
    rows = ds.splits[split]
    hit = ds.memo.get(("split_counts", split))
    if hit is not None and hit[0] is rows and hit[1] == len(rows):
        return hit[2]
    value = split_counts(rows)
    ds.memo[("split_counts", split)] = (rows, len(rows), value)
    return value


_HISTORY, _TARGET = operator.attrgetter("history"), operator.attrgetter("target")


def _row_key(r: Interaction) -> tuple:
    return (r.user, r.target, r.target_raw, r.timestamp, r.rating, tuple(r.history), tuple(r.history_raw),
            tuple(r.history_timestamps), tuple(r.history_ratings))  # fmt: skip


def duplicate_rows(rows: list[Interaction]) -> int:
    """Rows identical to an earlier row of the same list (extra copies only; CDs test: 42).

    Only each row's hash is kept for all rows (a set of full keys would cost ~0.5 KB a row); rows
    whose hash repeats are then compared exactly.
    """
    hashes = [hash(_row_key(r)) for r in rows]
    seen: set[int] = set()
    repeated = {h for h in hashes if h in seen or seen.add(h)}  # type: ignore[func-returns-value]
    del seen
    if not repeated:
        return 0
    keys = {_row_key(r) for r, h in zip(rows, hashes, strict=True) if h in repeated}
    n_candidates = sum(h in repeated for h in hashes)
    return n_candidates - len(keys)


_CHUNK = 4096  # rows parsed together by _FastRows.bulk


def _read_split(path: Path, catalogue: Catalogue) -> tuple[list[Interaction], int]:
    """Rows of one split file and the number of CSV titles that disagree with info.txt."""
    rows: list[Interaction] = []
    mismatches = 0
    fast = _FastRows(catalogue.titles)
    records = iter_csv(path, encoding_fix=_UTF8_FIX)
    _check_header(path, next(records, (1, None))[1])
    with _gc_paused():
        mismatches = _read_rows(records, fast, rows, path, catalogue.titles)
    return rows, mismatches


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: the rows hold no cycles, yet their millions of lists trigger full passes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_rows(records, fast: _FastRows, rows: list[Interaction], path: Path, titles: list[str]) -> int:
    mismatches = 0
    while True:
        chunk = [rec for rec in itertools.islice(records, _CHUNK) if rec[1]]
        if not chunk:
            break
        parsed = fast.bulk([fields for _, fields in chunk])
        if parsed is not None:
            rows.extend(parsed)
            continue
        for line, fields in chunk:  # something unusual in this chunk: row by row
            row = fast.parse(fields)
            if row is None:  # the exact parser accepts the row or names its problem
                row, m = _parse_row(fields, titles, path, line)
                mismatches += m
            rows.append(row)
    return mismatches


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


# -------------------------------------------------------------------------------------------- write


def write_d3(ds: RecDataset, root: str | Path) -> None:
    """Write ``ds`` as a D3 folder (info.txt, one CSV per split, dataset.json); each file atomically.

    Everything is validated first with the reader's rules (titles, item ids, finite numbers, field
    sizes), so a folder flrec writes is one flrec reads; on a problem nothing is written.
    """
    root = Path(root)
    titles = ds.catalogue.titles
    for i, t in enumerate(titles):
        problem = title_problem(t)
        if problem:
            raise DataError(root / "info.txt", f"item {i}: {problem}; nothing written")
    longest = max(map(len, titles), default=0)
    for split, rows in ds.splits.items():
        for k, r in enumerate(rows):
            problem = _row_problem(r, titles, longest)
            if problem:
                raise DataError(root / f"{split}.csv", f"row {k}: {problem}; nothing written")
    with atomic_path(root / "info.txt") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.writelines(f"{t}\t{i}\n" for i, t in enumerate(titles))
    for split, rows in ds.splits.items():
        with atomic_path(root / f"{split}.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)  # default dialect: CRLF line ends, minimal quoting — as D3 writes
            w.writerow(HEADER)
            w.writerows(_csv_row(r, titles) for r in rows)
    meta = read_dataset_meta(root) if (root / "dataset.json").exists() else {}
    meta.update(name=ds.name, domain=ds.domain, quirks=dict(ds.quirks))
    atomic_write_json(root / "dataset.json", meta)


def _finite(x: object) -> bool:
    try:
        return math.isfinite(x)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return False


def _row_problem(r: Interaction, titles: list[str], longest_title: int) -> str | None:
    """Why the reader would refuse row ``r`` once written, or None."""
    n_items = len(titles)
    if not r.history:
        return "empty history; every row needs a history item"
    if not all(isinstance(i, numbers.Integral) and 0 <= i < n_items for i in (*r.history, r.target)):
        return f"names an item id outside 0..{n_items - 1}"
    n = len(r.history)
    for name, values in (("history_ratings", r.history_ratings), ("history_timestamps", r.history_timestamps),
                         ("history_raw", r.history_raw)):  # fmt: skip
        if values and len(values) != n:
            return f"{name} has {len(values)} entries for {n} history items"
    if not all(map(_finite, (*r.history_ratings, r.rating))):
        return "a rating is not a finite number (inf or nan)"
    if not all(isinstance(x, numbers.Integral) or (_finite(x) and x == int(x))
               for x in (*r.history_timestamps, r.timestamp)):  # fmt: skip
        return "a timestamp is not an integer"
    if any("\x00" in s for s in (r.user, r.target_raw, *r.history_raw)):
        return "a user or raw item id contains a NUL character"
    # The history-title list is the longest field; check it exactly only when it could be too long.
    if (longest_title + 4) * n + 2 > FIELD_LIMIT or max(map(len, r.history_raw), default=0) * n > FIELD_LIMIT:
        fields = [str(x) for x in _csv_row(r, titles)]
        if max(map(len, fields)) > FIELD_LIMIT:
            return f"a field is longer than the reader's limit of {FIELD_LIMIT:,} characters; shorten titles or max_history"
    return None


def _csv_row(r: Interaction, titles: list[str]) -> list:
    n = len(r.history)
    hist_raw = r.history_raw or [str(i) for i in r.history]
    return [
        r.user,
        str(hist_raw),
        r.target_raw or str(r.target),
        str(list(r.history)),
        r.target,
        str([titles[i] for i in r.history]),
        titles[r.target],
        str([float(x) for x in r.history_ratings or [0.0] * n]),
        float(r.rating),
        str([int(x) for x in r.history_timestamps or [0] * n]),
        int(r.timestamp),
    ]
