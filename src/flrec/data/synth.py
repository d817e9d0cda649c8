"""The embedded default dataset: synthetic shopping sequences with planted, drifting intents.

Why synthetic: the demo must run anywhere in minutes, and its structure must be *known* so that a
method that claims to factorise user preference can be checked against the truth.

Generative story (all draws from one ``numpy`` generator seeded by ``cfg.seed``):

* **Catalogue.** A product *series* is a (brand, style, category) triple with a price tier and
  1..``max_versions`` versions; an item is one version. Titles spell every facet, e.g.
  ``"Nordic Waterproof Hiking Boots Pro V2"`` (4-6 words, unique unless ``title_collisions``).
  Items get a Zipf popularity over a random order (``popularity_skew``).
* **Intents.** A global pool of ``n_intents`` preferences, each over two facets (e.g. category
  *Tent* + style *Insulated*, or brand *Cedar* + tier *Pro*). ``P(item | intent)`` ∝ popularity ×
  (1 if both facets match, ``partial_match`` if one does, ``off_intent`` if none).
* **Users.** Each mixes 2-4 intents with Dirichlet weights. At every step, with probability
  ``drift`` the mix shifts (new weights; half the time one intent is swapped for a new one).
  The next item is, in order of precedence: the next version of the series of the item just
  bought (``series_prob``, when there is one: order matters); a popularity draw (``noise``);
  otherwise a draw from one intent picked by weight. Items are not bought twice.
* **Rows.** Increasing timestamps per user, then the D3 protocol: sliding windows of
  ``max_history`` items, global chronological 8:1:1 split.

The ground truth (item facets, intent preferences, every user's intent mix over time and the
source of every purchase) is written as ``intents.json`` beside the splits.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flrec.config import ConfigBase, option
from flrec.data.protocol import chronological_split, sliding_window_rows
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.data.textio import check_output_dir, staged_output_dir
from flrec.errors import ConfigError
from flrec.utils.io import atomic_write_json

FACETS: dict[str, tuple[str, ...]] = {
    "brand": ("Nordic", "Summit", "Granite", "Cedar", "Harbor", "Aurora", "Ridge", "Falcon", "Timber", "Glacier"),
    "style": ("Waterproof", "Insulated", "Compact", "Classic", "Rugged", "Breathable", "Featherweight", "Reflective"),
    "category": (
        "Hiking Boots", "Rain Jacket", "Backpack", "Tent", "Headlamp", "Sleeping Bag",
        "Trekking Poles", "Water Bottle", "Camp Stove", "Fleece", "Trail Shoes", "Gloves",
    ),
    "tier": ("Lite", "Standard", "Pro"),  # price words; "Standard" is left out of titles
}  # fmt: skip
FACET_NAMES: tuple[str, ...] = tuple(FACETS)
SOURCES: tuple[str, ...] = ("intent", "series", "noise")


@dataclass
class SynthConfig(ConfigBase):
    """Settings of the synthetic dataset (defaults sized for the 2-core CPU demo)."""

    seed: int = option(0, "random seed; the same seed gives byte-identical files")
    n_items: int = option(480, "catalogue size (items = versions of product series)")
    n_users: int = option(500, "number of users (one interaction sequence each)")
    n_intents: int = option(24, "size of the global pool of intents (two-facet preferences)")
    intents_per_user_min: int = option(2, "fewest intents a user mixes")
    intents_per_user_max: int = option(4, "most intents a user mixes")
    seq_len_min: int = option(8, "shortest user sequence (items); each item after the first is a row")
    seq_len_max: int = option(20, "longest user sequence (items)")
    drift: float = option(0.08, "probability per step that a user's intent mix shifts")
    popularity_skew: float = option(0.5, "Zipf exponent of item popularity (0 = uniform)")
    noise: float = option(0.1, "share of purchases drawn by popularity alone, ignoring intents")
    series_prob: float = option(0.3, "probability to buy the next version of the series just bought")
    partial_match: float = option(0.08, "relative weight of an item matching one of an intent's two facets")
    off_intent: float = option(0.003, "relative weight of an item matching none of an intent's facets")
    min_intent_items: int = option(6, "each intent must fully match at least this many items")
    max_versions: int = option(4, "most versions per product series (V1..Vn)")
    title_collisions: int = option(0, "number of items given another item's title (as in published data)")
    max_history: int = option(10, "history items per row (D3 uses 10)")
    start_date: str = option("2020-01-01", "UTC date of the earliest possible first purchase (YYYY-MM-DD)")
    span_days: int = option(730, "users' first purchases are spread over this many days")
    mean_gap_days: float = option(7.0, "mean days between a user's purchases (exponential)")
    name: str = option("synth", "dataset name (written to dataset.json)")
    domain: str = option("product", "domain word used in prompts")

    def __post_init__(self) -> None:
        capacity = int(np.prod([len(FACETS[f]) for f in ("brand", "style", "category")])) * self.max_versions
        if not 20 <= self.n_items <= capacity:
            raise ConfigError(
                f"config key 'n_items': {self.n_items} must be in 20..{capacity} (raise max_versions for more)"
            )
        if self.n_users < 10:
            raise ConfigError(f"config key 'n_users': {self.n_users} is too small; use at least 10")
        if not 1 <= self.intents_per_user_min <= self.intents_per_user_max <= self.n_intents:
            raise ConfigError(
                "config keys 'intents_per_user_min'/'intents_per_user_max'/'n_intents': need "
                f"1 <= min <= max <= n_intents, got {self.intents_per_user_min}/{self.intents_per_user_max}/{self.n_intents}"
            )
        if not 2 <= self.seq_len_min <= self.seq_len_max <= self.n_items:
            raise ConfigError(
                "config keys 'seq_len_min'/'seq_len_max': need 2 <= min <= max <= n_items, "
                f"got {self.seq_len_min}/{self.seq_len_max}"
            )
        for key in ("drift", "noise", "series_prob", "partial_match", "off_intent"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key '{key}': {getattr(self, key)} must be in [0, 1]")
        if self.noise + self.series_prob >= 1.0:
            raise ConfigError(
                "config keys 'noise' + 'series_prob' must be < 1 so that intents drive some purchases"
            )
        if self.max_versions < 1 or self.max_history < 1 or self.min_intent_items < 1:
            raise ConfigError("config keys 'max_versions', 'max_history', 'min_intent_items' must be >= 1")
        if not 0 <= self.title_collisions <= self.n_items // 2:
            raise ConfigError(
                f"config key 'title_collisions': {self.title_collisions} must be in 0..{self.n_items // 2}"
            )
        if self.popularity_skew < 0 or self.mean_gap_days <= 0 or self.span_days < 0:
            raise ConfigError(
                "config keys 'popularity_skew', 'span_days' must be >= 0 and 'mean_gap_days' > 0"
            )
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ConfigError(
                f"config key 'start_date': {self.start_date!r} is not a YYYY-MM-DD date"
            ) from None


@dataclass
class SynthResult:
    """A generated dataset with its ground truth."""

    dataset: RecDataset
    planted: dict  # JSON-ready ground truth, written as intents.json
    intent_item_probs: np.ndarray  # [n_intents, n_items]: P(item | intent) before removing bought items
    popularity: np.ndarray  # [n_items]: the noise distribution
    next_version: np.ndarray  # [n_items]: id of the series' next version, -1 for the last one


# ------------------------------------------------------------------------------------------ catalogue


def _catalogue(
    cfg: SynthConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Items as a facet matrix ``[n, 4]`` (FACET_NAMES order), plus series id and version."""
    sizes = [len(FACETS[f]) for f in ("brand", "style", "category")]
    triples = np.array(list(itertools.product(*map(range, sizes))))[rng.permutation(int(np.prod(sizes)))]
    versions = rng.integers(1, cfg.max_versions + 1, size=len(triples))
    n_series = int(np.searchsorted(np.cumsum(versions), cfg.n_items)) + 1
    versions = versions[:n_series]
    versions[-1] -= versions.sum() - cfg.n_items  # trim the last series to hit n_items exactly
    series = np.repeat(np.arange(n_series), versions)
    version = np.concatenate([np.arange(1, v + 1) for v in versions])
    tier = rng.integers(0, len(FACETS["tier"]), size=n_series)
    facets = np.column_stack([triples[series], tier[series]])  # brand, style, category, tier
    order = rng.permutation(cfg.n_items)  # item ids carry no series structure
    facets, series, version = facets[order], series[order], version[order]
    titles = [_title(f, v) for f, v in zip(facets.tolist(), version.tolist(), strict=True)]
    if cfg.title_collisions:
        pick = rng.choice(cfg.n_items, size=2 * cfg.title_collisions, replace=False)
        for src, dst in pick.reshape(2, -1).T.tolist():
            titles[dst] = titles[src]
    return facets, series, version, titles


def _title(f: list[int], version: int) -> str:
    brand, style, category, tier = (FACETS[name][i] for name, i in zip(FACET_NAMES, f, strict=True))
    tier_word = "" if tier == "Standard" else f" {tier}"
    return f"{brand} {style} {category}{tier_word} V{version}"


def _next_version(series: np.ndarray, version: np.ndarray) -> np.ndarray:
    """Id of the item holding the next version of the same series (-1 for a series' last version)."""
    order = np.lexsort((version, series))
    same = series[order][1:] == series[order][:-1]  # versions of a series are consecutive 1..v
    nxt = np.full(len(series), -1)
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


# -------------------------------------------------------------------------------------------- intents


def _intents(cfg: SynthConfig, facets: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_intents`` distinct two-facet preferences, each fully matching enough items.

    Every facet pair is equally likely (pairs with many value combinations, like brand x category,
    would otherwise crowd out style x tier). Returns ``which [K, 2]`` (facet columns) and
    ``values [K, 2]`` (preferred value indices).
    """
    which, values, weight = [], [], []
    for pair in itertools.combinations(range(len(FACET_NAMES)), 2):
        combos, counts = np.unique(facets[:, pair], axis=0, return_counts=True)
        ok = combos[counts >= cfg.min_intent_items]
        which += [pair] * len(ok)
        values += ok.tolist()
        weight += [1.0 / max(len(ok), 1)] * len(ok)
    if len(which) < cfg.n_intents:
        raise ConfigError(
            f"config key 'n_intents': only {len(which)} distinct intents match >= {cfg.min_intent_items} "
            "items; lower n_intents or min_intent_items, or raise n_items"
        )
    pick = rng.choice(len(which), size=cfg.n_intents, replace=False, p=np.array(weight) / sum(weight))
    return np.array(which)[pick], np.array(values)[pick]


def _matches(facets: np.ndarray, which: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[K, n]`` number of an intent's two facets each item matches (0, 1 or 2)."""
    return (facets[:, which[:, 0]].T == values[:, :1]).astype(int) + (
        facets[:, which[:, 1]].T == values[:, 1:]
    )


# ---------------------------------------------------------------------------------------------- users


def _draw(p: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probability ∝ ``p`` among ``allowed`` (uniform if they all have 0)."""
    w = np.cumsum(p * allowed)
    if w[-1] <= 0:
        w = np.cumsum(allowed.astype(float))
    return int(np.searchsorted(w, rng.random() * w[-1], side="right"))


def synthesize(cfg: SynthConfig) -> SynthResult:
    """Generate the dataset and its ground truth in memory (deterministic given ``cfg``).

    The story, in the order its random draws are taken from one generator (the order is part of
    the output: the same seed must give byte-identical files): the catalogue, item popularity,
    the intent pool, then each user's sequence in turn.
    """
    rng = np.random.default_rng(cfg.seed)
    facets, series, version, titles = _catalogue(cfg, rng)
    nxt = _next_version(series, version)
    popularity = (rng.permutation(cfg.n_items) + 1.0) ** -cfg.popularity_skew
    popularity /= popularity.sum()
    which, values = _intents(cfg, facets, rng)
    match = _matches(facets, which, values)
    probs = popularity * np.array([cfg.off_intent, cfg.partial_match, 1.0])[match]
    probs /= probs.sum(axis=1, keepdims=True)

    world = _World(nxt, popularity, probs, match)
    base = int(dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.UTC).timestamp())
    events: list[tuple[str, int, int, float]] = []
    users: dict[str, dict] = {}
    for u in range(cfg.n_users):
        user = f"U{u:05d}"
        users[user] = _user(cfg, user, world, base, rng, events)
    planted = {
        "config": cfg.to_dict(),
        "facets": {name: list(vals) for name, vals in FACETS.items()},
        "items": _planted_items(titles, facets, series, version, popularity),
        "intents": _planted_intents(which, values, match),
        "users": users,
    }
    return SynthResult(_dataset(cfg, events, titles), planted, probs, popularity, nxt)


@dataclass
class _World:
    """What every user's purchases are drawn against (fixed once the catalogue and intents are)."""

    next_version: np.ndarray  # (n,) the item holding the next version of a series, -1 at its end
    popularity: np.ndarray  # (n,) sums to 1
    probs: np.ndarray  # (n_intents, n) per intent: the item distribution (popularity x facet match)
    match: np.ndarray  # (n_intents, n) facets of an intent each item matches (0, 1, 2)


def _user(cfg: SynthConfig, user: str, world: _World, base: int, rng: np.random.Generator,
          events: list[tuple[str, int, int, float]]) -> dict:
    """Draw one user's intent mix and purchase sequence; append its events, return its ground truth."""
    n = len(world.popularity)
    k = int(rng.integers(cfg.intents_per_user_min, cfg.intents_per_user_max + 1))
    mix = rng.choice(cfg.n_intents, size=k, replace=False)
    weights = rng.dirichlet(np.ones(k))
    length = int(rng.integers(cfg.seq_len_min, cfg.seq_len_max + 1))
    days = rng.uniform(0, cfg.span_days) + np.cumsum(rng.exponential(cfg.mean_gap_days, length) + 0.01)
    stamps = (base + days * 86400).astype(np.int64).tolist()  # strictly increasing (gaps >= 864 s)
    segments = [_segment(0, mix, weights)]
    allowed = np.ones(n, dtype=bool)
    items, sources, used = [], [], []
    for step in range(length):
        if step and rng.random() < cfg.drift:
            mix, weights = _drift(cfg, mix, k, rng)
            segments.append(_segment(step, mix, weights))
        item, source, intent = _purchase(cfg, world, items, allowed, mix, weights, k, rng)
        allowed[item] = False
        items.append(item)
        sources.append(source)
        used.append(intent)
        # Ratings follow fit: series and full intent matches 5, partial 4, off-intent or noise 3.
        fit = 2 if source == "series" else 0 if intent is None else int(world.match[intent, item])
        events.append((user, item, stamps[step], 3.0 + fit))
    return {"segments": segments, "items": items, "timestamps": stamps, "sources": sources, "intents": used}


def _drift(cfg: SynthConfig, mix: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The user's intent mix shifts: new weights and, half the time, one intent swapped."""
    weights = rng.dirichlet(np.ones(k))
    if rng.random() < 0.5:  # swap one intent for one the user does not have
        pool = np.setdiff1d(np.arange(cfg.n_intents), mix)
        if len(pool):
            mix = mix.copy()
            # (Python evaluates the right side first: the pool draw precedes the slot draw)
            mix[rng.integers(k)] = rng.choice(pool)
    return mix, weights


def _purchase(cfg: SynthConfig, world: _World, items: list[int], allowed: np.ndarray, mix: np.ndarray,
              weights: np.ndarray, k: int, rng: np.random.Generator) -> tuple[int, str, int | None]:
    """The next item, why it was bought (series | noise | intent) and the intent behind it (or None)."""
    follow = world.next_version[items[-1]] if items else -1
    # the short-circuits decide which draws are taken: keep the conditions in this order
    if follow >= 0 and allowed[follow] and rng.random() < cfg.series_prob:
        return int(follow), "series", None
    if rng.random() < cfg.noise:
        return _draw(world.popularity, allowed, rng), "noise", None
    intent = int(mix[_draw(weights, np.ones(k, dtype=bool), rng)])
    return _draw(world.probs[intent], allowed, rng), "intent", intent


def _dataset(cfg: SynthConfig, events: list[tuple[str, int, int, float]], titles: list[str]) -> RecDataset:
    """The D3 dataset of the events: sliding-window rows, split chronologically."""
    raw = {i: f"S{i:05d}" for i in range(cfg.n_items)}
    rows = sliding_window_rows(events, max_history=cfg.max_history, raw_ids=raw)
    catalogue = Catalogue(titles)
    collisions = catalogue.colliding_titles()
    return RecDataset(
        catalogue=catalogue,
        splits=chronological_split(rows),
        name=cfg.name,
        domain=cfg.domain,
        quirks={
            "colliding_titles": len(collisions),
            "items_with_colliding_titles": sum(map(len, collisions.values())),
        },
    )


def _planted_items(titles: list[str], facets: np.ndarray, series: np.ndarray, version: np.ndarray,
                   popularity: np.ndarray) -> list[dict]:
    return [
        {
            "id": i,
            "title": titles[i],
            **{f: FACETS[f][v] for f, v in zip(FACET_NAMES, row, strict=True)},
            "series": int(s),
            "version": int(v),
            "popularity": round(float(p), 6),
        }
        for i, (row, s, v, p) in enumerate(zip(facets.tolist(), series, version, popularity, strict=True))
    ]  # fmt: skip


def _planted_intents(which: np.ndarray, values: np.ndarray, match: np.ndarray) -> list[dict]:
    return [
        {
            "id": j,
            "prefers": {FACET_NAMES[a]: FACETS[FACET_NAMES[a]][v] for a, v in zip(w, vals, strict=True)},
            "full_match_items": int(np.count_nonzero(match[j] == 2)),
        }
        for j, (w, vals) in enumerate(zip(which.tolist(), values.tolist(), strict=True))
    ]  # fmt: skip


def _segment(step: int, mix: np.ndarray, weights: np.ndarray) -> dict:
    return {"from_step": step, "intents": mix.tolist(), "weights": [round(float(w), 4) for w in weights]}


def generate_synthetic(cfg: SynthConfig, out_dir: str | Path | None = None, *, overwrite: bool = False) -> RecDataset:
    """Generate the synthetic dataset; with ``out_dir``, write it as a D3 folder plus ``intents.json``.

    ``out_dir`` must be new or empty unless ``overwrite``; it is written as a whole or not at all.
    """
    if out_dir is not None:
        check_output_dir(out_dir, overwrite)
    res = synthesize(cfg)
    if out_dir is not None:
        from flrec.data.d3 import write_d3

        out_dir = Path(out_dir)
        with staged_output_dir(out_dir, overwrite) as tmp:
            write_d3(res.dataset, tmp)
            atomic_write_json(tmp / "intents.json", res.planted, indent=None)
        res.dataset.root = out_dir
    return res.dataset


# ---------------------------------------------------------------------------------------------- oracle


def oracle_scores(res: SynthResult, row: Interaction) -> np.ndarray:
    """Item scores of the generating process for ``row`` (an upper reference; uses the ground truth).

    The exact next-item distribution given the user's planted intent mix at that step, the series
    rule and the items already bought; ``-inf`` for items the user cannot buy again.
    """
    cfg = res.planted["config"]
    truth = res.planted["users"][row.user]
    step = truth["timestamps"].index(row.timestamp)
    seg = [s for s in truth["segments"] if s["from_step"] <= step][-1]
    allowed = np.ones(len(res.popularity), dtype=bool)
    allowed[truth["items"][:step]] = False
    intent = np.asarray(seg["weights"]) @ res.intent_item_probs[seg["intents"]]
    intent = intent * allowed / max((intent * allowed).sum(), 1e-12)
    pop = res.popularity * allowed / (res.popularity * allowed).sum()
    score = cfg["noise"] * pop + (1 - cfg["noise"]) * intent
    follow = res.next_version[truth["items"][step - 1]] if step else -1
    if follow >= 0 and allowed[follow]:
        score *= 1 - cfg["series_prob"]
        score[follow] += cfg["series_prob"]
    return np.where(allowed, score, -np.inf)
