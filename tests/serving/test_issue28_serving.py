"""Issue 28 on a Pop export (no training, fast): exports never destroy their source or a user's folder,
check the data they are given, batch files lock and resume exactly, and the HTTP service answers every
bad body, stalled connection and empty answer with JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from test_serving import _id_cell

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.errors import FlrecError
from flrec.serving import export, load_recommender
from flrec.serving.batch import recommend_file
from flrec.utils.io import file_lock

SYNTH = SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2, n_intents=6)


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    root = tmp_path_factory.mktemp("issue28-serving")
    ds = generate_synthetic(SYNTH, root / "data")
    cell = _id_cell(root, ds, "pop", "i28")
    out = export(cell, root / "export")
    return root, ds, cell, out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


# ------------------------------------------------------------------------- #1: export guard
def test_export_into_a_parent_of_its_source_is_refused_and_deletes_nothing(pop, capsys):
    root, _, cell, _ = pop
    runs = cell.parent.parent.parent  # compare-pop-i28: holds the source cell and config.yaml
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert main(["export", str(cell), "--out", str(runs), "--overwrite"]) == 2
    assert "contains the input" in _err(capsys)
    assert main(["export", str(cell), "--out", str(cell / "exp")]) == 2
    assert "lies inside the input" in _err(capsys)
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before


def test_export_overwrite_replaces_only_an_export(pop, tmp_path, capsys):
    _, _, cell, _ = pop
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", str(cell), "--out", str(mine), "--overwrite"]) == 2
    assert "not written by flrec" in _err(capsys)
    assert (mine / "notes.txt").read_text() == "keep"
    out = tmp_path / "exp"
    assert main(["export", str(cell), "--out", str(out)]) == 0
    assert main(["export", str(cell), "--out", str(out), "--overwrite"]) == 0  # flrec's own export: replaced
    assert (out / "flrec_export.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ #5, #6: export checks its inputs
def test_export_refuses_another_dataset_unless_asked(pop, tmp_path, capsys):
    root, _, cell, _ = pop
    other = tmp_path / "other"
    generate_synthetic(SYNTH.replace(seed=SYNTH.seed + 1), other)
    assert main(["export", str(cell), "--out", str(tmp_path / "x"), "--data", str(other)]) == 2
    assert "is not the one the run" in _err(capsys) and not (tmp_path / "x").exists()
    assert main(["export", str(cell), "--out", str(tmp_path / "x"), "--data", str(other), "--allow-other-data"]) == 0


def test_export_refuses_batch_size_below_one(pop, tmp_path, capsys):
    _, _, cell, _ = pop
    assert main(["export", str(cell), "--out", str(tmp_path / "x"), "--batch-size", "0"]) == 2
    assert "--batch-size must be an integer >= 1" in _err(capsys)


# ------------------------------------------------------------------------- #4: batch recommend
def _input(path: Path, n: int, offset: int = 0) -> Path:
    path.write_text("".join(json.dumps({"item_ids": [(i + offset) % 40, (i + 1) % 40], "id": i}) + "\n"
                            for i in range(n)))
    return path


def test_batch_output_is_locked(pop, tmp_path, capsys):
    _, _, _, out = pop
    src, dst = _input(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    with file_lock(tmp_path / ".out.jsonl.lock", dst, "--output"):
        assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(dst)]) == 2
        assert "in use by another flrec process" in _err(capsys)
    assert not dst.exists()
    assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(dst)]) == 0
    assert len(dst.read_text().splitlines()) == 4 and not (tmp_path / ".out.jsonl.lock").exists()


def test_batch_resume_appends_exactly_the_missing_lines_and_refuses_other_settings(pop, tmp_path, monkeypatch):
    _, _, _, out = pop
    model = load_recommender(out)
    src, dst = _input(tmp_path / "in.jsonl", 10), tmp_path / "out.jsonl"
    orig, calls = type(model).recommend_batch, {"n": 0}

    def crash_on_third(self, queries):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, queries)

    monkeypatch.setattr(type(model), "recommend_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        recommend_file(model, src, dst, k=5, batch_size=3, progress=False)
    monkeypatch.setattr(type(model), "recommend_batch", orig)
    with pytest.raises(FlrecError, match=r"\(k differ\)"):  # another k: refused, naming the key
        recommend_file(model, src, dst, k=3, batch_size=3, progress=False)
    with pytest.raises(FlrecError, match="input lines 1..6"):  # another input file: refused
        recommend_file(model, _input(tmp_path / "other.jsonl", 10, offset=7), dst, k=5, progress=False)
    res = recommend_file(model, src, dst, k=5, batch_size=3, progress=False)
    assert res["resumed_after_line"] == 6
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 11)) and all(r["k"] == 5 for r in rows)
    fresh = recommend_file(model, src, tmp_path / "fresh.jsonl", k=5, progress=False)
    assert fresh["resumed_after_line"] == 0
    assert (tmp_path / "fresh.jsonl").read_text() == dst.read_text()


def test_batch_output_over_its_input_is_refused(pop, tmp_path, capsys):
    _, _, _, out = pop
    src = _input(tmp_path / "in.jsonl", 2)
    assert main(["recommend", "--model", str(out), "--input", str(src), "--output", str(src), "--overwrite"]) == 2
    assert "is the input" in _err(capsys) and len(src.read_text().splitlines()) == 2


# ------------------------------------------------------------------------------ #9, #11, #12, #13: HTTP
fastapi = pytest.importorskip("fastapi")


def test_http_empty_answer_is_a_422_that_says_why(pop):
    from fastapi.testclient import TestClient

    from flrec.serving.app import ServeConfig, create_app

    _, _, _, out = pop
    with TestClient(create_app(load_recommender(out), ServeConfig())) as client:
        r = client.post("/recommend", json={"item_ids": list(range(40)), "exclude_seen": True})
        assert r.status_code == 422 and r.json()["error"] == "empty_answer" and "exclude_seen" in r.json()["message"]


def test_http_bodies_the_decoder_rejects_get_json_errors(pop):
    from fastapi.testclient import TestClient

    from flrec.serving.app import ServeConfig, create_app

    _, _, _, out = pop
    with TestClient(create_app(load_recommender(out), ServeConfig()), raise_server_exceptions=False) as client:
        for body in (b"[" * 30000, b'{"history":["\\ud800"]}', b'{"history":["a\\udfff b"], "k": 3}'):
            r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500 and r.json()["error"] == "bad_json", body[:20]


def test_serve_refuses_a_busy_port_before_loading_the_model(pop, monkeypatch):
    import flrec.serving.service as service
    from flrec.serving.app import ServeConfig, serve

    _, _, _, out = pop
    monkeypatch.setattr(service, "load_recommender", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FlrecError, match=f"127.0.0.1:{port}.*--port"):
            serve(str(out), ServeConfig(port=port))


def test_serve_closes_stalled_connections(pop):
    import uvicorn

    from flrec.serving.app import ServeConfig, create_app

    _, _, _, out = pop
    app = create_app(load_recommender(out), ServeConfig(read_timeout_s=0.5))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):  # bounded: at most 10 s for the server to start
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"item_ids\": [1")
            start, got = time.monotonic(), b""
            while time.monotonic() - start < 5:  # bounded: the answer and the close come within the timeout
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert time.monotonic() - start < 5
        assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got
    finally:
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------------------ #14: the user's own ids
def test_own_item_ids_end_to_end(tmp_path, capsys):
    """convert a CSV with string ids -> a model -> export -> `recommend --item-ids it7 it9` and HTTP
    ``"item_ids": ["it7"]`` answered in the user's ids (flrec's integers still accepted)."""
    from flrec.data.convert import convert_interactions

    inter, items = tmp_path / "inter.csv", tmp_path / "items.csv"
    items.write_text("id,name\n" + "".join(f"it{i},Title {i}\n" for i in range(10)))
    inter.write_text("user,item,time\n" + "".join(f"u{u},it{(u + j) % 10},{100 * u + j}\n"
                                                   for u in range(12) for j in range(6)))
    ds = convert_interactions(inter, items, tmp_path / "data", user_col="user", item_col="item", time_col="time",
                              item_id_col="id", title_col="name")
    own = ds.original_item_ids()
    assert sorted(own) == sorted(f"it{i}" for i in range(10))
    out = export(_id_cell(tmp_path, ds, "pop", "own"), tmp_path / "export")
    cat = json.loads((out / "catalogue.json").read_text())["items"]
    assert [it["original_id"] for it in cat] == own and [it["item_id"] for it in cat] == list(range(10))

    assert main(["recommend", "--model", str(out), "--item-ids", "it7", "it9", "-k", "3", "--json"]) == 0
    ans = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [h["original_id"] for h in ans["history"]] == ["it7", "it9"]
    assert all(it["original_id"] == own[it["item_id"]] for it in ans["items"]) and len(ans["items"]) == 3
    assert main(["recommend", "--model", str(out), "--item-ids", "it7", "nope"]) == 2
    assert "nope" in _err(capsys)
    assert main(["recommend", "--model", str(out), "--item-ids", "it7", "-k", "2"]) == 0
    assert "[it" in capsys.readouterr().out  # the listing names the user's ids
    ints = load_recommender(out).recommend(item_ids=[own.index("it7"), own.index("it9")], k=3)
    assert ints["items"] == ans["items"]  # flrec's integers still work and mean the same items

    from fastapi.testclient import TestClient

    from flrec.serving.app import ServeConfig, create_app

    with TestClient(create_app(load_recommender(out), ServeConfig())) as client:
        r = client.post("/recommend", json={"item_ids": ["it7", "it9"], "k": 3})
        assert r.status_code == 200 and r.json()["items"] == ans["items"]
        r = client.post("/recommend", json={"item_ids": ["it77"]})
        assert r.status_code == 422 and r.json()["error"] == "unknown_item_ids"
