"""Amazon Review 2018 raw files -> a D3-format dataset, reproducing LatentR3's variant of D3.

Steps (D3 ``code/process.py``; LatentR3 changes only the window-extension rule):

1. **Titles** (meta file): drop items with no title or a title containing ``<span id``; replace
   ``&quot;`` and ``&amp;``; strip spaces, then double quotes; keep titles longer than 1 character
   with at most 20 words (``split(" ")``, so double spaces count as words, as in D3). An ASIN with
   *any* rejected meta line is dropped, and the last accepted title wins (D3's set/dict logic).
2. **Window**: reviews with ``start <= unixReviewTime <= end``, where start/end are the first
   instant of the given months. So the default end "2018-11" keeps reviews up to and including
   2018-11-01 00:00:00. Boundaries are in **UTC**; D3 used the machine's local time
   (``datetime(...).timestamp()``), which shifts both boundaries by the UTC offset (the published
   CDs/Office files look the same either way: their reviews end in October 2018).
3. **Iterative k-core** (k=5) on users and items; repeated reviews of one item count.
4. **Extension**: if fewer than ``min_items`` items survive, the start moves back
   (``rule="latentr3"``: 3 months until >= 5,000 items; ``rule="d3"``: 1 year until >= 10,000).
   The start never goes before ``earliest_start``; if even that window is too small it is used
   anyway (as D3 does at 1996) with a warning, or ``on_short="error"`` raises.
5. **Ids**: items in order of first appearance among the kept reviews (file order), shuffled
   with ``random.Random(42)``; rows by :mod:`flrec.data.protocol` (<= 10 history items, global
   chronological 8:1:1 split).

Files are streamed line by line (the real ones are gigabytes): one pass over the meta file, one
over the reviews, keeping four numbers per in-range review in numpy arrays; each window trial then
runs on the arrays. Both strict JSON lines and the older Python-literal lines are accepted.
"""

from __future__ import annotations

import ast
import datetime as dt
import gzip
import json
import logging
import random
import re
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from flrec.config import ConfigBase, option
from flrec.data.protocol import chronological_split, sliding_window_rows
from flrec.data.schema import Catalogue, RecDataset, title_problem
from flrec.data.textio import check_output_dir, staged_output_dir
from flrec.errors import ConfigError, DataError, FlrecError
from flrec.utils.io import atomic_write_json

log = logging.getLogger(__name__)

RULES: dict[str, tuple[int, int]] = {"latentr3": (5000, 3), "d3": (10000, 12)}  # min items, step months
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")


@dataclass
class AmazonPrepConfig(ConfigBase):
    """How raw Amazon Review 2018 files become a D3 dataset."""

    rule: Literal["latentr3", "d3"] = option(
        "latentr3",
        "window extension: latentr3 = back 3 months until >= 5,000 items; d3 = back 1 year until >= 10,000",
    )
    start: str = option("2017-10", "first window start month (YYYY-MM, UTC)")
    end: str = option("2018-11", "window end month (YYYY-MM): reviews up to its first instant, UTC, are kept")
    earliest_start: str = option("1996-01", "the start is never moved before this month (YYYY-MM)")
    min_items: int | None = option(
        None, "items the k-core must keep, else the window grows (default: by rule)"
    )
    step_months: int | None = option(None, "months the start moves back per extension (default: by rule)")
    on_short: Literal["warn", "error"] = option(
        "warn", "if even earliest_start is too small: use it and warn, or fail"
    )
    k_core: int = option(5, "iterative k-core threshold on users and items (repeated reviews count)")
    max_history: int = option(10, "history items per row (D3 uses 10)")
    shuffle_seed: int = option(42, "seed of random.Random(seed).shuffle over item ids (D3 uses 42)")
    name: str | None = option(None, "dataset name (default as D3 names files: <Category>_5_2015-10-2018-11)")
    domain: str = option("product", "domain word used in prompts (e.g. CD, video game)")
    progress: bool = option(True, "show tqdm progress bars while streaming the raw files")

    def __post_init__(self) -> None:
        for key in ("start", "end", "earliest_start"):
            _month(getattr(self, key), key)
        if (
            not _month(self.earliest_start, "earliest_start")
            <= _month(self.start, "start")
            <= _month(self.end, "end")
        ):
            raise ConfigError("config keys 'earliest_start' <= 'start' <= 'end' must hold (YYYY-MM)")
        for key in ("min_items", "step_months"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}': must be >= 1 (or unset for the rule's default)")
        if self.k_core < 1 or self.max_history < 1:
            raise ConfigError("config keys 'k_core' and 'max_history' must be >= 1")

    @property
    def threshold(self) -> int:
        return self.min_items if self.min_items is not None else RULES[self.rule][0]

    @property
    def step(self) -> int:
        return self.step_months if self.step_months is not None else RULES[self.rule][1]


def _month(text: str, key: str) -> int:
    """``YYYY-MM`` as a month count (year * 12 + month - 1)."""
    m = _MONTH.match(str(text))
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ConfigError(f"config key '{key}': {text!r} is not a month like 2017-10")
    return int(m.group(1)) * 12 + int(m.group(2)) - 1


def month_start_utc(months: int) -> int:
    """Unix time of the first instant (UTC) of a month count from :func:`_month`."""
    return int(dt.datetime(months // 12, months % 12 + 1, 1, tzinfo=dt.UTC).timestamp())


def _label(months: int) -> str:
    return f"{months // 12}-{months % 12 + 1}"  # D3 file names do not pad months: 2017-1


# ------------------------------------------------------------------------------------------ reading


def iter_records(path: Path, progress: bool = True) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line of a (gzipped) JSON-lines file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            bar = tqdm(f, desc=path.name, unit=" lines", unit_scale=True, disable=not progress, mininterval=1)
            for lineno, line in enumerate(bar, 1):
                if line.strip():
                    yield lineno, _parse(line, path, lineno)
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated gzip, not gzip, bad bytes
        raise DataError(path, f"cannot read the file ({type(e).__name__}: {e}); re-download it") from None


def _parse(line: str, path: Path, lineno: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        try:  # the 2014 release wrote Python literals ("eval" lines): {'asin': '...', ...}
            rec = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(path, f"not a JSON object ({e.msg} at column {e.colno})", line=lineno) from None
    if not isinstance(rec, dict):
        raise DataError(path, f"expected one JSON object per line, got {type(rec).__name__}", line=lineno)
    return rec


def clean_title(raw: object, path: Path, lineno: int) -> tuple[str | None, str]:
    """D3's title filter: ``(title, "kept")`` or ``(None, reason)``.

    Beyond D3, a title that breaks flrec's shared title rule (:func:`~flrec.data.schema.title_problem`:
    a line break, a special token) is dropped as ``invalid_title`` and counted in the report.
    """
    if raw is None:
        return None, "no_title"
    if not isinstance(raw, str):
        raise DataError(path, f"title must be a string, got {type(raw).__name__}", line=lineno, field="title")
    if "<span id" in raw:
        return None, "span_id_title"
    title = raw.replace("&quot;", '"').replace("&amp;", "&").strip(" ").strip('"')
    if len(title) <= 1:
        return None, "short_title"
    if len(title.split(" ")) > 20:
        return None, "long_title"
    if title_problem(title):  # a line break or a special token: no D3 file could hold it faithfully
        return None, "invalid_title"
    return title, "kept"


def read_titles(meta: Path, progress: bool = True) -> tuple[dict[str, str], Counter]:
    """ASIN -> cleaned title for items that pass the filter, and a count per filter outcome."""
    titles: dict[str, str] = {}
    rejected: set[str] = set()
    counts: Counter = Counter()
    for lineno, rec in iter_records(meta, progress):
        asin = rec.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataError(
                meta, "missing or non-string ASIN; every meta line needs one", line=lineno, field="asin"
            )
        title, outcome = clean_title(rec.get("title"), meta, lineno)
        counts[outcome] += 1
        if title is None:
            rejected.add(asin)
        else:
            titles[asin] = title
    for asin in rejected & titles.keys():  # D3 drops an ASIN if any of its meta lines fails
        del titles[asin]
    counts["asins_kept"] = len(titles)
    return titles, counts


@dataclass
class _Reviews:
    """In-range reviews of titled items, in file order, as interned integer arrays."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    rating: np.ndarray
    users: list[str]
    asins: list[str]


def read_reviews(
    path: Path, titles: dict[str, str], lo: int, hi: int, progress: bool = True
) -> tuple[_Reviews, Counter]:
    """Reviews of titled items with ``lo <= unixReviewTime <= hi``; other reviews are counted, not kept."""
    user_ix: dict[str, int] = {}
    item_ix: dict[str, int] = {}
    user_col, item_col, ts_col, rating_col = array("i"), array("i"), array("q"), array("d")
    counts: Counter = Counter()
    for lineno, rec in iter_records(path, progress):
        user = _field(rec, "reviewerID", _text, path, lineno)
        asin = _field(rec, "asin", _text, path, lineno)
        rating = _field(rec, "overall", float, path, lineno)
        ts = _field(rec, "unixReviewTime", int, path, lineno)
        if asin not in titles:
            counts["untitled_item"] += 1
        elif not lo <= ts <= hi:
            counts["outside_earliest_window"] += 1
        else:
            user_col.append(user_ix.setdefault(user, len(user_ix)))
            item_col.append(item_ix.setdefault(asin, len(item_ix)))
            ts_col.append(ts)
            rating_col.append(rating)
    counts["kept"] = len(user_col)
    cols = (np.frombuffer(c, dtype=c.typecode) for c in (user_col, item_col, ts_col, rating_col))
    return _Reviews(*cols, users=list(user_ix), asins=list(item_ix)), counts


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _field(rec: dict, key: str, convert, path: Path, lineno: int):
    """``convert(rec[key])``, or a DataError naming the file, line and field."""
    try:
        value = rec[key]
        if value == "" or isinstance(value, bool):
            raise ValueError
        return convert(value)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DataError(
            path, f"missing or malformed value {rec.get(key)!r}", line=lineno, field=key
        ) from None


# ------------------------------------------------------------------------------------------ filtering


def k_core_mask(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Iterative k-core on users and items: a mask of the surviving reviews (repeats count).

    D3 stops a window's loop early once fewer than the wanted items are left; the result is the
    same, and running to the fixed point keeps the logged counts exact (it costs little in numpy).
    """
    keep = np.ones(len(user), dtype=bool)
    while True:
        uc = np.bincount(user[keep], minlength=user.max(initial=-1) + 1)
        ic = np.bincount(item[keep], minlength=item.max(initial=-1) + 1)
        nxt = keep & (uc[user] >= k) & (ic[item] >= k)
        if np.array_equal(nxt, keep):
            return keep
        keep = nxt


def prepare_amazon(
    reviews: str | Path,
    meta: str | Path,
    out_dir: str | Path | None,
    cfg: AmazonPrepConfig | None = None,
    *,
    overwrite: bool = False,
) -> RecDataset:
    """Build the D3 dataset from raw ``<Category>_5.json.gz`` + ``meta_<Category>.json.gz``.

    With ``out_dir``, writes the D3 folder and ``prepare_report.json`` (filter counts and every
    window tried); ``out_dir`` must be new or empty unless ``overwrite``, and is written as a whole
    or not at all.
    """
    cfg = cfg or AmazonPrepConfig()
    reviews, meta = Path(reviews), Path(meta)
    if out_dir is not None:
        check_output_dir(out_dir, overwrite, (reviews, meta))
    for p in (reviews, meta):
        if not p.is_file():
            raise DataError(
                p,
                "file not found; pass the Amazon Review 2018 reviews (X_5.json.gz) and meta (meta_X.json.gz)",
            )
    titles, title_counts = read_titles(meta, cfg.progress)
    earliest, start, end = (_month(getattr(cfg, k), k) for k in ("earliest_start", "start", "end"))
    hi = month_start_utc(end)
    data, review_counts = read_reviews(reviews, titles, month_start_utc(earliest), hi, cfg.progress)

    trials = []
    while True:
        in_window = data.ts >= month_start_utc(start)
        idx = np.flatnonzero(in_window)
        keep = idx[k_core_mask(data.user[idx], data.item[idx], cfg.k_core)]
        n_items = len(np.unique(data.item[keep]))
        users = len(np.unique(data.user[keep]))
        trials.append({"start": _label(start), "reviews": len(keep), "users": users, "items": n_items})
        log.info("window %s..%s: %s", _label(start), _label(end), trials[-1])
        if n_items >= cfg.threshold:
            break
        if start - cfg.step < earliest:
            msg = (
                f"{reviews.name}: even the earliest window {_label(start)}..{_label(end)} keeps only "
                f"{n_items} items after {cfg.k_core}-core (< {cfg.threshold})"
            )
            if cfg.on_short == "error":
                raise FlrecError(msg + "; lower min_items or move earliest_start back")
            log.warning(msg + "; using it anyway (on_short=warn)")
            break
        if len(data.ts) and month_start_utc(start) <= data.ts.min():
            # The window already holds every review: later steps change nothing, jump to the last one.
            start -= (start - earliest) // cfg.step * cfg.step
        else:
            start -= cfg.step

    name = cfg.name or f"{_category(reviews)}_{cfg.k_core}_{_label(start)}-{_label(end)}"
    ds = _build(data, keep, titles, cfg, name)
    if out_dir is not None:
        from flrec.data.d3 import write_d3

        out_dir = Path(out_dir)
        report = {
            "reviews_file": str(reviews),
            "meta_file": str(meta),
            "config": cfg.to_dict(),
            "window_utc": [month_start_utc(start), hi],
            "titles": dict(title_counts),
            "reviews": dict(review_counts),
            "windows_tried": trials,
            "rows": {s: len(r) for s, r in ds.splits.items()},
            "items": len(ds.catalogue),
        }
        ds.report = report
        with staged_output_dir(out_dir, overwrite, (reviews, meta)) as tmp:
            write_d3(ds, tmp)
            atomic_write_json(tmp / "prepare_report.json", report)
        ds.root = out_dir
    return ds


def _build(
    data: _Reviews, keep: np.ndarray, titles: dict[str, str], cfg: AmazonPrepConfig, name: str
) -> RecDataset:
    items, first = np.unique(data.item[keep], return_index=True)
    order = [data.asins[i] for i in items[np.argsort(first)]]  # first appearance in file order
    random.Random(cfg.shuffle_seed).shuffle(order)  # == D3's random.seed(42); random.shuffle(items)
    item_id = {asin: i for i, asin in enumerate(order)}
    cols = (
        data.user[keep].tolist(),
        data.item[keep].tolist(),
        data.ts[keep].tolist(),
        data.rating[keep].tolist(),
    )
    events = [(data.users[u], item_id[data.asins[i]], t, r) for u, i, t, r in zip(*cols, strict=True)]
    rows = sliding_window_rows(events, max_history=cfg.max_history, raw_ids=dict(enumerate(order)))
    catalogue = Catalogue([titles[a] for a in order])
    collisions = catalogue.colliding_titles()
    return RecDataset(
        catalogue=catalogue,
        splits=chronological_split(rows),
        name=name,
        domain=cfg.domain,
        quirks={
            "colliding_titles": len(collisions),
            "items_with_colliding_titles": sum(map(len, collisions.values())),
        },
    )


def _category(reviews: Path) -> str:
    stem = re.sub(r"(\.json)?(\.gz)?$", "", reviews.name)
    return re.sub(r"_\d+$", "", stem)  # CDs_and_Vinyl_5 -> CDs_and_Vinyl
