"""Diagnostic, not a method: train with an ORACLE thought (the bag of the target title's input
embeddings, RMS-scaled) in place of the reasoner's, to see whether the LM can learn to read the
thought channel at all at the demo budget. Then oracle.py (beside it) measures bag vs swapped bag."""
import sys

import torch

import flrec.models.recommender as R

_forward, _refine = R.FLRRecommender.forward, R.FLRRecommender.refine

def oracle(self, target_ids, target_mask):
    emb = self.backbone.get_input_embeddings().weight
    m = target_mask.to(emb.dtype).clone()
    L = target_mask.sum(1)
    col = torch.arange(m.shape[1])[None]
    m = m * (col < (L - 3)[:, None]).to(m.dtype)  # title tokens: drop closing quote, newline, EOS
    bag = (emb[target_ids] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    rms = emb.detach().float().pow(2).mean().sqrt()
    return (bag * rms / bag.pow(2).mean(-1, keepdim=True).sqrt()).detach()

def forward(self, prompt_ids, prompt_mask, target_ids, target_mask, prompt_items=None, **kw):
    self._oracle = oracle(self, target_ids, target_mask)
    try:
        return _forward(self, prompt_ids, prompt_mask, target_ids, target_mask, prompt_items, **kw)
    finally:
        self._oracle = None

def refine(self, *a, **kw):
    e, cache, steps, aux = _refine(self, *a, **kw)
    o = getattr(self, "_oracle", None)
    if o is not None:
        e = o.to(e.dtype)
    return e, cache, steps, aux

if __name__ == "__main__":
    from flrec.cli.main import main

    R.FLRRecommender.forward, R.FLRRecommender.refine = forward, refine
    sys.exit(main(sys.argv[1:]))
