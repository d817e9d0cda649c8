"""Raw Amazon Review 2018 -> D3: every filter, the UTC window, its extension, k-core cascade, ids, rows."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import random
import time
from pathlib import Path

import pytest

from flrec.data.amazon import AmazonPrepConfig, clean_title, prepare_amazon
from flrec.data.d3 import read_d3
from flrec.errors import ConfigError, DataError, FlrecError

END = int(dt.datetime(2018, 11, 1, tzinfo=dt.UTC).timestamp())  # 2018-11-01T00:00Z, inclusive
START_2017_04 = int(dt.datetime(2017, 4, 1, tzinfo=dt.UTC).timestamp())
DAY = 86400
TWENTY = " ".join(["w"] * 20)

# ASIN -> raw meta title (None: no title key). Kept unless noted.
META = {
    **{f"A{j}": f"Core Album {j}" for j in range(6)},
    **{f"B{j}": f"Old Album {j}" for j in range(6)},
    **{f"C{j}": f"Ancient Album {j}" for j in range(6)},
    "HTML": "Rock &amp; Roll &quot;Live&quot; Hits",  # -> Rock & Roll "Live" Hits
    "QUOTED": '  "Quoted Title"  ',  # -> Quoted Title
    "W20": TWENTY,  # exactly 20 words: kept
    "AB": "AB",  # 2 characters: kept
    "X": "Cascade Item",  # removed by the k-core cascade
    "SPAN": '<span id="x">Junk</span>',  # dropped
    "W21": TWENTY + " w",  # 21 words: dropped
    "ONE": ' "A" ',  # 1 character after stripping: dropped
    "NOTITLE": None,  # dropped
    "DUP": "Fine Title",  # a second meta line with an empty title drops it (D3's set logic)
}
A_USERS, B_USERS, C_USERS = (
    [f"a{i}" for i in range(6)],
    [f"b{i}" for i in range(6)],
    [f"c{i}" for i in range(6)],
)
EXTRA = ["HTML", "QUOTED", "W20", "AB", "SPAN", "W21", "ONE", "NOTITLE", "DUP", "UNKNOWN"]  # UNKNOWN: no meta
KEPT_RECENT = [f"A{j}" for j in range(6)] + ["HTML", "QUOTED", "W20", "AB"]


def _reviews() -> list[dict]:
    out: list[dict] = []

    def add(user: str, asin: str, ts: int) -> None:
        out.append({"reviewerID": user, "asin": asin, "overall": 4.0, "unixReviewTime": ts, "summary": "ok"})

    t = int(dt.datetime(2017, 11, 1, tzinfo=dt.UTC).timestamp())
    for j, asin in enumerate([f"A{j}" for j in range(6)] + EXTRA):
        for i, user in enumerate(A_USERS):
            add(user, asin, t + (j * 6 + i) * DAY)
    # Cascade (k=5): z has 4 reviews -> gone in pass 1; X then has 4 -> gone in pass 2; w then has 4 -> pass 3.
    for asin in ("A0", "A1", "A2", "X"):
        add("z", asin, t + 200 * DAY)
    for asin in ("A0", "A1", "A2", "A3", "X"):
        add("w", asin, t + 201 * DAY)
    for user in ("a0", "a1", "a2"):
        add(user, "X", t + 202 * DAY)
    # Window edges in UTC (the final window is 2017-04-01T00:00Z .. 2018-11-01T00:00Z, both inclusive).
    add("a0", "A0", END)  # inside in UTC; in UTC+8 local time the end is 8 h earlier
    add("a0", "A1", END + 1)  # outside
    add("a0", "A2", START_2017_04)  # inside
    add("a0", "A3", START_2017_04 - 3600)  # outside in UTC; inside in UTC+8 local time
    # Older blocks: B (2017-04..06) is reached by the second extension; C (2016) never.
    for block, users, t0 in (
        ("B", B_USERS, START_2017_04 + DAY),
        ("C", C_USERS, int(dt.datetime(2016, 6, 1, tzinfo=dt.UTC).timestamp())),
    ):
        for j in range(6):
            for i, user in enumerate(users):
                add(user, f"{block}{j}", t0 + (j * 6 + i) * 3600)
    return out


def _write(path: Path, records: list, python_literal: bool = False) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((repr(r) if python_literal else r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, Path]:
    meta = [{"asin": a, "title": t} if t is not None else {"asin": a, "brand": "x"} for a, t in META.items()]
    meta.append({"asin": "DUP", "title": " "})
    return _write(tmp_path / "CDs_and_Vinyl_5.json.gz", _reviews()), _write(
        tmp_path / "meta_CDs_and_Vinyl.json.gz", meta
    )


CFG = AmazonPrepConfig(min_items=16, progress=False)  # recent window: 10 items; + B block: 16


@pytest.fixture
def prepared(raw: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Run under a UTC+8 local time zone: the result must not depend on it.
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        ds = prepare_amazon(*raw, tmp_path / "out", CFG)
    finally:
        monkeypatch.undo()
        time.tzset()
    return ds, tmp_path / "out"


def test_title_filters() -> None:
    p = Path("meta.json")
    assert clean_title("Rock &amp; Roll &quot;Live&quot;", p, 1) == (
        'Rock & Roll "Live',
        "kept",
    )  # D3 strips the quote
    assert clean_title('  "Quoted"  ', p, 1) == ("Quoted", "kept")
    assert clean_title('"  spaced  "', p, 1) == ("  spaced  ", "kept")  # spaces first, then quotes
    assert clean_title('x <span id="a">', p, 1) == (None, "span_id_title")
    assert clean_title(None, p, 1) == (None, "no_title")
    assert clean_title(' "A" ', p, 1) == (None, "short_title")
    assert clean_title(TWENTY, p, 1)[1] == "kept" and clean_title(TWENTY + " w", p, 1) == (None, "long_title")
    assert clean_title("a  b", p, 1)[1] == "kept"  # split(" ") counts the empty word between double spaces
    with pytest.raises(DataError, match="line 7, field 'title'"):
        clean_title(["list"], p, 7)


def test_catalogue_filters_window_and_cascade(prepared) -> None:
    ds, out = prepared
    titles = set(ds.catalogue.titles)
    expected = {f"Core Album {j}" for j in range(6)} | {f"Old Album {j}" for j in range(6)}
    expected |= {'Rock & Roll "Live" Hits', "Quoted Title", TWENTY, "AB"}
    assert titles == expected  # no SPAN/W21/ONE/NOTITLE/DUP/UNKNOWN, no cascaded X, no 2016 block
    users = {r.user for s in ds.splits.values() for r in s}
    assert users == set(A_USERS + B_USERS)  # z and w fell in the cascade
    stamps = {t for s in ds.splits.values() for r in s for t in [*r.history_timestamps, r.timestamp]}
    assert END in stamps and START_2017_04 in stamps
    assert END + 1 not in stamps and START_2017_04 - 3600 not in stamps
    report = json.loads((out / "prepare_report.json").read_text())
    assert [w["start"] for w in report["windows_tried"]] == ["2017-10", "2017-7", "2017-4"]
    assert [w["items"] for w in report["windows_tried"]][-1] == 16
    assert report["titles"]["span_id_title"] == 1 and report["titles"]["long_title"] == 1
    assert report["titles"]["no_title"] == 1 and report["titles"]["short_title"] == 2  # ONE and the DUP blank
    assert ds.name == "CDs_and_Vinyl_5_2017-4-2018-11"


def test_item_ids_are_first_appearance_order_shuffled_with_seed_42(prepared, raw, tmp_path) -> None:
    ds, out = prepared
    kept = set(KEPT_RECENT) | {f"B{j}" for j in range(6)}
    order = []
    for r in _reviews():  # first appearance among kept reviews, in file order
        in_window = START_2017_04 <= r["unixReviewTime"] <= END and r["reviewerID"] not in ("z", "w")
        if r["asin"] in kept and in_window and r["asin"] not in order:
            order.append(r["asin"])
    random.Random(42).shuffle(order)
    id_of = {a: i for i, a in enumerate(order)}
    rows = [r for s in ds.splits.values() for r in s]
    assert all(
        id_of[r.target_raw] == r.target and [id_of[a] for a in r.history_raw] == r.history for r in rows
    )
    assert read_d3(out).catalogue.titles == ds.catalogue.titles
    other = prepare_amazon(*raw, None, CFG.replace(shuffle_seed=7))
    assert other.catalogue.titles != ds.catalogue.titles and sorted(other.catalogue.titles) == sorted(
        ds.catalogue.titles
    )


def test_rows_cap_history_and_split_8_1_1(prepared) -> None:
    ds, _ = prepared
    rows = [r for s in ("train", "valid", "test") for r in ds[s]]
    n = len(rows)
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [
        int(0.8 * n),
        int(0.9 * n) - int(0.8 * n),
        n - int(0.9 * n),
    ]
    assert [r.timestamp for r in rows] == sorted(r.timestamp for r in rows)
    a0 = sorted((r for r in rows if r.user == "a0"), key=lambda r: r.timestamp)
    assert max(len(r.history) for r in rows) == 10 and len(a0[-1].history) == 10
    assert a0[-1].history == [r.target for r in a0[-11:-1]]  # the 10 items right before the target
    # every user and item keeps >= 5 reviews (repeat reviews count)
    per_user = {u: 1 + len([r for r in rows if r.user == u]) for u in {r.user for r in rows}}
    assert min(per_user.values()) >= 5


def test_python_literal_lines_are_accepted(raw, tmp_path) -> None:
    reviews = _write(tmp_path / "eval_5.json.gz", _reviews(), python_literal=True)
    a = prepare_amazon(reviews, raw[1], None, CFG)
    b = prepare_amazon(*raw, None, CFG)
    assert a.catalogue.titles == b.catalogue.titles and len(a["test"]) == len(b["test"])


def test_malformed_lines_name_file_and_line(raw, tmp_path) -> None:
    bad = _write(
        tmp_path / "bad_5.json.gz", [json.dumps(r) for r in _reviews()[:2]] + ['{"asin": "A0", oops']
    )
    with pytest.raises(DataError, match=r"bad_5\.json\.gz, line 3: not a JSON object"):
        prepare_amazon(bad, raw[1], None, CFG)
    missing = _write(tmp_path / "miss_5.json.gz", [{"reviewerID": "u", "asin": "A0", "overall": 5.0}])
    with pytest.raises(DataError, match=r"miss_5\.json\.gz, line 1, field 'unixReviewTime'"):
        prepare_amazon(missing, raw[1], None, CFG)
    broken = tmp_path / "broken_5.json.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken_5\.json\.gz: cannot read the file"):
        prepare_amazon(broken, raw[1], None, CFG)
    with pytest.raises(DataError, match="not found"):
        prepare_amazon(tmp_path / "nope.json.gz", raw[1], None, CFG)


def test_too_small_at_earliest_start_warns_or_fails(raw, caplog) -> None:
    small = CFG.replace(min_items=100, earliest_start="2017-01")
    with pytest.raises(FlrecError, match="earliest window 2017-1..2018-11 keeps only 16 items"):
        prepare_amazon(*raw, None, small.replace(on_short="error"))
    with caplog.at_level(logging.WARNING, logger="flrec.data.amazon"):
        ds = prepare_amazon(*raw, None, small)
    assert "using it anyway" in caplog.text and len(ds.catalogue) == 16


def test_rules_and_config_checks() -> None:
    assert (AmazonPrepConfig().threshold, AmazonPrepConfig().step) == (5000, 3)
    assert (AmazonPrepConfig(rule="d3").threshold, AmazonPrepConfig(rule="d3").step) == (10000, 12)
    with pytest.raises(ConfigError, match="start"):
        AmazonPrepConfig(start="2017-13")
    with pytest.raises(ConfigError):
        AmazonPrepConfig(start="2019-01")  # after end
