"""The package's layering, read from the source with ``ast`` (imports inside functions count too).

Lowest first; a layer may import the layers below it, never one above it nor a sibling of its own
row::

    utils, config, errors      leaves: usable anywhere (they import only each other)
    data                       datasets, prompts, catalogue helpers (no Hugging Face stack)
    evaluation                 scoring: metrics, per-row records, significance
    models                     FLR around a causal LM; model-folder conventions; health statistics
    decoding                   title trie, beam search, the ranking pipeline
    training                   the trainer, SFT, GRPO
    recommenders               the methods behind one contract; opening a model folder as one
    experiments | serving      evaluate into a folder, compare, ablate, tune decoding | export, serve
    analysis                   reports and diagnostics over models and experiment folders
    demo
    cli

Besides the table, the module graph (every import, at module level or inside a function) must have
no cycle: a lazy import inside a function is no way around the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "flrec"

LEAVES = ("utils", "config", "errors")
ORDER: tuple[tuple[str, ...], ...] = (
    ("data",),
    ("evaluation",),
    ("models",),
    ("decoding",),
    ("training",),
    ("recommenders",),
    ("experiments", "serving"),
    ("analysis",),
    ("demo",),
    ("cli",),
    ("__main__",),  # python -m flrec
)
# data/ reads and writes datasets and prompts: no Hugging Face stack (prompts.py collates with torch).
EXTRA = {"data": ("transformers", "peft", "accelerate")}


def _forbidden() -> dict[str, tuple[str, ...]]:
    """Per layer, the module prefixes it must not import: every layer above it and its siblings."""
    layers = [name for row in ORDER for name in row]
    out = {leaf: tuple(f"flrec.{n}" for n in layers) for leaf in LEAVES}
    for i, row in enumerate(ORDER):
        above = [n for r in ORDER[i + 1 :] for n in r]
        for name in row:
            siblings = [n for n in row if n != name]
            out[name] = tuple(f"flrec.{n}" for n in (*siblings, *above)) + EXTRA.get(name, ())
    return out


FORBIDDEN = _forbidden()


def _imports(path: Path, src: Path) -> list[tuple[int, str, list[str]]]:
    """Every module ``path`` imports, as absolute dotted names (relative imports resolved), with the
    names a ``from`` import takes."""
    package = ".".join(path.relative_to(src.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name, [alias.name for alias in node.names]))
    return out


def _layer_files(layer: str, src: Path) -> list[Path]:
    if (src / layer).is_dir():
        return sorted((src / layer).rglob("*.py"))
    return [src / f"{layer}.py"] if (src / f"{layer}.py").is_file() else []


def _violations(layer: str, src: Path = SRC) -> list[str]:
    bad = []
    for path in _layer_files(layer, src):
        for line, name, _ in _imports(path, src):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(src)}:{line} imports {name}")
    return bad


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package (``from pkg import mod`` counts as ``pkg.mod``)."""
    modules = {_module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for _, name, names in _imports(path, src):
            targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules] or [name]
            graph[mod] |= {t for t in targets if t in modules and t != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    # A new package or top-level module must be placed in the table, or nothing guards it.
    found = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    found |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert found == set(FORBIDDEN)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    assert _violations(layer) == []


def test_the_module_graph_has_no_cycle():
    assert _cycles(_graph()) == []


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


def test_siblings_and_leaves_are_guarded(tmp_path):
    root = tmp_path / "flrec"
    (root / "serving").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "serving" / "x.py").write_text("from flrec.experiments.runner import evaluate\nfrom flrec.recommenders import base\n")
    (root / "utils" / "y.py").write_text("from flrec.errors import FlrecError\nfrom flrec.data.schema import RecDataset\n")
    (root / "demo.py").write_text("from flrec.cli import main\n")
    assert _violations("serving", root) == ["serving/x.py:1 imports flrec.experiments.runner"]
    assert _violations("utils", root) == ["utils/y.py:2 imports flrec.data.schema"]
    assert _violations("demo", root) == ["demo.py:1 imports flrec.cli"]


def test_the_cycle_check_sees_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "flrec" / "decoding"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from flrec.decoding import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "c.py").write_text("from flrec.decoding.a import x\n")
    assert _cycles(_graph(tmp_path / "flrec")) == [["flrec.decoding.a", "flrec.decoding.b"]]
