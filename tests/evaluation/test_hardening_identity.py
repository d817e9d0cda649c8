"""Issue 17, defect 1 gaps: evaluation folders and compare cells are refused after a *data* change (not
only a model/config change), and a comparison folder in use is locked."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import tiny_dataset
from test_evaluation import FakeRec, toy_dataset

from flrec.data.schema import Catalogue
from flrec.errors import ConfigError, FlrecError
from flrec.experiments.compare import CompareConfig, run_comparison
from flrec.experiments.runner import EvalConfig, evaluate
from flrec.utils.io import dir_lock


def test_evaluation_on_changed_data_is_refused(tmp_path: Path):
    ds = toy_dataset()
    evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=8), tmp_path)
    before = (tmp_path / "ranks.jsonl").read_bytes()
    edited = toy_dataset()
    edited.catalogue = Catalogue([*edited.catalogue.titles[:-1], "a renamed item"])
    rec = FakeRec(edited.catalogue)
    with pytest.raises(ConfigError, match="data.hash") as e:
        evaluate(rec, edited, EvalConfig(batch_size=8), tmp_path)
    assert "--force" in str(e.value) and "\n" not in str(e.value)
    assert rec.rows_seen == 0 and (tmp_path / "ranks.jsonl").read_bytes() == before


def test_compare_cell_on_changed_data_is_refused_and_a_folder_in_use_is_locked(tmp_path: Path):
    cfg = CompareConfig(methods=["pop"], seeds=[1], limit=10, out=str(tmp_path / "cmp"), reference="pop")
    first = run_comparison(cfg, dataset=tiny_dataset())
    again = run_comparison(cfg, dataset=tiny_dataset())
    assert again["budget"]["cells"]["pop/seed1"]["reused"] and again["methods"] == first["methods"]
    with pytest.raises(ConfigError, match=r"cells/pop/seed1.*data.hash.*--force"):
        run_comparison(cfg, dataset=tiny_dataset(seed=1))  # other rows: another result
    with dir_lock(tmp_path / "cmp"), pytest.raises(FlrecError, match="in use by another flrec process"):
        run_comparison(cfg, dataset=tiny_dataset())
