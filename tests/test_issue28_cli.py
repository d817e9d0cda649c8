"""Issue 28: every destructive write is guarded and every refusal is one line, before the work.

Most cases need no trained model: the refusal must come before anything is loaded, so a folder that
merely looks like a model run (``best/flr_config.json``) is enough, and the loaders are made to fail
the test if they are reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic

SRC = Path(__file__).resolve().parents[1] / "src"


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("error:"), err
    return err.splitlines()[-1]


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A folder shaped like an SFT run (nothing in it can be loaded), with files that must survive."""
    run = tmp_path / "runs" / "sftc"
    (run / "best").mkdir(parents=True)
    (run / "best" / "flr_config.json").write_text(json.dumps({"flr": {"reasoner": "flr"}}))
    (run / "config.yaml").write_text("data: nowhere\n")
    (run / "eval-test").mkdir()
    (tmp_path / "runs" / "sibling.txt").write_text("keep")
    return run


@pytest.fixture
def no_loading(monkeypatch):
    import flrec.data.load
    import flrec.recommenders.base

    def fail(*_a, **_k):
        pytest.fail("the refusal came after loading")

    monkeypatch.setattr(flrec.recommenders.base, "get_recommender", fail)
    monkeypatch.setattr(flrec.data.load, "load_dataset", fail)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_grpo_into_its_own_sft_run_is_refused(fake_run, capsys):
    """#3: `train grpo --from runs/sftc run_dir=runs/sftc --force` replaced the SFT model."""
    before = _listing(fake_run.parent)
    assert main(["train", "grpo", "--from", str(fake_run), f"run_dir={fake_run}", "--force"]) == 2
    assert "run_dir" in (err := _err(capsys)) and "is the input" in err
    assert main(["train", "grpo", "--from", str(fake_run / "best"), f"run_dir={fake_run}", "--force"]) == 2
    assert "contains the input" in _err(capsys)
    assert _listing(fake_run.parent) == before


def test_evaluate_out_that_is_a_file_or_the_model_is_refused(fake_run, tmp_path, capsys, no_loading):
    """#10: `evaluate --out EXISTING_FILE` raised FileExistsError."""
    (tmp_path / "file").write_text("mine")
    assert main(["evaluate", "--model", str(fake_run), "--data", "embedded:synth", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in _err(capsys) and (tmp_path / "file").read_text() == "mine"
    assert main(["evaluate", "--model", str(fake_run), "--data", "embedded:synth", "--out", str(fake_run / "best")]) == 2
    assert "is the input" in _err(capsys)


def test_analyze_refusals_come_first(fake_run, tmp_path, capsys, no_loading, monkeypatch):
    """#7 `analyze factors --limit -1`; #10 `analyze curves --out DIR --overwrite`; #13 disentangle on an
    existing output refused only after the analysis."""
    import flrec.analysis.disentangle

    monkeypatch.setattr(flrec.analysis.disentangle, "disentanglement", lambda *a, **k: pytest.fail("analysed"))
    assert main(["analyze", "factors", "--model", str(fake_run), "--data", "embedded:synth", "--limit", "-1"]) == 2
    assert "--limit must be >= 0" in _err(capsys)
    (tmp_path / "png").mkdir()
    assert main(["analyze", "curves", str(fake_run), "--out", str(tmp_path / "png"), "--overwrite"]) == 2
    assert "is a folder" in _err(capsys)
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "disentangle.json").write_text("{}")
    assert main(["analyze", "disentangle", "--model", str(fake_run), "--data", "embedded:synth", "--out", str(out)]) == 2
    assert "--overwrite" in _err(capsys) and (out / "disentangle.json").read_text() == "{}"


def test_tune_decoding_on_a_tuned_model_is_refused_before_loading(fake_run, tmp_path, capsys, monkeypatch):
    """#13: tune-decoding without --force on a tuned model refused only after redoing the search."""
    import flrec.recommenders.base

    monkeypatch.setattr(flrec.recommenders.base, "get_recommender", lambda *a: pytest.fail("the model was loaded"))
    (fake_run / "best" / "decoding.json").write_text("{}")
    data = tmp_path / "data"
    generate_synthetic(SynthConfig(n_items=40, n_users=20, seq_len_min=4, seq_len_max=6, min_intent_items=2,
                                   n_intents=4), data)
    assert main(["tune-decoding", "--model", str(fake_run), "--data", str(data)]) == 2
    assert "decoding.json exists; pass --force" in _err(capsys)


def test_huge_num_factors_is_refused_before_allocation(tmp_path, capsys):
    """#10: `train sft flr.num_factors=100000` allocated 160 GB."""
    assert main(["train", "sft", "flr.num_factors=100000", f"run_dir={tmp_path / 'r'}"]) == 2
    assert "flr.num_factors must be in 1..1024" in _err(capsys) and not (tmp_path / "r").exists()


def test_data_stats_into_a_closed_pipe_is_quiet(tmp_path):
    """#10: `flrec data stats D | head` ended in a BrokenPipeError traceback."""
    data = tmp_path / "data"
    generate_synthetic(SynthConfig(n_items=40, n_users=20, seq_len_min=4, seq_len_max=6, min_intent_items=2,
                                   n_intents=4), data)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen([sys.executable, "-m", "flrec.cli", "data", "stats", str(data)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before the first line is written
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    p.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err and p.returncode in (0, 141)


def test_run_configs_store_paths_absolute_so_runs_move(tmp_path, monkeypatch):
    """#15: a run stored its data path relative to where training ran; export from elsewhere failed."""
    import yaml

    from flrec.config import save_run_metadata
    from flrec.serving.export import _config_data

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    save_run_metadata(tmp_path / "run", {"data": "data", "from_run": "", "backbone": "tiny:llama"}, stage="sft")
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg == {"data": str(tmp_path / "data"), "from_run": "", "backbone": "tiny:llama"}
    # a run of an older flrec (relative path) is resolved against the directory it ran in
    (tmp_path / "run" / "config.yaml").write_text("data: data\n")
    monkeypatch.chdir(tmp_path / "run")
    assert _config_data([tmp_path / "run"]) == str(tmp_path / "data")
