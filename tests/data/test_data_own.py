"""Bringing one's own data (issue 18): unknown items, a summary of what was dropped, headerless TSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flrec.cli import main
from flrec.data.convert import convert_interactions, format_report
from flrec.data.d3 import read_d3
from flrec.data.stats import dataset_stats, format_stats
from flrec.errors import DataError

SHARED_ML = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens" / "ml-100k"
COLS = dict(user_col="user", item_col="item", time_col="time", item_id_col="sku", title_col="title")
# u1..u4 have 4 events each over i0..i5; u5 has one event; "X1"/"X2" are not in the item file.
EVENTS = [(f"u{u}", f"i{(u + k) % 6}", 10 * u + k) for u in range(1, 5) for k in range(4)]
EVENTS += [("u5", "i0", 99), ("u1", "X1", 5), ("u2", "X1", 6), ("u3", "X2", 7)]


def _files(tmp: Path) -> tuple[Path, Path]:
    inter, items = tmp / "log.csv", tmp / "items.csv"
    inter.write_text("user,item,time,store\n" + "".join(f"{u},{i},{t},s1\n" for u, i, t in EVENTS))
    items.write_text("sku,title,category,brand\n" + "".join(f"i{k},Thing {k},Cat,Brand\n" for k in range(7)))
    return inter, items


def test_unknown_items_stop_the_conversion_unless_dropped_and_counted(tmp_path):
    inter, items = _files(tmp_path)
    with pytest.raises(DataError, match="'X1' is not in the item file.*--drop-unknown"):
        convert_interactions(inter, items, tmp_path / "a", **COLS)
    ds = convert_interactions(inter, items, tmp_path / "b", drop_unknown=True, **COLS)
    rep = ds.report
    assert rep["interactions_read"] == len(EVENTS)
    assert rep["unknown_items"] == {"interactions": 3, "distinct_items": 2, "examples": ["X1", "X2"]}
    assert rep["single_interaction_users"] == {"users": 1, "interactions": 1}  # u5
    assert rep["items_without_interactions"] == 1  # i6
    assert rep["ignored_columns"] == {"items": ["category", "brand"], "interactions": ["store"]}
    assert rep["kept"]["interactions"] == len(EVENTS) - 3
    assert sum(rep["kept"]["rows"].values()) == sum(map(len, ds.splits.values())) == 4 * 3
    assert json.loads((tmp_path / "b" / "convert_report.json").read_text()) == rep
    text = format_report(rep)
    assert "dropped 3 interactions with 2 items missing" in text and "'X1'" in text
    assert "ignored: columns category, brand of the items file" in text
    assert "1 users with a single interaction" in text


def test_k_core_is_counted(tmp_path):
    inter, items = _files(tmp_path)
    ds = convert_interactions(inter, items, tmp_path / "k", drop_unknown=True, k_core=2, **COLS)
    kc = ds.report["k_core"]
    assert (kc["k"], kc["users"], kc["items"], kc["interactions"]) == (2, 1, 0, 1)  # u5 (one event) goes
    assert "by the 2-core filter" in format_report(ds.report)


def test_cli_prints_the_summary(tmp_path, capsys):
    inter, items = _files(tmp_path)
    args = ["data", "convert", "--interactions", str(inter), "--items", str(items), "--out", str(tmp_path / "c"),
            "--user-col", "user", "--item-col", "item", "--time-col", "time", "--item-id-col", "sku",
            "--title-col", "title"]  # fmt: skip
    assert main(args) == 2
    assert "--drop-unknown" in capsys.readouterr().err
    assert main([*args, "--drop-unknown"]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 interactions" in out and "ignored: columns category, brand" in out


def test_headerless_tsv_by_column_index(tmp_path, capsys):
    data = tmp_path / "u.data"
    data.write_text("".join(f"{u}\t{i}\t{3 + int(u[1:]) % 2}\t{t}\n" for u, i, t in EVENTS[:16]))
    items = tmp_path / "u.item"
    items.write_text("".join(f"i{k}|Film {k} (199{k})|01-Jan-1995||http://x|0|1\n" for k in range(6)))
    ds = convert_interactions(
        data, items, tmp_path / "a", user_col=0, item_col=1, rating_col=2, time_col=3, item_id_col=0,
        title_col=1, sep="\\t", items_sep="|", header=False,
    )  # fmt: skip
    assert ds.report["ignored_columns"] == {"items": ["#2", "#3", "#4", "#5", "#6"], "interactions": []}
    assert {r.rating for rows in ds.splits.values() for r in rows} == {3.0, 4.0}
    args = ["data", "convert", "--interactions", str(data), "--items", str(items), "--out", str(tmp_path / "b"),
            "--no-header", "--sep", "\\t", "--items-sep", "|", "--user-col", "0", "--item-col", "1",
            "--rating-col", "2", "--time-col", "3", "--item-id-col", "0", "--title-col", "1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert read_d3(tmp_path / "b").splits == ds.splits


def test_real_movielens_u_data_converts_like_prepare_movielens(tmp_path):
    if not (SHARED_ML / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {SHARED_ML}")
    ds = convert_interactions(
        SHARED_ML / "u.data", SHARED_ML / "u.item", tmp_path / "ml", user_col=0, item_col=1, rating_col=2,
        time_col=3, item_id_col=0, title_col=1, sep="\t", items_sep="|", header=False, encoding="latin-1",
        domain="movie",
    )  # fmt: skip
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [79245, 9906, 9906]  # as prepare_movielens


def test_stats_legend_and_domain(tmp_path):
    inter, items = _files(tmp_path)
    convert_interactions(inter, items, tmp_path / "CDs", drop_unknown=True, **COLS)
    (tmp_path / "CDs" / "dataset.json").unlink()  # as the published folders: no dataset.json
    stats = dataset_stats(read_d3(tmp_path / "CDs"))
    assert stats["domain"] == "CD"
    table = format_stats(stats, legend=True)
    legend = table.split("legend:")[1]
    for term in ("junk_titles", "popularity.head_items", "cold_test_targets", "unseen_test_targets"):
        assert f"\n  {term} " in legend
    assert "legend" not in format_stats(stats)


def test_data_help_shows_defaults_and_help(capsys):
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: ,)" in text and "(default: 0)" in text and "(default: utf-8)" in text
    assert "(default: None)" not in text and "--drop-unknown" in text and "0-based" in text
