"""Benchmark: where should a fixed trainable-parameter budget go, the head or the encoder adapter?

Packaged MiniLM-L6 (BERT, 6 layers, hidden 384) on AG News (../shared/data/ag_news: 5,000 train / 600 val /
2,000 test rows, 4 classes). It is the quarter-scale analogue of the course recipe: a rank-r LoRA on q and v costs
a quarter of roberta-base's per rank (6 layers x 384 against 12 x 768), and the full head (pooler 384x384 +
classifier) is a quarter of roberta's 768x768 dense. So a cap of 251,000 gives the same allocation as 1M on
roberta-base: full head + r=11 on qv, 60% of the cap in the head. The difference: MiniLM's pooler is pretrained,
and roberta's head dense starts random.

Every arm: the same cap, `adapter.r=auto` (the largest rank under it), the same optimizer steps, batch, learning
rate, max_length and precision; the last step's weights are scored once on test. The baseline is the course
recipe's allocation, full head + qv, in the same run; every delta and ratio is taken against it.

Each training run is its own `loraclf train` process. The script holds the project's CPU lock
(/tmp/loraclf-cpu.lock, the lock `flock` takes) once for all its runs, so heavy CPU jobs go one at a time and the
arms run back to back. Results are appended to a JSONL file as they finish (a rerun skips finished runs), and
the Markdown table is rewritten after every run.

Run (from the repository root):
    python bench/budget_heads.py                                  # writes bench/results/budget_heads.{md,jsonl}
    python bench/budget_heads.py --steps 4 --out /tmp/b.md         # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml

import common

ROOT = common.ROOT
AG = common.DATA / "ag_news"
# (arm, adapter.head, adapter.target_modules); the first is the baseline
ARMS = [
    ("full-qv", "full", "qv"),
    ("linear-qv", "linear", "qv"),
    ("lora-qv", "lora", "qv"),
    ("full-all-linear", "full", "all-linear"),
    ("linear-all-linear", "linear", "all-linear"),
    ("lora-all-linear", "lora", "all-linear"),
]


def overrides(args, arm: str, head: str, preset: str, seed: int) -> list[str]:
    return [
        f"model.name_or_path={args.model}",
        f"data.train={AG / 'train.csv'}", f"data.validation={AG / 'val.csv'}", f"data.test={AG / 'test.csv'}",
        "data.label_names=[World, Sports, Business, Sci/Tech]", f"data.max_length={args.max_length}",
        f"data.cache_dir={args.work / 'cache'}",
        f"adapter.head={head}", f"adapter.target_modules={preset}", "adapter.r=auto",
        f"budget.max_trainable_params={args.cap}",
        f"train.max_steps={args.steps}", f"eval.eval_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch_size}", f"train.learning_rate={args.lr}",
        f"train.seed={seed}", f"train.mixed_precision={args.precision}", "train.logging_steps=50",
        "output.report=false", f"output.dir={args.work / 'runs'}", f"output.run_name={arm}-seed-{seed}",
        "output.overwrite=true",
    ]


def run_one(args, arm: str, head: str, preset: str, seed: int) -> dict:
    cmd = [sys.executable, "-m", "loraclf", "train", *overrides(args, arm, head, preset, seed)]
    job = common.run_child(cmd, cwd=ROOT)
    if not job.ok:
        return {"arm": arm, "seed": seed, "error": job.error()}
    run = args.work / "runs" / f"{arm}-seed-{seed}"
    m = json.loads((run / "metrics.json").read_text())
    params = json.loads((run / "params.json").read_text())
    r = yaml.safe_load((run / "config.yaml").read_text())["adapter"]["r"]
    rec = {
        "arm": arm, "head": head, "preset": preset, "seed": seed, "r": r,
        "trainable": params["trainable"], "adapter_params": params["adapter"], "head_params": params["head"],
        "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
        "val_accuracy": m["val"]["accuracy"], "train_runtime_s": m["train_runtime_s"],
        "wall_incl_wait_s": round(job.wall_s, 1), "precision": m["precision"], "global_step": m["global_step"],
        "other_cpu_s": round(job.other_cpu_s, 1),
    }
    shutil.rmtree(run, ignore_errors=True)  # keep only the numbers
    return rec


def _ms(xs: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if len(xs) == 1:
        return f"{scale * xs[0]:.{digits}f}"
    return f"{scale * statistics.mean(xs):.{digits}f} ± {scale * statistics.stdev(xs):.{digits}f}"


def write_table(args, records: list[dict], started: str) -> None:
    ok = [r for r in records if "error" not in r]
    by_arm = {a: [r for r in ok if r["arm"] == a] for a, _, _ in ARMS}
    base = by_arm[ARMS[0][0]]
    base_acc = statistics.mean(r["test_accuracy"] for r in base) if base else None
    base_time = statistics.mean(r["train_runtime_s"] for r in base) if base else None
    lines = [
        "# Head or encoder: one trainable-parameter budget, six allocations (MiniLM-L6, AG News)",
        "",
        f"Generated by `{common.command('budget_heads.py')}` (started {started}, last update {common.utc_now()}).",
        "",
        *common.machine_lines([common.Load(r["other_cpu_s"], r["wall_incl_wait_s"]) for r in ok
                               if "other_cpu_s" in r], what="training run", timings=False),
        f"- Model `{args.model}` (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384). Data: ../shared/data/ag_news "
        "(5,000 train / 600 val / 2,000 test rows, 4 classes). Test accuracy of the last step's weights.",
        f"- Every run: `budget.max_trainable_params={args.cap:,}`, `adapter.r=auto`, {args.steps} optimizer steps, "
        f"batch {args.batch_size}, learning rate {args.lr:g}, linear schedule with 6% warm-up, max_length "
        f"{args.max_length}, precision {args.precision}; seeds {', '.join(map(str, args.seeds))}.",
        "- This is the quarter-scale analogue of roberta-base under 1M: the same ranks per arm (full+qv r=11, "
        "linear+qv r=27, ...), the same share of the cap in the head. One difference: MiniLM's pooler is "
        "pretrained, while roberta-base's head dense starts random.",
        f"- Δ and ratios are against `{ARMS[0][0]}` (the course recipe's allocation) in this same run. Mean ± sample "
        "standard deviation over seeds when there is more than one. Train time is loraclf's `train_runtime_s` "
        "(optimizer steps only). Other jobs on the 2 shared cores add noise to it.",
        "",
        *common.md_table(["head", "preset", "r (auto)", "trainable (adapter + head)", "test accuracy %",
                          "Δ vs full-qv (points)", "test macro-F1 %", "train time s", "time vs full-qv", "n"]),
    ]
    for arm, head, preset in ARMS:
        rs = by_arm[arm]
        if not rs:
            lines.append(f"| {head} | {preset} | | | not run | | | | | 0 |")
            continue
        acc = [r["test_accuracy"] for r in rs]
        tm = [r["train_runtime_s"] for r in rs]
        delta = f"{100 * (statistics.mean(acc) - base_acc):+.2f}" if base_acc is not None else "n/a"
        ratio = f"{statistics.mean(tm) / base_time:.2f}x" if base_time else "n/a"
        lines.append(
            f"| {head} | {preset} | {', '.join(sorted({str(r['r']) for r in rs}))} | {rs[0]['trainable']:,} "
            f"({rs[0]['adapter_params']:,} + {rs[0]['head_params']:,}) | {_ms(acc)} | {delta} | "
            f"{_ms([r['test_macro_f1'] for r in rs])} | {_ms(tm, 1.0, 1)} | {ratio} | {len(rs)} |")
    errors = [r for r in records if "error" in r]
    if errors:
        lines += ["", "Failed runs:"] + [f"- {r['arm']} seed {r['seed']}: {r['error']}" for r in errors]
    lines += ["", f"Raw per-run numbers: `{args.out.with_suffix('.jsonl').name}` beside this file.", ""]
    common.write_text(args.out, "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="auto")
    p.add_argument("--cap", type=int, default=251_000, help="budget.max_trainable_params (adapter + head)")
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--arms", nargs="+", default=[a for a, _, _ in ARMS])
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-budget"))
    p.add_argument("--out", type=Path, default=common.RESULTS / "budget_heads.md")
    args = p.parse_args()
    if not AG.is_dir():
        print(f"AG News not found at {AG} (../shared beside the checkout)", file=sys.stderr)
        return 2
    raw = args.out.with_suffix(".jsonl")
    records = [r for r in common.read_jsonl(raw) if "error" not in r]
    done = {(r["arm"], r["seed"]) for r in records}
    lock = common.hold_cpu_lock()  # noqa: F841  (held until the process ends)
    started = common.utc_now()
    print(f"got the CPU lock at {started}", flush=True)
    arms = [a for a in ARMS if a[0] in args.arms]
    for seed in args.seeds:  # seed-major: an interrupted run still has every arm at the first seeds
        for arm, head, preset in arms:
            if (arm, seed) in done:
                continue
            rec = run_one(args, arm, head, preset, seed)
            records.append(rec)
            common.append_jsonl(raw, rec)
            print(json.dumps(rec), flush=True)
            write_table(args, records, started)
    write_table(args, records, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
