"""Teacher-forced title scores and the PMI prior cache.

:func:`score_titles` scores given catalogue titles under one prompt with exactly the beam search's
arithmetic (:mod:`flrec.decoding.scoring`: same token score, same length normalisation), batched:
the prompt is read once per chunk of titles and every title's tokens are fed in one forward. For a
title the beam search returns, both agree (a test checks this).

:class:`TitlePrior` holds ``S_0(title)``, the score of each title under the *empty-history* prompt,
for one (model, catalogue, decoding, prompt) combination. Values are computed lazily — only for the
titles a beam search actually returned — and persisted after each batch to
``<cache_dir>/<key>.pt``, where ``key`` hashes the model's weights fingerprint, the catalogue's
titles, the decoding signature and the prompt settings; a different model or catalogue never
reads another's prior.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from flrec.decoding.scoring import DecodingConfig, edge_weights, token_scores
from flrec.decoding.trie import TitleTrie
from flrec.errors import FlrecError
from flrec.models.compat import lm_forward, out_cache
from flrec.models.state import PrefillState
from flrec.utils.io import atomic_save


@torch.inference_mode()
def score_titles(
    model: torch.nn.Module,
    prefill: Callable[[], PrefillState],
    trie: TitleTrie,
    titles: Sequence[int],
    decoding: DecodingConfig | None = None,
    length_penalty: float = 1.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """(len(titles),) float64 scores of ``trie.titles[i]`` for ``i`` in ``titles`` under one prompt.

    ``prefill()`` returns a fresh batch-1 :class:`PrefillState` of the prompt (it is called once per
    chunk, since the search consumes the cache); ``model`` is the causal LM that continues it.
    """
    decoding = decoding or DecodingConfig()
    tok_all, len_all = (x.cpu() for x in trie.title_tokens())
    weight = edge_weights(trie, decoding)
    idx = torch.as_tensor(list(titles), dtype=torch.long)
    out = torch.empty(len(idx), dtype=torch.float64)
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        n = len(sel)
        L = int(len_all[sel].max())
        tok, length = tok_all[sel, :L], len_all[sel]
        state = prefill()
        dev = state.next_logits.device
        tok, length = tok.to(dev), length.to(dev)
        cache = state.cache
        cache.batch_repeat_interleave(n)
        logits0 = state.next_logits.float().expand(n, -1)
        if L > 1:
            real_in = (torch.arange(L - 1, device=dev) < (length - 1)[:, None]).long()
            attn = torch.cat([state.attention_mask.to(dev).expand(n, -1), real_in], 1)
            pos = state.next_position.to(dev)[:1] + torch.arange(L - 1, device=dev)
            o = lm_forward(model, cache=cache, input_ids=tok[:, :-1].clamp(min=0), attention_mask=attn,
                           position_ids=pos.expand(n, -1), use_cache=True)
            out_cache(o)  # (the cache is dropped with this chunk)
            logits = torch.cat([logits0[:, None], o.logits.float()], 1)  # (n, L, V)
        else:
            logits = logits0[:, None]
        logp_all = torch.log_softmax(logits, dim=-1)
        # walk the trie along each title: node before token i, and the edges out of it
        t_dev = trie if trie.child_ptr.device == dev else trie.to(dev)
        nodes = torch.zeros(n, L, dtype=torch.long, device=dev)
        cur = torch.zeros(n, dtype=torch.long, device=dev)
        for i in range(L):
            nodes[:, i] = cur
            cur = t_dev.advance(cur, tok[:, i].clamp(min=0))
        child_tok, real, edge = t_dev.child_edges(nodes.view(-1))
        logp = logp_all.view(n * L, -1).gather(1, child_tok).masked_fill(~real, float("-inf"))
        s = token_scores(logp, real, edge, decoding.scoring, None if weight is None else weight.to(dev))
        # the score of the child each title actually takes
        hit = (child_tok == tok.reshape(-1, 1).clamp(min=0)) & real
        per_tok = torch.where(hit, s, 0.0).sum(1).view(n, L)
        per_tok = torch.where(torch.arange(L, device=dev) < length[:, None], per_tok, 0.0)
        total = per_tok.double().sum(1)
        out[start : start + n] = (total / length.double() ** length_penalty).cpu()
    return out


def model_fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model's weights (names, shapes, dtypes and the first/last 64 values of
    every parameter): a retrained or differently cast model gets another prior cache entry.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:]]).float().cpu()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:20]


def catalogue_hash(titles: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(titles).encode()).hexdigest()[:20]


def default_prior_dir() -> Path:
    from flrec.models.backbone import default_cache_dir

    return default_cache_dir() / "priors"


class TitlePrior:
    """Lazily computed, disk-cached ``S_0(title)`` for every title of a trie (see module docstring)."""

    def __init__(self, n_titles: int, key: dict, cache_dir: str | Path | None = None):
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) if cache_dir is not None else default_prior_dir()
        self.path = self.path / f"{digest}.pt"
        self.values = torch.full((n_titles,), float("nan"), dtype=torch.float64)
        if self.path.is_file():
            try:
                saved = torch.load(self.path, weights_only=True)
            except Exception as e:  # a torn or foreign file: say which, never guess
                raise FlrecError(f"{self.path}: unreadable PMI prior cache ({type(e).__name__}); delete it") from None
            if saved.get("key") != key or saved["values"].shape != self.values.shape:
                raise FlrecError(f"{self.path}: cache entry for another model/catalogue (hash clash?); delete it")
            self.values = saved["values"]

    def get(self, titles: Sequence[int], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Values for ``titles``; missing ones are computed with ``compute(missing)`` and saved."""
        idx = torch.as_tensor(list(titles), dtype=torch.long)
        missing = sorted(set(idx[self.values[idx].isnan()].tolist()))
        if missing:
            self.values[torch.tensor(missing)] = compute(missing).double().cpu()
            state = {"key": self.key, "values": self.values.clone()}
            atomic_save(self.path, lambda p: torch.save(state, p))
        return self.values[idx]
