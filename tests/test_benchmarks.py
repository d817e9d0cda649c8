"""Every benchmark under benchmarks/ still builds its inputs and runs its code path with today's defaults.

A benchmark is a script nobody runs in CI, so a changed default broke one silently before (issue #25:
``bench_refinement.py`` built batches without ``prompt_items``, which ``flr.keys=items`` needs). Here each
one runs on a tiny random backbone (``tiny:llama``) and a tiny synthetic dataset, with the fewest steps,
rows and users its options allow; where its ``main()`` cannot run tiny (``factor_variants.py``: the demo's
config and backbone), the function that builds its inputs does. Nothing is timed and no number is checked
beyond "finite": these runs say that the benchmark works, not what it measures.

``make bench`` runs ``bench_refinement.py`` and ``bench_decoding.py``: both are among these.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and pickling look their module up
    spec.loader.exec_module(mod)
    return mod


def _json_out(capsys) -> dict:
    out = capsys.readouterr().out.strip()
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A tiny synthetic D3 folder (40 items, 40 users): the tests' tiny data (tests/conftest.py), on disk."""
    from flrec.data.synth import SynthConfig, generate_synthetic

    out = tmp_path_factory.mktemp("bench") / "synth"
    generate_synthetic(SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2,
                                   n_intents=6), out)
    return str(out)


def test_every_benchmark_is_covered_here_and_make_bench_names_existing_ones():
    covered = set(re.findall(r'_script\("(\w+)"\)', Path(__file__).read_text()))
    assert {p.stem for p in BENCH.glob("*.py")} <= covered
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    named = re.findall(r"benchmarks/(\w+)\.py", recipe)
    assert named and all((BENCH / f"{n}.py").is_file() for n in named)
    assert {"bench_refinement", "bench_decoding"} <= set(named)


def test_bench_refinement_runs_tiny(data_dir, capsys):
    mod = _script("bench_refinement")
    inp = mod.build_inputs("tiny:llama", data_dir, 2)
    assert "prompt_items" in inp["b_flr"]  # today's default flr.keys=items reads the history items
    mod.main(["--backbone", "tiny:llama", "--data", data_dir, "--batch", "2", "--steps", "1", "--json"])
    res = _json_out(capsys)
    assert math.isfinite(res["init_rec_loss_embed_scale_on"]) and math.isfinite(res["max_abs_diff_cached_vs_naive"])


def test_bench_decoding_runs_tiny(tmp_path, capsys):
    res = _script("bench_decoding").main(["--backbone", "tiny:llama", "--users", "2", "--beam", "2", "--batch", "2",
                                          "--data", str(tmp_path / "none"), "--device", "cpu", "--json"])
    assert res["users"] == 2 and res["shared_prefix_same_rankings"] and "latency_ratio_flr_vs_nothought" in res
    # jump-forward vs step-by-step on the same batches: identical rankings, never more forwards per user
    assert res["top10_agreement_jump_vs_step"] == 1.0 and res["max_score_diff_jump_vs_step"] < 1e-4
    assert res["steps_per_user_jump_forward"] <= res["steps_per_user_step_by_step"]
    assert res["users_per_second_jump_forward"] > 0 and res["users_per_second_step_by_step"] > 0
    assert res["top10_agreement_shared_vs_per_beam_prompt"] == 1.0 and res["shared_prompt_forwards_fraction"] == 1.0
    assert 0 < res["needed_arithmetic_fraction"] and 0 < res["live_slot_fraction"] <= 1


def test_bench_grpo_step_runs_tiny(data_dir, capsys):
    _script("bench_grpo_step").main(["--backbone", "tiny:llama", "--data", data_dir, "--steps", "2", "--rounds", "1",
                                     "--prompts", "2", "--group", "2", "--prompts-per-micro-batch", "2",
                                     "--trainable", "top:1", "--threads", "1", "--json"])
    assert math.isfinite(_json_out(capsys)["grpo_over_sft"])


def test_bench_sft_throughput_runs_tiny(data_dir, capsys):
    _script("bench_sft_throughput").main(["--backbone", "tiny:llama", "--data", data_dir, "--rows", "4",
                                          "--valid-rows", "2", "--batch", "2", "--json"])
    res = _json_out(capsys)
    assert res["max_abs_loss_diff_exact"] < 1e-4 and math.isfinite(res["valid_loss_compact"])


def test_bench_gpu_arch_runs_tiny(capsys):
    _script("bench_gpu_arch").main(["--size", "tiny", "--batch", "2", "--prompt", "40", "--target", "4",
                                    "--steps", "1", "--json"])
    assert math.isfinite(_json_out(capsys)["max_abs_diff_cached_vs_naive_bf16"])


def test_bench_data_scale_runs_tiny(capsys):
    _script("bench_data_scale").main(["--rows", "300", "--items", "50", "--json"])
    res = _json_out(capsys)
    assert res["rows_requested"] == 300 and res["items"] and res["torch_imported"] is False


def test_calibrate_baselines_runs_tiny(data_dir, capsys):
    assert _script("calibrate_baselines").main(["--data", data_dir, "--methods", "pop,sasrec",
                                                "--set", "max_epochs=1", "progress=false", "--json"]) == 0
    assert capsys.readouterr().out.strip()


def test_factor_variants_build_every_variant_tiny(data_dir, tmp_path):
    """factor_variants.py trains the demo's config on the embedded backbone: each variant's config (the
    demo's, its base, the old defaults and its overrides) builds a model on the tiny backbone instead."""
    from types import SimpleNamespace

    from flrec.data.load import load_dataset
    from flrec.training.sft import build_model

    mod = _script("factor_variants")
    ds = load_dataset(data_dir)
    for base in mod.BASES:
        args = SimpleNamespace(steps=2, valid_rows=4, seed=0, base=base)
        for name, overrides in mod.VARIANTS.items():
            tiny = ("backbone=tiny:llama", f"data={data_dir}")
            cfg = mod.variant_config(tmp_path / name, overrides, args, tiny)
            if cfg.trainable.startswith("top:"):  # the demo's top:15 of 30 blocks -> top:1 of the tiny model's 2
                cfg = mod.variant_config(tmp_path / name, overrides, args, (*tiny, "trainable=top:1"))
            model, _, _ = build_model(cfg, ds)
            assert model is not None, name


def test_bench_serving_runs_tiny(data_dir, tmp_path, capsys):
    """The load test on an exported Pop model (an LLM export is tested in tests/serving): both modes, a few
    requests each, and the no-HTTP part."""
    pytest.importorskip("uvicorn")
    from flrec.data.load import load_dataset
    from flrec.recommenders import get_recommender
    from flrec.serving import export

    ds = load_dataset(data_dir)
    cls = get_recommender("pop")
    cls(ds.catalogue, cls.config_cls()).fit(ds).save(tmp_path / "pop")
    out = export(tmp_path / "pop", tmp_path / "export", data=data_dir)
    res = _script("bench_serving").main(["--model", str(out), "--clients", "2", "--duration", "5", "--max-requests",
                                         "4", "--warmup", "1", "--history-len", "3", "--k", "2",
                                         "--direct-histories", "2", "--json"])
    assert set(res["modes"]) == {"batched", "single"} and res["direct"]["histories"] == 2
