"""Every ``>>>`` example in flrec's docstrings runs and prints what it says (docs that cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import flrec

MODULES = sorted(m.name for m in pkgutil.walk_packages(flrec.__path__, "flrec."))


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional extra (e.g. fastapi for flrec.serving.app) is not installed
        pytest.skip(f"{name}: {e}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed"
