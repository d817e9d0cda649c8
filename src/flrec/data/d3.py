"""Read and write the D3 / LatentR3 dataset format.

A dataset folder holds ``info.txt`` (one ``title<TAB>item_id`` line per item, ids 0..n-1),
``train.csv`` / ``valid.csv`` / ``test.csv`` (one sliding-window row per line, list columns as
Python literals, CRLF line ends as written by :mod:`csv`) and optionally ``dataset.json``
(``name``, ``domain``, ``domain_plural``, ``quirks``).

Malformed input raises a one-line :class:`~flrec.errors.DataError` naming file, line and field.
Known quirks of the published files (duplicate rows, scraped-HTML titles, HTML entities, targets
already in the history, CSV titles that disagree with ``info.txt``) are kept and counted in
``RecDataset.quirks`` — dropping them would change the published evaluation splits.

The row parsers (a fast one for rows in the written form, an exact one that names a row's problem)
live in :mod:`flrec.data.d3_rows`; this module reads folders and writes them.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import math
import numbers
import operator
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flrec.data.d3_rows import HEADER, _check_header, _FastRows, _parse_row
from flrec.data.schema import SPLITS, Catalogue, Interaction, RecDataset, title_problem
from flrec.data.textio import FIELD_LIMIT, decode_error, iter_csv, open_error
from flrec.errors import DataError
from flrec.utils.io import atomic_path, atomic_write_json

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
