"""Dataset statistics that matter for LLM-based recommendation.

Beyond sizes, these expose what distorts title-level evaluation: titles shared by several items,
scraped-HTML titles, duplicate rows, targets already in the history, and how much of the test
split is cold (never a train target) or popular-head.
"""

from __future__ import annotations

from collections import Counter

from flrec.data.d3 import duplicate_rows, has_html_entity, is_junk_title
from flrec.data.schema import RecDataset

HEAD_FRACTION = 0.2  # "head" = the most popular 20% of the catalogue


def dataset_stats(ds: RecDataset) -> dict:
    """A JSON-serialisable summary of ``ds`` (see :func:`format_stats` for a readable table)."""
    cat = ds.catalogue
    collisions = cat.colliding_titles()
    all_rows = [r for rows in ds.splits.values() for r in rows]
    lengths = Counter(len(r.history) for r in all_rows)
    n_rows = sum(lengths.values())
    stats: dict = {
        "name": ds.name,
        "domain": ds.domain,
        "rows": {s: len(rows) for s, rows in ds.splits.items()},
        "users": len({r.user for r in all_rows}),
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
        "repeated_targets": {s: sum(r.target in r.history for r in rows) for s, rows in ds.splits.items()},
        "duplicate_rows": {s: duplicate_rows(rows) for s, rows in ds.splits.items()},
    }
    train, test = ds.splits.get("train"), ds.splits.get("test")
    if train:
        counts = Counter(r.target for r in train)
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


def format_stats(stats: dict) -> str:
    """Render :func:`dataset_stats` output as an aligned two-column table."""
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
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
