"""Many adapters on one base: peak RSS of one `loraclf serve` holding N = 1, 3 and 10 runs, against N separate
single-run servers, plus throughput and p50/p99 under a bounded mixed loopback load.

The 10 runs are the packaged MiniLM-L6 with LoRA, each with its own label set from ../shared/data (AG News: all 4
topics, pairs and triples of them, one-vs-rest; TREC: the 6 coarse classes, the 50 fine ones, subsets). They train
for a few steps only: memory and speed do not depend on accuracy. Each server runs in a child process on a free
127.0.0.1 port; peak RSS is the kernel's high-water mark (VmHWM) after the load. Other processes' CPU time during the
benchmark (/proc/stat less this benchmark's own) is printed with the table.

Run (from the repository root; about 5 minutes on 2 cores):
    flock /tmp/loraclf-cpu.lock python bench/serve_multi.py          # writes bench/results/serve_multi.md
    python bench/serve_multi.py --requests 40 --out /tmp/m.md        # check the script
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import common
from loraclf.base import logs
from loraclf.config import load_config
from loraclf.runs import read_label_map
from loraclf.training import train

DATA = common.DATA
AG_NAMES = ["World", "Sports", "Business", "SciTech"]
# name -> (data set, label column, kept labels or None for all, relabel)
RUNS = {
    "ag-topics": ("ag_news", "label", None, None),
    "ag-world-sports": ("ag_news", "label", [0, 1], None),
    "ag-business-tech": ("ag_news", "label", [2, 3], None),
    "ag-three": ("ag_news", "label", [0, 2, 3], None),
    "ag-sports-or-not": ("ag_news", "label", None, lambda v: "sports" if v == 1 else "other"),
    "trec-coarse": ("trec", "coarse", None, None),
    "trec-fine": ("trec", "fine", None, None),
    "trec-hum-loc": ("trec", "coarse", ["HUM", "LOC"], None),
    "trec-num-desc-enty": ("trec", "coarse", ["NUM", "DESC", "ENTY"], None),
    "trec-hum-fine": ("trec", "fine", None, lambda v: v if v.startswith("HUM:") else "other"),
}


def write_data(name: str, folder: Path) -> tuple[Path, Path, list[str]]:
    """A 400-row train file and a 40-row validation slice of it (labels seen in training by construction)."""
    import pandas as pd

    source, column, keep, relabel = RUNS[name]
    df = pd.read_csv(DATA / source / "train.csv")
    if keep is not None:
        df = df[df[column].isin(keep)]
    labels = df[column].map(relabel) if relabel else df[column]
    if source == "ag_news" and relabel is None:
        labels = labels.map(lambda i: AG_NAMES[int(i)])
    out = pd.DataFrame({"text": df["text"], "label": labels}).sample(n=min(400, len(df)), random_state=0)
    train_path, val_path = folder / f"{name}_train.csv", folder / f"{name}_val.csv"
    out.to_csv(train_path, index=False)
    out.head(40).to_csv(val_path, index=False)
    return train_path, val_path, sorted(out["label"].astype(str).unique())


def train_runs(work: Path, steps: int) -> list[Path]:
    done = []
    for i, name in enumerate(RUNS):
        run = work / "runs" / name
        if not (run / "adapter" / "adapter_config.json").is_file():
            train_path, val_path, labels = write_data(name, work)
            cfg = load_config(None, [
                "model.name_or_path=packaged:minilm-l6", f"data.train={train_path}", f"data.validation={val_path}",
                "data.max_length=64", f"train.max_steps={steps}", "train.per_device_train_batch_size=8",
                "train.mixed_precision=fp32", "output.report=false", f"output.dir={work / 'runs'}",
                f"output.run_name={name}", f"data.cache_dir={work / 'cache'}", f"train.seed={i}"])
            t = time.perf_counter()
            with logs.quiet():
                train(cfg, quiet=True)
            print(f"trained {name} ({len(labels)} classes) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        done.append(run)
    return done


async def mixed_load(url: str, texts: list[str], concurrency: int, n: int) -> dict:
    """n one-text requests spread over every served model at random, concurrency at a time."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        models = {m["name"]: len(m["labels"]) for m in (await http.get("/v1/models")).json()["models"]}
        rng = random.Random(0)
        plan = [(rng.choice(list(models)), texts[i % len(texts)]) for i in range(n)]
        latencies, errors, gate = [], [], asyncio.Semaphore(concurrency)

        async def one(name: str, text: str):
            async with gate:
                t = time.perf_counter()
                try:
                    r = await http.post(f"/v1/models/{name}/predict", json={"texts": [text]})
                    p = r.json()["predictions"] if r.status_code == 200 else None
                    if p is None or len(p) != 1 or len(p[0]["probabilities"]) != models[name]:
                        errors.append(f"HTTP {r.status_code}")  # a wrong head would give another class count
                except Exception as e:  # any transport failure counts as an error
                    errors.append(type(e).__name__)
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(name, text) for name, text in plan))
        wall = time.perf_counter() - start
    return {"requests": len(latencies), "errors": len(errors), "rps": len(latencies) / wall,
            "p50_ms": common.percentile_ms(latencies, 0.5), "p99_ms": common.percentile_ms(latencies, 0.99)}


def measure(models: list[Path], texts: list[str], work: Path, concurrency: int, requests: int, load: bool) -> dict:
    proc, url = common.start_server(models, ["--max-batch-size", "32", "--max-wait-ms", "5"],
                                    work / f"serve-{len(models)}-{models[0].name}.log", ready="/v1/models",
                                    timeout_s=300, poll_s=0.3)
    try:
        res = asyncio.run(mixed_load(url, texts, concurrency, requests if load else 20))
        peak, rss = common.live_memory_mb(proc.pid)
    finally:
        proc.terminate()
        code = proc.wait(60)
    return {**res, "peak_mb": peak, "rss_mb": rss, "exit": code}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/loraclf-bench-multi")
    ap.add_argument("--steps", type=int, default=3, help="training steps per run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400, help="requests of the mixed load per multi-run server")
    ap.add_argument("--out", default=str(common.RESULTS / "serve_multi.md"))
    args = ap.parse_args()
    import pandas as pd

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meter = common.LoadMeter()
    runs = train_runs(work, args.steps)
    texts = pd.read_csv(DATA / "ag_news" / "test.csv")["text"].tolist()[:500]
    one_server = {n: measure(runs[:n], texts, work, args.concurrency, args.requests, True) for n in (1, 3, 10)}
    for n, r in one_server.items():
        print(f"one server, {n} run(s): {r}", file=sys.stderr, flush=True)
    separate = [measure([run], texts, work, args.concurrency, args.requests, False) for run in runs]
    write_table(args, runs, one_server, separate, meter.read())


NOTES = """- The separate single-run servers were each started and sent 20 requests, not the full load, so their sum is a
  lower bound (a loaded single-run server peaked at the N = 1 row's figure).
- Requests/s fall as N grows: batches are made per adapter, so the 16 requests in flight split over N queues and each
  forward pass holds fewer texts; and the adapters stay unmerged (N = 1 merges its adapter into the base).
"""


def write_table(args, runs, one_server: dict, separate: list[dict], load: common.Load) -> None:
    import torch

    base = one_server[1]["peak_mb"]
    lines = [
        "# Many adapters on one base: `loraclf serve RUN RUN ...` (loopback)", "",
        *common.machine_lines([load], what="the benchmark"),
        f"- The {os.cpu_count()} CPU threads are shared by the server and the load client; {torch.get_num_threads()} "
        f"torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. It ran under "
        f"`flock {common.CPU_LOCK}`, so no test ran beside it.",
        f"- Runs: packaged MiniLM-L6 + LoRA (defaults), each trained for {args.steps} steps on 400 rows of its data "
        f"(memory and speed do not depend on accuracy): "
        + ", ".join(f"`{r.name}` ({len(read_label_map(r).id2label)} classes)" for r in runs) + ".",
        "- N = 1 is today's single-run server (adapter merged); N > 1 attaches every run to one base. Peak RSS is the "
        "kernel's high-water mark (VmHWM) of the server process after its load.",
        f"- Load: {args.requests} one-text requests, each to a model drawn at random, {args.concurrency} at a time; "
        "`--max-batch-size 32 --max-wait-ms 5`; fp32.",
        "- Command: `" + " ".join(["flock /tmp/loraclf-cpu.lock python bench/serve_multi.py", *sys.argv[1:]]) + "`", "",
        *common.md_table(["runs served", "one server: peak RSS MiB", "x one run",
                          "N separate servers: sum of peak RSS MiB", "requests", "errors", "requests/s", "p50 ms",
                          "p99 ms"], align="r" * 9),
    ]
    for n, r in one_server.items():
        lines.append(f"| {n} | {r['peak_mb']:.0f} | {r['peak_mb'] / base:.2f} | "
                     f"{sum(s['peak_mb'] for s in separate[:n]):.0f} | {r['requests']} | {r['errors']} | "
                     f"{r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    ten = one_server[10]["peak_mb"] / base
    errors = sum(r["errors"] for r in one_server.values()) + sum(s["errors"] for s in separate)
    exits = sorted({r["exit"] for r in [*one_server.values(), *separate]})
    lines += ["", f"**Result:** 10 adapters on one base take {ten:.2f}x the peak RSS of one run (target: under 1.5x) "
              f"and {one_server[10]['peak_mb'] / sum(s['peak_mb'] for s in separate):.2f}x that of 10 separate "
              f"servers. Errors: {errors}. Server exit codes after SIGTERM: {exits}.", "", NOTES]
    common.write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
