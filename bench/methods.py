"""Benchmark: every adapter.method (and the LoRA+ optimizer) at the same trainable-parameter budget.

Packaged MiniLM-L6 on AG News (../shared/data/ag_news: 5,000 train / 600 val / 2,000 test rows, 4 classes).
Every run: the same cap `budget.max_trainable_params` (adapter + the full classification head, pooler + classifier,
which alone is 149,380 parameters), `adapter.r=auto` (the largest size under the cap) for every method that has a
size, the same target modules (query, value), the same optimizer steps, batch size, learning rate, max_length and
precision; the last step's weights are scored once on test (eval_steps = steps). IA3 has no size: it runs as it is
and reports its count. LoRA (plain, r=auto) is the baseline every ratio is taken against, in the same run.

Each training run is its own `loraclf train` process. Heavy CPU jobs of the project go one at a time: run the whole
benchmark under `flock /tmp/loraclf-cpu.lock` (or pass --lock to take the lock per training run instead). Results are
appended to a JSONL file as they finish (a rerun skips finished runs), and the Markdown table is rewritten after
every run.

Run (from the repository root):
    flock /tmp/loraclf-cpu.lock python bench/methods.py            # writes bench/results/methods.{md,jsonl}
    python bench/methods.py --steps 5 --seeds 0 --model TINY_MODEL_DIR --out /tmp/m.md   # check the script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import common

ROOT = common.ROOT
AG = common.DATA / "ag_news"
# (arm name, adapter.method, extra overrides)
ARMS = [
    ("lora", "lora", []),
    ("dora", "dora", []),
    ("rslora", "rslora", []),
    ("pissa", "pissa", []),
    ("vera", "vera", []),
    ("ia3", "ia3", ["adapter.r=1"]),  # rankless: r is ignored
    ("adalora", "adalora", []),
    ("loha", "loha", []),
    ("lokr", "lokr", []),
    ("lora+", "lora", ["optimizer.name=loraplus"]),
]


def overrides(args, arm: str, method: str, extra: list[str], seed: int) -> list[str]:
    return [
        f"model.name_or_path={args.model}",
        f"data.train={AG / 'train.csv'}", f"data.validation={AG / 'val.csv'}", f"data.test={AG / 'test.csv'}",
        "data.label_names=[World, Sports, Business, Sci/Tech]", f"data.max_length={args.max_length}",
        f"data.cache_dir={args.work / 'cache'}",
        f"adapter.method={method}", "adapter.r=auto", "adapter.target_modules=qv",
        f"budget.max_trainable_params={args.cap}",
        f"train.max_steps={args.steps}", f"eval.eval_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch_size}", f"train.learning_rate={args.lr}",
        f"train.seed={seed}", f"train.mixed_precision={args.precision}", "train.logging_steps=50",
        "output.report=false", f"output.dir={args.work / 'runs'}", f"output.run_name={arm.replace('+', 'plus')}-seed-{seed}",
        "output.overwrite=true", *extra,
    ]


def run_one(args, arm: str, method: str, extra: list[str], seed: int) -> dict:
    cmd = [sys.executable, "-m", "loraclf", "train", *overrides(args, arm, method, extra, seed)]
    if args.lock:
        cmd = ["flock", args.lock, *cmd]
    job = common.run_child(cmd, cwd=ROOT)
    if not job.ok:
        return {"arm": arm, "seed": seed, "error": job.error()}
    run = args.work / "runs" / f"{arm.replace('+', 'plus')}-seed-{seed}"
    m = json.loads((run / "metrics.json").read_text())
    params = json.loads((run / "params.json").read_text())
    cfg_r = next((line.split(":", 1)[1].strip() for line in (run / "config.yaml").read_text().splitlines()
                  if line.strip().startswith("r:")), "?")
    rec = {
        "arm": arm, "method": method, "seed": seed, "r": cfg_r,
        "trainable": params["trainable"], "adapter_params": params["adapter"], "head_params": params["head"],
        "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"], "val_accuracy": m["val"]["accuracy"],
        "train_runtime_s": m["train_runtime_s"], "wall_incl_wait_s": round(job.wall_s, 1), "precision": m["precision"],
        "global_step": m["global_step"], "other_cpu_s": round(job.other_cpu_s, 1),
    }
    if "adapter_report" in m:
        rep = m["adapter_report"]
        rec["adapter_report"] = {k: rep[k] for k in ("init_r", "target_r", "total_rank_initial", "total_rank_budget",
                                                     "total_rank_final") if k in rep}
    shutil.rmtree(run, ignore_errors=True)  # keep only the numbers
    return rec


def _ms(xs: list[float], scale: float = 100.0, digits: int = 2) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.{digits}f} ± {scale * sd:.{digits}f}"


def write_table(args, records: list[dict], started: str) -> None:
    ok = [r for r in records if "error" not in r]
    by_arm = {a: [r for r in ok if r["arm"] == a] for a, _, _ in ARMS}
    base = by_arm.get("lora") or []
    base_acc = statistics.mean(r["test_accuracy"] for r in base) if base else None
    base_time = statistics.mean(r["train_runtime_s"] for r in base) if base else None
    lines = [
        "# adapter.method at an equal trainable-parameter budget (MiniLM-L6, AG News)",
        "",
        f"Generated by `{common.command('methods.py')}` — started {started}, last update {common.utc_now()}.",
        "",
        *common.machine_lines([common.Load(r["other_cpu_s"], r["wall_incl_wait_s"]) for r in ok
                               if "other_cpu_s" in r], what="training run", timings=False),
        "- Torch threads: " + (f"{os.environ['OMP_NUM_THREADS']} (OMP_NUM_THREADS)" if os.environ.get("OMP_NUM_THREADS")
                               else "as loraclf sets them") + ".",
        f"- Model `{args.model}`" + (" (all-MiniLM-L6-v2, 22.7M parameters)" if args.model == "packaged:minilm-l6" else "")
        + "; data ../shared/data/ag_news "
        "(5,000 train / 600 val / 2,000 test rows, 4 classes); test accuracy of the last step's weights.",
        f"- Every run: `budget.max_trainable_params={args.cap:,}` counting adapter **plus** the full head "
        "(pooler + classifier = 149,380 of it), `adapter.r=auto` (largest size under the cap; capped at the width 384), "
        f"targets query+value, {args.steps} optimizer steps, batch {args.batch_size}, learning rate {args.lr:g} "
        f"(the project default, the same for every method), linear schedule with 6% warm-up, max_length {args.max_length}, "
        f"precision {args.precision}; seeds {', '.join(map(str, args.seeds))}.",
        "- mean ± sample standard deviation over seeds (n = seeds finished); Δ and ratios are against plain LoRA in "
        "this same run. Train time is loraclf's `train_runtime_s` (optimizer steps only, evaluation excluded), measured "
        + ("while holding the CPU lock " + args.lock + "; unlocked jobs on the same cores add noise." if args.lock
           else "with no lock: whatever else ran on the machine adds noise."),
        "",
        *common.md_table(["method", "r (auto)", "trainable (adapter + head)", "test accuracy %", "Δ vs LoRA (points)",
                          "test macro-F1 %", "train time s", "time vs LoRA", "n"]),
    ]
    for arm, _, _ in ARMS:
        rs = by_arm[arm]
        if not rs:
            lines.append(f"| {arm} | | | not run | | | | | 0 |")
            continue
        acc = [r["test_accuracy"] for r in rs]
        tm = [r["train_runtime_s"] for r in rs]
        delta = f"{100 * (statistics.mean(acc) - base_acc):+.2f}" if base_acc is not None else "n/a"
        ratio = f"{statistics.mean(tm) / base_time:.2f}x" if base_time else "n/a"
        rank = "n/a (no rank)" if arm == "ia3" else ", ".join(sorted({str(r["r"]) for r in rs}))
        lines.append(
            f"| {arm} | {rank} | {rs[0]['trainable']:,} ({rs[0]['adapter_params']:,} + {rs[0]['head_params']:,}) | "
            f"{_ms(acc)} | {delta} | {_ms([r['test_macro_f1'] for r in rs])} | {_ms(tm, 1.0, 1)} | {ratio} | {len(rs)} |")
    errors = [r for r in records if "error" in r]
    ada = [r["adapter_report"] for r in ok if r["arm"] == "adalora" and "adapter_report" in r]
    if ada:
        a = ada[0]
        lines += ["", f"AdaLoRA: starts at init_r={a['init_r']} ({a['total_rank_initial']} singular values over the "
                      f"{a['total_rank_initial'] // a['init_r']} adapted modules; the budget counts this size), prunes "
                      f"towards target_r={a['target_r']} "
                      f"(budget {a['total_rank_budget']}); final allocation kept "
                      f"{', '.join(str(x['total_rank_final']) for x in ada)} singular values (per seed). Its saved "
                      "adapter is resized to the final ranks."]
    if errors:
        lines += ["", "Failed runs:"] + [f"- {r['arm']} seed {r['seed']}: {r['error']}" for r in errors]
    if getattr(args, "stopped", False):
        lines += ["", f"**Incomplete:** stopped starting runs at {args.until} UTC (`--until`, the time available); "
                      "arms with n < 3 above have fewer seeds."]
    lines += ["", "Raw per-run numbers: `bench/results/methods.jsonl`.", ""]
    common.write_text(args.out, "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--cap", type=int, default=300_000, help="budget.max_trainable_params (adapter + head)")
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--arms", nargs="+", default=[a for a, _, _ in ARMS])
    p.add_argument("--lock", default="",
                   help=f"a flock file held during each training run (e.g. {common.CPU_LOCK}); default none")
    p.add_argument("--until", default=None, help="UTC HH:MM after which no new run is started (the table says so)")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-methods"))
    p.add_argument("--out", type=Path, default=common.RESULTS / "methods.md")
    args = p.parse_args()
    if not AG.is_dir():
        print(f"AG News not found at {AG} (../shared beside the checkout)", file=sys.stderr)
        return 2
    raw = args.out.with_suffix(".jsonl")
    records = common.read_jsonl(raw)
    done = {(r["arm"], r["seed"]) for r in records if "error" not in r}
    records = [r for r in records if "error" not in r]
    started = common.utc_now()
    arms = [a for a in ARMS if a[0] in args.arms]
    stop_at = common.stop_time(args.until)
    args.stopped = False
    for seed in args.seeds:  # seed-major: an interrupted benchmark still has every method at the first seeds
        for arm, method, extra in arms:
            if (arm, seed) in done:
                continue
            if stop_at is not None and datetime.now(timezone.utc) >= stop_at:
                args.stopped = True
                break
            rec = run_one(args, arm, method, extra, seed)
            records.append(rec)
            common.append_jsonl(raw, rec)
            print(json.dumps(rec), flush=True)
            write_table(args, records, started)
    write_table(args, records, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
