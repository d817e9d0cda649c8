"""SFT training throughput of the #10 options, measured side by side in one interleaved run (not a test).

Every variant trains its own copy of the model on the same training rows (same seed, same number of
rows); their steps are interleaved (step i of every variant, then step i+1), so machine noise hits all
alike. Then each variant's validation recommendation loss is computed on the same validation rows.

Variants: ``default`` (today's: every prompt encoded in full, plain shuffling); ``exact`` (shared
prefix + length-grouped batches); ``top_half`` (exact + only the top half of the blocks train);
``compact`` (exact + the one-line prompt template).

Prints one JSON object with ``rows_per_s_<variant>``, ``exact_speedup``, ``speedup_top_half``,
``speedup_compact``, ``max_abs_loss_diff_exact`` (loss with vs without the shared prefix on the same
batches and weights), ``padding_fraction_plain/grouped`` and ``valid_loss_<variant>``.

Usage: ``python benchmarks/bench_sft_throughput.py --json [--data ../shared/data/amazon/CDs] [--rows 160]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from flrec.data.load import load_dataset
from flrec.data.prompts import collate_left_padded
from flrec.models.freeze import decoder_blocks
from flrec.training.sft import SFTConfig, build_model, example_lengths, subsample
from flrec.training.trainer import EpochShuffleSampler, padding_fraction
from flrec.utils.precision import resolve_mixed_precision

SHARED_CDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon" / "CDs"


def make_variant(name: str, ds, args) -> dict:
    exact = name != "default"
    cfg = SFTConfig.from_dict({"backbone": args.backbone, "seed": 0,
                               "prompt_template": "compact" if name == "compact" else "alpaca"})
    model, tokenizer, builder = build_model(cfg, ds)
    if name == "top_half":
        n = len(decoder_blocks(model._decoder()))
        model.set_trainable(f"top:{n // 2}")
    model.share_prefix = exact
    train = builder.encode_rows(subsample(ds["train"], args.rows, 0), ds.catalogue)
    valid = builder.encode_rows(subsample(ds["valid"], args.valid_rows, 0), ds.catalogue)
    lengths = example_lengths(train)
    sampler = EpochShuffleSampler(len(train), seed=0, lengths=lengths if exact else None, batch_size=args.batch)
    order = sampler.order()
    batches = [[train[i] for i in order[j : j + args.batch]] for j in range(0, len(order), args.batch)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    collate = lambda ex: collate_left_padded(ex, tokenizer.pad_token_id)  # noqa: E731
    return {"name": name, "model": model.train(), "opt": opt, "batches": batches, "collate": collate, "valid": valid,
            "seconds": 0.0, "rows": 0, "padding": padding_fraction(lengths, order, args.batch)}


def step(v: dict, i: int, autocast) -> None:
    batch = v["collate"](v["batches"][i])
    t0 = time.perf_counter()
    with autocast():
        loss = v["model"](**batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in v["model"].parameters() if p.requires_grad], 1.0)
    v["opt"].step()
    v["opt"].zero_grad(set_to_none=True)
    v["seconds"] += time.perf_counter() - t0
    v["rows"] += len(v["batches"][i])


@torch.no_grad()
def valid_loss(v: dict, batch_size: int, autocast) -> float:
    model = v["model"].eval()
    total = tokens = 0.0
    for j in range(0, len(v["valid"]), batch_size):
        with autocast():
            out = model(**v["collate"](v["valid"][j : j + batch_size]))
        total += float(out["rec_loss"]) * int(out["n_tokens"])
        tokens += int(out["n_tokens"])
    return total / tokens


@torch.no_grad()
def exactness(v: dict, n_batches: int, autocast) -> float:
    """Max |loss(shared) - loss(unshared)| over the first batches, same weights (eval mode)."""
    model, diff = v["model"].eval(), 0.0
    for b in v["batches"][:n_batches]:
        batch = v["collate"](b)
        losses = []
        for share in (False, True):
            model.share_prefix = share
            with autocast():
                losses.append(float(model(**batch)["loss"]))
        diff = max(diff, abs(losses[0] - losses[1]))
    model.share_prefix, _ = True, model.train()
    return diff


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_CDS))
    ap.add_argument("--backbone", default="embedded:smollm2-135m")
    ap.add_argument("--rows", type=int, default=160, help="training rows per variant")
    ap.add_argument("--valid-rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--variants", default="default,exact,top_half,compact")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)

    ds = load_dataset(args.data)
    precision = resolve_mixed_precision("auto")

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    variants = [make_variant(n, ds, args) for n in args.variants.split(",")]
    exact = next((v for v in variants if v["name"] == "exact"), None)
    diff = exactness(exact, 2, autocast) if exact else None
    n_steps = min(len(v["batches"]) for v in variants)
    for i in range(n_steps):
        for v in variants:
            step(v, i, autocast)
        if not args.json:
            print(f"step {i + 1}/{n_steps}: " + ", ".join(f"{v['name']} {v['seconds'] / (i + 1):.1f}s" for v in variants),
                  file=sys.stderr, flush=True)
    out = {"data": Path(args.data).name, "backbone": args.backbone, "rows": n_steps * args.batch,
           "batch": args.batch, "valid_rows": args.valid_rows, "mixed_precision": precision,
           "threads": torch.get_num_threads(), "max_abs_loss_diff_exact": diff}
    for v in variants:
        out[f"rows_per_s_{v['name']}"] = round(v["rows"] / v["seconds"], 4)
        out[f"padding_fraction_{v['name']}"] = round(v["padding"], 4)
    base = out.get("rows_per_s_default")
    for name, key in (("exact", "exact_speedup"), ("top_half", "speedup_top_half"), ("compact", "speedup_compact")):
        if base and f"rows_per_s_{name}" in out:
            out[key] = round(out[f"rows_per_s_{name}"] / base, 3)
    for v in variants:
        out[f"valid_loss_{v['name']}"] = round(valid_loss(v, args.batch, autocast), 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
