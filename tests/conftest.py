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
