"""Evaluation folders (issues 17/18): fingerprint, reuse, no silent replacement of finished rows,
lock, empty split, metadata files, progress lines without a terminal, sharding + merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_evaluation import FakeRec, _stable, toy_dataset

import flrec.experiments.runner as runner
from flrec.data.schema import Catalogue, RecDataset
from flrec.errors import ConfigError, DataError, FlrecError
from flrec.experiments.runner import EvalConfig, evaluate, merge_shards
from flrec.utils.io import dir_lock


def test_another_model_into_the_same_folder_is_refused(tmp_path: Path):
    ds = toy_dataset()
    with pytest.raises(RuntimeError):  # model A is interrupted
        evaluate(FakeRec(ds.catalogue, fail_on_call=2), ds, EvalConfig(batch_size=4), tmp_path,
                 identity={"model": {"files": "aaaa"}, "dtype": "float32"})
    for ident, key in (({"model": {"files": "bbbb"}, "dtype": "float32"}, "model.files"),
                       ({"model": {"files": "aaaa"}, "dtype": "bfloat16"}, "dtype")):
        with pytest.raises(ConfigError, match=key) as e:
            evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4), tmp_path, identity=ident)
        assert "--force" in str(e.value)
    rec = FakeRec(ds.catalogue)
    forced = evaluate(rec, ds, EvalConfig(batch_size=4), tmp_path, identity={"model": {"files": "bbbb"}},
                      overwrite=True)
    assert rec.rows_seen == 23 and forced["n_rows"] == 23  # recomputed from scratch, not mixed


def test_finished_folder_is_reused_extended_and_never_shrunk(tmp_path: Path):
    ds = toy_dataset()
    full = evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4), tmp_path / "full")

    run = tmp_path / "run"
    evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4, limit=5), run)
    rec = FakeRec(ds.catalogue)
    extended = evaluate(rec, ds, EvalConfig(batch_size=4), run)  # 5 finished rows -> 23: only 18 computed
    assert rec.rows_seen == 18 and _stable(extended) == _stable(full)
    assert (run / "ranks.jsonl").read_bytes() == (tmp_path / "full" / "ranks.jsonl").read_bytes()

    rec = FakeRec(ds.catalogue)
    again = evaluate(rec, ds, EvalConfig(batch_size=7), run)
    assert rec.rows_seen == 0 and again.pop("reused") and _stable(again) == _stable(full)

    before = (run / "ranks.jsonl").read_bytes()
    with pytest.raises(FlrecError, match="finished evaluation of 23 rows.*would replace them"):
        evaluate(FakeRec(ds.catalogue), ds, EvalConfig(limit=5), run)
    assert (run / "ranks.jsonl").read_bytes() == before
    assert json.loads((run / "summary.json").read_text())["n_rows"] == 23

    rec = FakeRec(ds.catalogue)
    other_ks = evaluate(rec, ds, EvalConfig(ks=[1, 5], beam=10), run)  # re-summarised, not re-ranked
    assert rec.rows_seen == 0 and set(other_ks["metrics"]) == {"hr@1", "hr@5", "ndcg@1", "ndcg@5"}


def test_evaluation_folder_has_metadata_and_lock(tmp_path: Path):
    ds = toy_dataset()
    evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=8), tmp_path)
    for name in ("config.yaml", "run_info.json", "log.jsonl", "fingerprint.json"):
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["rows_done"] for r in rows] == [8, 16, 23, 23] and rows[-1]["event"] == "done"
    with dir_lock(tmp_path), pytest.raises(FlrecError, match="in use"):
        evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=8), tmp_path)


def test_empty_split_is_an_error_not_zeros(tmp_path: Path):
    ds = RecDataset(Catalogue(["a", "b"]), {"train": [], "valid": [], "test": []})
    with pytest.raises(DataError, match="no rows"):
        evaluate(FakeRec(ds.catalogue), ds, EvalConfig(), tmp_path)


def test_progress_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)
    ds = toy_dataset()
    evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=10))
    err = capsys.readouterr().err.splitlines()
    lines = [x for x in err if x.startswith("eval fake:")]
    assert len(lines) == 3 and "23/23 rows (100%)" in lines[-1] and "rows/s" in lines[0] and "ETA" in lines[0]


def test_shards_merge_to_the_unsharded_result(tmp_path: Path):
    ds = toy_dataset()
    full = evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4, limit=20), tmp_path / "full")
    dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        s = evaluate(FakeRec(ds.catalogue), ds, EvalConfig(batch_size=4, limit=20, shard=f"{i}/3"), d)
        assert s["n_rows"] in (6, 7)
        dirs.append(d)
    merged = merge_shards(list(reversed(dirs)), ds, tmp_path / "merged")
    assert _stable(merged) | {"row_range": None, "merged_from": None} == _stable(full) | {"row_range": None,
                                                                                           "merged_from": None}
    assert (tmp_path / "merged" / "ranks.jsonl").read_bytes() == (tmp_path / "full" / "ranks.jsonl").read_bytes()
    assert merged["inference"]["rows_timed"] == 20 and (tmp_path / "merged" / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="exactly once"):
        merge_shards(dirs[:2], ds)
    with pytest.raises(ConfigError, match="shard"):
        EvalConfig(shard="3/3")
