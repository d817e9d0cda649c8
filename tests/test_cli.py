"""The CLI: commands map to the Python API; user errors are one line, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flrec.cli import main

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
CDS = SHARED / "data" / "amazon" / "CDs"


def test_config_lists_keys_with_help(capsys):
    assert main(["config", "sft"]) == 0
    out = capsys.readouterr().out
    assert "num_factors" in out and "train:" in out and "learning rate" in out.lower()


def test_unknown_override_is_one_line_error(capsys, tmp_path):
    assert main(["train", "sft", "flr.bogus=1", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bogus" in err and "\n" not in err


def test_missing_data_dir_is_one_line_error(capsys, tmp_path):
    assert main(["data", "stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err


def test_missing_model_dir_for_evaluate(capsys, tmp_path):
    d = tmp_path / "data"
    assert main(["data", "synth", "--out", str(d), "n_items=40", "n_users=20", "min_intent_items=2",
                 "n_intents=6", "seq_len_min=3", "seq_len_max=5"]) == 0
    assert (d / "train.csv").is_file() and (d / "intents.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "nomodel"), "--data", str(d)]) == 2
    assert "no trained flrec model" in capsys.readouterr().err


@pytest.mark.realdata
def test_stats_json_on_cds(capsys):
    if not CDS.is_dir():
        pytest.skip(f"shared CDs data not found at {CDS}")
    assert main(["data", "stats", str(CDS), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"]["valid"] == 6156 and stats["rows"]["test"] == 6157 and stats["items"] == 5841
    assert stats["colliding_titles"] == 185 and stats["junk_titles"] >= 29


def test_single_value_list_override():
    from flrec.evaluation.compare import CompareConfig

    cfg = CompareConfig.load(None, ["methods=pop", "seeds=1", "data=x"])
    assert cfg.seeds == [1] and cfg.methods == ["pop"]
