"""Benchmark (issue 17): the three non-single-text tasks, loraclf against a classical anchor and the stock Trainer.

Data sets (fixed splits under ../shared/data, never re-split; see its README):
  vader      regression, `sentiment` (mean human rating, -4..4) of tweets and movie snippets
             main metric Pearson r; also RMSE, MAE, Spearman rho, R^2
  ag_digest  multi-label, CONSTRUCTED from AG News (1-3 articles joined, their topics as `|`-joined labels)
             main metric micro-F1; also macro-F1, subset accuracy, Hamming loss, mAP (mean average precision per label)
  ag_pairs   sentence pairs, binary, CONSTRUCTED from AG News (a title with its own or another row's description)
             main metric accuracy; also macro-F1

Contenders, each run in its own child process (clean peak RSS) at ONE torch/BLAS thread, one after the other:
  anchor     scikit-learn on the same split: TF-IDF (word 1-2 grams, sublinear tf) + Ridge (vader, alpha chosen on
             val Pearson); one-vs-rest LogisticRegression, threshold 0.5 (ag_digest, C chosen on val micro-F1);
             TF-IDF of title and of description (one vocabulary fitted on both) + their elementwise product + cosine,
             into LogisticRegression (ag_pairs, C chosen on val accuracy). Deterministic: run once (seed 0).
  trainer    transformers.Trainer + peft.get_peft_model with problem_type in the model config. Every setting is a
             constant of bench/tasks_contenders.py (TRAINER), none is read from loraclf.
  loraclf    `loraclf.train` with its defaults plus only the data keys, model.problem_type and train.seed.

Metrics are computed by this script's own functions (sklearn/scipy) for the anchor and the Trainer; loraclf's are
its run's metrics.json (its val metrics are also recomputed here from val_predictions.csv where that file can be read,
as a check that both metric codes agree). Raw rows are appended to the .jsonl beside --out; a later invocation skips
the (dataset, contender, seed) rows already there (failed rows are retried) and re-renders the table from all rows.

Run (from the repository root; about 1.5 hours at one thread):
    python bench/tasks.py                                   # writes bench/results/tasks.md (+ tasks.jsonl)
    python bench/tasks.py --contenders loraclf              # add missing loraclf rows later
    python bench/tasks.py --limit 200 --seeds 0 --out /tmp/tasks.md   # check the script (first 200 rows of each split)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import common
from tasks_contenders import (ANCHOR_GRID, CONTENDERS, DATA, DATASETS, MAIN, MODEL, SECONDARY, TARGET_VS_ANCHOR,
                              TRAINER, run_anchor, run_loraclf, run_trainer)


def child(args) -> None:
    """One contender in this process (--child NAME), its result written to --result."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    if args.child == "anchor":
        out = run_anchor(args.dataset, args.seed, args.limit)
    elif args.child == "trainer":
        out = run_trainer(args.dataset, args.seed, args.limit, work)
    else:
        out = run_loraclf(args.dataset, args.seed, args.limit, work)
    out["threads"] = torch.get_num_threads()  # its peak RSS: measured by the parent (common.run_child)
    Path(args.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ driver


def run_child(args, dataset: str, contender: str, seed: int) -> dict:
    result = args.work / f"{dataset}-{contender}-{seed}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", contender, "--dataset", dataset, "--seed", str(seed),
           "--result", str(result), "--work", str(args.work)] + (["--limit", str(args.limit)] if args.limit else [])
    row = {"dataset": dataset, "contender": contender, "seed": seed, "limit": args.limit, "argv": shlex.join(args.argv),
           "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "code": common.commit()}
    job = common.run_child(cmd, env=common.OFFLINE_ENV, threads=1)
    row.update(process_s=round(job.wall_s, 1), own_cpu_s=round(job.cpu_s, 1), other_cpu_s=round(job.other_cpu_s, 1))
    if not job.ok or not result.exists():
        row["error"] = job.error(limit=500)
        row["stderr_tail"] = job.tail()
    else:
        row.update(json.loads(result.read_text()))
        row["peak_rss_mb"] = job.peak_rss_mb
    return row


def _metric_cell(vals: list, pct: bool) -> str:
    s = (lambda v: f"{100 * v:.2f}") if pct else (lambda v: f"{v:.4f}")
    if not vals:
        return "-"
    if len(vals) == 1:
        return s(vals[0])
    return f"{s(statistics.median(vals))} ({s(min(vals))}–{s(max(vals))})"


PRECISION_NAME = {"no": "fp32 (auto: no bf16 on this CPU)", "fp64": "fp64 (sklearn)"}
PCT = {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "mean_average_precision", "accuracy"}
LABEL = {"anchor": "classical anchor (TF-IDF + linear, sklearn)", "trainer": "stock Trainer + PEFT",
         "loraclf": "loraclf defaults + data keys"}
METRIC_NAME = {"pearson": "Pearson r", "spearman": "Spearman ρ", "rmse": "RMSE", "mae": "MAE", "r2": "R²",
               "micro_f1": "micro-F1 %", "macro_f1": "macro-F1 %", "subset_accuracy": "subset acc. %",
               "hamming_loss": "Hamming loss %", "mean_average_precision": "mAP %", "accuracy": "accuracy %"}
DESCRIBE = {
    "vader": "**vader** — regression (VADER ground truth: tweets + movie snippets, mean human rating -4..4); "
             "10,365 train / 1,479 val / 2,961 test rows.",
    "ag_digest": "**ag_digest** — multi-label, **constructed from AG News** (1–3 articles joined; their topics as the "
                 "labels, 4 topics); 5,000 train / 600 val / 2,000 test rows. The anchor and the Trainer predict a topic "
                 "at probability >= 0.5 (no threshold tuned); loraclf uses its own per-label thresholds chosen on val.",
    "ag_pairs": "**ag_pairs** — sentence pairs, binary, **constructed from AG News** (a title with its own "
                "description = match, or another row's = mismatch; half the mismatches share the topic); "
                "5,000 train / 600 val / 2,000 test rows.",
}


def render(args, rows: list) -> None:
    import peft
    import sklearn
    import transformers

    ok = [r for r in rows if "error" not in r]
    got = {(r["dataset"], r["contender"]) for r in ok}
    limits = sorted({r["limit"] for r in ok if r.get("limit")})
    when = sorted(r["started"] for r in rows) or ["-"]
    other = [r["other_cpu_s"] for r in ok]
    other_frac = [r["other_cpu_s"] / r["process_s"] for r in ok if r["process_s"]]
    threads = sorted({r["threads"] for r in ok if "threads" in r})
    invocations = []
    for r in rows:  # the command lines that produced the rows, in order
        a = r.get("argv", shlex.join(args.argv))
        if a not in invocations:
            invocations.append(a)
    lines = [
        "# Task coverage: regression, multi-label and sentence pairs (issue 17)",
        "",
        "Generated by " + ", then ".join(f"`python bench/tasks.py{' ' + a if a else ''}`" for a in invocations)
        + f" (rows accumulate in `{args.out.with_suffix('.jsonl').name}`; jobs started from {when[0]} to {when[-1]}; "
        f"rendered {common.utc_now()}).",
        "",
    ]
    if limits:
        lines += [f"**SCRIPT CHECK ONLY: rows trained on the first {', '.join(map(str, limits))} rows of each split; "
                  "these numbers mean nothing.**", ""]
    lines += [
        *common.machine_lines([common.Load(r["other_cpu_s"], r["process_s"]) for r in ok], what="job",
                              timings=False),
        f"- Libraries: transformers {transformers.__version__}, peft {peft.__version__}, scikit-learn "
        f"{sklearn.__version__}.",
        f"- **Every job at {', '.join(map(str, threads)) or '1'} torch thread (OMP_NUM_THREADS=1), one job at a time "
        "per invocation, machine shared** with other work (another benchmark's job or a test run, each at 1 thread, on "
        "the 2 cores): times are at 1 thread on a shared machine. CPU used by other processes while a job ran: "
        + (f"median {common.median(other):,.0f} CPU s per job, median {common.median(other_frac):.2f} cores "
           f"(of {os.cpu_count()})." if other else "-"),
        f"- Model: `{MODEL}` (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384, 22.7M parameters) for the Trainer and "
        "loraclf. Each contender runs in its own process (peak RSS is that process's). Seeds 0, 1, 2 planned for the "
        "Trainer and loraclf (median over the seeds that finished, min–max in brackets; the runs column names them); "
        "the anchor is deterministic and ran once.",
        f"- Stock Trainer + PEFT, settings fixed in the script: LoRA r={TRAINER['r']}, alpha {TRAINER['lora_alpha']}, "
        f"dropout {TRAINER['lora_dropout']}, query+value, classifier trained in full (modules_to_save=[classifier]), "
        f"lr {TRAINER['learning_rate']:g}, {TRAINER['warmup']:.0%} warm-up then linear decay, {TRAINER['epochs']} epochs, "
        f"batch {TRAINER['batch']}, weight decay {TRAINER['weight_decay']}, max_length {TRAINER['max_length']}, dynamic "
        "padding with group_by_length, fp32, no evaluation during training; `problem_type` set in the model config "
        "(regression: 1 output, MSE; multi-label: 4 outputs, BCE on float multi-hot labels); pairs encoded as "
        "`tokenizer(title, description, truncation=True, max_length=128)`.",
        "- loraclf: `loraclf.train({model: {problem_type}, data: {train, validation, test, text/label columns, "
        "text_pair_column or label_delimiter}, train: {seed}, output: {dir, report: false}})`, everything else its "
        "defaults (its head trains pooler + classifier, hence more trainable parameters than the Trainer's; its "
        "precision is its default `auto`, shown per row; on ag_digest it picks a threshold per label on val "
        "(the run's decision.json) and applies it to test, where the Trainer and the anchor use 0.5; by default it "
        "evaluates on val once per epoch and keeps the best epoch's weights by its main metric (RMSE for "
        "regression), where the Trainer keeps the last step's). Its metrics are its run's metrics.json.",
        f"- Anchor: TF-IDF word 1–2 grams, sublinear tf, fitted on train; vader: Ridge, alpha from "
        f"{ANCHOR_GRID['ridge_alpha']} by val Pearson; ag_digest: one-vs-rest LogisticRegression, C from "
        f"{ANCHOR_GRID['C']} by val micro-F1, threshold 0.5; ag_pairs: title and description TF-IDF (one vocabulary), "
        "their elementwise product and cosine, into LogisticRegression, C from the same grid by val accuracy. "
        "Test is scored once, for the chosen value. Its \"train s\" is the whole fit including the grid; its "
        "\"trainable\" is the number of linear coefficients.",
        "- Metrics are on test. The anchor's and the Trainer's are computed by the script's own sklearn/scipy "
        "functions (mAP = mean over labels of average precision of the probabilities; Hamming loss and the F1s at "
        "threshold 0.5). Percentages for the classification metrics. Train s: the training loop only "
        "(Trainer's train_runtime, loraclf's train_runtime_s), evaluation excluded.",
        "",
    ]
    for ds in args.all_datasets:
        mets = [MAIN[ds], *SECONDARY[ds]]
        lines += [f"## {ds}", "", DESCRIBE[ds], "",
                  *common.md_table(["contender", "runs",
                                    *(f"**{METRIC_NAME[m]}** (main)" if m == MAIN[ds] else METRIC_NAME[m] for m in mets),
                                    f"val {METRIC_NAME[MAIN[ds]]}", "train s", "steps", "trainable params",
                                    "peak RSS MB", "precision"])]
        for c in CONTENDERS:
            rs = sorted((r for r in ok if r["dataset"] == ds and r["contender"] == c), key=lambda r: r["seed"])
            if not rs:
                errs = [r for r in rows if r["dataset"] == ds and r["contender"] == c]
                lines.append(f"| {LABEL[c]} | 0 | " + " | ".join("missing" for _ in mets)
                             + f" | missing | | | | | {'failed, see below' if errs else 'not run'} |")
                continue
            cells = []
            for m in mets:
                vals = [r["test"][m] for r in rs if m in r["test"]]
                cells.append(_metric_cell(vals, m in PCT) if vals else "not reported")
            val_main = [r["val"][MAIN[ds]] for r in rs if MAIN[ds] in r["val"]]
            steps = sorted({r["steps"] for r in rs if r.get("steps") is not None})
            lines.append(
                f"| {LABEL[c]} | {len(rs)} (seeds {','.join(str(r['seed']) for r in rs)}) | " + " | ".join(cells)
                + f" | {_metric_cell(val_main, MAIN[ds] in PCT)} | {common.median([r['train_s'] for r in rs]):,.1f} | "
                f"{', '.join(map(str, steps)) or '-'} | {', '.join(f'{t:,}' for t in sorted({r['trainable'] for r in rs}))} | "
                f"{common.median([r['peak_rss_mb'] for r in rs]):,.0f} | "
                f"{', '.join(sorted({PRECISION_NAME.get(str(r.get('precision')), str(r.get('precision'))) for r in rs}))} |")
        anchors = [r for r in ok if r["dataset"] == ds and r["contender"] == "anchor"]
        if anchors and "chosen" in anchors[0]:
            a = anchors[0]
            lines += ["", f"Anchor: chose {', '.join(f'{k}={v:g}' for k, v in a['chosen'].items())} on val "
                          f"({a['features']:,} features); val {METRIC_NAME[MAIN[ds]]} per value: "
                      + ", ".join(f"{list(t.keys())[0]}={list(t.values())[0]:g}: "
                                  f"{(100 * list(t.values())[1]) if MAIN[ds] in PCT else list(t.values())[1]:.{2 if MAIN[ds] in PCT else 4}f}"
                                  for t in a["tried"]) + "."]
        lo = [r for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"]
        checks = []
        for r in lo:
            if "val_recomputed" in r:
                diff = max(abs(r["val_recomputed"][k] - r["val"][k]) for k in r["val"] if k in r["val_recomputed"])
                checks.append(f"seed {r['seed']}: largest difference {diff:.2g}")
            elif "recompute_error" in r:
                checks.append(f"seed {r['seed']}: not recomputed ({r['recompute_error']})")
        if checks:
            lines += ["", "loraclf's val metrics recomputed by this script from its val_predictions.csv: "
                      + "; ".join(checks) + "."]
        lines.append("")

    # targets: computed from the medians above
    lines += ["## Targets", "",
              "Computed from the test medians above (PASS/MISS is the script's, from the numbers).", "",
              *common.md_table(["data set", "target", "loraclf", "reference", "difference", "result"])]
    for ds in args.all_datasets:
        m = MAIN[ds]
        pct = m in PCT
        fmtv = (lambda v: f"{100 * v:.2f}") if pct else (lambda v: f"{v:.4f}")
        fmtd = (lambda v: f"{100 * v:+.2f} points") if pct else (lambda v: f"{v:+.4f}")
        lo = common.median([r["test"].get(m) for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"])
        for ref, want in (("anchor", TARGET_VS_ANCHOR[ds]), ("trainer", 0.0)):
            rv = common.median([r["test"].get(m) for r in ok if r["dataset"] == ds and r["contender"] == ref])
            name = (f"{METRIC_NAME[m]} ≥ anchor {fmtd(want)}" if ref == "anchor"
                    else f"{METRIC_NAME[m]} ≥ stock Trainer (level, same steps)")
            if lo is None or rv is None:
                lines.append(f"| {ds} | {name} | {fmtv(lo) if lo is not None else 'missing'} | "
                             f"{fmtv(rv) if rv is not None else 'missing'} | - | not measured |")
                continue
            diff = lo - rv
            verdict = "PASS" if diff >= want - 1e-12 else f"MISS (short by {fmtd(want - diff).lstrip('+')})"
            note = ""
            if ref == "trainer":
                s_lo = {r.get("steps") for r in ok if r["dataset"] == ds and r["contender"] == "loraclf"}
                s_tr = {r.get("steps") for r in ok if r["dataset"] == ds and r["contender"] == "trainer"}
                note = "" if s_lo == s_tr else f" (steps differ: loraclf {sorted(map(str, s_lo))}, Trainer {sorted(map(str, s_tr))})"
            lines.append(f"| {ds} | {name} | {fmtv(lo)} | {fmtv(rv)} | {fmtd(diff)} | {verdict}{note} |")
    missing = [(ds, c) for ds in args.all_datasets for c in CONTENDERS if (ds, c) not in got]
    errs = [r for r in rows if "error" in r and (r["dataset"], r["contender"]) not in got]
    if missing:
        slow = max((r["process_s"] for r in ok if r["contender"] != "anchor"), default=None)
        lines += ["", "Missing: " + "; ".join(f"{ds} {c}" for ds, c in missing) + " (not run in the time available"
                  + (f"; the slowest model job that finished took {slow / 60:.0f} min wall at 1 thread on the shared "
                     "machine" if slow else "") + "; add them with `python bench/tasks.py`, which skips the rows "
                  "already in the .jsonl)."]
    for ds in args.all_datasets:
        if ds != "vader":
            continue
        for c in ("trainer", "loraclf"):
            bad = [r for r in ok if r["dataset"] == ds and r["contender"] == c and r["test"].get("r2", 1) < 0]
            if bad:
                lines += ["", f"Note: {LABEL[c]} on {ds}, seed(s) {', '.join(str(r['seed']) for r in bad)}: test R² "
                          + ", ".join(f"{r['test']['r2']:.3f}" for r in bad) + " (below 0: worse than predicting the "
                          "mean) and Pearson " + ", ".join(f"{r['test']['pearson']:.4f}" for r in bad)
                          + ": that run learned no usable regression."
                          + "".join(f" Seed {r['seed']}: its test predictions have mean {sp['pred_mean']:.3f} and std "
                                    f"{sp['pred_std']:.3f}, the targets mean {sp['true_mean']:.3f} and std "
                                    f"{sp['true_std']:.3f}; final training loss {r['train_loss']:.3f}."
                                    for r in bad if (sp := r.get("test_spread")) and "train_loss" in r)]
    if errs:
        lines += ["", "Failed or invalid runs (the last error line of the child process, or why the row does not count):", ""]
        seen = set()
        for r in reversed(errs):
            key = (r["dataset"], r["contender"], r["error"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {r['dataset']} {r['contender']} seed {r['seed']}{' (32-row probe)' if r.get('probe') else ''} "
                         f"({r['started']}, code {r['code']}): "
                         f"`{r['error']}`")
    lines += ["", "Per run (test main metric / train s / other processes' CPU s during the job):", ""]
    for ds in args.all_datasets:
        for c in CONTENDERS:
            rs = sorted((r for r in ok if r["dataset"] == ds and r["contender"] == c), key=lambda r: r["seed"])
            if rs:
                lines.append(f"- {ds} {c}: " + "; ".join(
                    f"seed {r['seed']}: {r['test'][MAIN[ds]]:.4f} / {r['train_s']:,.1f} / {r['other_cpu_s']:,.0f}"
                    for r in rs) + f" (code {rs[-1]['code']})")
    lines += ["", f"Raw rows: `{args.out.with_suffix('.jsonl').name}`.", ""]
    common.write_text(args.out, "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--limit", type=int, default=None, help="first N rows of each split (script check only)")
    p.add_argument("--out", type=Path, default=common.RESULTS / "tasks.md")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-tasks"))
    p.add_argument("--until", default=None, help="UTC HH:MM after which no new job is started")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip loraclf's 32-row probe run before its first full run per data set")
    p.add_argument("--render-only", action="store_true", help="rewrite the table from the .jsonl, run nothing")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.argv = sys.argv[1:]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    contenders = [c for c in args.contenders.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bad = [d for d in datasets if d not in DATASETS] + [c for c in contenders if c not in CONTENDERS]
    if bad:
        p.error(f"unknown data set or contender: {', '.join(bad)}")
    for d in datasets:
        if not (DATA / d).is_dir():
            sys.exit(f"{DATA / d} not found (../shared beside the checkout)")
    raw = args.out.with_suffix(".jsonl")
    rows = common.read_jsonl(raw)
    args.all_datasets = [d for d in DATASETS if d in datasets or any(r["dataset"] == d for r in rows)]
    done = {(r["dataset"], r["contender"], r["seed"]) for r in rows if "error" not in r}
    # data-set-major, anchors first, then seed by seed: an interrupted run has every contender at the first seeds
    plan = [(d, "anchor", 0) for d in datasets if "anchor" in contenders]
    for s in seeds:  # seed-major: an interrupted run has every data set and contender at the first seeds
        plan += [(d, c, s) for d in datasets for c in contenders if c != "anchor"]
    stop_at = common.stop_time(args.until)
    probed = {}
    for d, c, s in plan:
        if args.render_only or (d, c, s) in done:
            continue
        if stop_at is not None and datetime.now(timezone.utc) >= stop_at:
            print(f"--until {args.until} UTC reached: no new job started", flush=True)
            break
        if c == "loraclf" and args.probe and not args.limit and d not in probed:
            # a few rows first, so that an unsupported key fails in seconds, not after a full training run
            probe = argparse.Namespace(**{**vars(args), "limit": 32, "work": args.work / "probe"})
            probe.work.mkdir(parents=True, exist_ok=True)
            pr = run_child(probe, d, c, s)
            probed[d] = "error" not in pr
            if not probed[d]:
                pr["probe"] = True
                rows.append(pr)
                common.append_jsonl(raw, pr)
                print(json.dumps({k: pr.get(k) for k in ("dataset", "contender", "seed", "probe", "error")}), flush=True)
                render(args, rows)
        if c == "loraclf" and probed.get(d) is False:
            continue
        row = run_child(args, d, c, s)
        rows.append(row)
        common.append_jsonl(raw, row)
        print(json.dumps({k: row.get(k) for k in ("dataset", "contender", "seed", "train_s", "process_s", "other_cpu_s",
                                                   "error")} | {"test": row.get("test")}), flush=True)
        render(args, rows)
    render(args, rows)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
