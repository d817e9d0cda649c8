"""Load test of ``flrec serve``: N concurrent clients on loopback, micro-batching vs one at a time.

The export is loaded once; for each mode a server (the same app ``flrec serve`` runs, on uvicorn)
is started on 127.0.0.1 with a free port, warmed up, then ``--clients`` clients send
``POST /recommend`` back to back until ``--duration`` seconds or ``--max-requests`` requests,
whichever comes first. Modes: ``batched`` (``max_batch=--max-batch``) and ``single``
(``max_batch=1``). Reports per mode: requests/s (200 answers per second), p50/p95/p99 latency of
the 200s, status counts, errors (5xx, transport failures, dropped = sent without an answer); and
``speedup`` = batched / single requests/s. ``direct`` times the model without HTTP: one history per
call vs. the model's batch size per call (what ``flrec evaluate`` does), per history::

    python benchmarks/bench_serving.py --model EXPORT_DIR --json [--clients 16] [--duration 60]
        [--max-requests 5000] [--max-batch 16] [--max-wait-ms 10] [--history-len 10] [--k 10]
        [--threads N] [--data DIR] [--modes batched,single] [--direct-histories 8]

Histories: test rows of ``--data`` when given, else ``--history-len`` catalogue titles drawn with a
fixed seed. It stops by itself; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _histories(model, data: str | None, n: int, length: int, seed: int) -> list[list[int]]:
    if data:
        from flrec.data.load import load_dataset

        ds = load_dataset(data)
        if ds.catalogue.titles != model.catalogue.titles:
            sys.exit(f"error: --data {data} has another catalogue than the export; pass the training dataset")
        rows = [r for r in ds["test"] if r.history]
        return [rows[i % len(rows)].history for i in range(n)]
    rng = random.Random(seed)
    items = range(len(model.catalogue))
    return [rng.sample(items, min(length, len(items))) for _ in range(n)]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs)) - 1))]


async def _load(port: int, histories: list[list[int]], clients: int, duration: float, max_requests: int, k: int) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/recommend"
    lat: list[float] = []
    status: Counter = Counter()
    errors: Counter = Counter()
    sent = answered = 0
    stop_at = time.perf_counter() + duration

    async def client(c: int, http) -> None:
        nonlocal sent, answered
        j = c
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            body = {"item_ids": histories[j % len(histories)], "k": k}
            j += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url, json=body)
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
                continue
            answered += 1
            status[r.status_code] += 1
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
            elif r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0)) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    wall = time.perf_counter() - t0
    ok = status.get(200, 0)
    return {
        "wall_s": wall, "sent": sent, "answered": answered, "dropped": sent - answered,
        "status": {str(s): n for s, n in sorted(status.items())}, "transport_errors": dict(errors),
        "server_errors_5xx": sum(n for s, n in status.items() if s >= 500 and s != 503),
        "rejected_503": status.get(503, 0),
        "requests_per_s": ok / wall if wall > 0 else None,
        "latency_s": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                      "mean": statistics.fmean(lat) if lat else None},
    }


def run_mode(model, cfg, histories, args) -> dict:
    import uvicorn

    from flrec.serving.app import create_app

    app = create_app(model, cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        asyncio.run(_load(cfg.port, histories, min(args.clients, 4), 1e9, args.warmup, args.k))  # warm-up, not counted
        res = asyncio.run(_load(cfg.port, histories, args.clients, args.duration, args.max_requests, args.k))
        res["server_stats"] = dict(app.state.batcher.stats)
    finally:
        server.should_exit = True
        thread.join(60)
    return res


def direct(model, histories: list[list[int]], k: int) -> dict:
    """Seconds per history: one per call vs the model's batch size per call (no HTTP)."""
    from flrec.serving.service import Query

    bs = int(model.recommender.config.batch_size) if model.kind == "llm" else 64
    qs = [Query(h, k) for h in histories]
    model.recommend_batch(qs[:1])  # warm-up
    t0 = time.perf_counter()
    for q in qs:
        model.recommend_batch([q])
    one = (time.perf_counter() - t0) / len(qs)
    t0 = time.perf_counter()
    for i in range(0, len(qs), bs):
        model.recommend_batch(qs[i : i + bs])
    batched = (time.perf_counter() - t0) / len(qs)
    return {"histories": len(qs), "batch_size": bs, "s_per_history_one_at_a_time": one,
            "s_per_history_batched": batched, "ratio": one / batched if batched > 0 else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an export directory (flrec export)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per mode (upper bound)")
    p.add_argument("--max-requests", type=int, default=5000, help="requests per mode (upper bound)")
    p.add_argument("--warmup", type=int, default=8, help="requests per mode before measuring")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--modes", default="batched,single")
    p.add_argument("--history-len", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--data", help="draw histories from this dataset's test rows")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--direct-histories", type=int, default=8, help="histories for the no-HTTP timing (0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for key in ("clients", "max_requests", "max_batch", "max_queue"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    from flrec.serving.app import ServeConfig
    from flrec.serving.service import load_recommender

    t0 = time.perf_counter()
    model = load_recommender(args.model, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    histories = _histories(model, args.data, 512, args.history_len, args.seed)
    out: dict = {"model": str(Path(args.model).resolve()), "method": model.method, "kind": model.kind,
                 "load_s": load_s, "clients": args.clients, "duration_s_bound": args.duration,
                 "max_requests_bound": args.max_requests, "k": args.k, "torch_threads": torch.get_num_threads(),
                 "history_len": None if args.data else args.history_len, "modes": {}}
    for mode in [m for m in args.modes.split(",") if m]:
        if mode not in ("batched", "single"):
            p.error(f"--modes: unknown mode {mode!r}; use batched and/or single")
        cfg = ServeConfig(port=_free_port(), max_batch=args.max_batch if mode == "batched" else 1,
                          max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_k=max(args.k, 1),
                          default_k=max(args.k, 1), log_level="warning")
        out["modes"][mode] = {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                              **run_mode(model, cfg, histories, args)}
    m = out["modes"]
    if "batched" in m and "single" in m and m["single"]["requests_per_s"]:
        out["speedup"] = m["batched"]["requests_per_s"] / m["single"]["requests_per_s"]
    if args.direct_histories > 0:
        out["direct"] = direct(model, histories[: args.direct_histories], args.k)
    print(json.dumps(out, indent=None if args.json else 2))
    return out


if __name__ == "__main__":
    main()
