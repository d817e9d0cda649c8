"""Fit baselines on a D3 dataset and report full-ranking test metrics (compare with
``../shared/reference/calibration.md``).

    python benchmarks/calibrate_baselines.py --data ../shared/data/amazon/CDs --methods pop,sasrec
    python benchmarks/calibrate_baselines.py --data ../shared/data/movielens/ml-100k --json

``--data`` is a D3 folder (info.txt + train/valid/test.csv) or a raw MovieLens 100K folder (u.data),
converted on the fly with the D3 protocol. Two protocols are reported per method: ``id`` ranks the
target *item* among all items (the calibration protocol) and ``title`` ranks the target's title
among distinct titles (flrec's evaluation protocol, :meth:`Recommender.recommend`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from flrec.data.convert import prepare_movielens
from flrec.data.d3 import read_d3
from flrec.data.schema import RecDataset
from flrec.evaluation.metrics import ID_VALID_KS, metrics_from_rank_tensor, metrics_from_ranks, target_rank
from flrec.recommenders import get_recommender
from flrec.recommenders.sequential import target_ranks, targets_of

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "recommenders"
KS = ID_VALID_KS


def load_dataset(path: Path, workdir: Path) -> RecDataset:
    if (path / "u.data").is_file():
        return prepare_movielens(path, workdir / path.name)
    return read_d3(path)


def calibrate(dataset: RecDataset, method: str, overrides: list[str], run_dir: Path | None) -> dict:
    cls = get_recommender(method)
    cfg_file = CONFIGS / f"{method}.yaml"
    cfg = cls.config_cls.load(cfg_file if cfg_file.is_file() else None, overrides)
    t0 = time.perf_counter()
    rec = cls(dataset.catalogue, cfg).fit(dataset, run_dir=run_dir / method if run_dir else None)
    train_s = time.perf_counter() - t0
    test = dataset["test"]
    t0 = time.perf_counter()
    ranks = torch.cat([target_ranks(rec.score(test[i : i + 1024]), targets_of(test[i : i + 1024], len(dataset.catalogue)))
                       for i in range(0, len(test), 1024)])
    titles = dataset.catalogue.titles
    title_ranks = [target_rank([t for t, _ in r], titles[row.target]) for row, r in zip(test, rec.recommend(test, k=10), strict=True)]
    return {
        "id": metrics_from_rank_tensor(ranks, KS),
        "title": metrics_from_ranks(title_ranks, KS),
        "epochs": len(getattr(rec, "history", [])),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="D3 folder or raw MovieLens 100K folder")
    ap.add_argument("--methods", default="pop,sasrec,gru4rec,caser,alpharec", help="comma-separated method names")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every neural method")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is fastest on a busy machine)")
    ap.add_argument("--run-dir", type=Path, default=None, help="write per-method training logs here")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(args.data, Path(tmp))
    out: dict = {"dataset": dataset.name, "rows": {s: len(dataset[s]) for s in dataset.splits},
                 "n_items": len(dataset.catalogue), "methods": {}}
    for method in args.methods.split(","):
        overrides = [] if method == "pop" else [*args.set, *(["progress=false"] if args.json else [])]
        out["methods"][method] = res = calibrate(dataset, method, overrides, args.run_dir)
        if not args.json:
            print(f"{method:9s} id HR@10 {res['id']['hr@10']:.4f} N@10 {res['id']['ndcg@10']:.4f} | title HR@10 "
                  f"{res['title']['hr@10']:.4f} N@10 {res['title']['ndcg@10']:.4f} | {res['epochs']} epochs, "
                  f"{res['train_seconds']} s", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
