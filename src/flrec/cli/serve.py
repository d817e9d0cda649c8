"""``flrec export``, ``flrec recommend`` and ``flrec serve``: a trained run as a recommender."""

from __future__ import annotations

import json

from flrec.cli.common import load_config, with_config
from flrec.errors import FlrecError


def cmd_export(a) -> None:
    from flrec.serving.export import export

    out = export(a.run_dir, a.out, data=a.data, overwrite=a.overwrite, beam=a.beam, dtype=a.dtype,
                 batch_size=a.batch_size, allow_other_data=a.allow_other_data)
    print(f"exported {a.run_dir} to {out}; load it with flrec.serving.load_recommender({str(out)!r}) "
          f"or `flrec recommend --model {out} --history ...`")


def _print_answer(model, ans: dict) -> None:
    print(f"{model.method}: top {len(ans['items'])} for a history of {len(ans['history'])} item(s)"
          + (" (history items excluded)" if ans["exclude_seen"] else ""))
    for it in ans["items"]:
        more = f"  (+{len(it['same_title_item_ids'])} more items with this title)" if it["same_title_item_ids"] else ""
        print(f"{it['rank']:>3}. [{it.get('original_id') or it['item_id']}] {it['title']}  score {it['score']:.4f}{more}")
    ex = ans.get("explanation")
    if ex:
        print(f"why (refinement step {ex['step']}; {ex['history_in_prompt']} history titles in the prompt):")
        for f in sorted(ex["factors"], key=lambda f: -f["gate"]):
            top = ", ".join(f"{h['title']!r} {h['attention']:.2f}" for h in f["top_history"])
            print(f"  factor {f['factor']}: gate {f['gate']:.3f}, {f['attention_on_history']:.0%} of its attention "
                  f"on history titles; most: {top}")


def cmd_recommend(a) -> None:
    from flrec.serving.batch import recommend_file
    from flrec.serving.service import empty_answer_reason, load_recommender

    given = [x for x in (a.history, a.item_ids, a.input) if x is not None]
    if len(given) != 1:
        raise FlrecError("give exactly one of --history TITLE..., --item-ids ID... or --input FILE.jsonl --output FILE.jsonl")
    if (a.input is None) != (a.output is None):
        raise FlrecError("--input and --output go together (a JSONL file of histories in, one of answers out)")
    # lazy: a misspelt title is refused before the weights are read
    model = load_recommender(a.model, dtype=a.dtype, lazy=True)
    explain = not a.no_explain and model.explains
    if a.input is not None:
        res = recommend_file(model, a.input, a.output, k=a.k, exclude_seen=a.exclude_seen, explain=explain,
                             batch_size=a.batch_size, overwrite=a.overwrite)
        print(json.dumps(res) if a.json else f"wrote {res['histories']} answers to {res['output']}")
        return
    ans = model.recommend(history=a.history, item_ids=a.item_ids, k=a.k, exclude_seen=a.exclude_seen,
                          explain=explain)
    if not ans["items"]:
        raise FlrecError(empty_answer_reason(model, a.exclude_seen))
    if a.json:
        print(json.dumps(ans, ensure_ascii=False))
    else:
        _print_answer(model, ans)


def cmd_serve(a) -> None:
    from flrec.serving.app import ServeConfig, serve

    cfg = load_config(ServeConfig, a, flags=("host", "port", "max_batch", "max_wait_ms", "max_queue"))
    serve(a.model, cfg, dtype=a.dtype)


# ---------------------------------------------------------------------------------------- parsers
def add_serving_parsers(sub) -> None:
    s = sub.add_parser("export", help="a trained run -> one self-contained directory (load_recommender / serve)")
    s.add_argument("run_dir", help="an SFT run (or its best/), a demo run, a compare cell or a saved recommender")
    s.add_argument("--out", required=True, help="export directory (must not exist or be empty)")
    s.add_argument("--data", help="the training dataset, if the run's config.yaml does not name a readable one")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--beam", type=int, help="LLM models: beam width (= largest k) stored with the export")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="LLM models: inference dtype stored with the export")
    s.add_argument("--batch-size", type=int, help="LLM models: users decoded together")
    s.add_argument("--allow-other-data", action="store_true",
                   help="accept a --data whose content differs from the dataset the run recorded")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("recommend", help="top-K items (ids, titles, scores; FLR: why) for histories")
    s.add_argument("--model", required=True, help="an export directory (flrec export)")
    s.add_argument("--history", nargs="+", metavar="TITLE", help="catalogue titles, oldest first")
    s.add_argument("--item-ids", nargs="+", metavar="ID",
                   help="item ids, oldest first: your own ids (as in the files given to flrec data convert, "
                   "e.g. it7) or flrec's integer ids")
    s.add_argument("--input", help="JSONL file, one {\"history\": [...]} or {\"item_ids\": [...]} per line")
    s.add_argument("--output", help="JSONL answers, one per input line (with --input)")
    s.add_argument("-k", type=int, default=10, help="items to return (default 10)")
    s.add_argument("--exclude-seen", action="store_true", help="never return an item of the history")
    s.add_argument("--no-explain", action="store_true", help="FLR: leave out the per-factor explanation")
    s.add_argument("--json", action="store_true", help="print JSON instead of a list")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the export's inference dtype")
    s.add_argument("--batch-size", type=int, default=16, help="histories per model call (--input)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    s.set_defaults(fn=cmd_recommend)

    s = with_config(sub.add_parser("serve", help="HTTP JSON API: POST /recommend, GET /healthz, GET /metadata"))
    s.add_argument("--model", required=True, help="an export directory (flrec export)")
    s.add_argument("--host", help="interface (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port (default 8000)")
    s.add_argument("--max-batch", type=int, help="requests per batched model call (default 8)")
    s.add_argument("--max-wait-ms", type=float, help="wait for more requests after the first of a batch (default 10)")
    s.add_argument("--max-queue", type=int, help="waiting requests before 503 (default 64)")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the export's inference dtype")
    s.set_defaults(fn=cmd_serve)
