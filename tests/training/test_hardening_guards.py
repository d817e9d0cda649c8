"""Issue 17, defect 2: an empty training set is an error, never an endless loop.

Two guards: the Trainer refuses an empty dataset, and the loop stops when a pass over the loader yields
no batch. The test runs training in a thread with a deadline, so a regression fails it instead of
hanging the suite (as test_run_guards' version would)."""

from __future__ import annotations

import threading

import pytest
from test_trainer import VALID, ToyMLP, cfg, collate

from flrec.errors import FlrecError
from flrec.training import Trainer


def _train_with_deadline(trainer: Trainer, seconds: float = 60.0) -> BaseException | None:
    box: list[BaseException | None] = [None]

    def run():
        try:
            trainer.train()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box[0] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "training over an empty loader did not stop (endless loop)"
    return box[0]


@pytest.mark.parametrize("kw", [{"max_steps": 5}, {"epochs": 2}])
def test_empty_training_data_stops_with_an_error_within_a_deadline(tmp_path, kw):
    err = None
    try:
        trainer = Trainer(ToyMLP(), [], VALID, collate, cfg(tmp_path, "run", **kw))
        err = _train_with_deadline(trainer)
    except FlrecError as e:  # refused up front
        err = e
    assert isinstance(err, FlrecError) and "no training rows" in str(err) and "\n" not in str(err)
    assert not (tmp_path / "run" / "best").exists()
