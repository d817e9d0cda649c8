"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# CPU-heavy CLI commands register in a jobs folder and warn when another flrec process is running
# (flrec.utils.threads): the test session gets its own folder, so processes outside it never add a
# note to the stderr the tests read.
os.environ["FLREC_CPU_JOBS_DIR"] = tempfile.mkdtemp(prefix="flrec-test-jobs-")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny matmuls only pay sync cost for more (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data():
    """A small synthetic dataset (40 items, 40 users) for tiny-model SFT/GRPO runs; one per test module
    (a module may edit it)."""
    from flrec.data.synth import SynthConfig, generate_synthetic

    return generate_synthetic(SynthConfig(n_items=40, n_users=40, seq_len_min=4, seq_len_max=8, min_intent_items=2,
                                          n_intents=6))


@pytest.fixture(autouse=True)
def _no_embedded_backbone(request, monkeypatch):
    """Unit tests run on tiny random models: loading the 135M embedded backbone (minutes per SFT on 2 cores,
    hours in a README command) fails the test, except in tests marked ``embedded_backbone``."""
    if request.node.get_closest_marker("embedded_backbone"):
        return
    from flrec.models import gguf

    def refuse(name: str):
        pytest.fail(f"this test loads embedded:{name}; unit tests use tiny:llama (or mark it embedded_backbone)")

    monkeypatch.setattr(gguf, "embedded_gguf", refuse)  # load_backbone calls it as gguf.embedded_gguf
