"""``flrec`` command line. Every command is a thin shell over a Python function of the same job.

Configs: ``--config file.yaml`` plus ``key=value`` overrides (dotted keys for sections, e.g.
``train.lr=3e-4 flr.num_factors=3``); ``flrec config sft`` lists every key with its help.
User errors print ``error: <one line>`` and exit with status 2 — never a traceback.
Output rule: results go to stdout (with ``--json``: exactly one JSON document), everything else
(progress, notes, where files went) to stderr, so ``flrec evaluate ... --json | jq`` works.
"""

from flrec.cli.info import CONFIGS
from flrec.cli.main import HEAVY_COMMANDS, build_parser, main

__all__ = ["CONFIGS", "HEAVY_COMMANDS", "build_parser", "main"]
