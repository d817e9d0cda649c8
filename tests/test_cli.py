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
    from flrec.experiments.compare import CompareConfig

    cfg = CompareConfig.load(None, ["methods=pop", "seeds=1", "data=x"])
    assert cfg.seeds == [1] and cfg.methods == ["pop"]


# --------------------------------------------------------------------------- issue 17/18: output, identity, shards
def _synth(tmp_path, capsys) -> Path:
    d = tmp_path / "data"
    assert main(["data", "synth", "--out", str(d), "n_items=40", "n_users=24", "min_intent_items=2",
                 "n_intents=6", "seq_len_min=3", "seq_len_max=5"]) == 0
    capsys.readouterr()
    return d


SFT = ["backbone=tiny:llama", "train_limit=16", "valid_limit=8", "flr.gate_hidden=16", "train.max_steps=2",
       "train.micro_batch_size=4", "train.mixed_precision='no'", "train.progress=false"]


def test_version_help_defaults_and_baseline_configs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("flrec ")
    for cmd, expect in ((["prompt"], "(default: test)"), (["evaluate"], "(default: float32)"),
                        (["compare"], "runs/compare")):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert expect in capsys.readouterr().out, cmd
    for stage in ("sasrec", "gru4rec", "caser", "alpharec", "pop"):
        assert main(["config", stage]) == 0
        assert "keys:" in capsys.readouterr().out
    assert main(["config", "sft"]) == 0
    out = capsys.readouterr().out
    assert "Ignored by stages with their own run_dir" in out  # train.output_dir is explained, not a 2nd folder


def test_cli_train_evaluate_json_reuse_and_shards(tmp_path, capsys):
    data = _synth(tmp_path, capsys)
    run = tmp_path / "run"
    assert main(["train", "sft", f"data={data}", f"run_dir={run}", *SFT, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON document on stdout
    assert res["rows_seen"] == 8 and res["train_rows"] == 16 and res["mixed_precision"] == "no"
    assert main(["train", "sft", f"data={data}", f"run_dir={run}", *SFT]) == 0
    out = capsys.readouterr().out
    assert "reused the finished run" in out and "8 rows seen" in out and "precision no" in out
    assert main(["train", "sft", f"data={data}", f"run_dir={run}", *SFT, "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "train.lr" in err and "--force" in err and "\n" not in err

    ev = ["evaluate", "--model", str(run), "--data", str(data), "--batch-size", "3"]
    assert main([*ev, "--limit", "6", "--json"]) == 0
    cap = capsys.readouterr()
    full = json.loads(cap.out)
    assert full["n_rows"] == 6 and not full["reused"] and "per-row ranks" in cap.err
    assert main([*ev, "--limit", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True
    assert main([*ev, "--limit", "2"]) == 2
    assert "would replace them" in capsys.readouterr().err
    assert main([*ev, "--limit", "6", "--dtype", "bfloat16"]) == 2  # another dtype is another evaluation
    assert "dtype" in capsys.readouterr().err
    for i in (0, 1):
        assert main([*ev, "--limit", "6", "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(data), "--merge", str(tmp_path / "s1"), str(tmp_path / "s0"),
                 "--out", str(tmp_path / "merged"), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["metrics"] == full["metrics"] and merged["n_rows"] == 6
    assert (tmp_path / "merged" / "ranks.jsonl").read_bytes() == (run / "eval-test" / "ranks.jsonl").read_bytes()


def test_empty_train_and_test_splits_are_one_line_errors(tmp_path, capsys):
    data = _synth(tmp_path, capsys)
    for split in ("train", "test"):
        lines = (data / f"{split}.csv").read_text().splitlines()
        (data / f"{split}.csv").write_text(lines[0] + "\n")  # header only
    assert main(["train", "sft", f"data={data}", f"run_dir={tmp_path / 'run'}", *SFT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and ("no training rows" in err or "train" in err)
    assert not (tmp_path / "run" / "best").exists()


def test_compare_rejects_unknown_methods_before_any_work(tmp_path, capsys):
    for bad in ("nosuchmethod", "../../../x"):
        out = tmp_path / "cmp"
        assert main(["compare", "--data", "embedded:synth", "--methods", f"pop,{bad}", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "unknown method" in err and not out.exists()
    assert not (tmp_path.parent / "x").exists()
