"""``flrec export``: one self-contained directory per trained recommender, loadable by one call.

Layout of an export directory (``format`` 1)::

    flrec_export.json   manifest: method, kind (llm | id), decoding settings, provenance; written
                        last, so its presence means the directory is complete
    catalogue.json      every item: item_id (flrec's index), title, train_count (the tie rule for
                        shared titles) and original_id (the id in the user's own files) when known
    recommender/        the recommender's own ``save()`` output (LLM: model/ with the FLR module,
                        the tokenizer with <|Thought|>, the backbone weights when they were tuned, or
                        the backbone reference for LoRA/frozen runs; ID models: weights + config)
    metrics.json        the evaluation summary found beside the run, if any (the "metrics card")
    README.md           a human-readable card

Accepted sources: an export directory of ``Recommender.save`` (a ``flrec compare`` cell's
``model/``), a compare cell (``cells/<method>/seed<s>/``), an SFT run directory or its ``best/``
folder (``flrec train sft``), or a ``flrec demo`` run directory. SFT runs do not store the
catalogue, so the dataset is read from the run's ``config.yaml`` (or ``data=``); loading an export
never needs the dataset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from flrec.data.load import load_dataset
from flrec.errors import FlrecError
from flrec.models.folder import read_model_meta, resolve_model_dir
from flrec.recommenders.base import get_recommender
from flrec.recommenders.folder import method_for_reasoner, open_model_dir
from flrec.recommenders.llm import LLMRecConfig, LLMRecommender
from flrec.utils.outputs import check_output, staged_dir
from flrec.utils.runid import dataset_hash, read_fingerprint

MANIFEST = "flrec_export.json"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------- source lookup
def _saved_recommender(p: Path) -> str | None:
    """``'llm'`` / ``'id'`` when ``p`` holds a ``Recommender.save`` output, else None."""
    if (p / "recommender.yaml").is_file() and (p / "catalogue.txt").is_file() and (p / "model").is_dir():
        return "llm"
    if (p / "config.json").is_file() and (p / "catalogue.json").is_file() and (p / "model.safetensors").is_file():
        return "id"
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FlrecError(f"{path}: cannot read JSON ({e}); is the run complete?") from None
    if not isinstance(data, dict):
        raise FlrecError(f"{path}: expected a JSON object")
    return data


def _find_summary(dirs: list[Path], method: str) -> tuple[dict | None, Path | None]:
    """The evaluation summary of ``method`` in ``dirs`` (``summary.json`` or ``eval-*/summary.json``)."""
    for d in dirs:
        for cand in [d / "summary.json", *sorted(d.glob("eval-*/summary.json"))]:
            if cand.is_file():
                try:
                    s = json.loads(cand.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                if isinstance(s, dict) and s.get("method") == method and "metrics" in s:
                    return s, cand
    return None, None


def _config_data(dirs: list[Path]) -> str | None:
    """The ``data`` key of the first ``config.yaml`` found in ``dirs`` (SFT and compare runs have one)."""
    for d in dirs:
        cfg = d / "config.yaml"
        if cfg.is_file():
            try:
                data = (yaml.safe_load(cfg.read_text()) or {}).get("data")
            except yaml.YAMLError:
                continue
            if isinstance(data, str) and data:
                return _against_run(d, data)
    return None


def _against_run(run: Path, spec: str) -> str:
    """A relative data path of an older run, resolved against the directory the run was started in."""
    if Path(spec).is_absolute() or Path(spec).exists() or ":" in spec:
        return spec
    try:
        cwd = json.loads((run / "run_info.json").read_text(encoding="utf-8")).get("cwd")
    except (OSError, ValueError, AttributeError):
        return spec
    return str(Path(cwd) / spec) if isinstance(cwd, str) and (Path(cwd) / spec).exists() else spec


def _cli_run_data(dirs: list[Path]) -> str | None:
    """The ``data`` of a run started by ``flrec train sft`` or ``flrec demo`` (their config.yaml names
    the dataset the run read). Python callers of ``run_sft(cfg, dataset)`` — tests, ``flrec compare``
    — pass the dataset directly and the config keeps its default, so their ``data`` is not trusted.
    """
    for d in dirs:
        if (d / "config.yaml").is_file():
            info = d / "run_info.json"
            try:
                argv = [Path(a).name for a in json.loads(info.read_text()).get("argv", [])] if info.is_file() else []
            except (OSError, json.JSONDecodeError):
                argv = []
            # flrec, python -m flrec(.cli) (__main__.py; cli.py before the CLI became a package), or -m flrec.cli
            started_by_cli = any(a in ("flrec", "cli.py", "__main__.py") for a in argv[:1]) or "flrec.cli" in argv
            if started_by_cli and ("demo" in argv or ("train" in argv and "sft" in argv)):
                return _config_data([d])
            return None
    return None


def _load_data(spec: str, where: str):
    try:
        return load_dataset(spec)
    except FlrecError as e:
        raise FlrecError(f"{where}: the run's dataset {spec!r} cannot be read ({e}); pass data=DIR "
                         "(flrec export ... --data DIR) with the dataset the model was trained on") from None


def _resolve_source(source: Path, data: str | None):
    """Load the recommender behind ``source``; returns (recommender, method, dataset or None, provenance)."""
    if (source / MANIFEST).is_file():
        raise FlrecError(f"{source} is already an export; load it with flrec.serving.load_recommender or copy it")
    if not source.is_dir():
        raise FlrecError(f"{source}: no such directory; pass a run directory (flrec train sft / compare / demo)")
    ancestors = [source, *list(source.parents)[:4]]
    save_dir = source if _saved_recommender(source) else (source / "model" if _saved_recommender(source / "model") else None)
    if save_dir is not None:
        kind = _saved_recommender(save_dir)
        cell = save_dir.parent if save_dir.name == "model" else save_dir
        if kind == "id":
            method = _read_json(save_dir / "config.json").get("method")
        else:
            method = _cell_method(cell) or _reasoner_method(save_dir / "recommender.yaml")
        if not isinstance(method, str):
            raise FlrecError(f"{save_dir}: cannot tell which method saved this; it has no 'method' entry")
        rec = get_recommender(method).load(save_dir)
        spec = data or _config_data([p for p in ancestors if p != save_dir])
        dataset = _load_data(spec, str(source)) if spec and data else _try_data(spec)
        return rec, method, dataset, {"source": str(source.resolve()), "saved_recommender": str(save_dir.resolve()),
                                      "summary_dirs": [cell]}
    # An SFT run (or its best/ folder, or a demo run): the model directory plus the dataset's catalogue.
    model_dir = resolve_model_dir(source)
    method = method_for_reasoner(read_model_meta(model_dir)["flr"].get("reasoner", "flr"))
    spec = data
    if spec is None:
        spec = _cli_run_data([model_dir, *list(model_dir.parents)[:3]])
    if spec is None:
        raise FlrecError(f"{source}: an SFT model stores no catalogue and no `flrec train sft`/`flrec demo` config.yaml "
                         "names its dataset (runs started from Python or by `flrec compare` record only the default); "
                         "pass --data DIR with the dataset it was trained on, or export the compare cell instead")
    dataset = _load_data(spec, str(source))
    rec = open_model_dir(model_dir, dataset.catalogue, LLMRecConfig(), domain=dataset.domain)
    summary_dirs = [model_dir, *list(model_dir.parents)[:3]]
    return rec, method, dataset, {"source": str(source.resolve()), "model_dir": str(model_dir.resolve()),
                                  "data": spec, "summary_dirs": summary_dirs}


def _cell_method(cell: Path) -> str | None:
    """A compare cell names its method in summary.json and in its path (cells/<method>/seed<s>)."""
    if (cell / "summary.json").is_file():
        try:
            m = json.loads((cell / "summary.json").read_text()).get("method")
            if isinstance(m, str):
                return m
        except (OSError, json.JSONDecodeError):
            pass
    if cell.parent.parent.name == "cells" and cell.name.startswith("seed"):
        return cell.parent.name
    return None


def _reasoner_method(recommender_yaml: Path) -> str | None:
    try:
        cfg = yaml.safe_load(recommender_yaml.read_text()) or {}
        return method_for_reasoner(cfg["sft"]["flr"]["reasoner"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, FlrecError):
        return None


def _check_training_data(dirs: list[Path], dataset, where: str) -> None:
    """Refuse a dataset whose content is not what the run recorded (``data.hash`` in its fingerprint)."""
    for d in dirs:
        fp = read_fingerprint(d)
        stored = fp.get("data.hash") if fp else None
        if isinstance(stored, str):
            seen = {dataset_hash(dataset), dataset_hash(dataset, ("train", "valid")),
                    *(dataset_hash(dataset, (s,)) for s in dataset.splits)}
            if stored not in seen:
                raise FlrecError(f"the dataset {where} is not the one the run at {d} was trained and evaluated on "
                                 "(its content differs from the run's fingerprint); pass --data with the training "
                                 "dataset, or --allow-other-data if the difference is intended")
            return


def _try_data(spec: str | None):
    """The dataset for train popularity when the run names one that still exists; else None."""
    if not spec:
        return None
    try:
        return load_dataset(spec)
    except FlrecError:
        return None


# ------------------------------------------------------------------------------------------ export
def export(source: str | Path, out: str | Path, *, data: str | None = None, overwrite: bool = False,
           beam: int | None = None, dtype: str | None = None, batch_size: int | None = None,
           allow_other_data: bool = False) -> Path:
    """Write a self-contained export of the recommender behind ``source`` to ``out``; return ``out``.

    ``data``: the dataset the model was trained on, when the run's ``config.yaml`` does not name a
    readable one (needed for SFT runs: they store no catalogue; otherwise only for train popularity).
    ``beam``/``dtype``/``batch_size`` override an LLM recommender's decoding settings. The directory
    is built next to ``out`` and renamed into place (atomic); an ``out`` that is, holds or lies in
    the source or the data is refused, and so is an existing non-empty ``out`` unless ``overwrite``
    and flrec wrote it (:func:`flrec.utils.outputs.check_output`). A dataset whose content differs
    from the one the run recorded in its fingerprint is refused unless ``allow_other_data``.
    """
    import torch

    out = Path(out)
    source = Path(source)
    inputs = (source, data)
    check_output(out, inputs=inputs, overwrite=overwrite)  # before the model is read
    for name, v in (("--beam", beam), ("--batch-size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FlrecError(f"{name} must be an integer >= 1, got {v!r}")
    rec, method, dataset, prov = _resolve_source(source, data)
    kind, explains, decoding = _decoding_settings(rec, method, beam, dtype, batch_size)
    catalogue = rec.catalogue
    if dataset is not None and not allow_other_data:
        _check_training_data(prov["summary_dirs"], dataset, str(prov.get("data") or data))
    counts = _train_counts(rec, method, dataset, str(prov.get("data") or data))
    summary, summary_path = _find_summary(prov.pop("summary_dirs"), method)

    with staged_dir(out, kind="export", overwrite=overwrite, inputs=inputs) as tmp:
        rec.save(tmp / "recommender")
        same = dataset is not None and dataset.catalogue.titles == catalogue.titles
        own = dataset.original_item_ids() if same else None  # the user's own ids, beside flrec's index
        items = [{"item_id": i, "title": t, "train_count": None if counts is None else counts[i],
                  **({"original_id": own[i]} if own is not None and own[i] is not None else {})}
                 for i, t in enumerate(catalogue.titles)]
        (tmp / "catalogue.json").write_text(json.dumps({"items": items}, ensure_ascii=False) + "\n", encoding="utf-8")
        # The title trie is not stored: loading rebuilds it from the tokenizer and the catalogue exactly
        # as ranking does (it also derives per-title tables the recommender keeps beside it).
        torch_dtype = str(next(rec.model.parameters()).dtype) if kind == "llm" else None
        if summary is not None:
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        manifest = {
            "format": "flrec-export", "format_version": FORMAT_VERSION, "method": method, "kind": kind,
            "n_items": len(catalogue), "n_titles": len(catalogue.unique_titles), "explanations": explains,
            "decoding": decoding, "weights_dtype": torch_dtype,
            "popularity": "train target counts" if counts is not None else None,
            "metrics_card": "metrics.json" if summary is not None else None,
            "metrics_source": str(summary_path) if summary_path else None,
            "provenance": {**prov, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           **_versions(torch.__version__)},
        }
        (tmp / "README.md").write_text(_card(manifest, summary), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def _decoding_settings(rec, method: str, beam: int | None, dtype: str | None, batch_size: int | None
                       ) -> tuple[str, bool, dict[str, Any]]:
    """The export's kind (``llm`` | ``id``), whether it explains, and the decoding settings it
    records, after applying (and checking) the command line's overrides to ``rec.config``."""
    # generative (flr, latentr3, bigrec, base, flr+sasrec, ...) or an ID model scoring every item
    kind = "llm" if isinstance(rec, LLMRecommender) else "id"
    explains = kind == "llm" and bool(rec.model.config.uses_thought)
    decoding: dict[str, Any] = {}
    if kind == "llm":
        changes = {k: v for k, v in (("beam", beam), ("inference_dtype", dtype), ("batch_size", batch_size)) if v is not None}
        if changes:
            rec.config = rec.config.replace(**changes)
        decoding = {"beam": rec.config.beam, "length_penalty": rec.config.length_penalty,
                    "inference_dtype": rec.config.inference_dtype, "batch_size": rec.config.batch_size}
        n_titles = len(rec.catalogue.unique_titles)
        if rec.config.beam > n_titles:
            raise FlrecError(f"beam {rec.config.beam} exceeds the catalogue's {n_titles} distinct titles (a beam "
                             f"returns distinct titles); pass --beam {n_titles} or less")
        if rec.config.batch_size < 1:
            raise FlrecError(f"batch size {rec.config.batch_size} must be >= 1; pass --batch-size 1 or more")
    elif any(v is not None for v in (beam, dtype, batch_size)):
        raise FlrecError(f"{method} is an ID model: --beam/--dtype/--batch-size apply to LLM recommenders only")
    return kind, explains, decoding


def _train_counts(rec, method: str, dataset, data_name: str) -> list[int] | None:
    """Train target count per item (the catalogue's popularity column): the popularity model's own
    counts, else the training dataset's (which must have the model's catalogue); None without either."""
    catalogue = rec.catalogue
    if method == "pop" and getattr(rec, "counts", None) is not None:
        return [int(c) for c in rec.counts.tolist()]
    if dataset is None:
        return None
    if dataset.catalogue.titles != catalogue.titles:
        raise FlrecError(f"the dataset {data_name} has another catalogue than the model "
                         f"({len(dataset.catalogue)} vs {len(catalogue)} items); pass --data with the training dataset")
    pop = dataset.item_popularity("train")
    return [int(pop.get(i, 0)) for i in range(len(catalogue))]


def _versions(torch_version: str) -> dict[str, Any]:
    from flrec.config import git_sha, package_versions

    return {"git_sha": git_sha(), "packages": {**package_versions(), "torch": torch_version}}


def _card(manifest: dict, summary: dict | None) -> str:
    lines = [f"# flrec export: {manifest['method']}", "",
             f"- kind: {manifest['kind']} ({manifest['n_items']} items, {manifest['n_titles']} distinct titles)",
             f"- decoding: {json.dumps(manifest['decoding']) if manifest['decoding'] else 'full ranking by item scores'}",
             f"- shared-title tie rule: {'train popularity, then item id' if manifest['popularity'] else 'item id (no train counts were available at export)'}",
             f"- source: {manifest['provenance'].get('source')}", "",
             "Load: `flrec.serving.load_recommender(DIR)`; `flrec recommend --model DIR --history ...`; "
             "`flrec serve --model DIR`.", ""]
    if summary is not None:
        lines += [f"## Metrics ({summary.get('split', '?')} split, {summary.get('n_rows', '?')} rows, title-level hits)", "",
                  "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in summary["metrics"].items() if isinstance(v, int | float)]
        lines.append("")
    else:
        lines += ["No evaluation summary was found beside the run; no metrics are claimed.", ""]
    return "\n".join(lines)
