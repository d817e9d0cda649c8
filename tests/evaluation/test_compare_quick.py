"""`flrec compare` end to end on the embedded synthetic data in a quick mode (tiny LLM, few steps)."""

from __future__ import annotations

import json

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic


def test_compare_quick_mode_on_synthetic_data(tmp_path, capsys):
    data = tmp_path / "synth"
    generate_synthetic(SynthConfig(n_items=40, n_users=30, seq_len_min=4, seq_len_max=7, min_intent_items=2,
                                   n_intents=6), data)
    llm = {"sft": {"backbone": "tiny:llama", "train_limit": 32, "valid_limit": 8, "flr": {"gate_hidden": 16},
                   "train": {"max_steps": 2, "mixed_precision": "no", "progress": False}},
           "beam": 10, "batch_size": 4}
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(json.dumps({"method_configs": {
        "flr": llm, "bigrec": llm, "sasrec": {"max_epochs": 2, "progress": False}}}))
    argv = ["compare", "--config", str(cfg), "--data", str(data), "--methods", "flr,bigrec,sasrec,pop",
            "--seeds", "1,2", "--limit", "12", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["methods"]) == {"flr", "bigrec", "sasrec", "pop"}
    for name, m in summary["methods"].items():
        assert m["n_seeds"] == 2, name
        for metric in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
            assert 0.0 <= m[metric]["mean"] <= 1.0
            assert 0.0 <= m["item_metrics"][metric]["mean"] <= 1.0  # both protocols for every method (#11)
    for name in ("sasrec", "pop"):  # ID models rank items: an item is never ranked above its title
        m = summary["methods"][name]
        assert m["item_metrics"]["hr@10"]["mean"] <= m["hr@10"]["mean"]
    assert summary["significance"]["reference"] == "flr" and summary["significance_item"]["n"] == 12
    out = capsys.readouterr().out
    assert "| flr" in out and "item NDCG@10" in out and "Item level (eval.protocol=item)" in out
    # rerun: every cell is finished, nothing retrains
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "out" / "cells").rglob("summary.json")}
    assert main(argv) == 0
    assert all(p.stat().st_mtime == t for p, t in mtimes.items())
