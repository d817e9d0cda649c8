"""Decoding options inside the LLM recommender (tiny random backbone, tiny synthetic data with
shared titles): defaults unchanged, exclude-seen, the assistant at gamma 1 / 0, the PMI prior,
item-level rankings, and tune-decoding -> decoding.json -> evaluate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flrec.data.schema import Catalogue, RecDataset
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.decoding.scoring import DecodingConfig
from flrec.errors import ConfigError, FlrecError
from flrec.recommenders.base import Recommender, get_recommender
from flrec.recommenders.llm import DECODING_FILE, LLMRecConfig

SYNTH = SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2, n_intents=6)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _share_titles(ds: RecDataset) -> RecDataset:
    # items 2k+1 take the title of item 2k for k < 5: ten items in five shared titles
    titles = list(ds.catalogue.titles)
    for k in range(5):
        titles[2 * k + 1] = titles[2 * k]
    ds.catalogue = Catalogue(titles)
    return ds


@pytest.fixture(scope="module")
def ds():
    return _share_titles(generate_synthetic(SYNTH))


@pytest.fixture(scope="module")
def rec(ds):
    cfg = LLMRecConfig.from_dict({"sft": {"backbone": "tiny:llama", "max_history": 4}, "beam": 10, "batch_size": 4})
    return get_recommender("base")(ds.catalogue, cfg).fit(ds)


def _set(rec, length_penalty=1.0, **decoding):
    rec.config = rec.config.replace(decoding=DecodingConfig.from_dict(decoding), length_penalty=length_penalty)
    rec.assistant = None
    return rec


class FixedID(Recommender):
    """An 'ID model' whose scores favour item (last history item * 7) % n: a fixed, peaked distribution."""

    name = "fixed"

    def __init__(self, catalogue):
        self.catalogue = catalogue

    def fit(self, dataset, run_dir=None):
        return self

    def score(self, rows):
        n = len(self.catalogue)
        j = torch.arange(n, dtype=torch.float32)
        return torch.stack([((j * 13 + r.history[-1] * 7) % n) / 4.0 for r in rows])

    def save(self, path):
        pass

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def test_default_decoding_is_todays(rec, ds):
    from flrec.data.prompts import collate_left_padded
    from flrec.decoding.beam import constrained_beam_search

    _set(rec)
    rows = ds["test"][:4]
    got = rec.recommend(rows, k=10)
    batch = collate_left_padded(rec.builder.encode_rows(rows, rec.catalogue), rec.tokenizer.pad_token_id)
    ref = constrained_beam_search(rec.model.backbone, rec.model.prefill(batch["prompt_ids"], batch["prompt_mask"]),
                                  rec._trie, beam_size=10, length_penalty=1.0)
    assert got == [[(rec._trie.titles[t], s) for t, s in r] for r in ref]
    # item rankings: every item of the returned titles, split by popularity; a hit on a shared title
    # yields its m items with log shares that sum (in probability) to the title's
    for titles, items in zip(got, rec.last_item_rankings, strict=True):
        assert len(items) == 10 and len({i for i, _ in items}) == 10
        by_title = {t: s for t, s in titles}
        for i, s in items:
            t = rec.catalogue.title(i)
            assert s <= by_title[t] + 1e-9


@pytest.mark.parametrize("decoding", [{}, {"scoring": "trie_renorm", "exclude_seen": True}])
def test_jump_forward_switch_keeps_the_rankings(rec, ds, decoding):
    """``jump_forward: false, shared_prompt: false`` is the step-by-step reference with a prompt copy
    per beam; the defaults (both on) rank identically."""
    rows = ds["test"][:6]
    _set(rec, **decoding)
    on = rec.decode_candidates(rows)[0]
    steps_on = rec.last_search_stats.steps_per_user
    assert rec.last_search_stats.shared_forwards == rec.last_search_stats.forwards > 0
    rec.config = rec.config.replace(jump_forward=False, shared_prompt=False)
    try:
        off = rec.decode_candidates(rows)[0]
    finally:
        rec.config = rec.config.replace(jump_forward=True, shared_prompt=True)
    assert len(rec.last_search_stats.row_forwards) == len(rows)
    assert steps_on < rec.last_search_stats.steps_per_user and rec.last_search_stats.shared_forwards == 0
    assert [[t for t, _ in r] for r in on] == [[t for t, _ in r] for r in off]
    for a, b in zip(on, off, strict=True):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)
    assert {"jump_forward", "shared_prompt"} <= set(rec.config.inert_keys())


def test_exclude_seen_never_returns_a_history_item(rec, ds):
    rows = [r for r in ds["test"] if len(r.history) >= 3][:8]
    _set(rec)
    plain_titles = rec.recommend(rows, k=10)
    plain_items = rec.last_item_rankings
    # without the option some history items come back (so the check below can fail)
    assert any(i in r.history for r, items in zip(rows, plain_items, strict=True) for i, _ in items)
    _set(rec, exclude_seen=True)
    titles = rec.recommend(rows, k=10)
    assert rec.recommend_items(rows, k=10) == rec.last_item_rankings
    for r, ts, items in zip(rows, titles, rec.last_item_rankings, strict=True):
        assert not {i for i, _ in items} & set(r.history)
        for t, _ in ts:  # a title is dropped only when every item it names was seen
            assert not set(ds.catalogue.item_ids(t)) <= set(r.history)
        assert len(ts) == 10
    assert titles != plain_titles


def test_assistant_gamma_one_is_plain_and_zero_is_the_id_model(rec, ds):
    rows = ds["test"][:5]
    _set(rec, length_penalty=0.0)
    plain = rec.recommend(rows, k=10)
    with pytest.raises(ConfigError, match="another catalogue"):
        rec.attach_assistant(FixedID(Catalogue(ds.catalogue.titles[:-1])))
    rec.attach_assistant(FixedID(ds.catalogue))
    rec.config = rec.config.replace(decoding=DecodingConfig(gamma=1.0))
    assert rec.recommend(rows, k=10) == plain
    rec.config = rec.config.replace(decoding=DecodingConfig(gamma=0.0))
    got = rec.recommend(rows, k=10)
    q = torch.softmax(FixedID(ds.catalogue).score(rows).double(), 1)
    for r, ranked in enumerate(got):
        mass: dict[str, float] = {}
        for i, t in enumerate(ds.catalogue.titles):
            mass[t] = mass.get(t, 0.0) + float(q[r, i])
        want = sorted(mass, key=lambda t: -mass[t])[:10]
        assert [t for t, _ in ranked] == want
        assert [s for _, s in ranked] == pytest.approx([math.log(mass[t]) for t in want], abs=1e-4)
    rec.config = rec.config.replace(decoding=DecodingConfig(gamma=0.5, item_tiebreak="assistant"))
    mixed = rec.recommend(rows, k=10)
    assert mixed != plain and mixed != got
    rec.assistant = None


def test_pmi_prior_is_the_empty_prompt_beam_score(rec, ds, tmp_path):
    from flrec.decoding.beam import constrained_beam_search

    for dec in (DecodingConfig(prior_cache_dir=str(tmp_path)),
                DecodingConfig(scoring="trie_renorm", prior_cache_dir=str(tmp_path))):
        _set(rec, length_penalty=1.0, **dec.to_dict())
        empty = constrained_beam_search(rec.model.backbone, rec._empty_prefill(), rec._trie, beam_size=10,
                                        scoring=dec.scoring)[0]
        prior = rec.title_prior([t for t, _ in empty], dec, 1.0)
        assert prior.tolist() == pytest.approx([s for _, s in empty], abs=1e-4)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # one cache per decoding signature
    rows = ds["test"][:3]
    _set(rec, prior_cache_dir=str(tmp_path))
    cands, probs = rec.decode_candidates(rows)
    titles, _ = rec.finalise(rows, cands, probs, rec.config.decoding.replace(pmi_alpha=0.5), k=10)
    for hyps, ranked in zip(cands, titles, strict=True):
        prior = rec.title_prior([t for t, _ in hyps])
        want = sorted(((rec._trie.titles[t], s - 0.5 * p) for (t, s), p in zip(hyps, prior.tolist(), strict=True)),
                      key=lambda x: -x[1])
        assert [t for t, _ in ranked] == [t for t, _ in want]
        assert [s for _, s in ranked] == pytest.approx([s for _, s in want])


def test_prior_cache_survives_a_new_recommender(rec, ds, tmp_path, monkeypatch):
    _set(rec, prior_cache_dir=str(tmp_path), pmi_alpha=1.0)
    rec._priors.clear()
    first = rec.recommend(ds["test"][:2], k=10)
    rec._priors.clear()  # as a fresh process would: only the disk cache is left
    import flrec.decoding.ranker as ranker_mod

    monkeypatch.setattr(ranker_mod, "score_titles", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert rec.recommend(ds["test"][:2], k=10) == first


def test_tune_writes_decoding_json_and_evaluate_uses_it(rec, ds, tmp_path, capsys, caplog):
    from flrec.experiments.runner import EvalConfig, evaluate
    from flrec.experiments.tune import TuneConfig, tune_model_dir
    from flrec.serving.load import load_llm_recommender

    _set(rec)
    rec.save(tmp_path / "saved")
    model_dir = tmp_path / "saved" / "model"
    cfg = TuneConfig(limit=6, scorings=["sum", "trie_renorm"], length_penalties=[1.0, 0.0], alphas=[0.0, 0.5],
                     batch_size=3, base=DecodingConfig(prior_cache_dir=str(tmp_path / "priors")))
    res = tune_model_dir(tmp_path / "saved", ds, cfg)
    assert len(res["points"]) == 8 and res["settings"]["split"] == "valid" and res["settings"]["rows"] == 6
    chosen = json.loads((model_dir / DECODING_FILE).read_text())
    best = max(p["item_metrics"]["ndcg@10"] for p in res["points"])
    assert chosen["selected_on"]["value"] == best
    first_best = next(p for p in res["points"] if p["item_metrics"]["ndcg@10"] == best)
    assert chosen["decoding"] == first_best["decoding"] and chosen["length_penalty"] == first_best["length_penalty"]
    assert json.loads((model_dir / "decoding_search.json").read_text())["points"] == res["points"]
    with pytest.raises(FlrecError, match="--force"):
        tune_model_dir(tmp_path / "saved", ds, cfg)
    with pytest.raises(ConfigError, match="test"):
        TuneConfig(split="test")

    # a hand-written choice makes the pick-up observable whatever the tiny model preferred
    (model_dir / DECODING_FILE).write_text(json.dumps({"length_penalty": 0.0, "decoding": {
        "scoring": "trie_renorm", "pmi_alpha": 0.5, "prior_cache_dir": str(tmp_path / "priors")}}))
    served = load_llm_recommender(tmp_path / "saved", ds, beam=10)  # not asked for: ignored
    assert served.config.decoding.scoring == "sum" and served.decoding_info()["tuned_from"] is None
    assert served.apply_tuned_decoding(model_dir)  # asked for (flrec evaluate --use-tuned-decoding)
    assert served.config.decoding.scoring == "trie_renorm" and served.config.length_penalty == 0.0
    assert "ranking with the tuned decoding" in caplog.text and '"scoring": "trie_renorm"' in caplog.text  # printed
    summary = evaluate(served, ds, EvalConfig(limit=4, protocol="item"), tmp_path / "eval")
    assert summary["decoding"]["scoring"] == "trie_renorm" and summary["decoding"]["pmi_alpha"] == 0.5
    assert summary["decoding"]["tuned_from"].endswith(DECODING_FILE)
    fp = json.loads((tmp_path / "eval" / "fingerprint.json").read_text())
    assert fp["tuned_decoding.scoring"] == "trie_renorm" and fp["tuned_decoding.length_penalty"] == 0.0
    assert set(summary["item_metrics"]) == set(summary["metrics"])
    assert type(rec).load(tmp_path / "saved").config.decoding.scoring == "sum"  # its config did not ask
    asked = rec.config.replace(use_tuned_decoding=True)
    again = type(rec).from_model_dir(model_dir, ds.catalogue, asked)
    assert again.config.decoding.scoring == "trie_renorm"
    (model_dir / DECODING_FILE).write_text('{"decoding": {"scoring": "mean"}}')
    with pytest.raises(ConfigError, match="scoring"):
        type(rec).from_model_dir(model_dir, ds.catalogue, asked)


def test_a_decoding_json_changes_nothing_unless_asked(rec, ds, tmp_path):
    """A model folder with a decoding.json ranks exactly as without one, unless the user asks for it."""
    from flrec.experiments.runner import EvalConfig, evaluate

    _set(rec)
    rec.save(tmp_path / "saved")
    model_dir = tmp_path / "saved" / "model"
    rows = ds["test"][:4]
    plain = type(rec).from_model_dir(model_dir, ds.catalogue, rec.config)
    before = plain.recommend(rows, k=10)
    ev_before = evaluate(plain, ds, EvalConfig(limit=4), tmp_path / "e1")
    (model_dir / DECODING_FILE).write_text(json.dumps({"length_penalty": 0.0, "decoding": {"scoring": "trie_renorm"}}))
    for quiet in (type(rec).from_model_dir(model_dir, ds.catalogue, rec.config), type(rec).load(tmp_path / "saved")):
        assert quiet.recommend(rows, k=10) == before
        assert quiet.decoding_info()["tuned_from"] is None and not quiet.config.use_tuned_decoding
    ev_after = evaluate(type(rec).load(tmp_path / "saved"), ds, EvalConfig(limit=4), tmp_path / "e2")
    assert ev_after["metrics"] == ev_before["metrics"]
    assert not any(k.startswith("tuned_decoding") for k in json.loads((tmp_path / "e2" / "fingerprint.json").read_text()))
    asked = type(rec).from_model_dir(model_dir, ds.catalogue, rec.config.replace(use_tuned_decoding=True))
    assert asked.config.decoding.scoring == "trie_renorm" and asked.decoding_info()["use_tuned_decoding"]


def test_flr_plus_sasrec_fits_saves_and_loads(ds, tmp_path):
    cls = get_recommender("flr+sasrec")
    cfg = cls.config_cls.from_dict({
        "sft": {"backbone": "tiny:llama", "max_history": 4, "train_limit": 16, "valid_limit": 4,
                "flr": {"num_factors": 2, "gate_hidden": 8},
                "train": {"max_steps": 1, "mixed_precision": "no", "progress": False}},
        "beam": 10, "batch_size": 4, "seed": 3, "decoding": {"gamma": 0.5},
        "assistant_config": {"max_epochs": 1, "progress": False, "hidden_size": 16}})
    rec = cls(ds.catalogue, cfg).fit(ds, run_dir=tmp_path / "run")
    assert rec.assistant.name == "sasrec" and rec.assistant.config.seed == 3
    rows = ds["test"][:3]
    got = rec.recommend(rows, k=10)
    assert rec.decoding_info()["assistant"] == "sasrec"
    # with a thought token too, the PMI prior is the empty-history beam score (same decoding)
    from flrec.decoding.beam import constrained_beam_search

    assert rec.model.config.uses_thought
    dec = DecodingConfig(scoring="trie_renorm", prior_cache_dir=str(tmp_path / "priors"))
    empty = constrained_beam_search(rec.model.backbone, rec._empty_prefill(), rec._trie, beam_size=10,
                                    length_penalty=0.5, scoring="trie_renorm")[0]
    assert rec.title_prior([t for t, _ in empty], dec, 0.5).tolist() == pytest.approx([s for _, s in empty], abs=1e-4)
    rec.save(tmp_path / "saved")
    again = cls.load(tmp_path / "saved")
    assert again.assistant is not None and again.config.decoding.gamma == 0.5
    for a, b in zip(again.recommend(rows, k=10), got, strict=True):
        assert [t for t, _ in a] == [t for t, _ in b]
    # reusing the trained parts (as a comparison would reuse its flr and sasrec cells): no training
    import flrec.recommenders.llm as llm_mod

    reuse = cfg.replace(llm_dir=str(tmp_path / "saved"), assistant_dir=str(tmp_path / "saved" / "assistant"))
    orig_sft = llm_mod.run_sft
    llm_mod.run_sft = lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again"))
    try:
        reused = cls(ds.catalogue, reuse).fit(ds)
    finally:
        llm_mod.run_sft = orig_sft
    for a, b in zip(reused.recommend(rows, k=10), got, strict=True):
        assert [t for t, _ in a] == [t for t, _ in b]
    with pytest.raises(FlrecError, match="config.json"):
        cls(ds.catalogue, cfg.replace(llm_dir=str(tmp_path / "saved"), assistant_dir=str(tmp_path))).fit(ds)
    # the assisted method reads its own tuned file; plain FLR never loads an assisted directory as FLR
    (tmp_path / "saved" / "model" / "decoding+assistant.json").write_text('{"decoding": {"gamma": 0.0}}')
    assert cls.load(tmp_path / "saved").config.decoding.gamma == 0.5  # not asked for: ignored
    asked = cls.load(tmp_path / "saved")
    assert asked.apply_tuned_decoding(tmp_path / "saved" / "model") and asked.config.decoding.gamma == 0.0
    with pytest.raises(ConfigError, match="unknown key 'assistant'"):
        get_recommender("flr").load(tmp_path / "saved")
    with pytest.raises(ConfigError, match="assistant"):
        cls(ds.catalogue, cfg).recommend(rows)


def test_cli_tune_decoding(rec, tmp_path, capsys):
    from flrec.cli import main

    data = tmp_path / "data"
    generate_synthetic(SYNTH, data)
    _set(rec)
    rec.save(tmp_path / "saved")
    argv = ["tune-decoding", "--model", str(tmp_path / "saved"), "--data", str(data), "--limit", "3",
            "scorings=sum,info_gain", "length_penalties=1", "alphas=0", "batch_size=3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decoding.json: length_penalty=1.0" in out and "search (2 points)" in out
    assert (tmp_path / "saved" / "model" / DECODING_FILE).is_file()
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert main([*argv, "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "valid" in err and "\n" not in err


def test_tune_resumes_after_an_interruption(rec, ds, tmp_path, monkeypatch):
    from flrec.experiments.tune import TuneConfig, tune_decoding

    _set(rec)
    cfg = TuneConfig(limit=4, scorings=["sum", "trie_renorm", "info_gain"], length_penalties=[1.0], alphas=[0.0],
                     batch_size=4)
    calls = []
    orig = type(rec).decode_candidates

    def crash_on_third(self, rows, decoding=None, length_penalty=None, batch_size=None):
        calls.append(decoding.scoring)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return orig(self, rows, decoding, length_penalty, batch_size)

    monkeypatch.setattr(type(rec), "decode_candidates", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        tune_decoding(rec, ds, cfg, tmp_path)
    assert (tmp_path / "decoding_search.json.partial").is_file() and not (tmp_path / DECODING_FILE).exists()
    monkeypatch.setattr(type(rec), "decode_candidates", orig)
    full = tune_decoding(rec, ds, cfg, tmp_path / "fresh")
    calls.clear()
    monkeypatch.setattr(type(rec), "decode_candidates", crash_on_third)  # counts calls again; 1 left to do
    resumed = tune_decoding(rec, ds, cfg, tmp_path)
    assert calls == ["info_gain"]
    assert resumed["points"] == full["points"] and not (tmp_path / "decoding_search.json.partial").exists()


def test_llm_dir_reuses_a_trained_model_and_its_tuned_decoding(ds, tmp_path, monkeypatch):
    """``llm_dir``: fit loads the trained model instead of training, applies its decoding.json when asked, refuses
    a model of another reasoner; a comparison cell's fingerprint follows the folder's files."""
    import flrec.recommenders.llm as llm_mod
    from flrec.experiments.compare import CompareConfig, cell_fingerprint
    from flrec.serving.load import resolve_model_dir

    cfg = LLMRecConfig.from_dict({
        "sft": {"backbone": "tiny:llama", "max_history": 4, "train_limit": 16, "valid_limit": 4,
                "flr": {"num_factors": 2, "gate_hidden": 8},
                "train": {"max_steps": 1, "mixed_precision": "no", "progress": False}},
        "beam": 10, "batch_size": 4, "seed": 3})
    rows = ds["test"][:3]
    got = get_recommender("flr")(ds.catalogue, cfg).fit(ds, run_dir=tmp_path / "run").recommend(rows, k=10)
    reuse = {**cfg.to_dict(), "llm_dir": str(tmp_path / "run")}
    cc = CompareConfig(data="x", methods=["flr"], method_configs={"flr": reuse})
    before = cell_fingerprint("flr", 3, cc, "h")

    monkeypatch.setattr(llm_mod, "run_sft", lambda *a, **k: pytest.fail("trained again"))
    again = get_recommender("flr")(ds.catalogue, LLMRecConfig.from_dict(reuse)).fit(ds)
    assert [[t for t, _ in r] for r in again.recommend(rows, k=10)] == [[t for t, _ in r] for r in got]
    with pytest.raises(ConfigError, match="reasoner 'flr'.*'bigrec' needs 'none'"):
        get_recommender("bigrec")(ds.catalogue, LLMRecConfig.from_dict(reuse)).fit(ds)

    (resolve_model_dir(tmp_path / "run") / DECODING_FILE).write_text('{"length_penalty": 0.0, "decoding": {"scoring": "trie_renorm"}}')
    plain = get_recommender("flr")(ds.catalogue, LLMRecConfig.from_dict(reuse)).fit(ds)  # not asked for
    assert plain.config.decoding.scoring == "sum" and plain.config.length_penalty == 1.0
    tuned = get_recommender("flr")(ds.catalogue, LLMRecConfig.from_dict({**reuse, "use_tuned_decoding": True})).fit(ds)
    assert tuned.config.decoding.scoring == "trie_renorm" and tuned.config.length_penalty == 0.0
    after = cell_fingerprint("flr", 3, cc, "h")
    assert before != after and before["config.llm_dir"] == after["config.llm_dir"]
    assert cell_fingerprint("flr", 3, cc, "h") == after  # deterministic
    # without llm_dir, use_tuned_decoding cannot change a cell (nothing is loaded): not in its fingerprint
    trained = CompareConfig(data="x", methods=["flr"], method_configs={"flr": cfg.to_dict()})
    assert "config.use_tuned_decoding" not in cell_fingerprint("flr", 3, trained, "h")
    assert after["config.use_tuned_decoding"] is False
