"""Real-size architecture check on a GPU (random weights; timings and memory, not quality).

Builds a randomly initialised Qwen2.5-1.5B-shaped model (no hub needed), wraps it with FLR and
measures, side by side in one run: SFT step time FLR (K=4, N=2) vs. no thought token, prefix-cached
vs. naive refinement (forward+backward), their max logit difference, and prefill latency FLR vs.
no thought. Prints one JSON object.

``python benchmarks/bench_gpu_arch.py --json [--size 1.5b|tiny] [--batch 8] [--prompt 150]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from flrec.models.recommender import FLRConfig, FLRRecommender

SIZES = {
    # Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, vocab 151,936, tied.
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, tie_word_embeddings=True),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, n):
    times = []
    for _ in range(n + 1):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1.5b", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=150)
    ap.add_argument("--target", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cfg = Qwen2Config(**SIZES[a.size], max_position_embeddings=4096)
    backbone = Qwen2ForCausalLM(cfg).to(device)
    thought = cfg.vocab_size - 1
    b, p, t = a.batch, a.prompt, a.target
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(p - 30, p + 1, (b,), generator=g)
    prompt_ids = torch.zeros(b, p, dtype=torch.long)
    prompt_mask = torch.zeros(b, p, dtype=torch.long)
    for i, n in enumerate(lens.tolist()):
        prompt_ids[i, p - n :] = torch.randint(10, cfg.vocab_size - 10, (n,), generator=g)
        prompt_mask[i, p - n :] = 1
    prompt_ids[:, -1] = thought
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
             "target_ids": torch.randint(10, cfg.vocab_size - 10, (b, t), generator=g),
             "target_mask": torch.ones(b, t, dtype=torch.long)}
    batch = {k: v.to(device) for k, v in batch.items()}
    plain_batch = dict(batch, prompt_ids=batch["prompt_ids"][:, :-1], prompt_mask=batch["prompt_mask"][:, :-1])

    flr = FLRRecommender(backbone, FLRConfig(num_factors=4, num_steps=2, keys="tokens"), thought).to(device)  # ids-only batches
    plain = FLRRecommender(backbone, FLRConfig(reasoner="none"), None).to(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": a.size,
           "params_m": sum(p.numel() for p in backbone.parameters()) / 1e6, "batch": b, "prompt": p, "target": t,
           "torch": torch.__version__}

    def step(model, bt, naive=False, opt=None):
        def run():
            with autocast():
                out = (model.forward_naive if naive else model)(**bt)
            out["loss"].backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=True)
        return run

    for name, model, bt in (("flr", flr, batch), ("nothought", plain, plain_batch)):
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-6, fused=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res[f"sft_step_s_{name}"] = timeit(step(model, bt, opt=opt), device, a.steps)
        if device.type == "cuda":
            res[f"peak_mem_gb_{name}"] = torch.cuda.max_memory_allocated() / 2**30
        del opt
    res["sft_step_ratio_flr_vs_nothought"] = res["sft_step_s_flr"] / res["sft_step_s_nothought"]
    res["fwd_bwd_s_cached"] = timeit(step(flr, batch), device, a.steps)
    res["fwd_bwd_s_naive"] = timeit(step(flr, batch, naive=True), device, a.steps)
    res["cached_vs_naive_speedup"] = res["fwd_bwd_s_naive"] / res["fwd_bwd_s_cached"]
    with torch.no_grad(), autocast():
        fast = flr(**batch)["target_logits"].float()
        slow = flr.forward_naive(**batch)["target_logits"].float()
    res["max_abs_diff_cached_vs_naive_bf16"] = float((fast - slow).abs().max())
    flr.eval()
    plain.eval()
    with torch.no_grad(), autocast():
        res["prefill_s_flr"] = timeit(lambda: flr.prefill(batch["prompt_ids"], batch["prompt_mask"]), device, a.steps)
        res["prefill_s_nothought"] = timeit(
            lambda: plain.prefill(plain_batch["prompt_ids"], plain_batch["prompt_mask"]), device, a.steps)
    res["prefill_ratio_flr_vs_nothought"] = res["prefill_s_flr"] / res["prefill_s_nothought"]
    print(json.dumps(res, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
