"""Screen one candidate of the few-shot recipe: one data set, one seed, loraclf's few-shot run with the contrastive
stage's module constants overridden (loraclf.training.contrastive: CONTRAST_BATCH, POOLING, ...) or config keys
given (--train; the stage's length is train.contrastive_steps; rows before it set the old CONTRAST_STEPS constant).

    python bench/few_shot_screen.py --ds trec --seed 0 --train train.contrastive_steps=0   # the recipe without the stage
    python bench/few_shot_screen.py --ds ag_news --test-rows 600 --set POOLING=mean --label "mean pool"

Appends one row to bench/results/few_shot_screen.jsonl. A screen (one seed), never a result; run through
/work/bin/cpu. bench/small_data.py measures the chosen recipe.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

import common
import small_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ds", choices=list(small_data.DATASETS), required=True)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-rows", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[], help="NAME=VALUE of loraclf.training.contrastive")
    p.add_argument("--train", nargs="*", default=[], help="extra loraclf overrides key=value")
    p.add_argument("--label", default="")
    args = p.parse_args()
    import torch
    from loraclf.training import contrastive

    torch.set_num_threads(small_data.THREADS)
    for kv in args.set:
        name, value = kv.split("=", 1)
        old = getattr(contrastive, name)
        setattr(contrastive, name, int(value) if old is None else type(old)(value))
    few, test = small_data.sample(args.ds, args.k, args.seed, args.test_rows)
    t0 = time.perf_counter()
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.train)}  # "400" -> 400, as the CLI
    out = small_data.run_loraclf(few, test, args.seed, "auto", extra)
    row = {"ds": args.ds, "k": args.k, "seed": args.seed, "set": args.set, "train": args.train, "label": args.label,
           **out, "test_rows": len(test), "wall_s": round(time.perf_counter() - t0, 1)}
    common.append_jsonl(common.RESULTS / "few_shot_screen.jsonl", row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
