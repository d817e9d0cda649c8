"""Can the LM read a word-like thought? Per-row rec loss with oracle thoughts (built from the target)
vs E0 and the model's own, history visible and hidden. Oracle = an upper bound on what a thought
in the input-embedding space could pass, not a method."""
import json
import sys

import torch

from flrec.analysis.factors import trace_split
from flrec.data.load import load_dataset
from flrec.data.prompts import collate_left_padded

torch.set_num_threads(2)
model_dir, n = sys.argv[1], int(sys.argv[2])
ds = load_dataset("embedded:synth")
model, rows, trace, _, builder = trace_split(model_dir, ds, "valid", n, 16, with_builder=True)
model.eval()
emb = model.backbone.get_input_embeddings().weight.detach().float()
rms = emb.pow(2).mean().sqrt()
ex = builder.encode_rows(rows, ds.catalogue)
pad = builder.tokenizer.pad_token_id
res = {}
def scaled(v):
    return v * rms / v.pow(2).mean(-1, keepdim=True).sqrt()
for i in range(0, len(ex), 16):
    b = collate_left_padded(ex[i:i+16], pad)
    keys = ("prompt_ids", "prompt_mask", "target_ids", "target_mask", "prompt_items")
    kw = {k: b.get(k) for k in keys}
    t, m = b["target_ids"], b["target_mask"].float()
    # title tokens: drop the last 3 real ones (closing quote, newline, EOS) and the opening quote if shared
    tm = m.clone()
    L = m.sum(1).long()
    for r in range(t.shape[0]):
        tm[r, max(0, L[r]-3):] = 0
    bag = scaled((emb[t] * tm[..., None]).sum(1) / tm.sum(1, keepdim=True))
    first = scaled(emb[t[:, 1]])  # token after the opening quote
    B = t.shape[0]
    perm = torch.roll(torch.arange(B), 1)
    e0 = model.thought_init.detach().float().expand(B, -1)
    with torch.no_grad():
        for hide in (False, True):
            own, e_own = model.row_losses(**kw, hide_history=hide)
            thoughts = {"own": None, "e0": e0, "bag": bag, "bag_swap": bag[perm], "first": first, "first_swap": first[perm]}
            for name, th in thoughts.items():
                l = own if th is None else model.row_losses(**kw, thought=th, hide_history=hide)[0]
                res.setdefault(f"{name}{'_hidden' if hide else ''}", []).extend(l.float().tolist())
out = {}
for k, v in res.items():
    out[k] = sum(v) / len(v)
import math


def paired(a, b):
    d = [x - y for x, y in zip(res[a], res[b])]
    mu = sum(d)/len(d); sd = (sum((x-mu)**2 for x in d)/(len(d)-1))**.5
    return round(mu, 4), round(sd/math.sqrt(len(d)), 4)
for h in ("", "_hidden"):
    out[f"bag_swap_minus_bag{h}"] = paired(f"bag_swap{h}", f"bag{h}")
    out[f"first_swap_minus_first{h}"] = paired(f"first_swap{h}", f"first{h}")
    out[f"e0_minus_bag{h}"] = paired(f"e0{h}", f"bag{h}")
out["rows"] = len(res["own"])
print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}, indent=1))
