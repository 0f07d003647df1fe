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
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from loraclf.runs import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
AG = ROOT.parent / "shared" / "data" / "ag_news"
CONFIGS = (("micro-batching on", ["--max-batch-size", "64", "--max-wait-ms", "5"]),
           ("micro-batching off (baseline)", ["--max-batch-size", "1", "--max-wait-ms", "0"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, extra: list[str], log: Path):
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "loraclf", "serve", str(model), "--port", str(port), *extra],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 180 s")


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
    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] * 1000  # noqa: E731
    return {"requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors)), "wall_s": wall,
            "rps": len(lat) / wall, "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": lat[-1] * 1000,
            "batches": stats["batches"], "mean_batch": stats["texts"] / max(stats["batches"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/loraclf-bench-predict/export", help="run or export folder")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000, help="requests per configuration and round (cap)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time cap per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load.md"))
    args = ap.parse_args()
    import pandas as pd
    import torch

    model = Path(args.model)
    if not model.is_dir():
        raise SystemExit(f"{model} not found; run bench/predict_speed.py first or pass --model")
    texts = pd.read_csv(AG / "test.csv")["text"].tolist()
    results = {name: [] for name, _ in CONFIGS}
    for r in range(args.rounds):
        for name, extra in CONFIGS:
            proc, url = start_server(model, extra, Path(f"/tmp/loraclf-serve-load-{os.getpid()}.log"))
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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# `loraclf serve` under load (loopback)",
        "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}",
        f"- Machine: {cpu}, {os.cpu_count()} cores shared by server and client (and other jobs: heavy ones are "
        f"serialised by `flock /tmp/loraclf-cpu.lock`); torch {torch.__version__}",
        f"- Model: `{model}` (MiniLM-L6 exported by bench/predict_speed.py), fp32.",
        f"- Load: {args.concurrency} concurrent clients, one AG News test text per request, back to back; each "
        f"configuration stops at {args.requests} requests or {args.seconds:g} s; {args.rounds} rounds alternating; "
        f"medians shown.",
        "- Command: `" + " ".join(["flock /tmp/loraclf-cpu.lock python bench/serve_load.py", *sys.argv[1:]]) + "`",
        "",
        "| configuration | requests | errors | requests/s | p50 ms | p99 ms | max ms | texts per forward pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
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
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
