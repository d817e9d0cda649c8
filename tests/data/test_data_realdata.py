"""The shared real datasets read and convert to their published counts (skipped when absent)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from flrec.data.convert import prepare_movielens
from flrec.data.d3 import read_d3
from flrec.data.stats import dataset_stats

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
pytestmark = pytest.mark.realdata


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"shared data not found at {path.resolve()} (needs the ../shared checkout next to the repo)"
        )
    return path


@pytest.fixture(scope="module")
def cds():
    root = _need(SHARED / "amazon" / "CDs")
    start = time.perf_counter()
    ds = read_d3(root)
    return ds, time.perf_counter() - start


def test_cds_counts_and_speed(cds):
    ds, seconds = cds
    assert (len(ds["valid"]), len(ds["test"]), len(ds.catalogue)) == (6156, 6157, 5841)
    assert len(ds["train"]) == 10696  # reconstructed, partial train
    assert seconds < 10, f"reading CDs took {seconds:.1f}s"
    assert ds.quirks["duplicate_rows"] == 42 and ds.quirks["title_mismatches"] == 0


def test_cds_stats(cds):
    stats = dataset_stats(cds[0])
    json.loads(json.dumps(stats))
    assert stats["colliding_titles"] == 185 and stats["items_with_colliding_titles"] == 649
    assert stats["junk_titles"] >= 29 and stats["html_entity_titles"] == 15
    assert stats["repeated_targets"]["valid"] == 54 and stats["repeated_targets"]["test"] == 65
    assert stats["duplicate_rows"]["test"] == 42
    assert stats["test_targets_with_shared_title"] == pytest.approx(0.137, abs=1e-3)
    assert stats["unseen_test_targets"] == pytest.approx(940 / 6157, abs=1e-4)  # CDs README


def test_office_reads():
    ds = read_d3(_need(SHARED / "amazon" / "Office"))
    assert (len(ds["valid"]), len(ds["test"]), len(ds.catalogue)) == (4866, 4866, 3459)
    stats = dataset_stats(ds)
    assert stats["html_entity_titles"] == 55 and stats["colliding_titles"] == 16
    assert stats["repeated_targets"]["valid"] == 281 and stats["repeated_targets"]["test"] == 119


def test_movielens_100k(tmp_path):
    ds = prepare_movielens(_need(SHARED / "movielens" / "ml-100k"), tmp_path / "ml")
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 79245, "valid": 9906, "test": 9906}
    assert ds.domain == "movie" and len(ds.catalogue) == 1682
    back = read_d3(tmp_path / "ml", splits=("test",))
    assert back["test"] == ds["test"] and back.domain == "movie"
