"""``flrec analyze ...`` (factors, longtail, disentangle, cost, curves) and ``flrec report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flrec.cli.common import DefaultsHelp, add_result_file_flags, note
from flrec.errors import FlrecError
from flrec.utils.outputs import check_output

JSON_HELP = "print one JSON object on stdout and nothing else"
MODEL_HELP = "an SFT run dir (holding best/) or a model dir"
DATA_HELP = "D3 dataset dir or embedded:synth"


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise FlrecError(f"--limit must be >= 0 (0 = all rows), got {limit}")


def _check_json_out(out: str | None, name: str, overwrite: bool, inputs: list) -> None:
    """Refuse ``--out`` (before the work) when ``out/name`` may not be written."""
    if out is not None:
        check_output(out, inputs=inputs, replace=False, allow_inside=True)
        check_output(Path(out) / name, kind="file", overwrite=overwrite, option="--out")


def _write_json_out(out: str | None, name: str, rep: dict, overwrite: bool) -> None:
    if out is None:
        return
    from flrec.utils.io import atomic_write_json

    path = Path(out) / name
    check_output(path, kind="file", overwrite=overwrite, option="--out")
    atomic_write_json(path, rep)
    note(f"wrote {path}")


def cmd_analyze_factors(a) -> None:
    from flrec.analysis.factors import factor_diagnostics, format_report
    from flrec.data.load import load_dataset

    _check_limit(a.limit)
    rep = factor_diagnostics(a.model, load_dataset(a.data), split=a.split, limit=a.limit,
                             batch_size=a.batch_size, n_perm=a.permutations)
    print(json.dumps(rep) if a.json else format_report(rep))


def cmd_analyze_longtail(a) -> None:
    from flrec.analysis.longtail import format_longtail, longtail

    _check_json_out(a.out, "longtail.json", a.overwrite, [])
    rep = longtail(a.compare_dir, reference=a.reference)
    _write_json_out(a.out, "longtail.json", rep, a.overwrite)
    print(json.dumps(rep) if a.json else format_longtail(rep))


def cmd_analyze_disentangle(a) -> None:
    from flrec.analysis.disentangle import disentanglement, format_disentanglement, write_figures
    from flrec.data.load import load_dataset

    _check_limit(a.limit)
    _check_json_out(a.out, "disentangle.json", a.overwrite, [a.model, a.data])
    rep = disentanglement(a.model, load_dataset(a.data), split=a.split, limit=a.limit or None,
                          batch_size=a.batch_size, examples=a.examples)
    _write_json_out(a.out, "disentangle.json", rep, a.overwrite)
    if a.out is not None:
        for path in write_figures(rep, a.out).values():
            note(f"wrote {path}")
    print(json.dumps(rep) if a.json else format_disentanglement(rep))


def cmd_analyze_cost(a) -> None:
    from flrec.analysis.cost import format_cost, inference_cost
    from flrec.data.load import load_dataset

    models = {}
    for spec in a.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise FlrecError(f"--model {spec!r}: expected METHOD=RUN_DIR, e.g. flr=runs/cds-flr")
        models[name] = path
    _check_json_out(a.out, "cost.json", a.overwrite, [a.data, *models.values()])
    rep = inference_cost(models, load_dataset(a.data), split=a.split, limit=a.limit, batch_size=a.batch_size,
                         repeats=a.repeats, beam=a.beam, cot_beam=a.cot_beam, rationale_tokens=a.rationale_tokens)
    _write_json_out(a.out, "cost.json", rep, a.overwrite)
    print(json.dumps(rep) if a.json else format_cost(rep))


def cmd_analyze_curves(a) -> None:
    from flrec.analysis.curves import plot_learning_curves

    out = check_output(a.out, kind="file", overwrite=a.overwrite, inputs=[a.run])
    print(plot_learning_curves(a.run, out))


def cmd_report(a) -> None:
    from flrec.analysis.report import build_report

    path = build_report(a.inputs, a.out, title=a.title, overwrite=a.overwrite)
    print(path)


# ---------------------------------------------------------------------------------------- parsers
def add_analyze_parser(sub) -> None:
    analyze = sub.add_parser("analyze", help="analyses of a trained model")
    asub = analyze.add_subparsers(dest="analyze_cmd", required=True)
    # factors has always listed every default (argparse's own formatter, "(default: None)" included)
    s = asub.add_parser("factors", help="factor health: thought similarity across users, gate usage, attention on "
                        "history items, planted-intent recovery (synthetic data)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_trace_flags(s)
    s.add_argument("--permutations", type=int, default=1000, help="permutations for the MI p-value")
    s.add_argument("--json", action="store_true", help=JSON_HELP)
    s.set_defaults(fn=cmd_analyze_factors)

    s = asub.add_parser("longtail", help="popular vs. unpopular targets per method of a comparison (paper Fig. 7)",
                        formatter_class=DefaultsHelp)
    s.add_argument("compare_dir", help="a folder written by flrec compare (summary.json, cells/)")
    s.add_argument("--reference", help="method whose improvement is reported (default: the comparison's reference)")
    add_result_file_flags(s, "longtail.json", "also write longtail.json into this folder (read by flrec report)", JSON_HELP)
    s.set_defaults(fn=cmd_analyze_longtail)
    _add_disentangle_parser(asub)
    _add_cost_parser(asub)
    s = asub.add_parser("curves", help="learning curves of a training run (log.jsonl) as one PNG",
                        formatter_class=DefaultsHelp)
    s.add_argument("run", help="an SFT run dir, a compare cell, or a log.jsonl file")
    s.add_argument("--out", required=True, help="the PNG to write")
    s.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    s.set_defaults(fn=cmd_analyze_curves)


def _add_trace_flags(s) -> None:
    """What a trace of a trained model over a split needs (``factors`` and ``disentangle``)."""
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--data", required=True, help=DATA_HELP)
    s.add_argument("--split", default="test", help="split whose rows are analysed")
    s.add_argument("--limit", type=int, default=200, help="first N rows of the split (0 = all)")
    s.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (results do not depend on it)")


def _add_disentangle_parser(asub) -> None:
    s = asub.add_parser("disentangle", help="factor cosine matrix, attention heatmaps, DS, gate entropy (Figs. 4, 6)",
                        formatter_class=DefaultsHelp)
    _add_trace_flags(s)
    s.add_argument("--examples", type=int, default=2, help="users whose attention heatmap is kept")
    add_result_file_flags(s, "disentangle.json", "write disentangle.json and the heatmap PNGs into this folder", JSON_HELP)
    s.set_defaults(fn=cmd_analyze_disentangle)


def _add_cost_parser(asub) -> None:
    s = asub.add_parser("cost", help="seconds per user of several trained LLM methods, same rows, one run (Fig. 9)",
                        formatter_class=DefaultsHelp)
    s.add_argument("--data", required=True, help=DATA_HELP)
    s.add_argument("--model", action="append", required=True, metavar="METHOD=RUN_DIR",
                   help="repeatable: bigrec=RUN, latentr3=RUN, flr=RUN, cot=RUN (cot: a no-thought model, e.g. bigrec's, "
                   "that writes its own rationale before the title)")
    s.add_argument("--split", default="test", help="split whose rows are timed")
    s.add_argument("--limit", type=int, default=100, help="users timed (the paper: 100)")
    s.add_argument("--batch-size", type=int, default=4, help="users per recommend() call (the paper: 4)")
    s.add_argument("--repeats", type=int, default=3, help="repetitions averaged (the paper: 3)")
    s.add_argument("--beam", type=int, default=10, help="beam width")
    s.add_argument("--cot-beam", type=int, help="beam of the cot method (the paper: 1; default: --beam)")
    s.add_argument("--rationale-tokens", type=int, default=None,
                   help="cot: cap on its self-generated rationale per user (default: the method's 256, i.e. until "
                   "the model starts the title); the report gives the measured length and the rows that hit the cap")
    add_result_file_flags(s, "cost.json", "write cost.json into this folder (read by flrec report)", JSON_HELP)
    s.set_defaults(fn=cmd_analyze_cost)


def add_report_parser(sub) -> None:
    s = sub.add_parser("report", help="the paper's analyses as report.md + PNG figures from result folders",
                       formatter_class=DefaultsHelp)
    s.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULTS_DIR",
                   help="compare/ablate output folders, results/<data>, run dirs (log.jsonl) or result JSON files")
    s.add_argument("--out", required=True, help="report folder (report.md + figures/)")
    s.add_argument("--title", help="the report's title (default: flrec report)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing report.md (and its figures/)")
    s.set_defaults(fn=cmd_report)
