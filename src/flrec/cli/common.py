"""What every command group shares: the help formatter, the ``--config FILE key=value...`` arguments and
the one place that turns them (plus a command's flags) into a config, and the output helpers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any


def note(msg: str) -> None:
    """Anything that is not the command's result: stderr (stdout stays parseable)."""
    print(msg, file=sys.stderr, flush=True)


def metrics_table(metrics: dict) -> str:
    return "\n".join(f"{k:>10}  {v:.4f}" for k, v in metrics.items())


class DefaultsHelp(argparse.HelpFormatter):
    """Append "(default: X)" to an option's help unless the help already says what the default is or the
    option has none (None/False).

    (argparse.ArgumentDefaultsHelpFormatter also appends "(default: None)" to options whose help
    explains a config-dependent default, which reads as a contradiction.)"""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != argparse.SUPPRESS and action.option_strings \
                and "default" not in text:
            text += " (default: %(default)s)"
        return text


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command ``--config FILE`` and positional ``key=value`` overrides (read by :func:`load_config`)."""
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted for sections)")
    return parser


def add_result_file_flags(parser: argparse.ArgumentParser, name: str, out_help: str, json_help: str) -> None:
    """``--out DIR`` (write ``name`` there), ``--overwrite`` (replace an existing ``name``) and ``--json``:
    the flags every command that writes one result file shares."""
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {name}")
    parser.add_argument("--json", action="store_true", help=json_help)


def add_grid_flags(parser: argparse.ArgumentParser, out_help: str, force_help: str, json_help: str) -> None:
    """The flags ``compare`` and ``ablate`` share: seeds, row limit, output folder, ``--force``, ``--json``."""
    parser.add_argument("--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's seeds, 1,2,3)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows of the split (default: all rows)")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--force", action="store_true", help=force_help)
    parser.add_argument("--json", action="store_true", help=json_help)


def load_config(cls: Any, args: argparse.Namespace, flags: Iterable[str] = (), force: str | None = None,
                first: Iterable[str] = ()) -> Any:
    """``cls`` from ``--config`` and the overrides, in this order (later ones win): ``first``, the user's
    ``key=value`` overrides, ``key=value`` for each of ``flags`` that was given (the option's dest is the
    config key), and ``<force>=true`` under ``--force``."""
    overrides = [*first, *args.overrides]
    for key in flags:
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    if force is not None and args.force:
        overrides.append(f"{force}=true")
    return cls.load(args.config, overrides)
