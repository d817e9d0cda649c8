"""Turn raw interaction logs into D3 datasets: users' own CSV/TSV files and MovieLens 100K.

Both go through :func:`build_d3_dataset`, which applies the D3 protocol (iterative k-core,
item ids in first-appearance order shuffled with a fixed seed, ≤ ``max_history`` sliding-window
rows sorted by target time, chronological 8:1:1 split) so that converted data is directly
comparable with the published Amazon splits.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from flrec.config import one_line
from flrec.data.d3 import count_quirks, write_d3
from flrec.data.protocol import chronological_split, iterative_k_core, sliding_window_rows
from flrec.data.schema import Catalogue, RecDataset, title_problem
from flrec.data.textio import (
    check_encoding,
    check_output_dir,
    check_sep,
    iter_csv,
    open_error,
    staged_output_dir,
)
from flrec.errors import ConfigError, DataError
from flrec.utils.io import atomic_write_json

Event = tuple[str, str, int, float]  # (user, raw item id, unix seconds, rating)
Column = str | int  # a header name, or a 0-based column index
REPORT_FILE = "convert_report.json"


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

    ``source`` is only used in error messages. ``ds.report`` counts what the k-core filter dropped
    and the users with a single interaction (they yield no row: a row needs a history).
    """
    if max_history < 1:
        raise ConfigError(f"max_history must be >= 1, got {max_history}")
    if k_core < 0:
        raise ConfigError(f"k_core must be >= 0, got {k_core}")
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
    for i, t in enumerate(catalogue.titles):
        problem = title_problem(t)
        if problem:
            raise DataError(source, f"item {order[i]!r}: {problem}")
    users_before, users_after = {e[0] for e in events}, Counter(e[0] for e in kept)
    single = [u for u, n in users_after.items() if n < 2]
    report = {
        "k_core": {
            "k": k_core,
            "interactions": len(events) - len(kept),
            "users": len(users_before) - len(users_after),
            "items": len({e[1] for e in events}) - len(order),
        },
        "single_interaction_users": {"users": len(single), "interactions": len(single)},
        "kept": {
            "interactions": len(kept),
            "users": len(users_after),
            "items": len(order),
            "rows": {s: len(v) for s, v in splits.items()},
        },
    }
    return RecDataset(
        catalogue, splits, name=name, domain=domain, quirks=count_quirks(catalogue, splits), report=report
    )


def write_converted(ds: RecDataset, out_dir: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Write ``ds`` and its report as a new folder swapped in whole (see :func:`staged_output_dir`)."""
    with staged_output_dir(out_dir, overwrite, inputs) as tmp:
        write_d3(ds, tmp)
        atomic_write_json(tmp / REPORT_FILE, ds.report)
    ds.root = out_dir


def format_report(report: dict) -> str:
    """One line per thing dropped, filtered or ignored during conversion (for people)."""
    lines = []
    unknown = report.get("unknown_items")
    if unknown and unknown["interactions"]:
        lines.append(
            f"dropped {unknown['interactions']:,} interactions with {unknown['distinct_items']:,} items missing "
            f"from the item file (e.g. {', '.join(map(repr, unknown['examples']))})"
        )
    if report.get("below_min_rating"):
        lines.append(f"dropped {report['below_min_rating']:,} interactions rated below min_rating")
    kc = report.get("k_core", {})
    if kc.get("interactions"):
        lines.append(
            f"dropped {kc['interactions']:,} interactions, {kc['users']:,} users and {kc['items']:,} items "
            f"by the {kc['k']}-core filter"
        )
    single = report.get("single_interaction_users", {})
    if single.get("users"):
        lines.append(f"dropped {single['users']:,} users with a single interaction (a row needs a history)")
    if report.get("items_without_interactions"):
        lines.append(f"left out {report['items_without_interactions']:,} items of the item file that no "
                     "interaction names")  # fmt: skip
    for which, cols in report.get("ignored_columns", {}).items():
        if cols:
            lines.append(
                f"ignored: column{'s' if len(cols) > 1 else ''} {_column_list(cols)} of the {which} file "
                "(flrec uses item titles only)"
            )
    return "\n".join(lines) if lines else "nothing dropped or ignored"


def _column_list(cols: list[str]) -> str:
    """'category, brand' or, for runs of unnamed columns, '#2-#23'."""
    parts: list[str] = []
    run: list[int] = []
    for c in [*cols, None]:
        k = int(c[1:]) if c is not None and c[:1] == "#" and c[1:].isdigit() else None
        if k is not None and (not run or k == run[-1] + 1):
            run.append(k)
            continue
        if run:
            parts.append(f"#{run[0]}" if len(run) == 1 else f"#{run[0]}-#{run[-1]}")
            run = []
        if k is not None:
            run.append(k)
        elif c is not None:
            parts.append(one_line(c))
    return ", ".join(parts)


# ------------------------------------------------------------------------------------ users' data


def convert_interactions(
    interactions: Path,
    items: Path,
    out_dir: Path,
    *,
    user_col: Column,
    item_col: Column,
    time_col: Column,
    item_id_col: Column,
    title_col: Column,
    rating_col: Column | None = None,
    sep: str = ",",
    items_sep: str | None = None,
    encoding: str = "utf-8",
    header: bool = True,
    items_header: bool | None = None,
    k_core: int = 0,
    max_history: int = 10,
    min_rating: float | None = None,
    shuffle_seed: int = 42,
    name: str | None = None,
    domain: str = "item",
    drop_unknown: bool = False,
    overwrite: bool = False,
) -> RecDataset:
    """Convert an interaction log plus an item table into a D3 folder.

    Columns are header names, or 0-based indices (``header=False`` for files without a header row,
    e.g. MovieLens ``u.data``: ``user_col=0, item_col=1, rating_col=2, time_col=3, sep="\\t"``).
    ``items_sep``/``items_header`` default to ``sep``/``header``. Timestamps may be Unix seconds or
    ISO 8601 dates (naive ones are read as UTC). Without ``rating_col`` every rating is 0.0.
    ``min_rating`` keeps interactions rated at least that much; ``drop_unknown`` drops (and counts)
    interactions whose item is not in the item file instead of stopping. Item-file columns other
    than the id and title are not used; they are listed as ignored in the report.

    ``out_dir`` must be new or empty unless ``overwrite``; it is written as a whole or not at all.
    Returns the dataset; ``ds.report`` (also written as ``convert_report.json``) counts everything
    dropped, filtered or ignored (see :func:`format_report`).
    """
    interactions, items, out_dir = Path(interactions), Path(items), Path(out_dir)
    if min_rating is not None and rating_col is None:
        raise ConfigError("min_rating needs rating_col: name the column that holds the ratings")
    if min_rating is not None and not math.isfinite(min_rating):
        raise ConfigError(f"min_rating must be a finite number, got {min_rating}")
    sep = check_sep(sep, "sep")
    items_sep = check_sep(items_sep, "items_sep") if items_sep is not None else sep
    check_encoding(encoding)
    items_header = header if items_header is None else items_header
    check_output_dir(out_dir, overwrite, (interactions, items))  # before any work, not after it
    ignored: dict[str, list[str]] = {}
    titles = _read_titles(items, items_sep, encoding, item_id_col, title_col, items_header, ignored)
    cols = (user_col, item_col, time_col, rating_col)
    events, report = _read_events(
        interactions, sep, encoding, cols, titles, items, min_rating, header, drop_unknown, ignored
    )
    ds = build_d3_dataset(
        events, titles, source=interactions, k_core=k_core, max_history=max_history,
        shuffle_seed=shuffle_seed, name=name or out_dir.name, domain=domain,
    )  # fmt: skip
    ds.report = {
        "interactions_file": str(interactions),
        "items_file": str(items),
        **report,
        **ds.report,
        "items_without_interactions": len(titles.keys() - {e[1] for e in events}),
        "ignored_columns": ignored,
    }
    write_converted(ds, out_dir, overwrite, (interactions, items))
    return ds


def _read_titles(
    path: Path, sep: str, encoding: str, id_col: Column, title_col: Column, header: bool,
    ignored: dict[str, list[str]],
) -> dict[str, str]:  # fmt: skip
    """Raw item id -> stripped title; every item needs exactly one valid title (see title_problem)."""
    titles: dict[str, str] = {}
    names = {"item_id_col": id_col, "title_col": title_col}
    for line, rec in _read_table(path, sep, encoding, names, header, ignored, "items"):
        item, title = rec["item_id_col"].strip(), rec["title_col"].strip()
        if not title:
            raise DataError(
                path, f"item {item!r} has no title; give every item one", line=line, field=str(title_col)
            )
        problem = title_problem(title)
        if problem:
            raise DataError(path, f"item {item!r}: {problem}", line=line, field=str(title_col))
        if titles.setdefault(item, title) != title:
            msg = f"item {item!r} is listed twice with different titles; keep one"
            raise DataError(path, msg, line=line, field=str(id_col))
    if not titles:
        raise DataError(path, "no items; the item file needs one line per item with an id and a title")
    return titles


def _read_events(
    path: Path,
    sep: str,
    encoding: str,
    cols: tuple[Column, Column, Column, Column | None],
    titles: dict[str, str],
    items_path: Path,
    min_rating: float | None,
    header: bool,
    drop_unknown: bool,
    ignored: dict[str, list[str]],
) -> tuple[list[Event], dict]:
    """``(user, item, time, rating)`` per kept row, in file order, and counts of the dropped rows."""
    user_col, item_col, time_col, rating_col = cols
    names = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
    if rating_col is not None:
        names["rating_col"] = rating_col
    events: list[Event] = []
    unknown: Counter = Counter()
    below = read = 0
    for line, rec in _read_table(path, sep, encoding, names, header, ignored, "interactions"):
        read += 1
        item = rec["item_col"].strip()
        if item not in titles:
            if drop_unknown:
                unknown[item] += 1
                continue
            msg = (
                f"item {item!r} is not in the item file {items_path}; add it with a title, or pass "
                "--drop-unknown (drop_unknown=True) to drop such interactions"
            )
            raise DataError(path, msg, line=line, field=str(item_col))
        rating = _parse_rating(rec["rating_col"], path, line, str(rating_col)) if rating_col is not None else 0.0
        ts = _parse_time(rec["time_col"], path, line, str(time_col))
        if min_rating is not None and rating < min_rating:  # an explicit, requested filter
            below += 1
            continue
        events.append((rec["user_col"].strip(), item, ts, rating))
    if not events:
        why = []
        if unknown:
            why.append(f"{sum(unknown.values())} name items missing from the item file")
        if below:
            why.append(f"{below} are rated below {min_rating}")
        detail = f" of {read} read ({'; '.join(why)})" if why else ""
        raise DataError(path, f"no interactions left{detail}; check the files, the columns and min_rating")
    report = {
        "interactions_read": read,
        "unknown_items": {
            "interactions": sum(unknown.values()),
            "distinct_items": len(unknown),
            "examples": [k for k, _ in unknown.most_common(3)],
        },
        "below_min_rating": below,
    }
    return events, report


def _read_table(
    path: Path,
    sep: str,
    encoding: str,
    needed: dict[str, Column],
    header: bool,
    ignored: dict[str, list[str]],
    which: str,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, {option: value})`` rows of a delimited file, checking the ``needed`` columns.

    With ``header``, columns are names (or 0-based indices); without, they must be indices. The
    file's other columns are recorded in ``ignored[which]``.
    """
    if path.is_dir():
        raise DataError(path, "is a folder, but a file is expected here; pass the file inside it")
    records = iter_csv(path, delimiter=sep, encoding=encoding, allow_gzip=True)
    names: list[str] = []
    if header:
        first = next(records, None)
        if first is None:
            raise DataError(path, "file is empty; expected a header row naming the columns", line=1)
        names = [h.strip().lstrip("\ufeff") for h in first[1]]
    index: dict[str, int] = {}
    for option_name, col in needed.items():
        index[option_name] = _column_index(path, col, names, header, sep, option_name)
    width = max(index.values()) + 1
    used = set(index.values())
    if header:
        ignored[which] = [n or f"#{i}" for i, n in enumerate(names) if i not in used]
    for line, fields in records:
        if not fields or fields == [""]:
            continue
        if len(fields) < width:
            have = f"the header has {len(names)}" if header else f"column {width - 1} is needed"
            raise DataError(
                path, f"row has {len(fields)} fields but {have}; check sep={sep!r} and quoting", line=line
            )
        if not header and which not in ignored:
            ignored[which] = [f"#{i}" for i in range(len(fields)) if i not in used]
        yield line, {k: fields[i] for k, i in index.items()}


def _column_index(path: Path, col: Column, names: list[str], header: bool, sep: str, option_name: str) -> int:
    if isinstance(col, bool) or not isinstance(col, int | str):
        raise ConfigError(f"{option_name}: expected a column name or a 0-based index, got {col!r}")
    if isinstance(col, int):
        if col < 0 or (header and col >= len(names)):
            found = f" (the header has {len(names)} columns)" if header else ""
            raise ConfigError(f"{option_name}: column index {col} is out of range{found}; indices start at 0")
        return col
    if not header:
        raise ConfigError(
            f"{option_name}: {col!r} is a column name, but the file has no header; give a 0-based column index"
        )
    if col not in names:
        found = ", ".join(names) or "none"
        raise DataError(
            path, f"column not found (columns found: {found}); check the column names and sep={sep!r}",
            line=1, field=col,
        )  # fmt: skip
    return names.index(col)


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
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())
    except (ValueError, OverflowError, OSError):
        raise DataError(
            path, f"timestamp {text[:40]!r} is neither Unix seconds nor an ISO 8601 date", line=line, field=field
        ) from None


def _parse_rating(text: str, path: Path, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"rating {text.strip()[:40]!r} is not a number", line=line, field=field) from None
    if not math.isfinite(value):
        raise DataError(path, f"rating {text.strip()!r} is not a finite number", line=line, field=field)
    return value


# -------------------------------------------------------------------------------------- MovieLens


def prepare_movielens(
    raw_dir: Path, out_dir: Path, *, k_core: int = 0, max_history: int = 10, overwrite: bool = False
) -> RecDataset:
    """Convert raw MovieLens 100K (``u.data`` + ``u.item``) into a D3 folder with domain "movie".

    With the defaults: 99,057 rows -> train 79,245 / valid 9,906 / test 9,906. A movie id listed
    twice in ``u.item`` is an error (nothing is silently kept or dropped); ``ds.report`` and
    ``convert_report.json`` count what the protocol dropped.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    data, item_file = raw_dir / "u.data", raw_dir / "u.item"
    for p in (data, item_file):
        if not p.is_file():
            raise DataError(p, "MovieLens 100K file not found; pass the unpacked ml-100k folder")
    check_output_dir(out_dir, overwrite, (raw_dir,))
    titles: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, text in enumerate(_read_lines(item_file), 1):
        if not text.strip():
            continue
        parts = text.split("|")
        if len(parts) < 2 or not parts[1].strip():
            raise DataError(item_file, "expected 'movie id|title|...' with a non-empty title", line=line)
        movie, title = parts[0].strip(), parts[1].strip()
        if movie in titles:
            raise DataError(
                item_file, f"movie id {movie!r} appears twice (lines {first_line[movie]} and {line}); keep one",
                line=line, field="movie id",
            )  # fmt: skip
        problem = title_problem(title)
        if problem:
            raise DataError(item_file, f"movie {movie!r}: {problem}", line=line, field="title")
        titles[movie], first_line[movie] = title, line
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
    if not events:
        raise DataError(data, "no ratings; expected 'user<TAB>item<TAB>rating<TAB>timestamp' lines")
    ds = build_d3_dataset(
        events, titles, source=data, k_core=k_core, max_history=max_history, name=raw_dir.name, domain="movie"
    )
    ds.report = {
        "interactions_file": str(data),
        "items_file": str(item_file),
        "interactions_read": len(events),
        **ds.report,
        "items_without_interactions": len(titles.keys() - {e[1] for e in events}),
    }
    write_converted(ds, out_dir, overwrite, (raw_dir,))
    return ds


def _read_lines(path: Path) -> list[str]:
    """Lines of a MovieLens file; its titles are Latin-1 in the original release.

    Split on "\\n" only: ``str.splitlines`` would also cut a title at a stray \\r, \\x0b or \\x85.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise open_error(path, e) from None
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(path, "is gzip-compressed; decompress it first (gunzip)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
