"""``flrec recommend --input FILE.jsonl --output FILE.jsonl``: many histories, streamed, resumable.

Input: one JSON object per line, ``{"history": ["Title", ...]}`` or ``{"item_ids": [12, 40]}``,
optionally ``"k"``, ``"exclude_seen"``, ``"explain"`` (override the command's defaults) and ``"id"``
(copied to the output). Output: one line per input line, in order, with ``line`` (1-based input
line), ``id`` when given, and the answer of :meth:`ServedRecommender.recommend_batch`.

A bad line stops the run with an error naming the file and line (nothing is skipped silently);
answers so far stay in ``OUTPUT.partial`` (its first line records the model, the input's hash, k and
the flags) and a rerun with the same settings appends exactly the missing lines; other settings are
refused naming the keys that differ. ``.OUTPUT.lock`` keeps a second process out. The finished
output is written atomically, so ``OUTPUT`` is never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flrec.errors import DataError, FlrecError
from flrec.serving.export import MANIFEST
from flrec.serving.service import Query, RequestError, ServedRecommender
from flrec.utils.io import atomic_path, file_lock
from flrec.utils.outputs import check_output
from flrec.utils.runid import file_identity

_HEADER = "flrec_recommend_partial"
_CHECKPOINT = "flrec_checkpoint_through_line"

_KEYS = {"history", "item_ids", "k", "exclude_seen", "explain", "id"}


def parse_line(model: ServedRecommender, line: str, where: Path, n: int, k: int, exclude_seen: bool,
               explain: bool) -> tuple[Query, Any]:
    """One input line -> a resolved :class:`Query` and its ``id``; errors name the file and line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(where, f"not valid JSON ({e.msg}); write one object per line", line=n) from None
    if not isinstance(obj, dict):
        raise DataError(where, 'expected an object like {"history": ["Title A", "Title B"]}', line=n)
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise DataError(where, f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}", line=n)
    hist, ids = obj.get("history"), obj.get("item_ids")
    if hist is not None and not (isinstance(hist, list) and all(isinstance(t, str) for t in hist)):
        raise DataError(where, "must be a list of title strings", line=n, field="history")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int | str) and not isinstance(i, bool)
                                                              for i in ids)):
        raise DataError(where, "must be a list of item ids (flrec's integers or your own id strings)", line=n,
                        field="item_ids")
    qk = obj.get("k", k)
    for key, val in (("exclude_seen", obj.get("exclude_seen", exclude_seen)), ("explain", obj.get("explain", explain))):
        if not isinstance(val, bool):
            raise DataError(where, "must be true or false", line=n, field=key)
    try:
        if not isinstance(qk, int) or isinstance(qk, bool):
            raise RequestError("k_out_of_range", f"k must be an integer, got {qk!r}")
        model.check_k(qk)
        q = Query(model.resolve(hist, ids), qk, obj.get("exclude_seen", exclude_seen), obj.get("explain", explain))
    except RequestError as e:
        raise DataError(where, str(e), line=n) from None
    return q, obj.get("id")


def batch_identity(model: ServedRecommender, k: int, exclude_seen: bool, explain: bool) -> dict[str, Any]:
    """What determines a batch's answers besides the input: the export (its manifest), the decoding and flags."""
    return {"model": file_identity(model.path / MANIFEST), "method": model.method,
            "decoding": json.loads(json.dumps(model.decoding, default=str)), "k": k, "exclude_seen": exclude_seen,
            "explain": explain}


def recommend_file(model: ServedRecommender, input_path: str | Path, output_path: str | Path, k: int = 10,
                   exclude_seen: bool = False, explain: bool = False, batch_size: int = 16,
                   overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Answer every line of ``input_path`` into ``output_path`` (see the module docstring).

    ``OUTPUT.lock`` keeps a second process out; ``OUTPUT.partial`` starts with the batch's identity
    (:func:`batch_identity`), and a rerun with another model, input, k or flags is refused naming the
    keys that differ (``overwrite=True`` starts over)."""
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise FlrecError(f"--input {src} not found; pass a JSONL file with one history per line")
    check_output(dst, kind="file", overwrite=overwrite, option="--output", inputs=[src, model.path])
    if batch_size < 1:
        raise FlrecError(f"--batch-size must be >= 1, got {batch_size}")
    partial = dst.with_name(dst.name + ".partial")
    ident = batch_identity(model, k, exclude_seen, explain)
    dst.parent.mkdir(parents=True, exist_ok=True)
    lock = dst.with_name(f".{dst.name}.lock")
    with file_lock(lock, dst, "--output"):
        check_output(dst, kind="file", overwrite=overwrite, option="--output")  # finished while we waited?
        res = _answer_file(model, src, dst, partial, ident, batch_size, overwrite, progress)
        lock.unlink(missing_ok=True)
    return res


def _answer_file(model: ServedRecommender, src: Path, dst: Path, partial: Path, ident: dict[str, Any],
                 batch_size: int, overwrite: bool, progress: bool) -> dict[str, Any]:
    k, exclude_seen, explain = ident["k"], ident["exclude_seen"], ident["explain"]
    if partial.is_file() and overwrite:
        partial.unlink()
    done, digest = _resume_point(partial, ident)
    if not partial.is_file():
        partial.write_text(json.dumps({_HEADER: ident}) + "\n", encoding="utf-8")
    with open(src, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    sha = hashlib.sha256()
    with open(partial, "a", encoding="utf-8") as sink, open(src, encoding="utf-8") as lines, \
            tqdm(total=total, desc=f"recommend {model.method}", unit="history", disable=not progress) as bar:
        batch: list[tuple[int, Query, Any]] = []

        def flush(n_read: int) -> None:
            answers = model.recommend_batch([q for _, q, _ in batch])
            for (n, _, qid), ans in zip(batch, answers, strict=True):
                rec = {"line": n, **({"id": qid} if qid is not None else {}), **ans}
                sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
            # a checkpoint: the input lines 1..n_read these answers came from (a resume checks them)
            sink.write(json.dumps({_CHECKPOINT: n_read, "input_sha256": sha.hexdigest()}) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
            batch.clear()

        n_lines = 0
        for n, line in enumerate(lines, 1):
            n_lines = n
            sha.update(line.encode("utf-8", "surrogatepass"))
            if n == done and sha.hexdigest() != digest:
                raise FlrecError(f"{partial} holds answers to other input lines (input lines 1..{done} of {src} "
                                 "changed since); rerun with that input to resume, or pass --overwrite to start over")
            if n <= done:
                if line.strip():
                    bar.update(1)
                continue
            if line.strip():
                q, qid = parse_line(model, line, src, n, k, exclude_seen, explain)
                batch.append((n, q, qid))
            if len(batch) >= batch_size:
                flush(n)
        if batch:
            flush(n_lines)
        if n_lines < done:
            raise FlrecError(f"{partial} holds answers to {done} input lines, but {src} is shorter; pass --overwrite")
    with atomic_path(dst) as tmp, open(partial, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
        for row in f:
            if not row.startswith(("{\"" + _HEADER, "{\"" + _CHECKPOINT)):
                out.write(row)
    partial.unlink()
    return {"input": str(src), "output": str(dst), "histories": total, "resumed_after_line": done}


def _resume_point(partial: Path, ident: dict[str, Any]) -> tuple[int, str]:
    """The input line answered last in ``partial`` by its last checkpoint and the hash of the input up to
    it; what follows that checkpoint (a run killed mid-write) is cut off. A partial made with another
    model, decoding, k or flags is refused with the differing keys named."""
    if not partial.is_file():
        return 0, ""
    lines = partial.read_text(encoding="utf-8").split("\n")
    try:
        stored = json.loads(lines[0])[_HEADER]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        stored = None
    if not isinstance(stored, dict):
        raise DataError(partial, "not a partial output of this flrec recommend (no settings line); delete it, "
                        "or pass --overwrite to start over", line=1)
    keys = sorted(key for key in set(stored) | set(ident) if stored.get(key) != ident.get(key))
    if keys:
        raise FlrecError(f"{partial} holds answers made with other settings ({', '.join(keys)} differ); rerun with "
                         "the same model, -k and flags to resume, or pass --overwrite to start over")
    done, digest, keep = 0, "", 1
    for i, line in enumerate(lines[1:], 2):
        if line.startswith("{\"" + _CHECKPOINT):
            try:
                row = json.loads(line)
                done, digest, keep = int(row[_CHECKPOINT]), str(row["input_sha256"]), i
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break  # a torn checkpoint: resume from the one before
    if keep < len([x for x in lines if x]):
        partial.write_text("\n".join(lines[:keep]) + "\n", encoding="utf-8")
    return done, digest
