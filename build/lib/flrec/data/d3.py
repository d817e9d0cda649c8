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
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from flrec.data.schema import SPLITS, Catalogue, Interaction, RecDataset
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e}); fix or delete the file") from None
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
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            title, tab, raw_id = line.rpartition("\t")  # titles may contain tabs; the id never does
            if not tab:
                raise DataError(path, "expected 'title<TAB>item_id' but found no tab", line=lineno)
            try:
                item_id = int(raw_id)
            except ValueError:
                raise DataError(
                    path, f"item id {raw_id!r} is not an integer", line=lineno, field="item_id"
                ) from None
            if item_id in titles:
                raise DataError(
                    path, f"item id {item_id} appears twice; ids must be unique", line=lineno, field="item_id"
                )
            titles[item_id] = title
    n = len(titles)
    if n == 0:
        raise DataError(path, "no items; write one 'title<TAB>item_id' line per item")
    if min(titles) != 0 or max(titles) != n - 1:
        missing = sorted(set(range(n)) - set(titles))[:5] or sorted(titles)[-1:]
        raise DataError(
            path, f"item ids must be 0..{n - 1} without gaps (check id {missing[0]}); re-index the items"
        )
    return Catalogue([titles[i] for i in range(n)])


def read_d3(
    root: str | Path,
    *,
    name: str | None = None,
    domain: str | None = None,
    splits: Iterable[str] = SPLITS,
) -> RecDataset:
    """Read a D3 dataset folder (all ``splits`` must exist).

    ``name``/``domain`` override ``dataset.json``; without either: the folder name and "item".
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
    quirks = {**count_quirks(catalogue, data), "title_mismatches": mismatches}
    return RecDataset(
        catalogue=catalogue,
        splits=data,
        name=name or meta.get("name") or root.resolve().name,
        domain=domain or meta.get("domain") or "item",
        root=root,
        quirks=quirks,
    )


def count_quirks(catalogue: Catalogue, splits: dict[str, list[Interaction]]) -> dict[str, int]:
    """Count the known quirks of ``catalogue`` and ``splits`` (kept in the data, reported here)."""
    collisions = catalogue.colliding_titles()
    rows = [r for split_rows in splits.values() for r in split_rows]
    return {
        "junk_titles": sum(map(is_junk_title, catalogue.titles)),
        "html_entity_titles": sum(map(has_html_entity, catalogue.titles)),
        "colliding_titles": len(collisions),
        "items_with_colliding_titles": sum(len(v) for v in collisions.values()),
        "duplicate_rows": sum(duplicate_rows(r) for r in splits.values()),
        "repeated_targets": sum(r.target in r.history for r in rows),
    }


def duplicate_rows(rows: list[Interaction]) -> int:
    """Rows identical to an earlier row of the same list (extra copies only; CDs test: 42)."""
    keys = {
        (r.user, r.target, r.target_raw, r.timestamp, r.rating, tuple(r.history), tuple(r.history_raw),
         tuple(r.history_timestamps), tuple(r.history_ratings))
        for r in rows
    }  # fmt: skip
    return len(rows) - len(keys)


def _read_split(path: Path, catalogue: Catalogue) -> tuple[list[Interaction], int]:
    """Rows of one split file and the number of CSV titles that disagree with info.txt."""
    rows: list[Interaction] = []
    mismatches = 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        _check_header(path, next(reader, None))
        for fields in reader:
            if fields:
                row, m = _parse_row(fields, catalogue.titles, path, reader.line_num)
                rows.append(row)
                mismatches += m
    return rows, mismatches


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
    if text.startswith("['") and text.endswith("']") and '"' not in text and "\\" not in text:
        parts = text[2:-2].split("', '")
        if text.count("'") == 2 * len(parts):
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
    """Write ``ds`` as a D3 folder (info.txt, one CSV per split, dataset.json); each file atomically."""
    root = Path(root)
    titles = ds.catalogue.titles
    bad = next((i for i, t in enumerate(titles) if "\n" in t or "\r" in t), None)
    if bad is not None:
        raise DataError(
            root / "info.txt", f"title of item {bad} contains a line break; info.txt holds one item per line"
        )
    for split, rows in ds.splits.items():
        bad_row = next(
            (k for k, r in enumerate(rows) if not all(0 <= i < len(titles) for i in (*r.history, r.target))),
            None,
        )
        if bad_row is not None:
            msg = f"row {bad_row} names an item id outside 0..{len(titles) - 1}; nothing written"
            raise DataError(root / f"{split}.csv", msg)
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
