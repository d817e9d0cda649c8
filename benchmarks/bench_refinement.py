"""Cost of FLR's latent refinement, measured side by side in one run (not a test).

Prints one JSON object:
* ``sft_step_ratio_flr_vs_nothought`` — full SFT step (forward + backward + fused AdamW, bf16
  autocast where supported) of FLR K=4 N=2 over the same model and rows without a thought token.
* ``cached_vs_naive_speedup`` — naive N+1 full passes / prefix-cached refinement (forward+backward).
* ``max_abs_diff_cached_vs_naive`` — target logits, fp32.
* ``init_rec_loss_embed_scale_on/off`` and ``thought_rms_ratio_*`` — the z-scaling choice.
* ``peak_rss_mb``.

Usage: ``python benchmarks/bench_refinement.py --json [--backbone embedded:smollm2-135m] [--batch 8]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from flrec.data.load import load_dataset
from flrec.data.prompts import PromptBuilder, collate_left_padded
from flrec.models.backbone import add_thought_token, load_backbone
from flrec.models.flr import positions_from_mask
from flrec.models.recommender import FLRConfig, FLRRecommender
from flrec.utils.precision import resolve_mixed_precision

SHARED_CDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon" / "CDs"


def rows_with_long_prompts(ds, builder, n: int, target_tokens: int = 150):
    """The n rows whose prompts are closest to ``target_tokens`` (realistic CDs-like lengths)."""
    rows = [r for r in ds["valid"][:2000] if len(r.history) >= 5]
    ex = builder.encode_rows(rows, ds.catalogue)
    order = sorted(range(len(ex)), key=lambda i: abs(len(ex[i].prompt_ids) - target_tokens))
    return [rows[i] for i in order[:n]]


def timed_pair(a, b, n: int) -> tuple[float, float]:
    """Median seconds of callables ``a`` and ``b``, interleaved (a, b, a, b, ...) so that machine
    load and thermal drift hit both alike; the first round is a warm-up."""
    ta, tb = [], []
    for _ in range(n + 1):
        for fn, acc in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(ta[1:]), statistics.median(tb[1:])


def step_fn(model, batch, autocast, optimizer=None, naive: bool = False):
    def run():
        with autocast():
            out = (model.forward_naive if naive else model)(**batch)
        out["loss"].backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
    return run


def build_inputs(backbone_spec: str, data: str, batch: int) -> dict:
    """What the benchmark measures on, untimed: the dataset, the backbone with its thought token, the same
    ``batch`` rows as an FLR batch and as a no-thought batch (today's collate, e.g. ``prompt_items``), and the
    two models over the one backbone (FLR K=4 N=2 with today's defaults; no reasoner).
    tests/test_benchmarks.py builds these on a tiny model."""
    torch.manual_seed(0)
    ds = load_dataset(data)
    backbone, tok = load_backbone(backbone_spec)
    thought = add_thought_token(backbone, tok)
    flr_builder = PromptBuilder.for_dataset(tok, ds)
    plain_builder = PromptBuilder.for_dataset(tok, ds, use_thought=False)
    rows = rows_with_long_prompts(ds, flr_builder, batch)
    b_flr = collate_left_padded(flr_builder.encode_rows(rows, ds.catalogue), tok.pad_token_id)
    b_plain = collate_left_padded(plain_builder.encode_rows(rows, ds.catalogue), tok.pad_token_id)
    # Same backbone object for both models, so weights are identical.
    flr = FLRRecommender(backbone, FLRConfig(num_factors=4, num_steps=2), thought)
    plain = FLRRecommender(backbone, FLRConfig(reasoner="none"), None)
    return {"ds": ds, "backbone": backbone, "tokenizer": tok, "thought": thought, "b_flr": b_flr,
            "b_plain": b_plain, "flr": flr, "plain": plain}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="embedded:smollm2-135m")
    ap.add_argument("--data", default=str(SHARED_CDS) if SHARED_CDS.is_dir() else "embedded:synth")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    mp = resolve_mixed_precision("auto")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mp == "bf16" else nullcontext

    inp = build_inputs(a.backbone, a.data, a.batch)
    backbone, thought, b_flr, b_plain = inp["backbone"], inp["thought"], inp["b_flr"], inp["b_plain"]
    flr, plain = inp["flr"], inp["plain"]

    res: dict = {"backbone": a.backbone, "data": a.data, "batch": a.batch, "mixed_precision": mp,
                 "prompt_tokens_mean": float(b_flr["prompt_mask"].sum(1).float().mean()),
                 "target_tokens_mean": float(b_flr["target_mask"].sum(1).float().mean())}
    # lr=0: the optimizer does all its work but leaves the shared weights unchanged for the other model.
    opt_flr = torch.optim.AdamW([p for p in flr.parameters() if p.requires_grad], lr=0.0, fused=True)
    opt_plain = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=0.0, fused=True)
    res["sft_step_s_flr"], res["sft_step_s_nothought"] = timed_pair(
        step_fn(flr, b_flr, autocast, opt_flr), step_fn(plain, b_plain, autocast, opt_plain), a.steps)
    del opt_flr, opt_plain
    res["sft_step_ratio_flr_vs_nothought"] = res["sft_step_s_flr"] / res["sft_step_s_nothought"]

    cached, naive = timed_pair(step_fn(flr, b_flr, autocast), step_fn(flr, b_flr, autocast, naive=True), a.steps)
    res.update(fwd_bwd_s_cached=cached, fwd_bwd_s_naive=naive, cached_vs_naive_speedup=naive / cached)
    with torch.no_grad():
        fast, slow = flr(**b_flr)["target_logits"], flr.forward_naive(**b_flr)["target_logits"]
    res["max_abs_diff_cached_vs_naive"] = float((fast - slow).abs().max())

    # The z-scaling choice: rec loss at initialisation and thought scale relative to embeddings.
    emb_rms = float(backbone.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())
    for flag in (True, False):
        torch.manual_seed(0)
        m = FLRRecommender(backbone, FLRConfig(num_factors=4, num_steps=2, embed_scale=flag), thought)
        with torch.no_grad():
            out = m(**b_flr)
            full_mask = torch.cat([b_flr["prompt_mask"], b_flr["target_mask"]], 1)
            e, _, _, _ = m.refine(b_flr["prompt_ids"], b_flr["prompt_mask"], positions_from_mask(full_mask),
                                  b_flr["prompt_items"])
        key = "on" if flag else "off"
        res[f"init_rec_loss_embed_scale_{key}"] = float(out["rec_loss"])
        res[f"thought_rms_ratio_{key}"] = float(e.float().pow(2).mean().sqrt()) / emb_rms
    with torch.no_grad():
        res["rec_loss_nothought_same_rows"] = float(plain(**b_plain)["rec_loss"])
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
