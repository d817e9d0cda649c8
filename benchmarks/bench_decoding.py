"""Trie-constrained beam search: flrec's batched search vs HF ``generate`` + prefix callback, and
the default search (jump-forward over forced trie chains, each user's prompt cached once) vs the
same with a prompt copy per beam and vs the step-by-step search with a prompt copy per beam (the
search before both: the issue's "today").

Same model, same users, same beams; each batch is decoded by every search (interleaved, so machine
noise hits all alike). Prints speed, ranking agreement and the sequential forwards per user
(counted, so machine load cannot blur them)::

    python benchmarks/bench_decoding.py --json [--backbone embedded:smollm2-135m] [--users 16]
        [--beam 10] [--batch 8] [--data DIR] [--dtype float32|bfloat16] [--threads N]
        [--device cpu|cuda] [--random-init] [--jump-min-fill F] [--jump-max-tokens N] [--no-hf]

``--random-init`` builds the backbone's architecture (config + tokenizer from a model folder) with
random weights: for speed checks on machines the trained weights cannot reach, not for quality.

:func:`decode_users` takes any ``state_fn(model, input_ids, attention_mask) -> PrefillState``
(e.g. :func:`prefill_plain` or an FLR model's reasoning prefill), so latency comparisons between
models reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from flrec.data.prompts import PromptBuilder
from flrec.decoding.beam import SearchStats, constrained_beam_search, hf_reference_search, prefill_plain
from flrec.decoding.trie import TitleTrie
from flrec.models.state import PrefillState

Batch = tuple[torch.Tensor, torch.Tensor]  # left-padded (input_ids, attention_mask)
Ranking = list[tuple[int, float]]
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "amazon" / "CDs"


def load_prompts(tokenizer, data_dir: Path | None, users: int) -> tuple[list[list[int]], list[str]]:
    """Prompt ids for ``users`` test rows spread over the split, and the catalogue's titles.

    Without the shared data: synthetic titles and prompts, so the script still runs anywhere.
    """
    if data_dir is not None and (data_dir / "test.csv").exists():
        from flrec.data.d3 import read_d3

        ds = read_d3(data_dir, splits=("test",))
        rows = ds["test"][:: max(1, len(ds["test"]) // users)][:users]
        builder = PromptBuilder.for_dataset(tokenizer, ds, use_thought=False)
        return [e.prompt_ids for e in builder.encode_rows(rows, ds.catalogue)], ds.catalogue.unique_titles
    titles = [f"Album {i} - Artist {i % 97}" for i in range(2000)]
    builder = PromptBuilder(tokenizer, domain="CD", use_thought=False)
    hist = [[titles[(u * 31 + j * 7) % len(titles)] for j in range(10)] for u in range(users)]
    return builder.encode_batch(hist), titles


def make_batches(prompts: Sequence[Sequence[int]], batch: int, pad_id: int) -> list[Batch]:
    out = []
    for i in range(0, len(prompts), batch):
        chunk = [torch.tensor(p) for p in prompts[i : i + batch]]
        ids = torch.nn.utils.rnn.pad_sequence(
            chunk, batch_first=True, padding_value=pad_id, padding_side="left"
        )
        lens = torch.tensor([len(p) for p in chunk])
        mask = (torch.arange(ids.shape[1]) >= ids.shape[1] - lens[:, None]).long()
        out.append((ids, mask))
    return out


def decode_users(
    model: torch.nn.Module,
    state_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], PrefillState],
    batches: Sequence[Batch],
    trie: TitleTrie,
    beam: int = 10,
    stats: SearchStats | None = None,
    **search_kw,
) -> tuple[list[Ranking], float]:
    """Rankings of every user (prefill via ``state_fn``, then the batched search) and total seconds.

    ``search_kw`` go to :func:`constrained_beam_search` (e.g. ``jump_forward=False``); ``stats``
    collects its forward counts."""
    res: list[Ranking] = []
    t0 = time.perf_counter()
    for ids, mask in batches:
        res += constrained_beam_search(model, state_fn(model, ids, mask), trie, beam_size=beam, stats=stats,
                                       **search_kw)
    return res, time.perf_counter() - t0


def hf_users(model, tokenizer, batches: Sequence[Batch], trie: TitleTrie, beam: int = 10):
    res: list[Ranking] = []
    t0 = time.perf_counter()
    for ids, mask in batches:
        res += hf_reference_search(model, tokenizer, trie, ids, mask, beam_size=beam)
    return res, time.perf_counter() - t0


def agreement(a: Sequence[Ranking], b: Sequence[Ranking], k: int) -> tuple[float, float]:
    """Share of users whose top-``k`` title lists are identical, and the largest score gap among them."""
    same = [[t for t, _ in x[:k]] == [t for t, _ in y[:k]] for x, y in zip(a, b, strict=True)]
    gaps = [
        abs(s - r)
        for x, y, ok in zip(a, b, same, strict=True)
        if ok
        for (_, s), (_, r) in zip(x[:k], y[:k], strict=True)
    ]
    return sum(same) / max(1, len(same)), max(gaps, default=0.0)


def flops_per_token(config) -> tuple[float, float]:
    """FLOPs one token needs in a decoder forward, as (dense part incl. the LM head, attention per
    context position): ``2·L·(q,k,v,o projections + gated MLP) + 2·d·V`` and ``4·L·H·d_head``."""
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    h = config.num_attention_heads
    dh = getattr(config, "head_dim", None) or d // h
    kv = getattr(config, "num_key_value_heads", None) or h
    proj = d * h * dh * 2 + d * kv * dh * 2
    mlp = 3 * d * config.intermediate_size
    return 2.0 * L * (proj + mlp) + 2.0 * d * V, 4.0 * L * h * dh


def needed_flops(config, batches: Sequence[Batch], stats: SearchStats) -> float:
    """The arithmetic a ranking run cannot avoid: every real prompt token once (logits for the last
    only), then every live beam's real tokens with logits; padding and dead beams are not needed."""
    dense, per_ctx = flops_per_token(config)
    head = 2.0 * config.hidden_size * config.vocab_size
    total = 0.0
    for _, mask in batches:
        lens = mask.sum(1).double()
        total += float(lens.sum()) * (dense - head) + float(lens.shape[0]) * head
        total += per_ctx * float((lens * (lens + 1) / 2).sum())
    return total + stats.live_slots * dense + stats.live_context * per_ctx


def matmul_flops_per_second(config, dtype: torch.dtype, device: str, rows: int = 2048, reps: int = 5) -> float:
    """What this machine does on the model's largest dense shape (rows x d @ d x intermediate): the
    yardstick for the needed-arithmetic fraction."""
    a = torch.randn(rows, config.hidden_size, dtype=dtype, device=device)
    b = torch.randn(config.hidden_size, config.intermediate_size, dtype=dtype, device=device)
    a @ b  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2.0 * rows * config.hidden_size * config.intermediate_size * reps / (time.perf_counter() - t0)


def _load(spec: str, dtype: torch.dtype, random_init: bool):
    if not random_init:
        from flrec.models.backbone import load_backbone

        return load_backbone(spec, dtype=dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(spec, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec), dtype=dtype)
    return model.eval(), tok


def flr_latency(model, tok, prompts, titles, args) -> dict:
    """Ranking latency of FLR (K=4, N=2 refinement, then decoding) over the same backbone without a
    thought token, same users and beams, interleaved batch by batch. The FLR module is untrained:
    this measures cost, not quality (its rankings differ from the no-thought ones)."""
    from flrec.models.backbone import add_thought_token
    from flrec.models.recommender import FLRConfig, FLRRecommender

    thought = add_thought_token(model, tok)  # resizes the vocabulary: rebuild the trie to match
    flr = FLRRecommender(model, FLRConfig(num_factors=4, num_steps=2, keys="tokens"), thought).to(args.device).eval()  # ids-only batches
    flr.to(getattr(torch, args.dtype))
    vocab = model.get_output_embeddings().weight.shape[0]
    trie = TitleTrie.build(tok, titles, vocab_size=vocab).to(args.device)
    plain = make_batches(prompts, args.batch, tok.pad_token_id)
    with_thought = make_batches([list(p) + [thought] for p in prompts], args.batch, tok.pad_token_id)
    flr_state = lambda m, ids, mask: flr.prefill(ids, mask)  # noqa: E731
    decode_users(model, flr_state, with_thought[:1], trie, args.beam)  # warm-up
    t_flr = t_plain = 0.0
    for (pi, pm), (ti, tm) in zip(plain, with_thought, strict=True):
        t_plain += decode_users(model, prefill_plain, [(pi.to(args.device), pm.to(args.device))], trie, args.beam)[1]
        t_flr += decode_users(model, flr_state, [(ti.to(args.device), tm.to(args.device))], trie, args.beam)[1]
    return {"latency_ratio_flr_vs_nothought": round(t_flr / t_plain, 3),
            "seconds_per_user_flr": round(t_flr / len(prompts), 3),
            "seconds_per_user_nothought": round(t_plain / len(prompts), 3)}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="embedded:smollm2-135m")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8, help="users per batch (both decoders)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="D3 folder (default: shared CDs)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--random-init", action="store_true", help="random weights, backbone folder's config")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--no-flr", action="store_true", help="skip the FLR (K=4, N=2) vs no-thought latency part")
    ap.add_argument("--no-hf", action="store_true", help="skip HF generate (slow) and the unshared-prefix run")
    ap.add_argument("--jump-min-fill", type=float, default=0.75,
                    help="jump-forward: least share of real (not padding) token slots in a forward")
    ap.add_argument("--jump-max-tokens", type=int, default=16, help="jump-forward: most tokens per forward")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    model, tok = _load(args.backbone, dtype, args.random_init)
    model = model.to(args.device)
    prompts, titles = load_prompts(tok, args.data if args.data.exists() else None, args.users)
    t0 = time.perf_counter()
    trie = TitleTrie.build(tok, titles, vocab_size=model.config.vocab_size).to(args.device)
    trie_s = time.perf_counter() - t0
    batches = [
        (i.to(args.device), m.to(args.device)) for i, m in make_batches(prompts, args.batch, tok.pad_token_id)
    ]

    jump_kw = {"jump_min_fill": args.jump_min_fill, "jump_max_tokens": args.jump_max_tokens}
    decode_users(model, prefill_plain, batches[:1], trie, args.beam, **jump_kw)  # warm-up (allocator, kernels)
    decode_users(model, prefill_plain, batches[:1], trie, args.beam, jump_forward=False, shared_prompt=False)
    decode_users(model, prefill_plain, batches[:1], trie, args.beam, shared_prompt=False, **jump_kw)
    unshared = partial(prefill_plain, share_prefix=False)
    ours, hf, steps, t_ours, t_hf, t_unshared, t_steps, same_as_unshared = [], [], [], 0.0, 0.0, 0.0, 0.0, True
    st_jump, st_step = SearchStats(), SearchStats()
    per_beam, t_per_beam = [], 0.0
    for b in batches:  # interleaved so load changes on the machine hit every decoder alike
        r, s = decode_users(model, prefill_plain, [b], trie, args.beam, st_jump, **jump_kw)
        ours, t_ours = ours + r, t_ours + s
        r_s, s = decode_users(model, prefill_plain, [b], trie, args.beam, st_step, jump_forward=False,
                              shared_prompt=False)
        steps, t_steps = steps + r_s, t_steps + s
        r_p, s = decode_users(model, prefill_plain, [b], trie, args.beam, shared_prompt=False, **jump_kw)
        per_beam, t_per_beam = per_beam + r_p, t_per_beam + s
        if args.no_hf:
            continue
        r_u, s = decode_users(model, unshared, [b], trie, args.beam, **jump_kw)
        t_unshared += s
        same_as_unshared &= [[t for t, _ in x] for x in r_u] == [[t for t, _ in x] for x in r]
        r, s = hf_users(model, tok, [b], trie, args.beam)
        hf, t_hf = hf + r, t_hf + s
    n = len(prompts)
    peak = matmul_flops_per_second(model.config, dtype, args.device)
    need = needed_flops(model.config, batches, st_jump)  # the same beams live in every search: one count
    jump_agree, jump_gap = agreement(ours, steps, 10)
    shared_agree, shared_gap = agreement(ours, per_beam, 10)
    report = {
        "backbone": args.backbone + (" (random init)" if args.random_init else ""),
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "users": n,
        "beam": args.beam,
        "batch": args.batch,
        "catalogue_titles": len(trie.titles),
        "trie_nodes": trie.num_nodes,
        "trie_depth": trie.depth,
        "trie_build_seconds": round(trie_s, 3),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / n, 1),
        "users_per_second": round(n / t_ours, 3),
        "seconds_per_user_flrec": round(t_ours / n, 3),
        # the default search (jump-forward, shared prompt) vs the step-by-step search with a prompt
        # copy per beam (the reference), same batches, interleaved
        "users_per_second_jump_forward": round(n / t_ours, 3),
        "users_per_second_step_by_step": round(n / t_steps, 3),
        "jump_forward_speedup": round(t_steps / t_ours, 3),
        "top10_agreement_jump_vs_step": jump_agree,  # same titles, same order (top-min(10, beam))
        "max_score_diff_jump_vs_step": jump_gap,
        # the default vs the same search with a prompt copy per beam (shared_prompt=False)
        "users_per_second_per_beam_prompt": round(n / t_per_beam, 3),
        "shared_prompt_speedup": round(t_per_beam / t_ours, 3),
        "top10_agreement_shared_vs_per_beam_prompt": shared_agree,
        "max_score_diff_shared_vs_per_beam_prompt": shared_gap,
        "shared_prompt_forwards_fraction": round(st_jump.shared_forwards / max(1, st_jump.forwards), 3),
        # needed arithmetic (real prompt tokens, live beams' real tokens) at the measured matmul rate,
        # as a share of each search's time: 1.0 would be a search spending nothing on anything else
        "needed_gflop": round(need / 1e9, 2),
        "matmul_gflops_measured": round(peak / 1e9, 1),
        "needed_arithmetic_fraction": round(need / peak / t_ours, 3),
        "needed_arithmetic_fraction_per_beam_prompt": round(need / peak / t_per_beam, 3),
        "needed_arithmetic_fraction_step_by_step": round(need / peak / t_steps, 3),
        "live_slot_fraction": round(st_jump.live_slots / max(1, st_jump.token_slots), 3),
        "steps_per_user_jump_forward": round(st_jump.steps_per_user, 2),  # sequential forwards, counted
        "steps_per_user_step_by_step": round(st_step.steps_per_user, 2),
        "forwards_per_batch_jump_forward": round(st_jump.forwards / len(batches), 2),
        "forwards_per_batch_step_by_step": round(st_step.forwards / len(batches), 2),
        "token_slots_jump_forward": st_jump.token_slots,
        "token_slots_step_by_step": st_step.token_slots,
        "padded_slot_fraction_jump_forward": round(st_jump.padded_slots / max(1, st_jump.token_slots), 4),
        "jump_min_fill": args.jump_min_fill,
        "jump_max_tokens": args.jump_max_tokens,
    }
    if not args.no_hf:
        agree, gap = agreement(ours, hf, 10)
        report.update({
            "speedup_vs_hf_generate": round(t_hf / t_ours, 2),
            "top10_agreement_vs_hf_generate": agree,  # top-min(10, beam)
            "max_score_gap_agreeing_users": gap,
            "seconds_per_user_hf": round(t_hf / n, 3),
            # the same search with every prompt prefilled in full (no shared instruction prefix)
            "users_per_second_unshared_prefix": round(n / t_unshared, 3),
            "shared_prefix_speedup": round(t_unshared / t_ours, 3),
            "shared_prefix_same_rankings": same_as_unshared,
        })
    if not args.no_flr:
        report.update(flr_latency(model, tok, prompts, titles, args))
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
