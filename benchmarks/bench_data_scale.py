"""Data layer at scale: seconds and peak memory of ``dataset_stats(read_d3(DIR))`` on a large D3 folder.

Generates a synthetic D3 folder (default 1,000,000 rows over 50,000 items, histories of 1-10 items,
80/10/10 split) in a temporary directory, then measures reading + statistics in a fresh
subprocess, so that the peak RSS is that of the data layer alone (the interpreter included)::

    python benchmarks/bench_data_scale.py --json [--rows 1000000] [--items 50000] [--keep DIR]

The goal in issue 17 is <= 10 s and <= 1 GB for 1M rows. Also reports the measuring process's CPU
seconds (the honest figure on a loaded machine) and whether torch was imported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = (
    "user_id", "item_asins", "item_asin", "history_item_id", "item_id", "history_item_title",
    "item_title", "history_rating", "rating", "history_timestamp", "timestamp",
)  # fmt: skip

MEASURE = """
import json, resource, sys, time
t0 = time.perf_counter()
from flrec.data.d3 import read_d3
from flrec.data.stats import dataset_stats
t1 = time.perf_counter()
ds = read_d3(sys.argv[1])
t2 = time.perf_counter()
stats = dataset_stats(ds)
t3 = time.perf_counter()
print(json.dumps({
    "import_s": round(t1 - t0, 3), "read_s": round(t2 - t1, 3), "stats_s": round(t3 - t2, 3),
    "total_s": round(t3 - t0, 3),
    # CPU seconds as well: on a shared machine the wall time mostly measures the other processes.
    "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "torch_imported": "torch" in sys.modules, "rows": stats["rows"], "items": stats["items"],
}))
"""


def generate(root: Path, rows: int, items: int, seed: int = 0) -> None:
    """Write a D3 folder with ``rows`` rows: users walk over a Zipf-ish catalogue, one row per step."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    words = ["Live", "Best", "Of", "Greatest", "Hits", "Blue", "Night", "Songs", "Vol.", "Remastered", "Edition"]
    titles = [f"{rng.choice(words)} {rng.choice(words)} {k} ({1960 + k % 60})" for k in range(items)]
    with open(root / "info.txt", "w", encoding="utf-8", newline="") as f:
        f.writelines(f"{t}\t{i}\n" for i, t in enumerate(titles))
    asins = [f"B{k:09d}" for k in range(items)]
    n_train, n_valid = int(rows * 0.8), int(rows * 0.9)
    files = {s: open(root / f"{s}.csv", "w", encoding="utf-8", newline="") for s in ("train", "valid", "test")}
    writers = {s: csv.writer(f) for s, f in files.items()}
    for w in writers.values():
        w.writerow(HEADER)
    made, user, ts = 0, 0, 1_500_000_000
    while made < rows:
        seq = [min(int(rng.paretovariate(1.2)) * 7 % items, items - 1) for _ in range(rng.randint(2, 20))]
        times = [ts + 3600 * k for k in range(len(seq))]
        ratings = [float(rng.randint(1, 5)) for _ in seq]
        for pos in range(1, len(seq)):
            if made == rows:
                break
            lo = max(0, pos - 10)
            hist = seq[lo:pos]
            target = seq[pos]
            split = "train" if made < n_train else "valid" if made < n_valid else "test"
            writers[split].writerow([
                f"U{user:08d}", str([asins[i] for i in hist]), asins[target], str(hist), target,
                str([titles[i] for i in hist]), titles[target], str(ratings[lo:pos]), ratings[pos],
                str(times[lo:pos]), times[pos],
            ])  # fmt: skip
            made += 1
        user += 1
        ts += 60
    for f in files.values():
        f.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--keep", type=Path, help="write the folder here (and keep it) instead of a temp dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp) / "scale"
        if not (root / "test.csv").exists():
            generate(root, a.rows, a.items)
        size_mb = sum(f.stat().st_size for f in root.iterdir()) / 2**20
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr)
        result = {"benchmark": "data_scale", "rows_requested": a.rows, "folder_mb": round(size_mb, 1),
                  **json.loads(out.stdout)}  # fmt: skip
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}  {v}")


if __name__ == "__main__":
    main()
