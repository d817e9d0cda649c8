"""``flrec data ...`` (synth, stats, convert, prepare-movielens, prepare-amazon) and ``flrec prompt``."""

from __future__ import annotations

import json
from pathlib import Path

from flrec.cli.common import DefaultsHelp, load_config, with_config

OVERWRITE_HELP = "replace a non-empty --out folder (without it such a folder is left untouched and it is an error)"


def _wrote(out: str, ds) -> None:
    from flrec.data.convert import format_report

    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")
    if ds.report:
        print(format_report(ds.report))


def cmd_data_synth(a) -> None:
    from flrec.data.stats import dataset_stats, format_stats
    from flrec.data.synth import SynthConfig, generate_synthetic

    ds = generate_synthetic(load_config(SynthConfig, a), Path(a.out), overwrite=a.overwrite)
    print(format_stats(dataset_stats(ds)))
    print(f"wrote {a.out} (D3 format + intents.json ground truth)")


def cmd_data_stats(a) -> None:
    from flrec.data.d3 import read_d3
    from flrec.data.stats import dataset_stats, format_stats

    if str(a.dir).startswith("embedded:"):  # no flrec.training import: that would pull in torch
        from flrec.data.embedded import embedded_dataset_dir

        ds = read_d3(embedded_dataset_dir(str(a.dir).split(":", 1)[1]), domain=a.domain)
    else:
        ds = read_d3(Path(a.dir), domain=a.domain)
    stats = dataset_stats(ds)
    print(json.dumps(stats) if a.json else format_stats(stats, legend=True))


def _column(spec: str | None, header: bool) -> str | int | None:
    """A column option: a 0-based index for headerless files, else a header name."""
    if spec is not None and not header and spec.strip().isdigit():
        return int(spec)
    return spec


def cmd_data_convert(a) -> None:
    from flrec.data.convert import convert_interactions

    header = a.no_header not in ("both", "interactions")
    items_header = a.no_header not in ("both", "items")
    ds = convert_interactions(
        Path(a.interactions), Path(a.items), Path(a.out), user_col=_column(a.user_col, header),
        item_col=_column(a.item_col, header), time_col=_column(a.time_col, header),
        rating_col=_column(a.rating_col, header), item_id_col=_column(a.item_id_col, items_header),
        title_col=_column(a.title_col, items_header), header=header, items_header=items_header,
        sep=a.sep, items_sep=a.items_sep, encoding=a.encoding, k_core=a.k_core, max_history=a.max_history,
        min_rating=a.min_rating, shuffle_seed=a.seed, name=a.name, domain=a.domain,
        drop_unknown=a.drop_unknown, overwrite=a.overwrite)  # fmt: skip
    _wrote(a.out, ds)


def cmd_data_movielens(a) -> None:
    from flrec.data.convert import prepare_movielens

    ds = prepare_movielens(Path(a.raw), Path(a.out), k_core=a.k_core, max_history=a.max_history, overwrite=a.overwrite)
    _wrote(a.out, ds)


def cmd_data_amazon(a) -> None:
    import logging

    from flrec.data.amazon import AmazonPrepConfig, prepare_amazon

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = prepare_amazon(a.reviews, a.meta, a.out, load_config(AmazonPrepConfig, a), overwrite=a.overwrite)
    print(f"wrote {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()) + f", items {len(ds.catalogue)}")
    print(f"filter counts and windows tried: {Path(a.out) / 'prepare_report.json'}")


def cmd_prompt(a) -> None:
    from flrec.data.load import load_dataset
    from flrec.data.prompts import PromptBuilder
    from flrec.models.backbone import add_thought_token, load_backbone

    ds = load_dataset(a.data)
    model, tok = load_backbone(a.backbone)
    add_thought_token(model, tok)
    row = ds[a.split][a.row]
    builder = PromptBuilder.for_dataset(tok, ds)
    text = builder.render(ds.history_titles(row))
    print(text)
    print(f"--- {len(builder.encode(ds.history_titles(row)))} prompt tokens; target: {ds.catalogue.title(row.target)!r}")


# ---------------------------------------------------------------------------------------- parsers
def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="datasets: synth, stats, convert, prepare-movielens, prepare-amazon")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    s = with_config(dsub.add_parser("synth", help="generate the embedded synthetic dataset", formatter_class=DefaultsHelp))
    s.add_argument("--out", default="data/synth", help="output folder (new or empty)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(fn=cmd_data_synth)
    s = dsub.add_parser("stats", help="users, items, rows, title collisions, junk titles, popularity",
                        formatter_class=DefaultsHelp)
    s.add_argument("dir", help="a D3 dataset folder or embedded:synth")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.add_argument("--domain", help="item word to report (default: dataset.json, a known folder name, else 'item')")
    s.set_defaults(fn=cmd_data_stats)
    _add_convert_parser(dsub)
    s = dsub.add_parser("prepare-movielens", help="raw MovieLens-100K (u.data + u.item) -> D3 format",
                        formatter_class=DefaultsHelp)
    s.add_argument("raw", help="the unpacked ml-100k folder")
    s.add_argument("--out", default="data/ml-100k", help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--k-core", type=int, default=0, help="iterative k-core on users and items (0 = off)")
    s.add_argument("--max-history", type=int, default=10, help="history items per row (D3 uses 10)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(fn=cmd_data_movielens)
    s = with_config(dsub.add_parser("prepare-amazon", help="raw Amazon Review 2018 (5-core + meta) -> D3 format",
                                    formatter_class=DefaultsHelp))  # fmt: skip
    s.add_argument("--reviews", required=True, help="<Category>_5.json.gz")
    s.add_argument("--meta", required=True, help="meta_<Category>.json.gz")
    s.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(fn=cmd_data_amazon)


def _add_convert_parser(dsub) -> None:
    s = dsub.add_parser(
        "convert", formatter_class=DefaultsHelp,
        help="your interactions + items files -> D3 format (sliding window, 8:1:1)",
        description="Columns are header names, or 0-based indices with --no-header. MovieLens u.data: "
        "--no-header --sep '\\t' --user-col 0 --item-col 1 --rating-col 2 --time-col 3 with u.item as "
        "--items-sep '|' --item-id-col 0 --title-col 1 --encoding latin-1. Item-file columns other than the "
        "id and title are not used (the summary lists them as ignored).",
    )  # fmt: skip
    s.add_argument("--interactions", required=True, help="interaction log: one user, item, time (and rating) per row")
    s.add_argument("--items", required=True, help="item table: one id and title per row")
    s.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    s.add_argument("--user-col", required=True, help="user column (name, or 0-based index with --no-header)")
    s.add_argument("--item-col", required=True, help="item id column of the interaction log")
    s.add_argument("--time-col", required=True, help="time column: Unix seconds or ISO 8601 dates (naive = UTC)")
    s.add_argument("--item-id-col", required=True, help="item id column of the item table")
    s.add_argument("--title-col", required=True, help="title column of the item table")
    s.add_argument("--rating-col", help="rating column (ratings are 0.0 without it)")
    s.add_argument("--min-rating", type=float, help="keep interactions rated at least this (needs --rating-col)")
    s.add_argument("--sep", default=",", help="one-character field separator; '\\t' for TSV")
    s.add_argument("--items-sep", help="separator of the item table (default: --sep)")
    s.add_argument("--encoding", default="utf-8", help="text encoding of both files, e.g. latin-1")
    s.add_argument("--no-header", nargs="?", const="both", choices=["both", "interactions", "items"],
                   help="the files (or only the named one) have no header row; columns are then 0-based indices")
    s.add_argument("--drop-unknown", action="store_true",
                   help="drop (and count) interactions whose item is missing from the item table instead of stopping")
    s.add_argument("--k-core", type=int, default=0, help="iterative k-core on users and items (0 = off)")
    s.add_argument("--max-history", type=int, default=10, help="history items per row (D3 uses 10)")
    s.add_argument("--seed", type=int, default=42, help="item-id shuffle seed (D3 uses 42)")
    s.add_argument("--name", help="dataset name (default: the --out folder name)")
    s.add_argument("--domain", default="item", help="singular item word for prompts, e.g. movie")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(fn=cmd_data_convert)


def add_prompt_parser(sub) -> None:
    s = sub.add_parser("prompt", help="show the rendered prompt of one dataset row", formatter_class=DefaultsHelp)
    s.add_argument("--data", default="embedded:synth", help="D3 dataset folder, or embedded:synth")
    s.add_argument("--backbone", default="embedded:smollm2-135m",
                   help="tokenizer/model: HF id, local folder, .gguf, embedded:smollm2-135m or tiny:llama")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split the row comes from")
    s.add_argument("--row", type=int, default=0, help="0-based row index within the split")
    s.set_defaults(fn=cmd_prompt)
