"""The ``flrec`` parser, assembled from the command groups' parsers, and :func:`main`."""

from __future__ import annotations

import argparse
import os
import sys

from flrec.cli.analyze import add_analyze_parser, add_report_parser
from flrec.cli.common import note
from flrec.cli.data import add_data_parser, add_prompt_parser
from flrec.cli.evaluate import (
    add_ablate_parser,
    add_compare_parser,
    add_evaluate_parser,
    add_tune_decoding_parser,
)
from flrec.cli.info import add_config_parser, add_demo_parser
from flrec.cli.serve import add_serving_parsers
from flrec.cli.train import add_train_parser
from flrec.errors import FlrecError, disk_full_error


def build_parser() -> argparse.ArgumentParser:
    from flrec import __version__

    p = argparse.ArgumentParser(prog="flrec", description="Factorized Latent Reasoning for sequential recommendation")
    p.add_argument("--version", action="version", version=f"flrec {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    # the order of `flrec --help`'s command list
    for add in (add_data_parser, add_prompt_parser, add_tune_decoding_parser, add_train_parser, add_evaluate_parser,
                add_compare_parser, add_demo_parser, add_analyze_parser, add_ablate_parser, add_report_parser,
                add_config_parser, add_serving_parsers):
        add(sub)
    return p


# Commands that run a model on the CPU for minutes (see flrec.utils.threads).
HEAVY_COMMANDS = {"train", "evaluate", "compare", "demo", "tune-decoding", "serve", "recommend", "analyze"}


def _warn_if_sharing_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        return
    from flrec.utils.threads import oversubscription_warning, register_cpu_job

    try:
        msg = oversubscription_warning(register_cpu_job())
    except OSError:  # a read-only home: the check is advice, never a failure
        return
    if msg:
        note(msg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in HEAVY_COMMANDS:
            _warn_if_sharing_cpu()
        args.fn(args)
        sys.stdout.flush()  # a closed pipe (`| head`) surfaces here, inside the handler below
    except FlrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flrec data stats D | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141
    except Exception as e:  # out of space surfaces from many writers (torch, safetensors, open)
        full = disk_full_error(e)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    return 0
