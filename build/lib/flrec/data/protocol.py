"""The D3 / LatentR3 row protocol shared by every converter (Amazon, MovieLens, users' own data).

Per user, interactions sorted by time; every position ≥ 1 becomes a row whose history is the up to
``max_history`` previous items; all rows are sorted globally by target timestamp (stable, so ties
keep user order) and cut chronologically 8:1:1 into train/valid/test.
"""

from __future__ import annotations

from collections.abc import Iterable

from flrec.data.schema import Interaction


def iterative_k_core(events: list[tuple[str, int, int, float]], k: int) -> list[tuple[str, int, int, float]]:
    """Repeatedly drop users and items with fewer than ``k`` events until stable.

    ``events`` are ``(user, item, timestamp, rating)``; repeated (user, item) events count, as in D3.
    ``k <= 1`` returns the events unchanged.
    """
    if k <= 1:
        return list(events)
    from collections import Counter

    cur = list(events)
    while True:
        uc = Counter(e[0] for e in cur)
        ic = Counter(e[1] for e in cur)
        nxt = [e for e in cur if uc[e[0]] >= k and ic[e[1]] >= k]
        if len(nxt) == len(cur):
            return nxt
        cur = nxt


def sliding_window_rows(
    events: Iterable[tuple[str, int, int, float]],
    max_history: int = 10,
    raw_ids: dict[int, str] | None = None,
) -> list[Interaction]:
    """Build D3 rows from ``(user, item, timestamp, rating)`` events, sorted by target time."""
    by_user: dict[str, list[tuple[int, int, float]]] = {}
    for user, item, ts, rating in events:
        by_user.setdefault(user, []).append((ts, item, rating))
    rows: list[Interaction] = []
    for user, seq in by_user.items():
        seq.sort(key=lambda x: x[0])  # stable: equal timestamps keep input order
        for pos in range(1, len(seq)):
            hist = seq[max(0, pos - max_history) : pos]
            ts, item, rating = seq[pos]
            rows.append(
                Interaction(
                    user=user,
                    history=[h[1] for h in hist],
                    target=item,
                    history_timestamps=[h[0] for h in hist],
                    timestamp=ts,
                    history_ratings=[h[2] for h in hist],
                    rating=rating,
                    history_raw=[raw_ids[h[1]] for h in hist] if raw_ids else [],
                    target_raw=raw_ids[item] if raw_ids else "",
                )
            )
    rows.sort(key=lambda r: r.timestamp)
    return rows


def chronological_split(rows: list[Interaction], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[Interaction]]:
    """Cut time-sorted rows 8:1:1 exactly as D3 does: boundaries ``int(.8n)`` and ``int(.9n)``.

    (CDs: n = 61,564 gives 49,251 / 6,156 / 6,157 — the published files.)
    """
    n = len(rows)
    a = int(n * ratios[0])
    b = int(n * (ratios[0] + ratios[1]))
    return {"train": rows[:a], "valid": rows[a:b], "test": rows[b:]}
