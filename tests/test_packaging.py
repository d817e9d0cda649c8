"""A plain ``pip install`` of flrec gets the whole package (issue #18): build the wheel offline from a
copy of the source and check what pip would install — every module, the console script, the pinned
torch and the extras the README names. No virtual environment is created and nothing is downloaded.
"""

from __future__ import annotations

import email
import importlib
import os
import shutil
import tomllib
import warnings
import zipfile
from pathlib import Path

import pytest

import flrec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    build_meta = pytest.importorskip("setuptools.build_meta")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:  # the [build-system] requirement (SPDX license)
        pytest.skip(f"setuptools {setuptools.__version__} < 77; `make setup` installs a newer one (dev extra)")
    src = tmp_path_factory.mktemp("sdist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    cwd = Path.cwd()
    os.chdir(src)  # the PEP 517 backend builds the project in the current folder
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            name = build_meta.build_wheel(str(out))
    finally:
        os.chdir(cwd)
    # setuptools deprecations (e.g. the table form of project.license) become build errors on a date
    deprecated = [str(w.message).splitlines()[0] for w in caught if "Deprecat" in type(w.message).__name__]
    assert not deprecated, deprecated
    return zipfile.ZipFile(out / name)


def test_wheel_has_every_module_and_data_file(wheel):
    files = set(wheel.namelist())
    pkg = ROOT / "src" / "flrec"
    want = {f"flrec/{p.relative_to(pkg).as_posix()}" for p in pkg.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(want - files)
    assert not missing, f"a pip install would lack {missing[:5]} (a package without __init__.py, or package data)"


def test_wheel_metadata_matches_the_package_and_readme(wheel):
    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Name"] == "flrec" and meta["Version"] == flrec.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    assert "torch==2.13.0" in requires  # exact pin: a range lets pip pick a multi-GB CUDA build
    extras = set(meta.get_all("Provides-Extra"))
    assert {"dev", "serve", "tb"} <= extras  # the README's install section names these
    assert any(r.startswith("tensorboard") and "extra == \"tb\"" in r for r in requires)
    entry = wheel.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert "flrec = flrec.cli:main" in entry
    module, _, fn = "flrec.cli:main".partition(":")
    assert callable(getattr(importlib.import_module(module), fn))
    # every runtime dependency imports here (the names pip installs them under)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    import_names = {"pyyaml": "yaml"}
    for req in project["dependencies"]:
        dist = req.split("=")[0].split(">")[0].split("<")[0].strip()
        importlib.import_module(import_names.get(dist, dist))
