"""How well do simple history heuristics point at the next title's words? cos(target bag, X) over valid
rows; bags = mean input embeddings of a title's tokens (the thought_bag target, without the quotes)."""
import json

import torch
import torch.nn.functional as F

from flrec.data.load import load_dataset
from flrec.models.backbone import load_backbone

torch.set_num_threads(2)
ds = load_dataset("embedded:synth")
model, tok = load_backbone("embedded:smollm2-135m")
E = model.get_input_embeddings().weight.detach().float()
T = ds.catalogue.titles
def bag(i):
    return E[tok(T[i], add_special_tokens=False)["input_ids"]].mean(0)
rows = ds["valid"][:192]
tgt = torch.stack([bag(r.target) for r in rows])
last = torch.stack([bag(r.history[-1]) for r in rows])
hmean = torch.stack([torch.stack([bag(i) for i in r.history]).mean(0) for r in rows])
cos = lambda a, b: F.cosine_similarity(a, b, dim=-1)
out = {"rows": len(rows), "last_item": cos(tgt, last).mean().item(), "history_mean": cos(tgt, hmean).mean().item(),
       "other_row_last_item": cos(tgt, last.roll(1, 0)).mean().item(),
       "other_row_history_mean": cos(tgt, hmean.roll(1, 0)).mean().item(),
       "other_row_target": cos(tgt, tgt.roll(1, 0)).mean().item()}
print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
