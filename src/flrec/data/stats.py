"""Dataset statistics that matter for LLM-based recommendation.

Beyond sizes, these expose what distorts title-level evaluation: titles shared by several items,
scraped-HTML titles, duplicate rows, targets already in the history, and how much of the test
split is cold (never a train target) or popular-head.
"""

from __future__ import annotations

import itertools
from collections import Counter
from operator import attrgetter

from flrec.data.d3 import _gc_paused, cached_split_counts, has_html_entity, is_junk_title
from flrec.data.schema import RecDataset

HEAD_FRACTION = 0.2  # "head" = the most popular 20% of the catalogue

# What each term means (printed under the human table by `flrec data stats`).
LEGEND: dict[str, str] = {
    "domain": "the item word used in prompts (dataset.json, a known published folder name, else 'item')",
    "unique_titles": "distinct titles; lower than items when several items share a title",
    "colliding_titles": "titles shared by more than one item (a generated title then names several items)",
    "items_with_colliding_titles": "items whose title is shared with another item",
    "junk_titles": "titles scraped from HTML markup instead of a product name (e.g. '<span class=...')",
    "html_entity_titles": "titles holding an HTML entity such as &amp; (kept as published)",
    "repeated_targets": "rows whose target item is already in the row's history",
    "duplicate_rows": "rows identical to an earlier row of the same split (extra copies)",
    "popularity.head_items": f"how many items form the head: the most popular {HEAD_FRACTION:.0%} of the catalogue by train-target count",
    "popularity.head_share": "share of train rows whose target is a head item",
    "popularity.tail_share": "share of train rows whose target is not a head item",
    "popularity.items_never_train_target": "items that are never a train target",
    "cold_test_targets": "share of test rows whose target is never a train target (it may occur in train histories)",
    "unseen_test_targets": "share of test rows whose target never occurs in train at all, histories included",
    "test_targets_with_shared_title": "share of test rows whose target's title is shared by other items",
    "test_targets_with_junk_title": "share of test rows whose target has a junk title",
    "quirks.title_mismatches": "CSV titles that disagree with info.txt (info.txt is used)",
}


def dataset_stats(ds: RecDataset) -> dict:
    """A JSON-serialisable summary of ``ds`` (see :func:`format_stats` for a readable table)."""
    with _gc_paused():  # millions of temporary tuples, no cycles
        return _stats(ds)


def _stats(ds: RecDataset) -> dict:
    cat = ds.catalogue
    collisions = cat.colliding_titles()
    all_rows = list(itertools.chain.from_iterable(ds.splits.values()))
    lengths = Counter(map(len, map(attrgetter("history"), all_rows)))
    n_rows = sum(lengths.values())
    stats: dict = {
        "name": ds.name,
        "domain": ds.domain,
        "rows": {s: len(rows) for s, rows in ds.splits.items()},
        "users": len(set(map(attrgetter("user"), all_rows))),
        "items": len(cat),
        "unique_titles": len(cat.unique_titles),
        "history_length": {
            "min": min(lengths, default=0),
            "mean": round(sum(k * v for k, v in lengths.items()) / n_rows, 3) if n_rows else 0.0,
            "max": max(lengths, default=0),
            "histogram": {str(k): lengths[k] for k in sorted(lengths)},
        },
        "colliding_titles": len(collisions),
        "items_with_colliding_titles": sum(len(ids) for ids in collisions.values()),
        "junk_titles": sum(map(is_junk_title, cat.titles)),
        "html_entity_titles": sum(map(has_html_entity, cat.titles)),
        "repeated_targets": {s: cached_split_counts(ds, s)[1] for s in ds.splits},
        "duplicate_rows": {s: cached_split_counts(ds, s)[0] for s in ds.splits},
    }
    train, test = ds.splits.get("train"), ds.splits.get("test")
    if train:
        counts = Counter(map(attrgetter("target"), train))
        n_head = max(1, round(HEAD_FRACTION * len(cat)))
        head = sum(c for _, c in counts.most_common(n_head))
        stats["popularity"] = {
            "head_items": n_head,
            "head_share": round(head / len(train), 4),
            "tail_share": round(1 - head / len(train), 4),
            "items_never_train_target": len(cat) - len(counts),
        }
    if test:
        shared = {i for ids in collisions.values() for i in ids}
        if train:
            stats["cold_test_targets"] = round(sum(r.target not in counts for r in test) / len(test), 4)
            # Stricter: never seen in train at all, histories included (calibration.md's "never seen").
            seen = set(counts).union(*(r.history for r in train))
            stats["unseen_test_targets"] = round(sum(r.target not in seen for r in test) / len(test), 4)
        stats["test_targets_with_shared_title"] = round(sum(r.target in shared for r in test) / len(test), 4)
        stats["test_targets_with_junk_title"] = round(
            sum(is_junk_title(cat.titles[r.target]) for r in test) / len(test), 4
        )
    # Reader-only counts (e.g. CSV titles disagreeing with info.txt); the rest are recomputed above.
    stats["quirks"] = {k: v for k, v in ds.quirks.items() if k not in stats}
    return stats


def format_stats(stats: dict, legend: bool = False) -> str:
    """Render :func:`dataset_stats` output as an aligned two-column table (``legend``: explain the terms)."""
    lines: list[tuple[str, str]] = []

    def add(key: str, value: object) -> None:
        if isinstance(value, dict) and key != "history_length.histogram":
            for k, v in value.items():
                add(f"{key}.{k}" if key else k, v)
        elif isinstance(value, dict):  # histogram: one compact line "len:count ..."
            lines.append((key, " ".join(f"{k}:{v}" for k, v in value.items())))
        elif isinstance(value, float):
            lines.append((key, f"{value:.4g}"))
        else:
            lines.append((key, f"{value:,}" if isinstance(value, int) else str(value)))

    add("", stats)
    width = max(len(k) for k, _ in lines)
    table = "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
    if not legend:
        return table
    keys = [k for k, _ in lines]
    terms = [t for t in LEGEND if any(k == t or k.startswith(t + ".") for k in keys)]
    tw = max(map(len, terms), default=0)
    return table + "\n\nlegend:\n" + "\n".join(f"  {t.ljust(tw)}  {LEGEND[t]}" for t in terms)
