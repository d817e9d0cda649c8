"""Recommendations for new users from an export directory: items with ids, titles, scores, and for
FLR an explanation per factor.

**Items, not titles.** ID models (SASRec, GRU4Rec, Caser, AlphaRec, Pop) score every item, so the
top-K is a list of items. Generative models (FLR, LatentR3-, BIGRec-style, base) produce *titles*;
each title becomes one entry whose ``item_id`` is the title's first item in **tie order** — most
train targets first, then the smaller item id — and ``same_title_item_ids`` lists the other items
carrying that title, in the same order (the model cannot tell them apart; nothing is dropped). For
ID models ``same_title_item_ids`` is always empty.

**Histories** are titles (exact catalogue titles; an unknown one is an error with close matches) or
item ids: flrec's integer index, or the user's own id (``"it7"``: the id in the files given to
``flrec data convert``) where the export knows them; answers then carry ``original_id`` beside
``item_id``. A history title shared by several items stands for its first item in tie order (this
matters for ID models only; generative models read titles).

**exclude_seen** removes every history item. Generative models decode with the recommender's
exclude-seen option (the beam never enters a title all of whose items are in the history), so the
beam's K slots go to titles that still name an unseen item; an export whose tuned decoding already
excludes seen items always does.

**Explanations** (FLR, LatentR3-style): the reasoner's attention and gates of the *last* refinement
step. Per factor: its gate weight and the history items whose prompt tokens received the most
attention (the share of attention on each title's tokens); ``attention_on_history`` is the share on
all history titles (the rest went to the instruction text and the thought token).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flrec.data.schema import Catalogue, Interaction
from flrec.errors import FlrecError
from flrec.recommenders.base import Recommender, get_recommender
from flrec.serving.export import FORMAT_VERSION, MANIFEST

TOP_ATTENDED = 3  # history items listed per factor
THOUGHT_METHODS = ("flr", "latentr3", "flr+sasrec")  # with a thought token, for exports that predate the flag


class RequestError(FlrecError):
    """A bad recommendation request; ``code`` names the class, ``details`` carries e.g. suggestions."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.details = code, details or {}


@dataclass
class Query:
    """One resolved request: history item ids (oldest first) and what to return."""

    item_ids: list[int]
    k: int = 10
    exclude_seen: bool = False
    explain: bool = False


class ServedRecommender:
    """A recommender loaded from an export directory, answering for raw histories.

    Use :func:`load_recommender`. Methods: :meth:`resolve` (titles or ids -> item ids, with
    suggestions), :meth:`recommend` (one history), :meth:`recommend_batch` (many, one batched model
    call per exclude-seen group), :meth:`metadata`.
    """

    def __init__(self, path: Path, recommender, manifest: dict, catalogue: Catalogue, counts: list[int] | None,
                 decoding: dict[str, Any] | None = None, original_ids: list[str | None] | None = None):
        # ``recommender`` may be a zero-argument loader: titles and ids are then checked (and bad
        # requests refused) before the weights are read, which is what `flrec recommend` wants.
        self.path, self.manifest = path, manifest
        self._recommender = recommender
        self.method: str = manifest["method"]
        self.kind: str = manifest["kind"]
        self.decoding: dict[str, Any] = dict(decoding if decoding is not None else manifest.get("decoding") or {})
        self.catalogue = catalogue
        self.counts = counts
        pop = counts or [0] * len(catalogue)
        # Tie order of the items that share a title: most train targets first, then smaller id.
        self._tie = {t: sorted(ids, key=lambda i: (-pop[i], i)) for t, ids in
                     ((t, catalogue.item_ids(t)) for t in catalogue.unique_titles)}
        self._folded: dict[str, list[str]] | None = None
        # The user's own item ids (catalogue.json "original_id"), when the export knows them.
        self.original_ids = original_ids if original_ids and any(o is not None for o in original_ids) else None
        self._by_original = {o: i for i, o in enumerate(self.original_ids or []) if o is not None}
        # A plain integer that is no original id may still mean flrec's index, unless original ids look like integers.
        self._index_fallback = not any(o.strip().lstrip("-").isdigit() for o in self._by_original)

    @property
    def recommender(self):
        """The underlying :class:`~flrec.recommenders.base.Recommender` (read from disk on first use)."""
        if not isinstance(self._recommender, Recommender):  # a loader
            self._recommender = self._recommender()
        return self._recommender

    # ------------------------------------------------------------------------------------ inputs
    @property
    def max_k(self) -> int:
        """Largest K: the beam width for generative models, the catalogue size for ID models."""
        return int(self.decoding["beam"]) if self.kind == "llm" else len(self.catalogue)

    @property
    def explains(self) -> bool:
        """Whether answers can carry a per-factor explanation (models with a thought: FLR, LatentR3-style)."""
        return bool(self.manifest.get("explanations", self.method in THOUGHT_METHODS))

    def suggest(self, title: str, n: int = 5) -> list[str]:
        """Catalogue titles close to ``title``: case-insensitive containment first, then difflib."""
        if self._folded is None:
            self._folded = {}
            for t in self.catalogue.unique_titles:
                self._folded.setdefault(t.casefold(), []).append(t)
        q = title.casefold().strip()
        out: list[str] = []
        if q:
            for f, ts in self._folded.items():
                if q in f:
                    out.extend(ts)
                    if len(out) >= n:
                        break
        for f in difflib.get_close_matches(q, list(self._folded), n=n, cutoff=0.6):
            out.extend(t for t in self._folded[f] if t not in out)
        return out[:n]

    def resolve(self, history: Sequence[str] | None = None, item_ids: Sequence[int | str] | None = None) -> list[int]:
        """flrec's item indices of a history given as catalogue titles or as item ids (exactly one of them).

        An item id is flrec's index (an integer) or the user's own id (a string, e.g. ``"it7"``, where
        the export knows them); a string of digits that is no own id is read as flrec's index unless
        the own ids are themselves integers."""
        if (history is None) == (item_ids is None):
            raise RequestError("bad_request", "give the history either as titles (history) or as item ids (item_ids), "
                               "not both and not neither")
        if history is not None:
            if len(history) == 0:
                raise RequestError("empty_history", "the history is empty; give at least one title the user interacted with")
            unknown = [t for t in dict.fromkeys(history) if t not in self._tie]
            if unknown:
                sugg = {t: self.suggest(t) for t in unknown}
                parts = [f"{t!r}" + (f" (did you mean {', '.join(repr(s) for s in sugg[t][:3])}?)" if sugg[t] else
                                     " (no close match)") for t in unknown]
                raise RequestError("unknown_titles", f"{len(unknown)} title(s) not in the catalogue: {'; '.join(parts)}; "
                                   "use exact catalogue titles (the export's catalogue.json lists them)",
                                   {"unknown": unknown, "suggestions": sugg})
            return [self._tie[t][0] for t in history]
        assert item_ids is not None
        if len(item_ids) == 0:
            raise RequestError("empty_history", "item_ids is empty; give at least one item id the user interacted with")
        n = len(self.catalogue)
        out, bad = [], []
        for i in item_ids:
            idx = self._index(i)
            if idx is None or not 0 <= idx < n:
                bad.append(i)
            out.append(idx)
        if bad:
            bad = list(dict.fromkeys(bad))
            what = ("the catalogue's own ids (catalogue.json original_id) or " if self.original_ids else "") + \
                f"flrec's item ids 0..{n - 1}"
            raise RequestError("unknown_item_ids", f"item id(s) {bad[:10]} not in the catalogue; use {what}",
                               {"unknown": bad})
        return out

    def _index(self, i: object) -> int | None:
        if isinstance(i, bool):
            return None
        if isinstance(i, int):
            return i
        if isinstance(i, str):
            if i in self._by_original:
                return self._by_original[i]
            if self._index_fallback and i.strip().isdigit():
                return int(i)
        return None

    def original_id(self, item: int) -> str | None:
        """The user's own id of flrec's item ``item`` (None when the export does not know it)."""
        return self.original_ids[item] if self.original_ids is not None else None

    def check_k(self, k: int) -> None:
        if not (isinstance(k, int) and 1 <= k <= self.max_k):
            why = "the beam width (re-export with --beam to raise it)" if self.kind == "llm" else "the catalogue size"
            raise RequestError("k_out_of_range", f"k={k!r} is out of range; use 1..{self.max_k} ({why})")

    # ---------------------------------------------------------------------------------- ranking
    def recommend(self, history: Sequence[str] | None = None, item_ids: Sequence[int] | None = None, k: int = 10,
                  exclude_seen: bool = False, explain: bool = False) -> dict[str, Any]:
        """Top-``k`` items for one history (titles or item ids); see the module docstring."""
        self.check_k(k)
        return self.recommend_batch([Query(self.resolve(history, item_ids), k, exclude_seen, explain)])[0]

    def recommend_batch(self, queries: Sequence[Query]) -> list[dict[str, Any]]:
        """One answer per query, in order. Queries are validated first; the model runs batched."""
        for q in queries:
            self.check_k(q.k)
            if not q.item_ids:
                raise RequestError("empty_history", "a query has an empty history")
            if any(isinstance(i, bool) or not isinstance(i, int) for i in q.item_ids):
                raise RequestError("unknown_item_ids", "a Query holds flrec's integer item ids; resolve() others first")
            self.resolve(item_ids=q.item_ids)  # ids within the catalogue (Query objects may come from anywhere)
        if not queries:
            return []
        if self.kind == "llm":
            ranked, explanations = self._rank_titles(queries)
            items = [self._title_items(r, q) for r, q in zip(ranked, queries, strict=True)]
        else:
            items = self._rank_items(queries)
            explanations = [None] * len(queries)
        out = []
        for q, its, ex in zip(queries, items, explanations, strict=True):
            ans: dict[str, Any] = {
                "items": its, "method": self.method, "k": q.k, "exclude_seen": q.exclude_seen,
                "history": [{"item_id": i, "title": self.catalogue.titles[i]} for i in q.item_ids],
            }
            if self.original_ids is not None:  # the user's own ids beside flrec's
                for it in its:
                    it["original_id"] = self.original_id(it["item_id"])
                    it["same_title_original_ids"] = [self.original_id(i) for i in it["same_title_item_ids"]]
                for h in ans["history"]:
                    h["original_id"] = self.original_id(h["item_id"])
            if q.explain:
                ans["explanation"] = ex
            out.append(ans)
        return out

    def _rank_items(self, queries: Sequence[Query]) -> list[list[dict]]:
        rows = [Interaction(user=f"query{j}", history=list(q.item_ids), target=-1) for j, q in enumerate(queries)]
        with torch.inference_mode():
            scores = self.recommender.score(rows).float()
        out = []
        for j, q in enumerate(queries):
            s = scores[j].clone()
            if q.exclude_seen:
                s[torch.tensor(sorted(set(q.item_ids)))] = float("-inf")
            # stable sort: equal scores keep the smaller item id first
            vals, idx = torch.sort(s, descending=True, stable=True)
            keep = vals[: q.k] > float("-inf")
            out.append([{"rank": r + 1, "item_id": int(i), "title": self.catalogue.titles[int(i)], "score": float(v),
                         "same_title_item_ids": []}
                        for r, (v, i) in enumerate(zip(vals[: q.k][keep].tolist(), idx[: q.k][keep].tolist(), strict=True))])
        return out

    def _title_items(self, ranked: list[tuple[str, float]], q: Query) -> list[dict]:
        seen = set(q.item_ids) if q.exclude_seen else set()
        out: list[dict] = []
        for title, score in ranked:
            ids = [i for i in self._tie[title] if i not in seen]
            if not ids:  # every item with this title is in the history
                continue
            out.append({"rank": len(out) + 1, "item_id": ids[0], "title": title, "score": float(score),
                        "same_title_item_ids": ids[1:]})
            if len(out) == q.k:
                break
        return out

    def _rank_titles(self, queries: Sequence[Query]) -> tuple[list[list[tuple[str, float]]], list[dict | None]]:
        """Titles per query from the recommender's own decoding (``decode_candidates`` + ``finalise``:
        the exported, possibly tuned, decoding with its prior correction, assistant and exclude-seen
        masks), one call per exclude-seen group and batch."""
        rec = self.recommender
        base = rec.config.decoding
        ranked: list[Any] = [None] * len(queries)
        explanations: list[dict | None] = [None] * len(queries)
        bs = int(rec.config.batch_size)
        for flag in sorted({q.exclude_seen or base.exclude_seen for q in queries}):
            dec = base.replace(exclude_seen=flag)
            idx = [j for j, q in enumerate(queries) if (q.exclude_seen or base.exclude_seen) == flag]
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                # decode_candidates reads rows; their target is never used for ranking (only encoded alongside).
                rows = [Interaction(user=f"query{j}", history=list(queries[j].item_ids),
                                    target=queries[j].item_ids[-1]) for j in chunk]
                explain = self.explains and any(queries[j].explain for j in chunk)
                captured: list = []
                # A forward hook collects each refinement step's ReasonerOutput (attn, gates) during prefill.
                hook = (rec.model.reasoner.register_forward_hook(lambda _m, _i, o, c=captured: c.append(o))
                        if explain else None)
                try:
                    with torch.inference_mode():
                        cands, probs = rec.decode_candidates(rows, decoding=dec, batch_size=len(chunk))
                        res, _ = rec.finalise(rows, cands, probs, decoding=dec, k=int(rec.config.beam))
                finally:
                    if hook is not None:
                        hook.remove()
                for r, j in enumerate(chunk):
                    ranked[j] = res[r]
                if explain:
                    n_steps = rec.model.config.steps
                    if len(captured) != n_steps:  # one prefill per chunk is assumed below
                        raise FlrecError(f"expected {n_steps} refinement steps in one prefill, saw {len(captured)}; "
                                         "LLMRecommender.decode_candidates changed its batching")
                    examples = rec.builder.encode_rows(rows, self.catalogue)  # cached: the prompts just decoded
                    for r, j in enumerate(chunk):
                        if queries[j].explain:
                            explanations[j] = self._explain(captured, r, examples[r], queries[j])
        return ranked, explanations

    def _explain(self, steps: list, r: int, example, q: Query) -> dict:
        """Gate weights and most-attended history items per factor (last refinement step).

        The reasoner reports, per key, the history item it belongs to (``key_items``: 0 = the oldest
        title kept in the prompt, -1 = instruction text or the thought); a factor's attention on an
        item is the sum over that item's keys.
        """
        last = steps[-1]
        kept = max(example.prompt_items) + 1 if example.prompt_items else 0
        offset = len(q.item_ids) - kept  # history position of the first title in the prompt
        attn = last.attn[r].float()  # (K, Lk)
        if last.key_items is None:
            raise FlrecError("this reasoner does not report which history item each key belongs to; "
                             "explanations need flrec's prompt layout (prompt_items)")
        key_items = last.key_items[r]
        factors = []
        gates = last.gates[r].float().tolist()
        for k in range(attn.shape[0]):
            mass = [float(attn[k][key_items == j].sum()) for j in range(kept)]
            order = sorted(range(kept), key=lambda j: -mass[j])[:TOP_ATTENDED]
            factors.append({
                "factor": k, "gate": gates[k], "attention_on_history": sum(mass),
                "top_history": [{"position": offset + j, "item_id": q.item_ids[offset + j],
                                 "title": self.catalogue.titles[q.item_ids[offset + j]], "attention": mass[j]}
                                for j in order],
            })
        return {"step": len(steps), "factors": factors,
                "gates_by_step": [s.gates[r].float().tolist() for s in steps], "history_in_prompt": kept}

    # --------------------------------------------------------------------------------- metadata
    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        out = {"method": self.method, "kind": self.kind, "n_items": len(self.catalogue),
               "n_titles": len(self._tie), "max_k": self.max_k, "decoding": self.decoding,
               "tie_rule": "train popularity, then item id" if self.counts else "item id",
               "explanations": self.explains,
               "format_version": m.get("format_version")}
        metrics = self.path / "metrics.json"
        if metrics.is_file():
            s = json.loads(metrics.read_text(encoding="utf-8"))
            out["metrics"] = {"split": s.get("split"), "n_rows": s.get("n_rows"), **s.get("metrics", {})}
        return out


def empty_answer_reason(model: ServedRecommender, exclude_seen: bool) -> str:
    """Why an answer has no items (a 422 says so instead of an empty 200)."""
    if exclude_seen:
        return ("no item is left to recommend: exclude_seen removed every item the model could return (the history "
                "covers them); send exclude_seen=false or a shorter history")
    return f"the {model.method} model returned no items for this history"


def load_recommender(path: str | Path, *, dtype: str | None = None, beam: int | None = None,
                     batch_size: int | None = None, lazy: bool = False) -> ServedRecommender:
    """Load an export directory written by :func:`flrec.serving.export` (no dataset needed).

    ``dtype`` (float32 | bfloat16), ``beam`` and ``batch_size`` override an LLM recommender's
    exported decoding settings. ``lazy``: read the catalogue now and the weights on first use.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        hint = (" (it looks like a run directory: run `flrec export RUN_DIR --out DIR` first)"
                if path.is_dir() else "")
        raise FlrecError(f"{path} is not an flrec export ({MANIFEST} missing){hint}")
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != "flrec-export" or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise FlrecError(f"{path / MANIFEST}: export format {manifest.get('format_version')!r} is newer than this "
                         f"flrec reads ({FORMAT_VERSION}); upgrade flrec")
    items = json.loads((path / "catalogue.json").read_text(encoding="utf-8"))["items"]
    catalogue = Catalogue([it["title"] for it in items])
    original_ids = [it.get("original_id") for it in items]
    counts = [int(it["train_count"]) for it in items] if items and items[0].get("train_count") is not None else None
    changes = {k: v for k, v in (("beam", beam), ("inference_dtype", dtype), ("batch_size", batch_size)) if v is not None}
    if manifest["kind"] != "llm" and changes:
        raise FlrecError(f"{manifest['method']} is an ID model: dtype/beam/batch_size apply to LLM recommenders only")
    if changes.get("beam", 1) < 1 or changes.get("batch_size", 1) < 1:
        raise FlrecError(f"beam and batch_size must be >= 1, got {changes}")
    decoding = {**(manifest.get("decoding") or {}), **changes}
    if manifest["kind"] == "llm" and int(decoding.get("beam", 1)) > len(catalogue.unique_titles):
        raise FlrecError(f"{path}: beam {decoding['beam']} exceeds the catalogue's {len(catalogue.unique_titles)} "
                         "distinct titles; pass a smaller beam (or re-export with --beam)")

    def read_weights():
        rec = get_recommender(manifest["method"]).load(path / "recommender")
        if rec.catalogue.titles != catalogue.titles:
            raise FlrecError(f"{path}: catalogue.json and recommender/ disagree; re-export the run")
        if manifest["kind"] == "llm":
            if changes:
                rec.config = rec.config.replace(**changes)
        return rec

    return ServedRecommender(path, read_weights if lazy else read_weights(), manifest, catalogue, counts, decoding,
                             original_ids)
