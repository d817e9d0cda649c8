"""Inference cost (paper Fig. 9): seconds per user of several recommenders on the same rows, in one run.

The paper compares non-reasoning (BIGRec), LatentR3, FLR and explicit CoT, 100 users, batch 4,
three repetitions averaged. :func:`measure_inference_cost` times ``recommend`` of each given
recommender on the same rows, same process and hardware, interleaving the methods within each
repetition (so a machine that slows down mid-run does not favour whichever ran first), and reports
the mean and spread of seconds per user and the generated tokens per user; for a method that writes a
rationale (``cot``), also the rationale length it measured and the share of rows whose rationale hit
the cap. :func:`inference_cost` loads trained model directories for it (the ``cot`` method reuses a
no-thought model: BIGRec's SFT, with a self-generated rationale written at inference).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flrec.errors import ConfigError
from flrec.models.folder import resolve_model_dir
from flrec.recommenders.base import Recommender, get_recommender

COST_ORDER = ("bigrec", "latentr3", "flr", "cot")  # the paper's Fig. 9 order


def measure_inference_cost(recommenders: Mapping[str, Recommender], rows: Sequence, k: int = 10,
                           batch_size: int = 4, repeats: int = 3, warmup: bool = True) -> dict:
    """Seconds per user of each recommender on ``rows``.

    Returns ``{"rows", "batch_size", "repeats", "k", "methods": {name: {"seconds_per_user",
    "seconds_per_user_std", "generated_tokens_per_user"}}}``; ``generated_tokens_per_user`` is None
    for a recommender that does not report ``last_generated_tokens``. A recommender that reports
    ``last_rationale_tokens`` (``cot``) adds ``rationale_tokens_per_user`` (measured) and
    ``rationale_capped_share`` (rows whose rationale hit the cap: then the cost is understated).
    """
    if not recommenders:
        raise ConfigError("inference cost: no recommenders given")
    if not rows:
        raise ConfigError("inference cost: no rows to time")
    if repeats < 1 or batch_size < 1:
        raise ConfigError(f"inference cost: repeats ({repeats}) and batch_size ({batch_size}) must be >= 1")
    if warmup:  # first calls build tries and caches: not part of the per-user cost
        for rec in recommenders.values():
            rec.recommend(rows[:1], k=k, batch_size=1)
    times: dict[str, list[float]] = {n: [] for n in recommenders}
    tokens: dict[str, int | None] = dict.fromkeys(recommenders, 0)
    rationale = {n: [0, 0] for n, r in recommenders.items() if hasattr(r, "last_rationale_tokens")}  # tokens, capped
    for _ in range(repeats):
        for name, rec in recommenders.items():
            t = 0.0
            for start in range(0, len(rows), batch_size):
                t0 = time.perf_counter()
                rec.recommend(rows[start : start + batch_size], k=k, batch_size=batch_size)
                t += time.perf_counter() - t0
                gen = getattr(rec, "last_generated_tokens", None)
                tokens[name] = None if gen is None or tokens[name] is None else tokens[name] + int(gen)
                if name in rationale:
                    rationale[name][0] += int(rec.last_rationale_tokens)
                    rationale[name][1] += int(rec.last_rationale_capped)
            times[name].append(t / len(rows))
    methods = {}
    for name, ts in times.items():
        x = np.asarray(ts)
        tok = tokens[name]
        methods[name] = {"seconds_per_user": float(x.mean()),
                         "seconds_per_user_std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                         "generated_tokens_per_user": None if tok is None else tok / (repeats * len(rows))}
        if name in rationale:
            methods[name]["rationale_tokens_per_user"] = rationale[name][0] / (repeats * len(rows))
            methods[name]["rationale_capped_share"] = rationale[name][1] / (repeats * len(rows))
    return {"rows": len(rows), "batch_size": batch_size, "repeats": repeats, "k": k, "methods": methods}


def inference_cost(models: Mapping[str, str | Path], dataset, split: str = "test", limit: int = 100,
                   batch_size: int = 4, repeats: int = 3, beam: int = 10, cot_beam: int | None = None,
                   rationale_tokens: int | None = None) -> dict:
    """Load ``{method: model dir}`` (methods: flr, latentr3, bigrec, base, cot) and time them.

    Each model dir is an SFT run (or its ``best/``); ``cot`` takes a no-thought model (BIGRec's).
    ``cot_beam`` (default ``beam``) is the CoT method's beam (the paper used 1); ``rationale_tokens``
    caps its rationale (None = the method's default, 256: until the model starts the title).
    """
    if split not in dataset.splits:
        raise ConfigError(f"split '{split}' is not in the dataset (has {sorted(dataset.splits)})")
    rows = dataset[split][:limit]
    recs: dict[str, Recommender] = {}
    for name, path in models.items():
        cls = get_recommender(name)
        if not hasattr(cls, "from_model_dir"):
            raise ConfigError(f"inference cost: '{name}' is not an LLM method; use flr, latentr3, bigrec, base or cot")
        over = {"beam": beam if name != "cot" or cot_beam is None else cot_beam, "batch_size": batch_size}
        if name == "cot" and rationale_tokens is not None:
            over["rationale_tokens"] = rationale_tokens
        cfg = cls.config_cls.from_dict(over, source=f"inference cost {name}")
        recs[name] = cls.from_model_dir(resolve_model_dir(path), dataset.catalogue, cfg, domain=dataset.domain)
    order = sorted(recs, key=lambda n: COST_ORDER.index(n) if n in COST_ORDER else len(COST_ORDER))
    rep = measure_inference_cost({n: recs[n] for n in order}, rows, k=min(10, beam), batch_size=batch_size,
                                 repeats=repeats)
    rep.update(split=split, models={n: str(p) for n, p in models.items()}, beam=beam,
               cot_beam=cot_beam if cot_beam is not None else beam, machine=_machine())
    if "cot" in recs:
        rep["rationale_cap"] = recs["cot"].config.rationale_tokens
    return rep


def _machine() -> dict:
    import os
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def cost_from_comparison(summary: dict) -> dict:
    """The same shape from a comparison's ``summary.json`` (each method's ranking ``seconds_per_user``;
    these come from separate cells, so they are comparable only if the cells ran on the same machine)."""
    methods = {m: {"seconds_per_user": st.get("seconds_per_user"), "seconds_per_user_std": None,
                   "generated_tokens_per_user": None}
               for m, st in summary.get("methods", {}).items() if st and st.get("seconds_per_user") is not None}
    return {"rows": None, "source": "comparison", "methods": methods}


def format_cost(rep: dict) -> str:
    lines = ["| method | s/user | ± | tokens/user |", "|---|---:|---:|---:|"]
    notes = []
    for m, st in rep["methods"].items():
        sd = st.get("seconds_per_user_std")
        tok = st.get("generated_tokens_per_user")
        lines.append(f"| {m} | {st['seconds_per_user']:.4f} | {'' if sd is None else f'{sd:.4f}'} | "
                     f"{'' if tok is None else f'{tok:.1f}'} |")
        if st.get("rationale_tokens_per_user") is not None:
            cap = rep.get("rationale_cap")
            notes.append(f"{m}: self-generated rationale of {st['rationale_tokens_per_user']:.1f} tokens per user "
                         f"(measured); {st['rationale_capped_share']:.0%} of rows hit the cap"
                         + (f" of {cap}" if cap is not None else ""))
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)
