"""Hostile files and options give one-line errors (issue 17, defects 4-6): never a traceback.

Also: dataset folders are written whole or not at all and never replace a user's folder unasked
(defect 5), and what flrec writes flrec reads (defect 6).
"""

from __future__ import annotations

import csv
import gzip
import os
import sys
from pathlib import Path

import pytest

from flrec.cli import main
from flrec.data.convert import convert_interactions, prepare_movielens
from flrec.data.d3 import read_d3, write_d3
from flrec.data.schema import THOUGHT_TOKEN, Catalogue, Interaction, RecDataset, title_problem
from flrec.data.synth import SynthConfig, generate_synthetic
from flrec.data.textio import FIELD_LIMIT
from flrec.errors import ConfigError, DataError, FlrecError

EVENTS = [(f"u{u}", f"i{(u + k) % 6}", 10 * u + k, 4) for u in range(5) for k in range(4)]
COLS = dict(user_col="user", item_col="item", time_col="time", item_id_col="id", title_col="name")
SMALL = SynthConfig(n_items=40, n_users=20, seq_len_min=4, seq_len_max=6, min_intent_items=2, n_intents=4)


def _files(tmp: Path, titles: dict[str, str] | None = None, encoding: str = "utf-8") -> tuple[Path, Path]:
    titles = titles or {f"i{k}": f"Title {k} é" for k in range(6)}
    inter, items = tmp / "log.csv", tmp / "items.csv"
    inter.write_text("user,item,time,stars\n" + "".join(f"{u},{i},{t},{s}\n" for u, i, t, s in EVENTS),
                     encoding=encoding)  # fmt: skip
    with open(items, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name"])
        w.writerows(titles.items())
    return inter, items


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------- defect 4: bad files


@pytest.mark.parametrize("kind", ["folder", "utf16", "latin1", "gzip_items", "nul", "unreadable"])
def test_convert_bad_files_are_one_line_errors(tmp_path, kind):
    inter, items = _files(tmp_path)
    if kind == "folder":
        items.unlink()
        items.mkdir()
        expect = "is a folder"
    elif kind == "utf16":
        items.write_bytes(items.read_text().encode("utf-16"))
        expect = "UTF-16"
    elif kind == "latin1":
        items.write_bytes(items.read_text().encode("latin-1"))
        expect = "line 2: is not valid utf-8.*--encoding latin-1"
    elif kind == "gzip_items":
        items.write_bytes(gzip.compress(b"\xff\xfe garbage that is not csv \x00\x00"))
        expect = "decompressed, it is not valid utf-8"
    elif kind == "nul":
        items.write_bytes(b"id,name\ni0,a\x00b\n")
        expect = "NUL"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads unreadable files")
        items.chmod(0)
        expect = "permission denied"
    with pytest.raises(DataError, match=expect) as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    _one_line(e)
    assert not (tmp_path / "out").exists()


def test_convert_reads_gzip_and_latin1_when_told(tmp_path):
    inter, items = _files(tmp_path, encoding="latin-1")
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress(inter.read_bytes()))
    ds = convert_interactions(gz, items, tmp_path / "out", encoding="latin-1", **COLS)
    assert "Title 1 é" in ds.catalogue.titles


def test_field_over_the_csv_limit(tmp_path):
    inter, items = _files(tmp_path)
    items.write_text('id,name\ni0,"' + "x" * (FIELD_LIMIT + 10))  # an unclosed quote swallows the file
    with pytest.raises(DataError, match="longer than") as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    _one_line(e)
    assert e.value.path == items


@pytest.mark.parametrize(
    "opts, expect",
    [({"sep": "::"}, "exactly one character.*sed"), ({"sep": ""}, "exactly one character"),
     ({"encoding": "nosuchcodec"}, "unknown encoding"), ({"items_sep": '"'}, "cannot separate"),
     ({"user_col": 0}, "index 0" ), ({"min_rating": float("nan"), "rating_col": "stars"}, "finite")],
)  # fmt: skip
def test_bad_options_are_config_errors(tmp_path, opts, expect):
    inter, items = _files(tmp_path)
    kwargs = COLS | opts
    if "user_col" in opts:  # an index with a header is fine; a name without a header is not
        kwargs = COLS | {"user_col": "user", "header": False}
        expect = "no header"
    with pytest.raises(ConfigError, match=expect) as e:
        convert_interactions(inter, items, tmp_path / "out", **kwargs)
    _one_line(e)


def test_cli_bad_sep_encoding_and_folder_exit_2(tmp_path, capsys):
    inter, items = _files(tmp_path)
    base = ["data", "convert", "--interactions", str(inter), "--items", str(items), "--out", str(tmp_path / "o"),
            "--user-col", "user", "--item-col", "item", "--time-col", "time", "--item-id-col", "id",
            "--title-col", "name"]  # fmt: skip
    for extra in (["--sep", "::"], ["--sep", ""], ["--encoding", "nosuchcodec"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert main(["data", "stats", str(items)]) == 2  # a file where a folder is expected


@pytest.mark.parametrize("kind", ["folder", "utf16", "latin1", "gzip", "long_field", "bad_json"])
def test_d3_reader_bad_files_are_one_line_errors(tmp_path, kind):
    root = tmp_path / "ds"
    generate_synthetic(SMALL, root)
    train = root / "train.csv"
    if kind == "folder":
        train.unlink()
        train.mkdir()
        expect = "is a folder"
    elif kind == "utf16":
        (root / "info.txt").write_bytes((root / "info.txt").read_text().encode("utf-16"))
        expect = "UTF-16"
    elif kind == "latin1":
        (root / "info.txt").write_bytes("Café\t0\n".encode("latin-1"))
        expect = "line 1: is not valid utf-8.*iconv"
    elif kind == "gzip":
        train.write_bytes(gzip.compress(train.read_bytes()))
        expect = "gzip-compressed"
    elif kind == "long_field":
        train.write_text(train.read_text().splitlines()[0] + '\n"' + "x" * (FIELD_LIMIT + 5))
        expect = "longer than"
    else:
        (root / "dataset.json").write_bytes(b"\xff\xfe\x00garbage")
        expect = "dataset.json"
    with pytest.raises(DataError, match=expect) as e:
        read_d3(root)
    _one_line(e)


# ------------------------------------------------------------------ defect 5: atomic, no overwrite


def test_convert_refuses_a_non_empty_out_and_overwrites_only_when_asked(tmp_path):
    inter, items = _files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(FlrecError, match="not empty.*--overwrite") as e:
        convert_interactions(inter, items, out, **COLS)
    _one_line(e)
    with pytest.raises(FlrecError, match="not written by flrec") as e:  # issue 28 #2: never a user's folder
        convert_interactions(inter, items, out, overwrite=True, **COLS)
    _one_line(e)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    convert_interactions(inter, items, out, **COLS)
    ds = convert_interactions(inter, items, out, overwrite=True, **COLS)  # flrec's own folder: replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["info.txt", "train.csv", "valid.csv", "test.csv", "dataset.json", "convert_report.json"]
    )
    assert read_d3(out).splits == ds.splits
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    (out / "notes.txt").write_text("mine")  # a file the user added to flrec's folder is not deleted either
    with pytest.raises(FlrecError, match="notes.txt"):
        convert_interactions(inter, items, out, overwrite=True, **COLS)
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_interactions(inter, items, empty, **COLS)  # an empty folder is fine


def test_convert_out_over_its_inputs_is_refused_and_deletes_nothing(tmp_path, capsys):
    """Issue 28 #2: --out D --overwrite with D/inter.csv and D/items.csv deleted both and D/precious.txt."""
    d = tmp_path / "D"
    d.mkdir()
    inter, items = _files(d)
    (d / "precious.txt").write_text("keep")
    before = sorted(p.name for p in d.iterdir())
    argv = ["data", "convert", "--interactions", str(inter), "--items", str(items), "--out", str(d), "--overwrite",
            "--user-col", COLS["user_col"], "--item-col", COLS["item_col"], "--time-col", COLS["time_col"],
            "--item-id-col", COLS["item_id_col"], "--title-col", COLS["title_col"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "contains the input" in err and "Traceback" not in err
    assert sorted(p.name for p in d.iterdir()) == before
    argv[argv.index("--out") + 1] = str(tmp_path)  # a folder holding the inputs
    assert main(argv) == 2 and "contains the input" in capsys.readouterr().err
    assert (d / "precious.txt").read_text() == "keep"


def test_a_failed_conversion_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    inter, items = _files(tmp_path)
    out = tmp_path / "out"
    convert_interactions(inter, items, out, **COLS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import flrec.data.convert as conv

    def full_disk(ds, root):
        (Path(root) / "info.txt").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conv, "write_d3", full_disk)
    with pytest.raises(OSError):
        convert_interactions(inter, items, out, overwrite=True, k_core=2, **COLS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_synth_and_movielens_refuse_non_empty_out(tmp_path, capsys):
    out = tmp_path / "synth"
    generate_synthetic(SMALL, out)
    with pytest.raises(FlrecError, match="not empty"):
        generate_synthetic(SMALL, out)
    generate_synthetic(SMALL.replace(seed=1), out, overwrite=True)
    assert main(["data", "synth", "--out", str(out), "n_items=40", "n_users=20", "seq_len_min=4",
                 "seq_len_max=6", "min_intent_items=2", "n_intents=4"]) == 2  # fmt: skip
    assert "--overwrite" in capsys.readouterr().err
    raw = tmp_path / "ml"
    raw.mkdir()
    (raw / "u.item").write_text("1|A (1995)|x\n2|B (1996)|x\n3|C (1997)|x\n")
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t3\t{10 * u + i}\n" for u in range(1, 6) for i in (1, 2, 3)))
    with pytest.raises(FlrecError, match="not empty"):
        prepare_movielens(raw, out)
    assert (out / "intents.json").exists()


# --------------------------------------------------- defect 6: what flrec writes, flrec reads


@pytest.mark.parametrize(
    "title", ["", "   ", f"Best of {THOUGHT_TOKEN}", "a<|endoftext|>", "two\nlines", "cr\rhere", "nul\x00"]
)
def test_bad_titles_are_refused_by_converter_reader_and_writer_alike(tmp_path, title):
    assert title_problem(title)
    inter, items = _files(tmp_path, titles={f"i{k}": f"T{k}" for k in range(5)} | {"i5": title})
    with pytest.raises(DataError, match="i5") as e:
        convert_interactions(inter, items, tmp_path / "out", **COLS)
    _one_line(e)
    root = tmp_path / "ds"
    generate_synthetic(SMALL, root)
    ds = read_d3(root)
    lines = (root / "info.txt").read_text().splitlines()
    if "\n" not in title and "\r" not in title:  # those cannot even be written as one info.txt line
        lines[3] = f"{title}\t3"
        (root / "info.txt").write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match="info.txt.*line 4.*item 3") as e:
            read_d3(root)
        _one_line(e)
    ds.catalogue = Catalogue([title, *ds.catalogue.titles[1:]])
    with pytest.raises(DataError, match="item 0.*nothing written"):
        write_d3(ds, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_thought_token_matches_the_prompt_module():
    prompts = pytest.importorskip("flrec.data.prompts")
    assert prompts.THOUGHT_TOKEN == THOUGHT_TOKEN


@pytest.mark.parametrize("rating", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_ratings_are_refused_at_conversion(tmp_path, rating):
    inter, items = _files(tmp_path)
    inter.write_text(inter.read_text().replace("u1,i2,11,4", f"u1,i2,11,{rating}"))
    with pytest.raises(DataError, match="line 7.*finite") as e:
        convert_interactions(inter, items, tmp_path / "out", rating_col="stars", **COLS)
    _one_line(e)


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    cat = Catalogue(["a", "b"])
    for row, expect in [
        (Interaction("u", [0], 1, rating=float("inf")), "finite"),
        (Interaction("u", [0], 1, history_ratings=[float("nan")]), "finite"),
        (Interaction("u", [], 1), "empty history"),
        (Interaction("u", [0, 1], 1, history_timestamps=[1]), "history_timestamps"),
    ]:
        with pytest.raises(DataError, match=expect):
            write_d3(RecDataset(cat, {"test": [row]}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_long_titles_round_trip(tmp_path):
    # 10 history titles of 20k characters: the history-title field is over csv's default 131,072 limit.
    titles = [f"{k} " + "y" * 20_000 for k in range(12)]
    rows = [Interaction(f"u{k}", list(range(10)), 10 + k % 2, history_timestamps=list(range(10)), timestamp=11)
            for k in range(3)]  # fmt: skip
    ds = RecDataset(Catalogue(titles), {"train": rows, "valid": rows[:1], "test": rows[:1]})
    write_d3(ds, tmp_path / "long")
    back = read_d3(tmp_path / "long")
    assert back.catalogue.titles == titles
    assert [(r.user, r.history, r.target) for r in back["train"]] == [(r.user, r.history, r.target) for r in rows]


def test_movielens_duplicate_ids_and_carriage_returns(tmp_path):
    raw = tmp_path / "ml"
    raw.mkdir()
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t3\t{10 * u + i}\n" for u in range(1, 6) for i in (1, 2, 3)))
    (raw / "u.item").write_text("1|A (1995)|x\n2|B (1996)|x\n3|C (1997)|x\n2|B again|x\n")
    with pytest.raises(DataError, match="u.item.*line 4.*movie id '2' appears twice \\(lines 2 and 4\\)") as e:
        prepare_movielens(raw, tmp_path / "o1")
    _one_line(e)
    # A title holding \x85 or \x0b (str.splitlines cuts there) stays whole; a \r inside a title is refused.
    (raw / "u.item").write_bytes("1|A\x85B (1995)|x\r\n2|B (1996)|x\r\n3|C\x0bD|x\r\n".encode())
    ds = prepare_movielens(raw, tmp_path / "o2")
    assert sorted(ds.catalogue.titles) == ["A\x85B (1995)", "B (1996)", "C\x0bD"]
    assert read_d3(tmp_path / "o2").catalogue.titles == ds.catalogue.titles
    (raw / "u.item").write_bytes(b"1|A\rB (1995)|x\n2|B (1996)|x\n3|C|x\n")
    with pytest.raises(DataError, match="line 1.*line break"):
        prepare_movielens(raw, tmp_path / "o3")


def test_cli_errors_are_not_tracebacks_for_any_flrec_error(tmp_path, capsys):
    assert issubclass(DataError, FlrecError) and issubclass(ConfigError, FlrecError)
    assert main(["data", "stats", str(Path(sys.executable))]) == 2
    assert capsys.readouterr().err.startswith("error: ")
