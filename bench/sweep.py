"""Benchmark: an Optuna sweep of learning rate, LoRA rank and target preset for the packaged MiniLM on AG News,
under a 1M trainable-parameter budget, against the base config (trial 0 of the same study, enqueued first).

Selection uses the validation split only. Afterwards the best trial's and the base config's run folders (the
weights each trial kept, chosen by validation accuracy) are scored once on the 2,000-row test split.

Run (from the repository root):
    flock /tmp/loraclf-cpu.lock python bench/sweep.py    # runs or resumes the sweep, writes bench/results/sweep.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime, timezone
from pathlib import Path

import common

ROOT = common.ROOT
TEST = common.DATA / "ag_news" / "test.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=str(ROOT / "configs" / "sweep_agnews_minilm.yaml"))
    ap.add_argument("--storage", help="Optuna storage URL (default: the SQLite file in the sweep folder)")
    ap.add_argument("--out", default=str(common.RESULTS / "sweep.md"))
    ap.add_argument("--n-trials", type=int, help="at most this many new trials now (0: only score and write the table)")
    ap.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    ap.add_argument("--until", help="start no new trial after this UTC time (HH:MM), e.g. a shared machine's deadline")
    args = ap.parse_args()

    from loraclf.infer.files import evaluate_file
    from loraclf.runs import SWEEP_SUMMARY as SUMMARY
    from loraclf.sweep import load_sweep, run_sweep

    if not TEST.is_file():
        sys.exit(f"AG News test split not found at {TEST} (../shared beside the checkout)")
    meter = common.LoadMeter()
    if args.until:
        left = (common.stop_time(args.until) - datetime.now(timezone.utc)).total_seconds()
        args.timeout = max(1.0, min(args.timeout or left, left))
        print(f"starting no trial after {args.until} UTC ({args.timeout:.0f} s from now)", file=sys.stderr)
    folder = run_sweep(args.sweep, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout)
    load = meter.read()
    sweep_wall = load.wall_s
    spec = load_sweep(args.sweep)
    with open(folder / SUMMARY, newline="") as f:
        rows = list(csv.DictReader(f))
    col = f"val_{spec.metric}"
    done = [r for r in rows if r["state"] == "COMPLETE"]
    base = next(r for r in rows if r["trial"] == "0")
    best = max(done, key=lambda r: float(r[col]))
    test = {}
    for name, row in (("base config (trial 0)", base), (f"best trial ({best['trial']})", best)):
        m = evaluate_file(row["run_dir"], TEST, batch_size=128, precision="fp32", quiet=True)
        test[name] = (row, m)

    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "REJECTED", "FAIL", "SKIPPED")}
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["REJECTED"]
    keys = [p.key for p in spec.space]
    lines = [
        "# Sweep: learning rate, LoRA rank and target preset, MiniLM-L6 on AG News, 1M budget",
        "",
        *common.machine_lines([load], what="the sweep", timings=False),
        "- Run times depend on what else the machine ran and are only comparable within this table.",
        f"- Command: `{common.command('sweep.py')}` (which runs "
        "`loraclf sweep configs/sweep_agnews_minilm.yaml`, then scores two run folders on the test split with "
        "`loraclf.infer.files.evaluate_file`)",
        f"- Sweep file: `configs/sweep_agnews_minilm.yaml`: base `configs/agnews_minilm.yaml`, 200 optimizer steps of "
        f"batch 32, 64 tokens, evaluation every 50 steps; TPE sampler (6 random start-up trials), median pruner (after 4 "
        f"trials, from step 100); n_trials {spec.n_trials}; trial 0 is the base config (lr 1e-3, r=11, qv).",
        f"- Trials: {len(rows)} in all: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['REJECTED']} rejected over budget without training"
        + (f", {counts['FAIL']} failed" if counts["FAIL"] else "") + f". Sweep wall time {sweep_wall / 60:.1f} min "
        f"(this invocation).",
        *([f"- **Incomplete (a miss):** {finished} of the {spec.n_trials} requested trials finished before the time "
           f"limit (`--until`/`--timeout`, set by the shared machine's deadline); the study resumes with the same "
           f"command."] if finished < (spec.n_trials or 0) else []),
        "",
        "## Test accuracy: best trial against the base config (same 200 steps, same seed)",
        "",
        *common.md_table(["config", "lr", "r", "target_modules", "trainable params", "val accuracy", "test accuracy",
                          "test macro-F1"]),
    ]
    for name, (row, m) in test.items():
        lines.append(f"| {name} | {float(row['train.learning_rate']):.2e} | {row['adapter.r']} | {row['adapter.target_modules']} "
                     f"| {int(row['trainable_params']):,} | {float(row[col]):.4f} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |")
    (_, mb), (_, mbest) = test.values()
    lines += [
        "",
        f"Ratio best / base: test accuracy {mbest['accuracy'] / mb['accuracy']:.3f}x "
        f"({(mbest['accuracy'] - mb['accuracy']) * 100:+.2f} points); test error "
        f"{(1 - mbest['accuracy']) / max(1 - mb['accuracy'], 1e-9):.3f}x. One seed; the test split has 2,000 rows, so a "
        f"difference below about 1.5 points is within noise (binomial standard error ≈ 0.6 points per arm).",
        "",
        f"best.yaml (written by the sweep to `{folder}/best.yaml`; it reproduces the best trial):",
        "",
        "```yaml",
        (folder / "best.yaml").read_text().rstrip(),
        "```",
        "",
        "## Every trial (sweep_summary.csv)",
        "",
        *common.md_table(["trial", "state", *keys, "trainable params", "val accuracy", "last step", "run time s",
                          "note"]),
    ]
    for r in rows:
        vals = []
        for k in keys:
            v = r[k]
            vals.append(f"{float(v):.2e}" if k == "train.learning_rate" and v else v)
        tp = f"{int(r['trainable_params']):,}" if r["trainable_params"] else ""
        acc = f"{float(r[col]):.4f}" if r[col] else ""
        note = r["note"].split(";")[0] if r["note"] else ""
        lines.append(f"| {r['trial']} | {r['state']} | {' | '.join(vals)} | {tp} | {acc} | {r['last_step']} | "
                     f"{r['run_time_s']} | {note} |")
    lines += ["", "Val accuracy of a pruned trial is its last reported value. Plots: "
              f"`{folder}/plots/` (history, importances, metric against each searched key)."]
    common.write_text(Path(args.out), "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
