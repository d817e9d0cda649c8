"""The package's layering, read from the source with ``ast`` (imports inside functions count too).

``models/`` is the bottom of the modelling stack: decoding, training, evaluation, the recommenders
and serving build on it, so an import the other way round would make a cycle waiting to happen (and
GRPO, serving and the report would each pull in more than they need). ``data/`` reads and writes
datasets and prompts: it imports no modelling package and no Hugging Face stack (``prompts.py``
uses torch for collation, so torch itself is allowed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "flrec"

FORBIDDEN = {
    "models": ("flrec.decoding", "flrec.training", "flrec.evaluation", "flrec.serving", "flrec.recommenders"),
    "data": (
        "flrec.models", "flrec.decoding", "flrec.training", "flrec.evaluation", "flrec.serving",
        "flrec.recommenders", "flrec.analysis", "transformers", "peft", "accelerate",
    ),
}


def _imports(path: Path, src: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, as absolute dotted names (relative imports resolved)."""
    package = ".".join(path.relative_to(src.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _violations(layer: str, src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted((src / layer).rglob("*.py")):
        for line, name in _imports(path, src):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(src)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    assert _violations(layer) == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The check must be able to fail: lazy and relative upward imports are caught, sideways ones are not.
    fake = tmp_path / "flrec" / "models"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(
        "from flrec.models import flr\n"
        "def f():\n    from flrec.decoding.beam import beam_search\n    from ..training import sft\n"
    )
    assert _violations("models", tmp_path / "flrec") == [
        "models/bad.py:3 imports flrec.decoding.beam",
        "models/bad.py:4 imports flrec.training",
    ]
