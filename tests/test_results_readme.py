"""The committed comparison results and the README's tables must say the same thing.

``results/<dataset>/summary.json`` is what ``flrec compare`` wrote; the README (README.md and the docs pages
it links, tests/readme_text.py; the tables are in docs/results/) shows its table as
:func:`flrec.experiments.compare.format_markdown` renders it. Editing one without the other fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from readme_text import readme_text

from flrec.experiments.compare import TABLE_METRICS, format_markdown
from flrec.experiments.compare_stats import upgrade_summary

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted((ROOT / "results").glob("*/summary.json"))


def test_cds_summary_is_committed():
    assert (ROOT / "results" / "CDs" / "summary.json") in SUMMARIES


@pytest.mark.parametrize("path", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_summary_shape_and_readme_table(path: Path):
    summary = json.loads(path.read_text())
    assert {"methods", "significance", "budget"} <= set(summary)
    assert upgrade_summary(summary) == summary, "committed with keys from before the item-NDCG rename"
    for name, st in summary["methods"].items():
        for m in TABLE_METRICS:
            assert set(st[m]) == {"mean", "std"} and 0.0 <= st[m]["mean"] <= 1.0, (name, m)
    sig = summary["significance"]
    assert sig["metric"] == "ndcg@10" and sig["vs"] in summary["methods"] and 0.0 <= sig["p_value"] <= 1.0

    readme = readme_text()
    table = [line for line in format_markdown(summary).splitlines() if line.startswith("| ")]
    missing = [line for line in table if line not in readme]
    assert not missing, f"README.md and docs/ lack these rows of {path.relative_to(ROOT)} (re-paste summary.md): {missing}"
