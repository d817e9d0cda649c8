"""D3 reader/writer: strict one-line errors for every malformed input, quirk counting, round trip, stats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flrec.data.d3 import HEADER, read_d3, read_dataset_meta, write_d3
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.data.stats import dataset_stats, format_stats
from flrec.errors import DataError

TITLES = ["Alpha", "Beta", '<span class="a-size-medium a-color-secondary', "Rock &amp; Roll", "Beta"]


def _row(user: str, hist: list[int], target: int, t: int = 100, titles: list[str] = TITLES) -> dict:
    return {
        "user_id": user,
        "item_asins": str([f"A{i}" for i in hist]),
        "item_asin": f"A{target}",
        "history_item_id": str(hist),
        "item_id": str(target),
        "history_item_title": str([titles[i] for i in hist]),
        "item_title": titles[target],
        "history_rating": str([5.0] * len(hist)),
        "rating": "4.0",
        "history_timestamp": str([t - len(hist) + k for k in range(len(hist))]),
        "timestamp": str(t),
    }


def _good_splits() -> dict[str, list[dict]]:
    dup = _row("u3", [0, 1], 3, 300)
    bad_title = _row("u2", [1], 0, 210) | {"item_title": "Alpha (Remastered)"}  # disagrees with info.txt
    return {
        "train": [_row("u1", [0], 1, 100), _row("u1", [0, 1], 2, 110), _row("u2", [3], 3, 120)],  # repeat
        "valid": [_row("u1", [0, 1, 2], 4, 200), bad_title],
        "test": [dup, dup, _row("u4", [2, 4], 2, 310)],  # duplicate row, repeated target
    }


def _write(root: Path, splits: dict | None = None, info: str | None = None, header=HEADER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "info.txt").write_text(
        info if info is not None else "".join(f"{t}\t{i}\n" for i, t in enumerate(TITLES))
    )
    for split, rows in (splits or _good_splits()).items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([r[c] for c in HEADER] if isinstance(r, dict) else r for r in rows)
    return root


def _error(root: Path) -> DataError:
    with pytest.raises(DataError) as e:
        read_d3(root)
    msg = str(e.value)
    assert "\n" not in msg
    return e.value


def test_reads_good_fixture_and_counts_quirks(tmp_path):
    ds = read_d3(_write(tmp_path / "toy"))
    assert ds.name == "toy" and ds.domain == "item"
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [3, 2, 3]
    r = ds["valid"][0]
    assert (r.user, r.history, r.target, r.rating) == ("u1", [0, 1, 2], 4, 4.0)
    assert (
        r.history_timestamps == [197, 198, 199]
        and r.history_raw == ["A0", "A1", "A2"]
        and r.target_raw == "A4"
    )
    assert ds.quirks == {
        "junk_titles": 1,
        "html_entity_titles": 1,
        "colliding_titles": 1,
        "items_with_colliding_titles": 2,
        "duplicate_rows": 1,
        "repeated_targets": 2,  # train u2 [3]->3 and test u4 [2,4]->2
        "title_mismatches": 1,
    }
    assert ds["test"][0] == ds["test"][1]  # quirks are kept, never dropped


def test_title_containing_tab_splits_on_last_tab(tmp_path):
    info = "".join(f"{t}\t{i}\n" for i, t in enumerate(["Alpha\tLive", *TITLES[1:]]))
    splits = {s: [] for s in ("train", "valid", "test")}
    ds = read_d3(_write(tmp_path, splits, info=info))
    assert ds.catalogue.titles[0] == "Alpha\tLive"


def test_dataset_json_and_explicit_args(tmp_path):
    root = _write(tmp_path / "toy")
    (root / "dataset.json").write_text(json.dumps({"name": "Toys", "domain": "toy", "domain_plural": "toys"}))
    ds = read_d3(root)
    assert (ds.name, ds.domain) == ("Toys", "toy")
    assert read_dataset_meta(root)["domain_plural"] == "toys"
    ds = read_d3(root, name="X", domain="game", splits=("test",))
    assert (ds.name, ds.domain, list(ds.splits)) == ("X", "game", ["test"])
    (root / "dataset.json").write_text('{"name": ')
    assert "dataset.json" in str(_error(root))
    (root / "dataset.json").write_text('{"domain": ""}')
    assert _error(root).field == "domain"


def _bad_row(field: str, value: str) -> dict[str, list]:
    splits = _good_splits()
    splits["valid"][1] = splits["valid"][1] | {field: value}  # physical line 3 of valid.csv
    return splits


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("history_item_id", "[1, 2"),  # list does not parse
        ("history_item_id", "[1.5]"),  # not an integer
        ("history_item_title", "['Beta', "),
        ("item_asins", "[1, 2]"),  # a list, but not of strings
        ("history_rating", "['x']"),
        ("history_timestamp", "[1, 2]"),  # length differs from the other history lists
        ("history_item_id", "[]"),  # length mismatch: the other lists still have one entry
        ("item_id", "99"),  # not in info.txt
        ("history_item_id", "[7]"),
        ("item_id", "x"),
        ("timestamp", "yesterday"),
        ("rating", "five"),
        ("rating", "nan"),
        ("history_rating", "[NaN]"),
        ("timestamp", "1.5"),
    ],
)
def test_bad_field_names_file_line_field(tmp_path, field, value):
    err = _error(_write(tmp_path, _bad_row(field, value)))
    assert err.path == tmp_path / "valid.csv" and err.line == 3 and err.field == field
    assert f"valid.csv, line 3, field '{field}'" in str(err)


def test_empty_history(tmp_path):
    empty = {
        k: "[]"
        for k in (
            "item_asins",
            "history_item_id",
            "history_item_title",
            "history_rating",
            "history_timestamp",
        )
    }
    splits = _good_splits()
    splits["test"][2] = splits["test"][2] | empty
    err = _error(_write(tmp_path, splits))
    assert (err.path.name, err.line, err.field) == (
        "test.csv",
        4,
        "history_item_id",
    ) and "empty history" in str(err)


def test_wrong_header_and_field_count(tmp_path):
    err = _error(_write(tmp_path / "a", header=("user", *HEADER[1:])))
    assert err.line == 1 and "'user'" in str(err) and "'user_id'" in str(err)
    err = _error(_write(tmp_path / "b", header=HEADER[:-1]))
    assert err.line == 1 and "timestamp" in str(err)
    splits = _good_splits()
    splits["train"].append(["u9", "['A0']", "A1"])
    err = _error(_write(tmp_path / "c", splits))
    assert (err.path.name, err.line) == ("train.csv", 5) and "found 3" in str(err)


@pytest.mark.parametrize(
    ("info", "line", "needle"),
    [
        ("Alpha\t0\nBeta 1\n", 2, "no tab"),
        ("Alpha\t0\nBeta\tone\n", 2, "not an integer"),
        ("Alpha\t0\nBeta\t0\n", 2, "appears twice"),
        ("Alpha\t0\nBeta\t2\n", None, "without gaps"),
        ("", None, "no items"),
    ],
)
def test_bad_info_txt(tmp_path, info, line, needle):
    err = _error(_write(tmp_path, {}, info=info))
    assert err.path == tmp_path / "info.txt" and err.line == line and needle in str(err)


def test_missing_files(tmp_path):
    root = _write(tmp_path)
    (root / "train.csv").unlink()
    err = _error(root)
    assert err.path == root / "train.csv" and "not found" in str(err)
    assert len(read_d3(root, splits=("valid", "test"))["test"]) == 3
    (root / "info.txt").unlink()
    assert _error(root).path == root / "info.txt"
    assert "not found" in str(_error(tmp_path / "nowhere"))


def test_round_trip_is_byte_identical(tmp_path):
    src = _write(tmp_path / "src")
    ds = read_d3(src)
    write_d3(ds, tmp_path / "out")
    again = read_d3(tmp_path / "out")
    assert again.splits == ds.splits and again.catalogue.titles == ds.catalogue.titles
    # CSV titles are rewritten from info.txt, so only the one mismatching row may differ.
    for split in ("train", "test"):
        assert (tmp_path / "out" / f"{split}.csv").read_bytes() == (src / f"{split}.csv").read_bytes()
    assert b"\r\n" in (tmp_path / "out" / "test.csv").read_bytes()
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["name"] == "src" and meta["domain"] == "item" and meta["quirks"]["duplicate_rows"] == 1
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_write_without_raw_ids_uses_item_ids(tmp_path):
    rows = [Interaction("u", [0, 1], 1, history_timestamps=[1, 2], timestamp=3)]
    ds = RecDataset(Catalogue(['a, "quoted"', "it's"]), {"test": rows}, name="n", domain="thing")
    write_d3(ds, tmp_path)
    back = read_d3(tmp_path, splits=("test",))
    r = back["test"][0]
    assert (r.history_raw, r.target_raw, r.history_ratings) == (["0", "1"], "1", [0.0, 0.0])
    assert back.catalogue.titles == ds.catalogue.titles and (back.name, back.domain) == ("n", "thing")


def test_stats_on_fixture(tmp_path):
    stats = dataset_stats(read_d3(_write(tmp_path / "toy")))
    json.dumps(stats)
    assert stats["rows"] == {"train": 3, "valid": 2, "test": 3}
    assert stats["users"] == 4 and stats["items"] == 5
    assert stats["history_length"] == {
        "min": 1,
        "mean": 1.75,
        "max": 3,
        "histogram": {"1": 3, "2": 4, "3": 1},
    }
    assert (stats["colliding_titles"], stats["items_with_colliding_titles"], stats["junk_titles"]) == (
        1,
        2,
        1,
    )
    assert stats["repeated_targets"] == {"train": 1, "valid": 0, "test": 1}
    assert stats["duplicate_rows"] == {"train": 0, "valid": 0, "test": 1}
    # train targets: 1, 2, 3 -> head = top round(0.2 * 5) = 1 item with 1 of 3 interactions
    assert stats["popularity"]["head_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert stats["cold_test_targets"] == pytest.approx(0.0)  # test targets 3, 3, 2 were all train targets
    assert stats["test_targets_with_shared_title"] == 0.0
    table = format_stats(stats)
    assert "colliding_titles" in table and "1:3 2:4 3:1" in table


def test_write_rejects_unknown_item_ids(tmp_path):
    ds = RecDataset(Catalogue(["a"]), {"test": [Interaction("u", [0], -1)]})
    with pytest.raises(DataError, match="test.csv.*outside 0..0"):
        write_d3(ds, tmp_path)
    assert not list(tmp_path.iterdir())  # validated before anything is written
