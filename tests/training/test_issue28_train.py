"""Issue 28 #3 through the Python API: a run directory never is, holds or lies in what the run reads."""

from __future__ import annotations

import pytest
from test_trainer import TRAIN, VALID, ToyMLP, cfg, collate

from flrec.errors import FlrecError
from flrec.training import Trainer


def test_trainer_refuses_a_run_dir_over_its_inputs(tmp_path):
    """#3 through the Python API: the Trainer itself checks ``from_run`` before claiming the directory."""
    class Stage:  # a stage config naming what it reads
        from_run = str(tmp_path / "run")

        def to_dict(self):
            return {}

    with pytest.raises(FlrecError, match="is the input"):
        Trainer(ToyMLP(), TRAIN, VALID, collate, cfg(tmp_path, "run"), run_config=Stage()).train()
