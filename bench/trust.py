"""Benchmark (issue 41): can loraclf be trusted to find label errors and duplicates, and do its explanations mean
something? Writes bench/results/trust.md (+ trust.jsonl, one row per measurement).

Parts (each appends its rows to the .jsonl; --part report renders the table from all rows):
  labels   ../shared/data/ag_noisy: precision/recall/F1 of the flagged rows against the 250 synthetic flips, for
           `loraclf audit` (packaged MiniLM, 5 folds) and the anchor (cleanlab on out-of-fold probabilities of TF-IDF
           word 1-2-grams, min_df=2, C=1 LogisticRegression, 5 stratified folds: trust_labels.py). Then the same
           loraclf recipe trained on the clean, the noisy and both cleaned files; test accuracy on ag_news/test.csv.
           The 30 most confident flags that are not synthetic flips are written to trust_nonflip_flags.jsonl for a
           person to judge. One thread (run it through a one-core slot).
  retrain  the labels part's retraining again at other seeds (--seeds; the labels part trains seed 0), on the
           cleaned files the labels part wrote under --work. One thread.
  screen   the label-error screen behind the audit's defaults: F1 against the flips for each probability source
           (finished folds given by --folds-dir NAME=DIR, embedding and TF-IDF logistic regressions) and their means,
           under four cleanlab filter_by choices (trust_labels.screen). Seconds of one thread.
  dups     exact and near duplicates (loraclf.trust.duplicates, the audit's code) within and across the shared
           AG News, TREC and VADER splits, with seconds. One thread.
  dups100k 100k rows (the 7,600 AG News texts with perturbed copies) timed on 2 threads: exact, and the near-duplicate
           search; the embedding rate is measured on 2,000 of them and projected (trust_parts.py says why).
  search100k  the near-duplicate search alone on dups100k's 100k embeddings, timed on 2 threads: the audit's search
           (triangular blocks, bf16 where native, float32 recheck) against float32 throughout, same pairs checked.
  explain  AOPC by deletion on AG News test texts (--texts N) with a trained run (--run): top-k Integrated-Gradients
           words against k random words, leave-one-out occlusion and last-layer [CLS] attention (k = 1, 3, 5).
  speed    seconds per text of Integrated Gradients at the default steps on 2 threads (20 texts near 60 tokens).

Run (from the repository root):
    /work/bin/cpu python bench/trust.py --part labels          # ~30 min at one thread
    /work/bin/cpu python bench/trust.py --part retrain --seeds 1 2 --work /tmp/h41/bench   # ~25 min
    /work/bin/cpu python bench/trust.py --part screen --folds-dir "1 epoch=/tmp/trust_bench/audit/folds"
    /work/bin/cpu python bench/trust.py --part dups
    /work/bin/cpu python bench/trust.py --part explain --run RUN --texts 150
    /work/bin/cpu2 python bench/trust.py --part dups100k
    /work/bin/cpu2 python bench/trust.py --part search100k     # ~1 min
    /work/bin/cpu2 python bench/trust.py --part speed --run RUN
    python bench/trust.py --part report
    python bench/trust.py --part explain --run RUN --texts 5 --out /tmp/trust.md   # check the script
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common

RESULTS = common.ROOT / "bench" / "results"


def part_labels(work: Path, out: Path, first_pass_s: float | None = None) -> None:
    import trust_labels as tl

    work.mkdir(parents=True, exist_ok=True)
    meter = common.LoadMeter()
    rows = [tl.anchor()]
    print(rows[0], flush=True)
    rows += tl.audit(work, first_pass_s)
    print(rows[-1], flush=True)
    for r in rows:
        common.append_jsonl(out, {"part": "labels", **r})
    for r in tl.retrain(work):
        print(r, flush=True)
        common.append_jsonl(out, {"part": "retrain", **r})
    flags = out.with_name(out.stem + "_nonflip_flags.jsonl")
    flags.write_text("".join(json.dumps(r) + "\n" for r in tl.non_flip_flags(work)))
    load = meter.read()
    common.append_jsonl(out, {"part": "load", "what": "labels", "other_cpu_s": round(load.other_cpu_s, 1),
                              "wall_s": round(load.wall_s, 1), "date": common.utc_now()})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", required=True,
                    choices=["labels", "retrain", "screen", "dups", "dups100k", "search100k", "explain", "speed",
                             "report"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/trust_bench"), help="folder for runs and audits")
    ap.add_argument("--run", type=Path, help="a trained AG News run (explain, speed)")
    ap.add_argument("--texts", type=int, default=150, help="AG News test texts for AOPC")
    ap.add_argument("--audit-seconds", type=float, help="labels: the wall time of an audit an earlier invocation ran")
    ap.add_argument("--folds-dir", action="append", default=[], metavar="NAME=DIR",
                    help="screen: finished audit folds (DIR/fold-*/heldout.npz) to screen as source NAME")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="retrain: the recipe's train.seed values")
    ap.add_argument("--out", type=Path, default=RESULTS / "trust.md")
    args = ap.parse_args(argv)
    jsonl = args.out.with_suffix(".jsonl")
    t0 = time.perf_counter()
    if args.part == "labels":
        part_labels(args.work, jsonl, args.audit_seconds)
    elif args.part == "retrain":
        import trust_labels as tl

        for seed in args.seeds:
            for r in tl.retrain(args.work, seed):
                print(r, flush=True)
                common.append_jsonl(jsonl, {"part": "retrain", **r})
    elif args.part == "screen":
        import trust_labels

        dirs = dict(d.split("=", 1) for d in args.folds_dir) or {"folds": str(args.work / "audit" / "folds")}
        for r in trust_labels.screen(args.work, {k: Path(v) for k, v in dirs.items()}):
            common.append_jsonl(jsonl, {"part": "labels_screen", **r})
    elif args.part == "report":
        import trust_report

        trust_report.write(jsonl, args.out)
    else:
        import trust_parts

        rows = trust_parts.PARTS[args.part](args)
        for r in rows:
            common.append_jsonl(jsonl, {"part": args.part, **r})
    print(f"{args.part}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
