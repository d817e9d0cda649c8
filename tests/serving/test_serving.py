"""Serving: export -> load -> the same rankings; recommend (API, CLI, JSONL); the HTTP service.

Tiny models only: a 2-step FLR SFT on tiny:llama, SASRec for 2 epochs, Pop; tiny synthetic data.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import torch
from tiny_runs import sft_cfg  # the SFT tests' tiny-run config (tiny:llama, small FLR)

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.errors import FlrecError
from flrec.experiments.runner import EvalConfig, evaluate
from flrec.recommenders.base import get_recommender
from flrec.serving import Query, RequestError, export, load_llm_recommender, load_recommender
from flrec.training.sft import run_sft

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from flrec.serving.app import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    ds = generate_synthetic(SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2,
                                        n_intents=6), root / "data")
    return root, ds


@pytest.fixture(scope="module")
def llm_run(work):
    root, ds = work
    res = run_sft(sft_cfg(root, train={"max_steps": 2, "eval_every": 2, "save_every": 2}), ds)
    return root / "run", res


@pytest.fixture(scope="module")
def llm_export(work, llm_run):
    root, _ = work
    return export(llm_run[0], root / "export-flr", data=str(root / "data"))


@pytest.fixture(scope="module")
def served_llm(llm_export):
    return load_recommender(llm_export)


def _id_cell(root: Path, ds, method: str, tag: str) -> Path:
    """A `flrec compare`-style cell: cells/<method>/seed1/{model/, summary.json} + the compare config.yaml."""
    out = root / f"compare-{method}-{tag}"
    out.mkdir()
    (out / "config.yaml").write_text(f"data: {root / 'data'}\n")
    cell = out / "cells" / method / "seed1"
    cfg_cls = get_recommender(method).config_cls
    cfg = cfg_cls.from_dict({"max_epochs": 2, "progress": False}) if method != "pop" else cfg_cls()
    rec = get_recommender(method)(ds.catalogue, cfg).fit(ds, run_dir=cell)
    rec.save(cell / "model")
    evaluate(rec, ds, EvalConfig(limit=6, batch_size=6), run_dir=cell)
    return cell


@pytest.fixture(scope="module")
def pop_export(work):
    root, ds = work
    return export(_id_cell(root, ds, "pop", "fixture"), root / "export-pop")


# ------------------------------------------------------------------------------ export and load
def test_llm_export_load_gives_the_run_rankings(work, llm_run, llm_export, monkeypatch):
    root, ds = work
    rows = ds["test"][:8]
    original = load_llm_recommender(llm_run[0], ds, beam=10).recommend(rows, k=10)
    # Loading must not need the dataset folder.
    import flrec.data.d3 as d3

    monkeypatch.setattr(d3, "read_d3", lambda *a, **k: (_ for _ in ()).throw(AssertionError("dataset read")))
    served = load_recommender(llm_export)
    answers = served.recommend_batch([Query(r.history, k=10) for r in rows])
    for orig, ans in zip(original, answers, strict=True):
        assert [t for t, _ in orig] == [it["title"] for it in ans["items"]]
        assert [s for _, s in orig] == pytest.approx([it["score"] for it in ans["items"]], abs=1e-5)
        for it in ans["items"]:  # item ids carry the title; shared titles list their other items
            assert {it["item_id"], *it["same_title_item_ids"]} == set(ds.catalogue.item_ids(it["title"]))
    manifest = json.loads((llm_export / "flrec_export.json").read_text())
    assert manifest["method"] == "flr" and manifest["kind"] == "llm" and manifest["decoding"]["beam"] == 10
    assert (llm_export / "recommender" / "model" / "backbone").is_dir()  # tuned weights travel with the export


def test_a_saved_llm_recommender_in_a_compare_cell_exports_too(work, llm_run, served_llm):
    root, ds = work
    rec = load_llm_recommender(llm_run[0], ds, beam=10)
    cell = root / "compare-llm" / "cells" / "latentr3-like" / "seed0"
    rec.save(cell / "model")
    (cell / "summary.json").write_text(json.dumps({"method": "flr", "metrics": {"hr@10": 0.5}, "split": "test"}))
    served = load_recommender(export(cell, root / "export-flr-cell", data=str(root / "data")))
    assert served.method == "flr" and served.metadata()["metrics"]["hr@10"] == 0.5
    rows = ds["test"][:3]
    for a, b in zip(served.recommend_batch([Query(r.history) for r in rows]),
                    served_llm.recommend_batch([Query(r.history) for r in rows]), strict=True):
        assert [it["item_id"] for it in a["items"]] == [it["item_id"] for it in b["items"]]


@pytest.mark.parametrize("method", ["sasrec", "pop"])
def test_id_export_load_gives_the_run_rankings(work, method):
    root, ds = work
    cell = _id_cell(root, ds, method, "rankings")
    out = export(cell, root / f"export-{method}-rankings")
    rows = ds["test"][:10]
    original = get_recommender(method).load(cell / "model").score(rows)
    served = load_recommender(out)
    answers = served.recommend_batch([Query(r.history, k=10) for r in rows])
    for scores, ans in zip(original, answers, strict=True):
        top = torch.sort(scores, descending=True, stable=True).indices[:10].tolist()
        assert [it["item_id"] for it in ans["items"]] == top
    assert (out / "metrics.json").is_file()  # the cell's evaluation became the metrics card
    assert json.loads((out / "metrics.json").read_text())["method"] == method
    items = json.loads((out / "catalogue.json").read_text())["items"]
    pop = ds.item_popularity("train")
    assert [it["train_count"] for it in items] == [pop.get(i, 0) for i in range(len(items))]


def test_export_refuses_a_non_empty_out_and_a_folder_without_a_model(work, llm_run, tmp_path):
    root, _ = work
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FlrecError, match="not empty; pass --overwrite"):
        export(llm_run[0], tmp_path / "taken", data=str(root / "data"))
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(FlrecError, match="not an flrec export"):
        load_recommender(llm_run[0])
    with pytest.raises(FlrecError, match="pass --data DIR"):  # started from Python: config.yaml's data is a default
        export(llm_run[0], tmp_path / "y")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlrecError, match="no trained flrec model"):
        export(tmp_path / "empty", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_cli_sft_run_names_its_dataset(work, llm_run, tmp_path):
    import shutil

    root, ds = work
    run = tmp_path / "cli-run"
    shutil.copytree(llm_run[0] / "best", run / "best")
    (run / "config.yaml").write_text(f"data: {root / 'data'}\n")
    (run / "run_info.json").write_text(json.dumps({"argv": ["/venv/bin/flrec", "train", "sft", "--config", "x.yaml"]}))
    served = load_recommender(export(run, tmp_path / "out"))
    assert served.catalogue.titles == ds.catalogue.titles and served.counts is not None


# ------------------------------------------------------------------------------- recommending
def test_exclude_seen_never_returns_a_history_item(work, served_llm, pop_export):
    _, ds = work
    for row in ds["test"][:6]:
        ans = served_llm.recommend(item_ids=row.history, k=10, exclude_seen=True)
        got = {it["item_id"] for it in ans["items"]} | {i for it in ans["items"] for i in it["same_title_item_ids"]}
        assert not got & set(row.history)
        assert len(ans["items"]) == 10  # the beam is widened so k items remain
    pop = load_recommender(pop_export)
    top3 = [it["item_id"] for it in pop.recommend(item_ids=[0], k=3)["items"]]
    assert [it["item_id"] for it in pop.recommend(item_ids=top3, k=3)["items"]] == top3  # without the flag: returned
    ans = pop.recommend(item_ids=top3, k=10, exclude_seen=True)
    assert len(ans["items"]) == 10 and not {it["item_id"] for it in ans["items"]} & set(top3)


def test_misspelt_title_gets_close_match_suggestions(work, served_llm):
    _, ds = work
    title = ds.catalogue.titles[3]
    typo = title[:4] + title[5:]  # one letter dropped
    with pytest.raises(RequestError) as e:
        served_llm.recommend(history=[ds.catalogue.titles[0], typo])
    assert e.value.code == "unknown_titles" and title in e.value.details["suggestions"][typo]
    assert "did you mean" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RequestError, match="not in the catalogue") as e:
        served_llm.recommend(item_ids=[1, 10_000])
    assert e.value.code == "unknown_item_ids"
    with pytest.raises(RequestError, match="k=11 is out of range"):
        served_llm.recommend(item_ids=[1], k=11)  # beam 10


def test_lazy_load_refuses_bad_titles_before_reading_weights(work, llm_export):
    _, ds = work
    lazy = load_recommender(llm_export, lazy=True, beam=4)
    with pytest.raises(RequestError, match="did you mean"):
        lazy.recommend(history=[ds.catalogue.titles[2] + "x"], k=4)
    with pytest.raises(RequestError, match="use 1..4"):
        lazy.recommend(item_ids=[2], k=5)
    assert callable(lazy._recommender)  # still only the loader
    assert len(lazy.recommend(item_ids=[2], k=4)["items"]) == 4 and lazy.recommender.config.beam == 4


def test_flr_explanation_names_history_items_per_factor(work, served_llm):
    _, ds = work
    row = next(r for r in ds["test"] if len(r.history) >= 3)
    ex = served_llm.recommend(item_ids=row.history, k=5, explain=True)["explanation"]
    assert len(ex["factors"]) == 3 and sum(f["gate"] for f in ex["factors"]) == pytest.approx(1.0, abs=1e-4)
    for f in ex["factors"]:
        assert 0.0 < f["attention_on_history"] <= 1.0 + 1e-5
        for h in f["top_history"]:
            assert row.history[h["position"]] == h["item_id"] and ds.catalogue.titles[h["item_id"]] == h["title"]
        masses = [h["attention"] for h in f["top_history"]]
        assert masses == sorted(masses, reverse=True)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_export_recommend_and_jsonl_batches(work, llm_run, capsys, tmp_path):
    root, ds = work
    out = tmp_path / "exp"
    argv = ["export", str(llm_run[0]), "--out", str(out), "--data", str(root / "data")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    t = ds.catalogue.titles
    assert main(["recommend", "--model", str(out), "--history", t[1], t[2], "-k", "4", "--json"]) == 0
    ans = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(ans["items"]) == 4 and {"item_id", "title", "score"} <= set(ans["items"][0])
    assert main(["recommend", "--model", str(out), "--item-ids", "1", "2"]) == 0
    assert "factor" in capsys.readouterr().out
    assert main(["recommend", "--model", str(out), "--history", t[1][:-1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: transformers' weight-loading bar
    assert err.startswith("error:") and "did you mean" in err

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"history": [t[1]], "id": "a"}) + "\n" + json.dumps({"item_ids": [5, 999]}) + "\n"
                   + json.dumps({"item_ids": [7], "k": 2}) + "\n")
    assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(dst), "--batch-size", "1"]) == 2
    assert "line 2" in capsys.readouterr().err and not dst.exists()
    src.write_text(src.read_text().replace("999", "9"))
    assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(dst)]) == 0
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3] and lines[0]["id"] == "a" and len(lines[2]["items"]) == 2
    assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(dst)]) == 2  # no overwrite


# ----------------------------------------------------------------------------------------- HTTP
def test_http_bad_requests_get_their_documented_4xx(work, served_llm):
    _, ds = work
    t = ds.catalogue.titles
    with TestClient(create_app(served_llm, ServeConfig(max_body_bytes=2048, max_history=20))) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        meta = client.get("/metadata").json()
        assert meta["method"] == "flr" and meta["max_k"] == 10 and meta["n_items"] == len(t)
        ok = client.post("/recommend", json={"history": [t[1], t[2]], "k": 3})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
        cases = [
            ({"history": []}, 422, "empty_history"),
            ({"item_ids": []}, 422, "empty_history"),
            ({"item_ids": [1, 4000]}, 422, "unknown_item_ids"),
            ({"history": [t[1][:-1]]}, 422, "unknown_titles"),
            ({"item_ids": [1], "k": 0}, 422, "k_out_of_range"),
            ({"item_ids": [1], "k": 11}, 422, "k_out_of_range"),
            ({"history": "Title"}, 422, "invalid_request"),
            ({"item_ids": [1.5]}, 422, "invalid_request"),
            ({"item_ids": ["no-such-id"]}, 422, "unknown_item_ids"),  # strings are the user's own ids
            ({"item_ids": [1], "k": "3"}, 422, "invalid_request"),
            ({"item_ids": [1], "colour": "red"}, 422, "invalid_request"),
            ({"item_ids": [1], "history": [t[1]]}, 422, "bad_request"),
            ({}, 422, "bad_request"),
            ({"item_ids": [1] * 21}, 422, "history_too_long"),
            ({"history": ["x" * 3000]}, 413, "body_too_large"),
        ]
        for body, status, code in cases:
            r = client.post("/recommend", json=body)
            assert (r.status_code, r.json()["error"]) == (status, code), body
            assert r.json()["message"]
        r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (400, "bad_json")
        r = client.post("/recommend", json={"history": [t[1][:-1]]})
        assert t[1] in r.json()["suggestions"][t[1][:-1]]


def test_http_concurrent_requests_are_micro_batched_without_5xx(work, served_llm):
    _, ds = work
    rows = ds["test"][:8]
    app = create_app(served_llm, ServeConfig(max_batch=4, max_wait_ms=200, max_queue=64))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            rs = await asyncio.gather(*[client.post("/recommend", json={"item_ids": r.history, "k": 5}) for r in rows])
        await app.state.batcher.drain_and_stop()
        return rs

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(rows)
    assert app.state.batcher.stats["max_batch_seen"] > 1  # requests shared a model call
    for r, row in zip(responses, rows, strict=True):
        alone = served_llm.recommend(item_ids=row.history, k=5)
        assert [it["title"] for it in r.json()["items"]] == [it["title"] for it in alone["items"]]


class _BlockingModel:
    """Stands in for a slow model: every batch waits for ``release``; ``busy`` is set once one is running."""

    method, kind, max_k = "fake", "id", 10

    def __init__(self):
        self.release, self.busy = threading.Event(), threading.Event()

    def resolve(self, history=None, item_ids=None):
        return list(item_ids)

    def metadata(self):
        return {"method": "fake"}

    def recommend_batch(self, queries):
        self.busy.set()
        assert self.release.wait(30)
        return [{"items": [{"item_id": q.item_ids[0], "title": "t", "score": 0.0}]} for q in queries]


def test_http_full_queue_answers_503_with_retry_after_and_shutdown_drains():
    model = _BlockingModel()
    app = create_app(model, ServeConfig(max_batch=1, max_wait_ms=0, max_queue=1, retry_after_s=2))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            post = lambda i: asyncio.create_task(client.post("/recommend", json={"item_ids": [i]}))  # noqa: E731
            running = post(0)
            while not model.busy.is_set():  # request 0 is inside the model
                await asyncio.sleep(0.01)
            queued = post(1)
            while app.state.batcher.queue.qsize() < 1:  # request 1 waits in the (full) queue
                await asyncio.sleep(0.01)
            rejected = [await client.post("/recommend", json={"item_ids": [i]}) for i in (2, 3)]
            stopping = asyncio.create_task(app.state.batcher.drain_and_stop())
            await asyncio.sleep(0.05)
            late = await client.post("/recommend", json={"item_ids": [9]})
            model.release.set()
            answered = [await running, await queued]
            await stopping
            return answered, rejected, late

    answered, rejected, late = asyncio.run(run())
    assert [r.status_code for r in answered] == [200, 200]  # the queued request is answered during shutdown
    assert [r.json()["items"][0]["item_id"] for r in answered] == [0, 1]
    for r in rejected:
        assert (r.status_code, r.headers["retry-after"], r.json()["error"]) == (503, "2", "overloaded")
    assert late.status_code == 503 and late.json()["error"] == "shutting_down"


def test_export_checks_beam_batch_size_and_training_data(work, llm_run, tmp_path, capsys):
    """Issue 28 #5/#6: --beam beyond the catalogue, --batch-size 0 and another dataset are refused."""
    root, ds = work
    base = ["export", str(llm_run[0]), "--out", str(tmp_path / "x"), "--data", str(root / "data")]
    assert main([*base, "--beam", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"exceeds the catalogue's {len(ds.catalogue.unique_titles)} distinct titles" in err
    assert main([*base, "--batch-size", "0"]) == 2 and ">= 1" in capsys.readouterr().err
    other = tmp_path / "other"
    generate_synthetic(SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2,
                                   n_intents=6, seed=7), other)
    assert main([*base[:-1], str(other)]) == 2
    assert "is not the one the run" in capsys.readouterr().err and not (tmp_path / "x").exists()
