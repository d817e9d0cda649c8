"""Learning curves from a training run's ``log.jsonl`` (written by :mod:`flrec.training.trainer`).

Training rows carry ``step`` and the batch means (``loss``, ``rec``, each auxiliary term, the
uncertainty weights ``lambda_<term>`` and the factor health ``thought_cos`` / ``gate_usage`` /
``gate_max`` / ``hist_attn``); validation rows carry ``valid_loss`` and ``valid_<name>``. A torn
last line (a run killed mid-write) is ignored.
"""

from __future__ import annotations

from pathlib import Path

from flrec.errors import FlrecError
from flrec.utils.io import read_jsonl_tolerant

AUX_TERMS = ("orth", "div", "sparse", "thought_sim", "routing", "attn_entropy")
HEALTH = ("gate_usage", "thought_cos", "gate_max", "hist_attn")


def find_log(path: str | Path) -> Path:
    """``path`` itself, or the ``log.jsonl`` of a run dir (also ``sft/log.jsonl`` of a compare cell)."""
    p = Path(path)
    for cand in (p, p / "log.jsonl", p / "sft" / "log.jsonl"):
        if cand.is_file() and cand.name.endswith(".jsonl"):
            return cand
    raise FlrecError(f"{p}: no training log.jsonl here (nor in sft/); pass a run directory of `flrec train sft`")


def read_curves(path: str | Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{"train": {key: (steps, values)}, "valid": {key: (steps, values)}}`` (numeric keys only).

    Validation keys lose their ``valid_`` prefix; rows without ``step`` (evaluation progress) are skipped.
    """
    rows, _ = read_jsonl_tolerant(find_log(path))
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {"train": {}, "valid": {}}
    for r in rows:
        step = r.get("step")
        if not isinstance(step, int | float):
            continue
        kind = "valid" if "valid_loss" in r else "train"
        for k, v in r.items():
            if k in ("step", "elapsed_s", "best_step", "lr", "samples_per_s") or not isinstance(v, int | float):
                continue
            key = k.removeprefix("valid_") if kind == "valid" else k
            xs, ys = out[kind].setdefault(key, ([], []))
            xs.append(float(step))
            ys.append(float(v))
    if not out["train"] and not out["valid"]:
        raise FlrecError(f"{find_log(path)}: no training or validation rows (a run that never logged a step?)")
    return out


def curve_panels(curves: dict) -> list[tuple[str, dict]]:
    """The report's panels: recommendation loss, auxiliary terms, uncertainty weights, factor health,
    and validation ranking metrics when logged (``valid_ndcg@10`` etc.)."""
    tr, va = curves["train"], curves["valid"]
    rec = {f"train {k}": tr[k] for k in ("rec",) if k in tr}
    rec.update({f"valid {k}": va[k] for k in ("rec",) if k in va})
    if not rec:
        rec = {f"train {k}": tr[k] for k in ("loss",) if k in tr}
        rec.update({"valid loss": va["loss"]} if "loss" in va else {})
    aux = {f"train {k}": tr[k] for k in AUX_TERMS if k in tr}
    aux.update({f"valid {k}": va[k] for k in AUX_TERMS if k in va})
    lam = {k.removeprefix("lambda_"): v for k, v in tr.items() if k.startswith("lambda_")}
    health = {k: tr[k] for k in HEALTH if k in tr}
    rank = {k: v for k, v in va.items() if k.startswith(("ndcg", "hr"))}
    return [("recommendation loss", rec), ("auxiliary terms", aux), ("uncertainty weights λ", lam),
            ("factor health (train batches)", health), ("validation ranking", rank)]


def runs_panels(runs: dict[str, str | Path]) -> list[tuple[str, dict]]:
    """Several runs in one figure: each panel is one quantity, one line per run."""
    curves = {name: read_curves(p) for name, p in runs.items()}
    wanted = [("train rec loss", "train", "rec"), ("valid rec loss", "valid", "rec"),
              ("thought cosine across rows (train)", "train", "thought_cos"),
              ("gate usage (train)", "train", "gate_usage"), ("gate max (train)", "train", "gate_max"),
              ("attention on history (train)", "train", "hist_attn")]
    return [(title, {n: c[kind][key] for n, c in curves.items() if key in c[kind]}) for title, kind, key in wanted]


def plot_runs(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """One PNG comparing runs (:func:`runs_panels`)."""
    from flrec.analysis.plots import panels

    return panels(out_png, runs_panels(runs), ncols=3)


def plot_learning_curves(path: str | Path, out_png: str | Path) -> Path:
    """One PNG with the panels of :func:`curve_panels` that have data."""
    from flrec.analysis.plots import panels

    return panels(out_png, curve_panels(read_curves(path)))
