"""Turn raw interaction logs into D3 datasets: users' own CSV/TSV files and MovieLens 100K.

Both go through :func:`build_d3_dataset`, which applies the D3 protocol (iterative k-core,
item ids in first-appearance order shuffled with a fixed seed, ≤ ``max_history`` sliding-window
rows sorted by target time, chronological 8:1:1 split) so that converted data is directly
comparable with the published Amazon splits.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from flrec.data.d3 import count_quirks, write_d3
from flrec.data.protocol import chronological_split, iterative_k_core, sliding_window_rows
from flrec.data.schema import Catalogue, RecDataset
from flrec.errors import ConfigError, DataError

Event = tuple[str, str, int, float]  # (user, raw item id, unix seconds, rating)


def build_d3_dataset(
    events: list[Event],
    titles: dict[str, str],
    *,
    source: Path,
    k_core: int = 0,
    max_history: int = 10,
    shuffle_seed: int = 42,
    name: str = "dataset",
    domain: str = "item",
) -> RecDataset:
    """Apply the D3 protocol to raw ``events`` (in file order); ``titles`` maps raw item id -> title.

    ``source`` is only used in error messages.
    """
    if max_history < 1:
        raise ConfigError(f"max_history must be >= 1, got {max_history}")
    kept = iterative_k_core(events, k_core)
    if not kept:
        raise DataError(source, f"no interactions left after the {k_core}-core filter; lower k_core")
    # D3: ids in order of first appearance (by time; ties keep file order), then shuffled by a seeded RNG.
    order = list(dict.fromkeys(e[1] for e in sorted(kept, key=lambda e: e[2])))
    random.Random(shuffle_seed).shuffle(order)
    new_id = {raw: i for i, raw in enumerate(order)}
    rows = sliding_window_rows(
        ((u, new_id[it], ts, r) for u, it, ts, r in kept),
        max_history=max_history,
        raw_ids=dict(enumerate(order)),
    )
    splits = chronological_split(rows)
    empty = [s for s, v in splits.items() if not v]
    if empty:
        raise DataError(
            source,
            f"only {len(rows)} sliding-window rows after filtering, so split(s) {', '.join(empty)} would be "
            "empty; provide more interactions or lower k_core",
        )
    catalogue = Catalogue([titles[raw] for raw in order])
    return RecDataset(catalogue, splits, name=name, domain=domain, quirks=count_quirks(catalogue, splits))


# ------------------------------------------------------------------------------------ users' data


def convert_interactions(
    interactions: Path,
    items: Path,
    out_dir: Path,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    item_id_col: str,
    title_col: str,
    rating_col: str | None = None,
    sep: str = ",",
    items_sep: str | None = None,
    encoding: str = "utf-8",
    k_core: int = 0,
    max_history: int = 10,
    min_rating: float | None = None,
    shuffle_seed: int = 42,
    name: str | None = None,
    domain: str = "item",
) -> RecDataset:
    """Convert an interaction log plus an item table (both with a header row) into a D3 folder.

    Timestamps may be Unix seconds or ISO 8601 dates (naive ones are read as UTC). Without
    ``rating_col`` every rating is 0.0. ``min_rating`` keeps interactions rated at least that much.
    Writes ``out_dir`` (see :func:`flrec.data.d3.write_d3`) and returns the dataset.
    """
    interactions, items, out_dir = Path(interactions), Path(items), Path(out_dir)
    if min_rating is not None and rating_col is None:
        raise ConfigError("min_rating needs rating_col: name the column that holds the ratings")
    titles = _read_titles(items, items_sep or sep, encoding, item_id_col, title_col)
    cols = (user_col, item_col, time_col, rating_col)
    events = _read_events(interactions, sep, encoding, cols, titles, items, min_rating)
    ds = build_d3_dataset(
        events, titles, source=interactions, k_core=k_core, max_history=max_history,
        shuffle_seed=shuffle_seed, name=name or out_dir.name, domain=domain,
    )  # fmt: skip
    write_d3(ds, out_dir)
    ds.root = out_dir
    return ds


def _read_titles(path: Path, sep: str, encoding: str, id_col: str, title_col: str) -> dict[str, str]:
    """Raw item id -> stripped title; every item needs exactly one non-empty, single-line title."""
    titles: dict[str, str] = {}
    for line, rec in _read_table(path, sep, encoding, [id_col, title_col]):
        item, title = rec[id_col].strip(), rec[title_col].strip()
        if not title:
            raise DataError(
                path, f"item {item!r} has no title; give every item one", line=line, field=title_col
            )
        if "\n" in title or "\r" in title:
            raise DataError(path, f"title of item {item!r} has a line break", line=line, field=title_col)
        if titles.setdefault(item, title) != title:
            msg = f"item {item!r} is listed twice with different titles; keep one"
            raise DataError(path, msg, line=line, field=id_col)
    return titles


def _read_events(
    path: Path,
    sep: str,
    encoding: str,
    cols: tuple[str, str, str, str | None],
    titles: dict[str, str],
    items_path: Path,
    min_rating: float | None,
) -> list[Event]:
    """``(user, item, time, rating)`` per row, in file order; ``min_rating`` drops lower-rated rows."""
    user_col, item_col, time_col, rating_col = cols
    events: list[Event] = []
    for line, rec in _read_table(path, sep, encoding, [c for c in cols if c]):
        item = rec[item_col].strip()
        if item not in titles:
            msg = f"item {item!r} is not in the item file {items_path}; add it with a title"
            raise DataError(path, msg, line=line, field=item_col)
        rating = _parse_rating(rec[rating_col], path, line, rating_col) if rating_col else 0.0
        if min_rating is None or rating >= min_rating:  # an explicit, requested filter
            events.append(
                (rec[user_col].strip(), item, _parse_time(rec[time_col], path, line, time_col), rating)
            )
    if not events:
        rated = f" rated >= {min_rating}" if min_rating is not None else ""
        raise DataError(path, f"no interactions{rated}; check the file and min_rating")
    return events


def _read_table(
    path: Path, sep: str, encoding: str, needed: list[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row dict)`` of a delimited file with a header, checking ``needed`` columns."""
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        with open(path, encoding=encoding, newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
            for col in needed:
                if col not in header:
                    found = ", ".join(header) or "none"
                    raise DataError(
                        path,
                        f"column not found (columns found: {found}); check the column names and sep={sep!r}",
                        line=1,
                        field=col,
                    )
            index = {col: header.index(col) for col in needed}
            width = max(index.values()) + 1
            for fields in reader:
                if not fields or fields == [""]:
                    continue
                if len(fields) < width:
                    raise DataError(
                        path,
                        f"row has {len(fields)} fields but the header has {len(header)}",
                        line=reader.line_num,
                    )
                yield reader.line_num, {col: fields[i] for col, i in index.items()}
    except UnicodeDecodeError as e:
        raise DataError(
            path, f"not valid {encoding} text ({e.reason} at byte {e.start}); pass the right encoding"
        ) from None


def _parse_time(text: str, path: Path, line: int, field: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # OverflowError: "inf"
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            path, f"timestamp {text!r} is neither Unix seconds nor an ISO 8601 date", line=line, field=field
        ) from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _parse_rating(text: str, path: Path, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"rating {text.strip()!r} is not a number", line=line, field=field) from None
    if value != value:
        raise DataError(path, "rating is NaN", line=line, field=field)
    return value


# -------------------------------------------------------------------------------------- MovieLens


def prepare_movielens(raw_dir: Path, out_dir: Path, *, k_core: int = 0, max_history: int = 10) -> RecDataset:
    """Convert raw MovieLens 100K (``u.data`` + ``u.item``) into a D3 folder with domain "movie".

    With the defaults: 99,057 rows -> train 79,245 / valid 9,906 / test 9,906.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    data, item_file = raw_dir / "u.data", raw_dir / "u.item"
    for p in (data, item_file):
        if not p.exists():
            raise DataError(p, "MovieLens 100K file not found; pass the unpacked ml-100k folder")
    titles: dict[str, str] = {}
    for line, text in enumerate(_read_lines(item_file), 1):
        if not text.strip():
            continue
        parts = text.split("|")
        if len(parts) < 2 or not parts[1].strip():
            raise DataError(item_file, "expected 'movie id|title|...' with a non-empty title", line=line)
        titles[parts[0].strip()] = parts[1].strip()
    events: list[Event] = []
    for line, text in enumerate(_read_lines(data), 1):
        if not text.strip():
            continue
        parts = text.split("\t")
        if len(parts) != 4:
            raise DataError(
                data,
                f"expected 4 tab-separated fields (user item rating timestamp), found {len(parts)}",
                line=line,
            )
        user, item, rating, ts = (p.strip() for p in parts)
        if item not in titles:
            raise DataError(data, f"movie {item!r} is not in {item_file.name}", line=line, field="item")
        events.append(
            (
                user,
                item,
                _parse_time(ts, data, line, "timestamp"),
                _parse_rating(rating, data, line, "rating"),
            )
        )
    ds = build_d3_dataset(
        events, titles, source=data, k_core=k_core, max_history=max_history, name=raw_dir.name, domain="movie"
    )
    write_d3(ds, out_dir)
    ds.root = out_dir
    return ds


def _read_lines(path: Path) -> list[str]:
    """Lines of a MovieLens file; its titles are Latin-1 in the original release."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.splitlines()
