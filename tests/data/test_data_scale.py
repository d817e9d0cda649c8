"""The data layer at scale: torch-free imports, and bulk parsing equal to the exact row parser."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import flrec.data.d3 as d3
from flrec.data.d3 import duplicate_rows, read_d3, write_d3
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.data.stats import dataset_stats

SRC = str(Path(d3.__file__).resolve().parents[2])


def _dataset(tmp: Path) -> Path:
    titles = [f"Album {k}" for k in range(30)] + ["it's \"quoted\", too", "back\\slash [1, 2]"]
    rows = []
    for u in range(40):
        seq = [(u * 7 + k * 3) % len(titles) for k in range(6)]
        for pos in range(1, len(seq)):
            rows.append(Interaction(
                f"u{u}", seq[:pos], seq[pos], history_timestamps=[1000 * u + k for k in range(pos)],
                timestamp=1000 * u + pos, history_ratings=[float(k % 5) for k in range(pos)], rating=4.5,
                history_raw=[f"A{i}" if i != 31 else f"A'{i}" for i in seq[:pos]], target_raw=f"A{seq[pos]}",
            ))  # fmt: skip
    rows.append(rows[-1])  # a duplicate row (in the test split)
    ds = RecDataset(Catalogue(titles), {"train": rows[:150], "valid": rows[150:175], "test": rows[175:]})
    write_d3(ds, tmp / "ds")
    return tmp / "ds"


def _reformat(root: Path) -> None:
    """Hand-edited but valid variants the exact parser accepts: no spaces, float stamps, a stale title."""
    path = root / "train.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[5][3] = rows[5][3].replace(", ", ",")  # [1,2]
    rows[9][9] = "[" + ", ".join(f"{int(x)}.0" for x in json.loads(rows[9][9])) + "]"  # [1000.0, ...]
    rows[12][6] = "Another title"  # disagrees with info.txt: counted, info.txt wins
    rows[20][7] = rows[20][7].replace(".0", "")  # integer ratings
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_bulk_parser_equals_exact_parser(tmp_path, monkeypatch):
    root = _dataset(tmp_path)
    _reformat(root)
    monkeypatch.setattr(d3, "_CHUNK", 16)  # several chunks, some clean, some not
    bulk, used = d3._FastRows.bulk, []
    monkeypatch.setattr(d3._FastRows, "bulk", lambda self, chunk: used.append(bulk(self, chunk)) or used[-1])
    fast = read_d3(root)
    assert any(r is not None for r in used) and any(r is None for r in used)
    monkeypatch.setattr(d3._FastRows, "bulk", lambda self, chunk: None)
    monkeypatch.setattr(d3._FastRows, "parse", lambda self, fields: None)
    exact = read_d3(root)
    assert fast.splits == exact.splits and fast.quirks == exact.quirks
    assert fast.quirks["title_mismatches"] == 1 and fast.quirks["duplicate_rows"] == 1
    assert sum(map(len, fast.splits.values())) == 40 * 5 + 1
    assert dataset_stats(fast) == dataset_stats(exact)


@pytest.mark.parametrize(
    "column, value, expect",
    [(3, "[1, 2, 99]", "history_item_id"), (9, "[1, 2]", "history lists differ"), (7, "[nan]", "history_rating"),
     (8, "inf", "finite"), (3, "[]", "history_item_id"), (9, "[١]", "history_timestamp")],
)  # fmt: skip
def test_bulk_parser_rejects_what_the_exact_parser_rejects(tmp_path, monkeypatch, column, value, expect):
    root = _dataset(tmp_path)
    path = root / "test.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[3][column] = value
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(d3.DataError, match=expect) as e:
        read_d3(root)
    assert e.value.line == 4


def test_duplicate_rows_by_hash_equals_the_exact_count():
    base = [Interaction(f"u{k % 2}", [k % 3, 1], k % 2, history_timestamps=[1, 2], timestamp=k % 5)
            for k in range(300)]  # fmt: skip
    exact = len(base) - len({repr(r) for r in base})
    assert duplicate_rows(base) == exact > 0


def test_data_layer_does_not_import_torch(tmp_path):
    root = _dataset(tmp_path)
    code = (
        "import sys; import flrec.data.d3, flrec.data.stats, flrec.data.convert, flrec.data.synth, "
        "flrec.data.amazon, flrec.config; from flrec.cli import main; "
        f"assert main(['data', 'stats', {str(root)!r}]) == 0; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "legend:" in out.stdout
