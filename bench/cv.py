"""Cross-validation on speeches: 5 folds of `loraclf cv` against the spread over 3 seeds on the fixed split.

The 189 speeches of ../shared/data/speeches (train + val + test pooled; label `party`) are cross-validated with the
settings of bench/hard_data.py's 'head_tail 512' arm (fixed here, never read from loraclf's defaults):
packaged MiniLM-L6, data.max_length 512, data.long_text head_tail, batch 8, 3 epochs, seed 0, one torch thread.
Each fold's validation split (best epoch) is 28 documents of its own training rows, as the fixed split's
validation file has 28; the folds are grouped by `speaker` (6 speakers gave two speeches; the 3 speeches
without a speaker are a group each), so no speaker is in
two folds. The baseline is the 3-seed spread of the same arm on the fixed 114 / 28 / 47 split, read from
bench/results/hard_data.jsonl (measured by hard_data.py; not rerun here).

    python bench/cv.py                 # the 5 folds (resumes a killed run), then results/cv.md and cv.jsonl
    python bench/cv.py --table-only    # rewrite the table from cv.jsonl
    python bench/cv.py --check         # 24 documents, 2 folds, 1 epoch, to /tmp: never a result
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speeches"
RESULTS = ROOT / "bench" / "results"
BASELINE_ARM = "head_tail 512"
SETTINGS = ["data.text_column=text", "data.label_column=party", "data.max_length=512", "data.long_text=head_tail",
            "train.per_device_train_batch_size=8", "train.num_train_epochs=3", "train.seed=0", "train.num_threads=1",
            "data.validation_split=28", "data.group_column=speaker",
            "train.few_shot=false"]  # hard_data's arm predates the few-shot recipe; ~50 rows per class is its border


def pooled(work: Path, limit: int | None) -> Path:
    import pandas as pd

    df = pd.concat([pd.read_csv(DATA / f"{s}.csv") for s in ("train", "val", "test")], ignore_index=True)
    missing = df["speaker"].isna()  # 3 speeches name no speaker: each is a group of its own
    df.loc[missing, "speaker"] = [f"unnamed speech {i}" for i in df.index[missing]]
    if limit:
        df = df.groupby("party", group_keys=False).head(limit // 2)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "speeches_all.csv"
    df.to_csv(path, index=False)
    return path


def run(args) -> dict:
    import loraclf
    from loraclf.config import parse_override

    data = pooled(args.work, 24 if args.check else None)
    over = {"model.name_or_path": args.model, "data.train": str(data), "data.cache_dir": str(args.work / "cache")}
    for kv in SETTINGS + (["train.num_train_epochs=1", "data.validation_split=4", "data.max_length=64"]
                          if args.check else []):
        path, value = parse_override(kv)
        over[".".join(path)] = value
    meter = common.LoadMeter()
    r = loraclf.cross_validate(None, folds=2 if args.check else args.folds, output=args.work / "cv", **over)
    load = meter.read()
    return {"folds": r.summary["folds"], "rows": r.summary["rows"], "per_fold": r.summary["per_fold"],
            "mean": r.mean, "std": r.std, "folds_trained": r.summary["folds_trained"],
            "folds_reused": r.summary["folds_reused"], "wall_s": round(load.wall_s, 1),
            "other_cpu_s": round(load.other_cpu_s, 1), "settings": SETTINGS, "model": args.model,
            "date": common.utc_now(),
            "commit": os.environ.get("BENCH_COMMIT") or common.commit(), "cpu": common.cpu_name()}


def partial(args) -> dict:
    """--partial: the folds finished so far in the work folder (each fold's heldout.npz), for a table marked as
    partial while the run goes on or after it was stopped; `python bench/cv.py` resumes it."""
    import numpy as np

    folds = []
    for i in range(1, args.folds + 1):
        path = args.work / "cv" / f"fold-{i}" / "heldout.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                m = json.loads(str(saved["metrics"]))
                folds.append({"fold": i, "held_out_rows": int(len(saved["rows"])), "accuracy": m["accuracy"],
                              "macro_f1": m["macro_f1"]})
    return {"folds": args.folds, "rows": 189, "per_fold": folds, "folds_trained": len(folds), "folds_reused": 0,
            "wall_s": float("nan"), "other_cpu_s": float("nan"), "settings": SETTINGS, "model": args.model,
            "date": common.utc_now(), "commit": os.environ.get("BENCH_COMMIT") or common.commit(),
            "cpu": common.cpu_name(), "partial": True}


def baseline() -> list[dict]:
    rows = common.read_jsonl(RESULTS / "hard_data.jsonl")
    return sorted((r for r in rows if r.get("group") == "speeches" and r.get("arm") == BASELINE_ARM
                   and "error" not in r), key=lambda r: r["seed"])


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f} ({100 * min(xs):.2f}–{100 * max(xs):.2f})"


def table(rec: dict) -> list[str]:
    folds = rec["per_fold"]
    base = baseline()
    lines = ["| fold | held-out documents | accuracy % | macro-F1 % |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {f['fold']} | {f['held_out_rows']} | {100 * f['accuracy']:.2f} | {100 * f['macro_f1']:.2f} |"
              for f in folds]
    done = len(folds)
    lines += ["", "| how | n | accuracy %: mean ± std (min–max) | macro-F1 %: mean ± std (min–max) | scored on |",
              "| --- | ---: | --- | --- | --- |",
              f"| `loraclf cv`, {rec['folds']} folds (seed 0), grouped by speaker | {done} folds | "
              f"{_ms([f['accuracy'] for f in folds])} | {_ms([f['macro_f1'] for f in folds])} | each fold's "
              f"held-out documents (~{rec['rows'] // rec['folds']}); together "
              f"{sum(f['held_out_rows'] for f in folds)} of the {rec['rows']}, each once |"]
    if base:
        lines.append(f"| fixed split, seeds {', '.join(str(r['seed']) for r in base)} (hard_data.md) | {len(base)} "
                     f"seeds | {_ms([r['test']['accuracy'] for r in base])} | "
                     f"{_ms([r['test']['macro_f1'] for r in base])} | the same {base[0]['test']['n']} test "
                     f"documents each time |")
    return lines


def write(rec: dict, load: common.Load | None) -> None:
    head = ["# Cross-validation: speeches, 5 folds against 3 seeds on the fixed split (MiniLM-L6, head_tail 512)", ""]
    if rec.get("partial"):
        head += [f"**PARTIAL: {len(rec['per_fold'])} of {rec['folds']} folds finished** when this table was written "
                 f"(`python bench/cv.py --partial`); `python bench/cv.py` resumes the run and rewrites it whole.", ""]
    head += [
            f"- Written by `{common.command('cv.py')}` on {rec['date']}, commit {rec['commit']}.",
            f"- CPU: {rec['cpu']}, 2 cores; one torch thread (`train.num_threads=1`, OMP_NUM_THREADS=1). Accuracy "
            f"only: the wall time ({rec['wall_s']:,.0f} s for {rec['folds_trained']} folds trained, other processes' "
            f"CPU {rec['other_cpu_s']:,.0f} s meanwhile) measures nothing about speed." if not rec.get("partial") else
            f"- CPU: {rec['cpu']}, 2 cores; one torch thread. "
            f"Accuracy only.",
            f"- Data: the {rec['rows']} speeches of `../shared/data/speeches` (train + val + test pooled), label "
            f"`party`. Settings (fixed in bench/cv.py, those of hard_data.py's '{BASELINE_ARM}' arm): "
            + ", ".join(f"`{s}`" for s in rec["settings"]) + f", model `{rec['model']}`.",
            "- Each fold's run picks its best epoch on 28 documents of its own training rows (the fixed split's "
            "validation has 28), so a fold trains on ~123 documents (the fixed split: 114). No speaker is in two "
            "folds (`data.group_column=speaker`; 6 speakers gave two speeches; the 3 speeches without a speaker are "
            "a group each). std: sample std (n − 1).",
            "- Baseline: the same arm's 3 seeds on the fixed 114 / 28 / 47 split, test scores read from "
            "bench/results/hard_data.jsonl (measured earlier by bench/hard_data.py, not rerun here).", ""]
    note = ["", "The fixed split's spread is over seeds on one 47-document test set: it shows how much training "
            "noise moves the score, not how much the choice of test documents does. The folds' spread adds the "
            "second (each fold scores different documents), and their mean uses every document once, so it is the "
            "better estimate of what this recipe reaches on this data; the fixed split's number is one draw of it.",
            "", "Raw numbers: `cv.jsonl` beside this file."]
    common.write_text(RESULTS / "cv.md", "\n".join(head + table(rec) + note) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-cv"))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--check", action="store_true", help="a quick check on 24 documents, written to /tmp only")
    p.add_argument("--partial", action="store_true", help="write the table of the folds finished so far")
    args = p.parse_args()
    if args.check:
        args.work = Path("/tmp/loraclf-bench-cv-check")
    if args.partial:
        rec = partial(args)
        if not rec["per_fold"]:
            print(f"no fold finished yet under {args.work / 'cv'}")
            return 1
    elif args.table_only:
        rec = common.read_jsonl(RESULTS / "cv.jsonl")[-1]
    else:
        rec = run(args)
        print(json.dumps({k: rec[k] for k in ("mean", "std", "wall_s")}, indent=1))
        if args.check:
            print("\n".join(table(rec)))
            return 0
        common.append_jsonl(RESULTS / "cv.jsonl", rec)
    write(rec, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
