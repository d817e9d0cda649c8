"""Opening a model folder as a recommender: one reasoner → method map, every reasoner covered."""

from __future__ import annotations

import json
import typing
from dataclasses import fields

import pytest

from flrec.decoding.ranker import RankSettings
from flrec.errors import FlrecError
from flrec.models.folder import CONFIG_NAME, model_reasoner, resolve_model_dir
from flrec.models.recommender import FLRConfig
from flrec.recommenders.base import get_recommender
from flrec.recommenders.folder import METHOD_BY_REASONER, method_for_reasoner
from flrec.recommenders.llm import LLMRecConfig


def test_every_reasoner_maps_to_a_method_that_ranks_with_it():
    reasoners = set(typing.get_args(typing.get_type_hints(FLRConfig)["reasoner"]))
    assert set(METHOD_BY_REASONER) == reasoners  # softprompt included
    for reasoner, method in METHOD_BY_REASONER.items():
        assert get_recommender(method).reasoner == reasoner


def test_an_unknown_reasoner_is_refused_with_a_message():
    with pytest.raises(FlrecError, match="reasoner 'future'"):
        method_for_reasoner("future")


def test_the_model_folder_is_found_in_a_run_dir(tmp_path):
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    (best / CONFIG_NAME).write_text(json.dumps({"flr": {"reasoner": "softprompt"}}))
    assert resolve_model_dir(tmp_path / "run") == best
    assert model_reasoner(best) == "softprompt"
    with pytest.raises(FlrecError, match="no trained flrec model"):
        resolve_model_dir(tmp_path)


def test_sfts_ranker_ranks_with_the_llm_recommenders_defaults():
    # SFT's validation ranking builds a bare ranker; it must rank as `flrec evaluate` would by default.
    default = LLMRecConfig()
    for f in fields(RankSettings):
        assert getattr(RankSettings(), f.name) == getattr(default, f.name), f.name
