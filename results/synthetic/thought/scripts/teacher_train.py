"""Exploration: the thought channel is learnable (an oracle thought is read after 28 steps) but the
reasoner writes nothing worth reading. Curriculum: the written thought is blended with the oracle
bag of the target title's embeddings, weight annealed 1 -> 0 over TEACH steps, and the reasoner's
thought is pulled toward the bag (1 - cos, weight LAM)."""
import os
import sys

import torch
import torch.nn.functional as F

import flrec.models.recommender as R
from oracle_train import oracle  # the same oracle bag (run from this folder)

TEACH = int(os.environ.get("TEACH", "21"))
LAM = float(os.environ.get("LAM", "1.0"))
_forward, _refine = R.FLRRecommender.forward, R.FLRRecommender.refine

def forward(self, prompt_ids, prompt_mask, target_ids, target_mask, prompt_items=None, **kw):
    self._oracle = oracle(self, target_ids, target_mask) if self.training else None
    self._pull = None
    try:
        out = _forward(self, prompt_ids, prompt_mask, target_ids, target_mask, prompt_items, **kw)
    finally:
        self._oracle = None
    if self._pull is not None:
        out["loss"] = out["loss"] + LAM * self._pull
        out["logs"]["teacher_pull"] = self._pull.detach()
    return out

def refine(self, *a, **kw):
    e, cache, steps, aux = _refine(self, *a, **kw)
    o = getattr(self, "_oracle", None)
    if o is not None:
        self._pull = (1 - F.cosine_similarity(e.float(), o.float(), dim=-1)).mean()
        alpha = max(0.0, 1.0 - float(self.objective.step) / TEACH)
        e = (1 - alpha) * e + alpha * o.to(e.dtype)
    return e, cache, steps, aux

R.FLRRecommender.forward, R.FLRRecommender.refine = forward, refine
from flrec.cli.main import main

sys.exit(main(sys.argv[1:]))
