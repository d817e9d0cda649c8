"""One way to open a dataset spec, shared by the CLI, training, comparison, the demo, serving and benchmarks."""

from __future__ import annotations

from pathlib import Path

from flrec.data.schema import RecDataset


def load_dataset(spec: str | Path) -> RecDataset:
    """A dataset from a D3 directory or ``embedded:synth`` (the project's generated default)."""
    from flrec.data.d3 import read_d3

    if str(spec).startswith("embedded:"):
        from flrec.data.embedded import embedded_dataset_dir

        return read_d3(embedded_dataset_dir(str(spec).split(":", 1)[1]))
    return read_d3(Path(spec))
