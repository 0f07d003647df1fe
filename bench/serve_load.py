"""Bounded load test of `loraclf serve` on loopback: throughput and p50/p99 latency, micro-batching on vs off.

The server runs the exported MiniLM-L6 of bench/predict_speed.py (or --model: a run or export folder) in a child
process on a free 127.0.0.1 port. CONCURRENCY asyncio clients (httpx, one process) each send one AG News test text
per request, back to back, until --requests requests are done or --seconds pass, whichever comes first.
Configurations, alternating over --rounds:

    micro-batching on   --max-batch-size 64 --max-wait-ms 5 (the defaults but a larger batch)
    micro-batching off  --max-batch-size 1  --max-wait-ms 0 (every request its own forward pass: the baseline)

Run (from the repository root, after bench/predict_speed.py has written its export):
    flock /tmp/loraclf-cpu.lock python bench/serve_load.py      # writes bench/results/serve_load.md
    python bench/serve_load.py --model EXPORT --requests 50 --rounds 1 --out /tmp/s.md  # check the script
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import common

AG = common.DATA / "ag_news"
CONFIGS = (("micro-batching on", ["--max-batch-size", "64", "--max-wait-ms", "5"]),
           ("micro-batching off (baseline)", ["--max-batch-size", "1", "--max-wait-ms", "0"]))


async def load(url: str, texts: list[str], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    import httpx

    latencies, errors = [], []
    issued = 0
    stop_at = time.perf_counter() + max_seconds

    async def client(cid: int, http: httpx.AsyncClient):
        nonlocal issued
        while issued < max_requests and time.perf_counter() < stop_at:
            i = issued
            issued += 1
            t = time.perf_counter()
            try:
                r = await http.post("/predict", json={"texts": [texts[i % len(texts)]]})
                if r.status_code != 200 or len(r.json()["predictions"]) != 1:
                    errors.append(f"HTTP {r.status_code}")
            except Exception as e:  # any transport failure counts as an error
                errors.append(type(e).__name__)
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(concurrency)))
        wall = time.perf_counter() - start
        stats = (await http.get("/stats")).json()
    q = lambda p: common.percentile_ms(latencies, p)  # noqa: E731
    return {"requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)), "wall_s": wall,
            "rps": len(latencies) / wall, "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": max(latencies) * 1000,
            "batches": stats["batches"], "mean_batch": stats["texts"] / max(stats["batches"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/loraclf-bench-predict/export", help="run or export folder")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000, help="requests per configuration and round (cap)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time cap per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(common.RESULTS / "serve_load.md"))
    args = ap.parse_args()
    import pandas as pd

    model = Path(args.model)
    if not model.is_dir():
        raise SystemExit(f"{model} not found; run bench/predict_speed.py first or pass --model")
    texts = pd.read_csv(AG / "test.csv")["text"].tolist()
    results = {name: [] for name, _ in CONFIGS}
    meter = common.LoadMeter()
    for r in range(args.rounds):
        for name, extra in CONFIGS:
            proc, url = common.start_server([model], extra, Path(f"/tmp/loraclf-serve-load-{os.getpid()}.log"),
                                            ready="/health", timeout_s=180, poll_s=0.2)
            try:
                res = asyncio.run(load(url, texts, args.concurrency, args.requests, args.seconds))
            finally:
                proc.terminate()
                proc.wait(60)
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res}", file=sys.stderr, flush=True)

    def med(name, key):
        return statistics.median(x[key] for x in results[name])

    on, off = CONFIGS[0][0], CONFIGS[1][0]
    lines = [
        "# `loraclf serve` under load (loopback)",
        "",
        *common.machine_lines([meter.read()], what="the benchmark (server starts and load rounds)"),
        f"- The {os.cpu_count()} CPU threads are shared by server and client (and other jobs: heavy ones are "
        f"serialised by `flock {common.CPU_LOCK}`).",
        f"- Model: `{model}` (MiniLM-L6 exported by bench/predict_speed.py), fp32.",
        f"- Load: {args.concurrency} concurrent clients, one AG News test text per request, back to back; each "
        f"configuration stops at {args.requests} requests or {args.seconds:g} s; {args.rounds} rounds alternating; "
        f"medians shown.",
        "- Command: `" + " ".join(["flock /tmp/loraclf-cpu.lock python bench/serve_load.py", *sys.argv[1:]]) + "`",
        "",
        *common.md_table(["configuration", "requests", "errors", "requests/s", "p50 ms", "p99 ms", "max ms",
                          "texts per forward pass"], align="l" + "r" * 7),
    ]
    for name, _ in CONFIGS:
        total_err = sum(x["errors"] for x in results[name])
        lines.append(f"| {name} | {sum(x['requests'] for x in results[name])} | {total_err} | "
                     f"{med(name, 'rps'):.1f} | {med(name, 'p50_ms'):.1f} | {med(name, 'p99_ms'):.1f} | "
                     f"{med(name, 'max_ms'):.1f} | {med(name, 'mean_batch'):.1f} |")
    errors = sum(x["errors"] for rs in results.values() for x in rs)
    lines += [
        "",
        f"**Result:** at concurrency {args.concurrency}, micro-batching serves {med(on, 'rps') / med(off, 'rps'):.2f}x "
        f"the requests/s of one-request-per-pass, p50 {med(on, 'p50_ms'):.0f} ms vs {med(off, 'p50_ms'):.0f} ms, "
        f"p99 {med(on, 'p99_ms'):.0f} ms vs {med(off, 'p99_ms'):.0f} ms. Errors: {errors}"
        f"{' (' + ', '.join(sorted({k for rs in results.values() for x in rs for k in x['error_kinds']})) + ')' if errors else ''}.",
        "",
    ]
    common.write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
