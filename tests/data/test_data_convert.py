"""Converting users' own interaction logs with the D3 protocol."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flrec.data.convert import convert_interactions, prepare_movielens
from flrec.data.d3 import read_d3
from flrec.errors import ConfigError, DataError

# user, item, time, stars. u1 has 6 events; u5/i9 have one each (gone under a 2-core).
EVENTS = [
    ("u1", "i1", 1, 5), ("u1", "i2", 2, 4), ("u1", "i3", 3, 3), ("u1", "i4", 4, 5), ("u1", "i5", 5, 2),
    ("u1", "i6", 6, 5), ("u2", "i1", 10, 1), ("u2", "i2", 11, 5), ("u2", "i3", 12, 4), ("u3", "i2", 20, 5),
    ("u3", "i3", 21, 5), ("u3", "i4", 22, 3), ("u4", "i6", 30, 4), ("u4", "i5", 31, 5), ("u5", "i9", 40, 5),
]  # fmt: skip
ITEMS = {f"i{k}": f"  Title {k} " for k in (1, 2, 3, 4, 5, 6, 7, 9)}  # i7 is never interacted with
COLS = dict(user_col="user", item_col="item", time_col="time", item_id_col="id", title_col="name")


def _files(
    tmp: Path, events=EVENTS, items=ITEMS, sep: str = ",", header=("user", "item", "time", "stars")
) -> tuple[Path, Path]:
    inter, item_file = tmp / "log.csv", tmp / "items.csv"
    inter.write_text("\n".join([sep.join(header), *(sep.join(map(str, e)) for e in events)]) + "\n")
    item_file.write_text("\n".join(["id,name", *(f"{k},{v}" for k, v in items.items())]) + "\n")
    return inter, item_file


def test_protocol_window_split_and_output(tmp_path):
    inter, items = _files(tmp_path)
    ds = convert_interactions(inter, items, tmp_path / "out", rating_col="stars", max_history=3, **COLS)
    assert (ds.name, ds.domain) == ("out", "item")
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [8, 1, 1]  # 10 rows: int(.8n), int(.9n)
    rows = ds["train"] + ds["valid"] + ds["test"]
    assert [r.timestamp for r in rows] == sorted(r.timestamp for r in rows)
    assert max(len(r.history) for r in rows) == 3
    last_u1 = next(r for r in rows if r.user == "u1" and r.timestamp == 6)
    assert [ds.catalogue.titles[i] for i in last_u1.history] == ["Title 3", "Title 4", "Title 5"]  # stripped
    assert last_u1.history_raw == ["i3", "i4", "i5"] and last_u1.target_raw == "i6" and last_u1.rating == 5.0
    assert ds["test"][0].user == "u4" and ds["test"][0].target_raw == "i5"  # u5 has one event: no row
    assert "Title 7" not in ds.catalogue.titles  # only interacted items enter the catalogue
    back = read_d3(tmp_path / "out")
    assert back.splits == ds.splits and back.catalogue.titles == ds.catalogue.titles


def test_ids_first_appearance_then_seeded_shuffle(tmp_path):
    inter, items = _files(tmp_path)
    a = convert_interactions(inter, items, tmp_path / "a", shuffle_seed=7, **COLS)
    b = convert_interactions(inter, items, tmp_path / "b", shuffle_seed=7, **COLS)
    c = convert_interactions(inter, items, tmp_path / "c", shuffle_seed=8, **COLS)
    assert a.catalogue.titles == b.catalogue.titles and a.splits == b.splits
    assert a.catalogue.titles != c.catalogue.titles
    order = ["i1", "i2", "i3", "i4", "i5", "i6", "i9"]  # first appearance by time
    random.Random(7).shuffle(order)
    assert a.catalogue.titles == [ITEMS[k].strip() for k in order]


def test_k_core_and_min_rating(tmp_path):
    inter, items = _files(tmp_path)
    ds = convert_interactions(inter, items, tmp_path / "k2", k_core=2, **COLS)
    assert "Title 9" not in ds.catalogue.titles and len(ds.catalogue) == 6
    assert all(r.user != "u5" for rows in ds.splits.values() for r in rows)
    with pytest.raises(DataError, match="lower k_core"):
        convert_interactions(inter, items, tmp_path / "k3", k_core=3, **COLS)  # cascades to nothing
    ds = convert_interactions(inter, items, tmp_path / "r", rating_col="stars", min_rating=3, **COLS)
    assert all(r.rating >= 3 for rows in ds.splits.values() for r in rows)
    with pytest.raises(ConfigError, match="rating_col"):
        convert_interactions(inter, items, tmp_path / "x", min_rating=3, **COLS)


def test_tsv_and_iso_dates(tmp_path):
    events = [(u, i, f"2020-01-01T00:00:{t:02d}", s) for u, i, t, s in EVENTS]  # naive -> read as UTC
    inter, items = _files(tmp_path, events=events, sep="\t")
    ds = convert_interactions(inter, items, tmp_path / "out", sep="\t", items_sep=",", domain="book", **COLS)
    assert ds.domain == "book" and sum(map(len, ds.splits.values())) == 10
    assert [r.timestamp for r in ds["train"]][:2] == [1577836800 + 2, 1577836800 + 3]


def test_missing_column_names_it_and_lists_found(tmp_path):
    inter, items = _files(tmp_path, header=("user", "item", "when", "stars"))
    with pytest.raises(DataError) as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    assert e.value.field == "time" and "columns found: user, item, when, stars" in str(e.value)
    assert e.value.path == inter
    inter, items = _files(tmp_path)
    with pytest.raises(DataError, match="field 'title'"):
        convert_interactions(inter, items, tmp_path / "out", **(COLS | {"title_col": "title"}))


def test_bad_rows(tmp_path):
    inter, items = _files(tmp_path, items=ITEMS | {"i3": "   "})
    with pytest.raises(DataError) as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    assert (
        e.value.path == items and e.value.line == 4 and "'i3'" in str(e.value) and "no title" in str(e.value)
    )

    inter, items = _files(tmp_path, events=[*EVENTS[:3], ("u1", "i2", "soon", 1)])
    with pytest.raises(DataError) as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    assert (e.value.path, e.value.line, e.value.field) == (inter, 5, "time") and "'soon'" in str(e.value)

    inter, items = _files(tmp_path, events=[*EVENTS, ("u1", "i8", 99, 1)])
    with pytest.raises(DataError) as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    assert e.value.line == len(EVENTS) + 2 and "'i8'" in str(e.value) and "items.csv" in str(e.value)

    inter, items = _files(tmp_path, events=EVENTS[:4])  # 3 rows: valid/test would be empty
    with pytest.raises(DataError, match="would be empty"):
        convert_interactions(inter, items, tmp_path / "out", **COLS)


def test_movielens_format(tmp_path):
    raw = tmp_path / "ml-tiny"
    raw.mkdir()
    data = [(1, 1, 5, 100), (1, 2, 3, 101), (2, 1, 4, 50), (2, 3, 2, 300), (1, 3, 1, 102)] * 3
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in data))
    (raw / "u.item").write_bytes(
        "1|Toy Story (1995)|x\n2|Amélie (2001)|x\n3|Heat (1995)|x\n".encode("latin-1")
    )
    ds = prepare_movielens(raw, tmp_path / "out")
    assert (ds.name, ds.domain) == ("ml-tiny", "movie") and "Amélie (2001)" in ds.catalogue.titles
    assert sum(map(len, ds.splits.values())) == 13  # per user: 9 and 6 events -> 8 + 5 rows
    (raw / "u.data").write_text("1\t1\t5\n")
    with pytest.raises(DataError, match="line 1.*4 tab-separated"):
        prepare_movielens(raw, tmp_path / "out2")
