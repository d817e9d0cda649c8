"""Issue 15 gap: ``--exclude-seen`` (CLI) and ``"exclude_seen"`` (HTTP) never return a history item.

The API path is tested in test_serving.py; these pin the two user-facing switches to it (a Pop export:
its unfiltered top-K is exactly the history we send, so a dropped flag shows at once)."""

from __future__ import annotations

import json

import pytest
from test_serving import _id_cell

from flrec.cli import main
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.serving import export, load_recommender

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from flrec.serving.app import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop-serving")
    ds = generate_synthetic(SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2,
                                        n_intents=6), root / "data")
    out = export(_id_cell(root, ds, "pop", "hardening"), root / "export")
    served = load_recommender(out)
    top = [it["item_id"] for it in served.recommend(item_ids=[0], k=4)["items"]]
    return out, served, top


def test_cli_exclude_seen_flag_drops_history_items(pop, capsys):
    out, _, top = pop
    base = ["recommend", "--model", str(out), "--item-ids", *map(str, top), "-k", "4", "--json"]
    assert main(base) == 0
    plain = [it["item_id"] for it in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]]
    assert plain == top  # without the flag the history comes back
    assert main([*base, "--exclude-seen"]) == 0
    got = [it["item_id"] for it in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]]
    assert len(got) == 4 and not set(got) & set(top)


def test_http_exclude_seen_drops_history_items(pop):
    _, served, top = pop
    with TestClient(create_app(served, ServeConfig())) as client:
        plain = client.post("/recommend", json={"item_ids": top, "k": 4}).json()["items"]
        assert [it["item_id"] for it in plain] == top
        r = client.post("/recommend", json={"item_ids": top, "k": 4, "exclude_seen": True})
        assert r.status_code == 200
        got = [it["item_id"] for it in r.json()["items"]]
        assert len(got) == 4 and not set(got) & set(top)
        bad = client.post("/recommend", json={"item_ids": top, "exclude_seen": "maybe"})
        assert bad.status_code == 422


def test_export_folder_follows_the_umask(pop, tmp_path):
    import os
    import stat

    out, _, _ = pop
    old = os.umask(0o027)
    try:
        again = export(out.parent / "compare-pop-hardening" / "cells" / "pop" / "seed1", tmp_path / "exp")
    finally:
        os.umask(old)
    assert stat.S_IMODE(again.stat().st_mode) == 0o750
    assert stat.S_IMODE((again / "catalogue.json").stat().st_mode) == 0o640
