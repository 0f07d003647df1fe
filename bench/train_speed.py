"""Benchmark: loraclf's training loop against the stock transformers.Trainer + PEFT recipe, and the hardware floor.

Contenders (same machine, same run, same data, same model, same LoRA shape and trainable-parameter count):
  seed recipe   the course report's recipe as its starter notebook wrote it: Trainer + peft.get_peft_model,
                datasets.map(batched=True) with tokenizer(truncation=True, padding=True), DataCollatorWithPadding,
                lr 1e-4, weight decay 0.001, 1000 warm-up steps, 2 epochs, batch 32/64, evaluation every 500 steps
  stock fp32    the same Trainer with dynamic padding, length-grouped sampling and loraclf's hyperparameters
  stock bf16    the same with bf16=True: the reference every target is measured against
  loraclf       `loraclf train` with its defaults (only model and data given)

Data: ../shared/data/ag_news (5,000 train / 600 val / 2,000 test). Model: the packaged MiniLM-L6 (--large adds the
packaged MPNet-base, roberta-base's cost). Every contender runs in its own process (clean peak RSS). The last three
are repeated --reps times in the same run (medians reported); the seed recipe runs once (--no-seed skips it).

Times: "train s" is time spent training, evaluation excluded, the same way for every contender; "time to acc." is
that training time until the first evaluation whose val accuracy reaches the reference's final val accuracy in the
same repetition (evaluations happen where each contender's own schedule puts them). Tokens: real = attention-mask
ones, padded = every position fed to the model.

Run (from the repository root):
    python bench/train_speed.py                     # writes bench/results/train_speed.md (+ .jsonl)
    python bench/train_speed.py --model TINY --epochs 1 --no-seed --reps 1 --out /tmp/ts.md   # check the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AG = ROOT.parent / "shared" / "data" / "ag_news"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# loraclf's defaults, read from its config dataclasses (one place for defaults), for the tuned stock contenders


def loraclf_defaults():
    from loraclf.config import Config

    return Config()


# ------------------------------------------------------------------------------------------ one contender (child)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_path(name: str) -> str:
    from loraclf.sources import resolve_model

    return resolve_model(name)


def _lora_config(d):
    """The LoRA shape loraclf builds by default for a BERT-family model, in stock PEFT terms."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=d.adapter.r, lora_alpha=d.adapter.lora_alpha,
                      lora_dropout=d.adapter.lora_dropout, target_modules=["query", "value"],
                      modules_to_save=["pooler", "classifier"])


def run_stock(name: str, args) -> dict:
    """The stock Trainer contenders: 'seed', 'stock-fp32', 'stock-bf16'."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from peft import get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    d = loraclf_defaults()
    path = _model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    raw = load_dataset("csv", data_files={s: str(AG / f"{s}.csv") for s in ("train", "val", "test")})
    raw = raw.select_columns(["text", "label"]).rename_column("label", "labels")
    seed = name == "seed"
    if seed:  # the starter notebook: pad inside map, to the widest row of each 1,000-row map batch
        enc = raw.map(lambda b: tok(b["text"], truncation=True, padding=True), batched=True, remove_columns=["text"])
    else:
        enc = raw.map(lambda b: tok(b["text"], truncation=True, max_length=d.data.max_length), batched=True,
                      remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=4, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    model = get_peft_model(model, _lora_config(d))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # tokens of training forwards only (evaluation runs in eval mode), counted where the model receives them
    counts = {"real": 0, "padded": 0}

    def count_tokens(module, a, kw):
        if module.training and kw.get("attention_mask") is not None:
            counts["real"] += int(kw["attention_mask"].sum())
            counts["padded"] += kw["attention_mask"].numel()

    model.register_forward_pre_hook(count_tokens, with_kwargs=True)

    class Clock(TrainerCallback):
        """Training time with evaluation taken out, and val accuracy at each evaluation."""

        def __init__(self):
            self.t0 = self.last_step_end = self.train_s = None
            self.eval_s = 0.0
            self.evals = []

        def on_train_begin(self, a, state, control, **kw):
            self.t0 = self.last_step_end = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.last_step_end = time.perf_counter()

        def on_evaluate(self, a, state, control, metrics=None, **kw):
            if self.train_s is not None:  # the evaluations after training are not on the clock
                return
            now = time.perf_counter()
            self.eval_s += now - self.last_step_end
            self.evals.append({"step": state.global_step, "accuracy": metrics["eval_accuracy"],
                               "train_s": now - self.t0 - self.eval_s})
            self.last_step_end = now

        def on_train_end(self, a, state, control, **kw):
            self.train_s = time.perf_counter() - self.t0 - self.eval_s

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    if seed:
        hp = dict(learning_rate=1e-4, weight_decay=0.001, warmup_steps=1000, num_train_epochs=2,
                  eval_strategy="steps", eval_steps=500)
    else:
        hp = dict(learning_rate=d.train.learning_rate, weight_decay=d.train.weight_decay,
                  warmup_steps=d.train.warmup_ratio, num_train_epochs=args.epochs or d.train.num_train_epochs,
                  eval_strategy="epoch", train_sampling_strategy="group_by_length",
                  max_grad_norm=d.train.max_grad_norm, lr_scheduler_type=d.train.lr_scheduler_type)
    targs = TrainingArguments(
        output_dir=str(args.work / f"{name}-trainer"), per_device_train_batch_size=32, per_device_eval_batch_size=64,
        bf16=name == "stock-bf16", use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to="none",
        logging_strategy="no", disable_tqdm=True, seed=args.seed, **hp)
    clock = Clock()
    trainer = Trainer(model=model, args=targs, train_dataset=enc["train"], eval_dataset=enc["val"],
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy, callbacks=[clock])
    trainer.train()
    val = trainer.evaluate()["eval_accuracy"]
    if not clock.evals or clock.evals[-1]["step"] != trainer.state.global_step:  # the seed recipe's 500 > 314 steps
        clock.evals.append({"step": trainer.state.global_step, "accuracy": val, "train_s": clock.train_s})
    test = accuracy(trainer.predict(enc["test"]))["accuracy"]
    return {"train_s": clock.train_s, "val": val, "test": test, "evals": clock.evals, "trainable": trainable,
            "steps": trainer.state.global_step, "real_tokens": counts["real"], "padded_tokens": counts["padded"],
            "precision": "bf16" if name == "stock-bf16" else "fp32"}


def run_loraclf(name: str, args, extra: list[str]) -> dict:
    """`loraclf train` with its defaults (+ extra overrides for a lever), timed from its own history."""
    from loraclf import data as data_mod
    from loraclf.config import load_config
    from loraclf.model import load_tokenizer
    from loraclf.training import train

    over = [f"model.name_or_path={args.model}", f"data.train={AG / 'train.csv'}",
            f"data.validation={AG / 'val.csv'}", f"data.test={AG / 'test.csv'}", "data.text_column=text",
            f"data.label_names=[{', '.join(LABELS)}]", f"train.seed={args.seed}", "output.report=false",
            f"output.dir={args.work}", f"output.run_name={name}", "output.overwrite=true"]
    if args.epochs:
        over.append(f"train.num_train_epochs={args.epochs}")
    cfg = load_config(None, over + extra)
    result = train(cfg, quiet=True)
    m = result.metrics
    evals = [{"step": r["step"], "accuracy": r["accuracy"], "train_s": r["time"]}
             for r in result.history if r.get("type") == "eval"]
    # tokens fed: the same loaders the loop built (same seed and epochs), collated again without the model
    splits = data_mod.load_splits(cfg.data, log=lambda *_: None)
    tokenizer = load_tokenizer(_model_path(cfg.model.name_or_path), cfg)
    ds = data_mod.tokenize(splits.train, tokenizer, cfg.data, cache=True)
    real = padded = 0
    per_epoch = data_mod.steps_per_epoch(len(ds), cfg.train.per_device_train_batch_size, 1)
    epochs = -(-m["global_step"] // per_epoch)
    left = m["global_step"]
    for epoch in range(epochs):
        for batch in data_mod.train_loader(ds, tokenizer, cfg.train.per_device_train_batch_size,
                                           cfg.data.group_by_length, cfg.train.seed, epoch):
            if left == 0:
                break
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            left -= 1
    return {"train_s": m["train_runtime_s"], "val": m["val"]["accuracy"], "test": m["test"]["accuracy"],
            "evals": evals, "trainable": m["trainable_params"], "steps": m["global_step"], "real_tokens": real,
            "padded_tokens": padded, "precision": "fp32" if m["precision"] == "no" else m["precision"]}


LEVERS = {  # loraclf overrides, one lever switched off or on at a time against the defaults
    "fp32 instead of bf16 autocast": ["train.mixed_precision=fp32"],
    "no length grouping (random batches)": ["data.group_by_length=false"],
    "1 thread instead of 2": ["train.num_threads=1"],
    "adapters on the top 3 of 6 layers only": ["adapter.layers_to_transform=3"],
}


def child(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    if args.child in ("seed", "stock-fp32", "stock-bf16"):
        out = run_stock(args.child, args)
    else:
        out = run_loraclf(args.child, args, LEVERS.get(args.lever, []))
    out.update(peak_rss_mb=_peak_rss_mb(), threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ the floor


def matmul_rate(dtype, n: int = 2048, seconds: float = 5.0) -> float:
    """Sustained FLOP/s of an n x n matmul in dtype on this machine."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def flops_per_token(model_name: str, length: int) -> float:
    """Forward + backward FLOPs per token of the LoRA model (frozen base), counted by torch's FlopCounterMode."""
    import torch
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(_model_path(model_name), num_labels=4)
    model = get_peft_model(model, _lora_config(loraclf_defaults()))
    model.train()
    batch = 32
    ids = torch.randint(1000, 2000, (batch, length))
    with FlopCounterMode(display=False) as fc:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(batch, dtype=torch.long))
        out.loss.backward()
    return fc.get_total_flops() / (batch * length)


# ------------------------------------------------------------------------------------------ driver


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used on this machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_child(name: str, args, rep: int, lever: str = "") -> dict:
    result = args.work / f"{name}-{rep}{'-' + lever.replace(' ', '_') if lever else ''}.json"
    cmd = [sys.executable, __file__, "--child", name, "--result", str(result), "--model", args.model,
           "--work", str(args.work), "--seed", str(args.seed + rep)]
    epochs = args.lever_epochs if lever else args.epochs
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if lever:
        cmd += ["--lever", lever]
    busy0, own0 = _busy_cpu_s(), _children_cpu_s()
    t = time.time()
    subprocess.run(cmd, check=True)
    # CPU seconds that other processes used on this machine while the contender ran: a busy machine shows here
    other = (_busy_cpu_s() - busy0) - (_children_cpu_s() - own0)
    out = json.loads(result.read_text())
    out.update(contender=name, rep=rep, lever=lever, process_s=round(time.time() - t, 1), other_cpu_s=round(max(other, 0.0), 1))
    return out


def time_to(evals: list, target: float):
    for e in evals:
        if e["accuracy"] >= target - 1e-12:
            return e["train_s"]
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:,.0f}", none="not reached"):
    return none if x is None else spec.format(x)


def write_table(args, rows: list, floor: dict, started: float, final: bool) -> None:
    import platform

    import torch

    from loraclf.runs import atomic_write_text
    from loraclf.device import cpu_name

    # each repetition's reference: stock bf16's final val accuracy in that repetition (the seed recipe and the
    # levers, run once, are measured against the median reference)
    ref_val = {r["rep"]: r["val"] for r in rows if r["contender"] == "stock-bf16" and not r["lever"]}
    ref_med = med(list(ref_val.values()))
    for r in rows:
        target = ref_val.get(r["rep"], ref_med) if not r["lever"] and r["contender"] != "seed" else ref_med
        r["tta_s"] = time_to(r["evals"], target) if target is not None else None
        real_tps = r["real_tokens"] / r["train_s"]
        r.update(real_tps=real_tps, padded_tps=r["padded_tokens"] / r["train_s"],
                 padding=1 - r["real_tokens"] / r["padded_tokens"],
                 achieved=real_tps * floor["flops_per_token"],
                 floor_frac=real_tps * floor["flops_per_token"] / floor["matmul_" + r["precision"]])
    names = ["seed", "stock-fp32", "stock-bf16", "loraclf"]
    label = {"seed": "seed recipe as written", "stock-fp32": "stock tuned fp32", "stock-bf16": "stock tuned bf16 (reference)",
             "loraclf": "loraclf defaults"}
    ref_train = med([r["train_s"] for r in rows if r["contender"] == "stock-bf16" and not r["lever"]])
    shapes = {r["trainable"] for r in rows if not r["lever"]}
    lines = [
        "# Training speed: loraclf against the stock Trainer + PEFT recipe, MiniLM-L6 on AG News",
        "",
        f"- {'Final' if final else '**Partial** (still running or interrupted)'} results of `python bench/train_speed.py"
        f"{' ' + shlex.join(args.argv) if args.argv else ''}`, "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {(time.time() - started) / 60:.0f} min.",
        f"- Machine: {cpu_name()}, {os.cpu_count()} CPU threads, no GPU; torch {torch.__version__}, "
        f"Python {platform.python_version()}. CPU time used by other processes while a contender ran (from "
        f"/proc/stat less the contender's own): at most {max(r['other_cpu_s'] for r in rows):,.1f} s in one run.",
        f"- Data: AG News 5,000 train / 600 val / 2,000 test. Model: `{args.model}`. Same LoRA shape everywhere "
        f"(loraclf's defaults: r=8, alpha 16, dropout 0.05, query+value, pooler+classifier trained): "
        f"{', '.join(f'{n:,}' for n in sorted(shapes))} trainable parameters"
        f"{'' if len(shapes) == 1 else ' (**the contenders differ: not the same shape**)'}." if rows else "",
        f"- Floor: matmul 2048^3 sustained **{floor['matmul_fp32'] / 1e9:.0f} GFLOP/s fp32, "
        f"{floor['matmul_bf16'] / 1e9:.0f} GFLOP/s bf16** (measured in this run); forward+backward of the LoRA model "
        f"with frozen base weights = **{floor['flops_per_token'] / 1e6:.1f} MFLOP per real token** (torch FlopCounterMode, "
        f"length {floor['length']}). Achieved = real tokens/s x FLOP per token.",
        f"- Medians over {args.reps} repetitions for the last three contenders; the seed recipe ran once. Time to "
        f"accuracy: training time until val accuracy first reaches the reference's final val accuracy "
        f"(median {fmt(ref_med, '{:.2%}', '-')}).",
        "",
        "| contender | runs | train s | time to acc. s | real tok/s | padded tok/s | padding | peak RSS MB | val acc | "
        "test acc | achieved GFLOP/s | of matmul rate | train s vs reference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        rs = [r for r in rows if r["contender"] == n and not r["lever"]]
        if not rs:
            continue
        tr = med([r["train_s"] for r in rs])
        tta = [r["tta_s"] for r in rs]
        tta_txt = fmt(med(tta)) + (f" ({sum(t is None for t in tta)}/{len(tta)} never)" if any(t is None for t in tta) and med(tta) is not None else "")
        lines.append(
            f"| {label[n]} | {len(rs)} | {tr:,.0f} | {tta_txt} | {med([r['real_tps'] for r in rs]):,.0f} | "
            f"{med([r['padded_tps'] for r in rs]):,.0f} | {med([r['padding'] for r in rs]):.1%} | "
            f"{med([r['peak_rss_mb'] for r in rs]):,.0f} | {med([r['val'] for r in rs]):.2%} | "
            f"{med([r['test'] for r in rs]):.2%} | {med([r['achieved'] for r in rs]) / 1e9:.1f} | "
            f"{med([r['floor_frac'] for r in rs]):.1%} ({rs[0]['precision']}) | "
            f"{fmt(tr / ref_train if ref_train else None, '{:.2f}x', '-')} |")
    lines += ["", "Per run (rep: train s / time to acc. s / val acc / test acc):", ""]
    for n in names:
        rs = [r for r in rows if r["contender"] == n and not r["lever"]]
        if rs:
            lines.append(f"- {label[n]}: " + "; ".join(
                f"rep {r['rep']}: {r['train_s']:,.0f} / {fmt(r['tta_s'])} / {r['val']:.2%} / {r['test']:.2%} "
                f"(other processes: {r['other_cpu_s']:.1f} CPU s)" for r in rs))
    lv = [r for r in rows if r["lever"]]
    if lv:
        base = [r for r in rows if r["contender"] == "loraclf" and not r["lever"]]
        base_tps = med([r["real_tps"] for r in base])
        lines += ["", f"## Levers, one at a time against loraclf's defaults (one run each, {args.lever_epochs:g} epoch(s); "
                  "throughput compared with the defaults' median above; accuracy after that many epochs)", "",
                  "| lever | real tok/s | vs defaults | train s | val acc | test acc |", "| --- | --- | --- | --- | --- | --- |",
                  f"| loraclf defaults (median above) | {base_tps:,.0f} | 1.00x | {med([r['train_s'] for r in base]):,.0f} | "
                  f"{med([r['val'] for r in base]):.2%} | {med([r['test'] for r in base]):.2%} |"]
        for r in lv:
            lines.append(f"| {r['lever']} | {r['real_tps']:,.0f} | {r['real_tps'] / base_tps:.2f}x | {r['train_s']:,.0f} | "
                         f"{r['val']:.2%} | {r['test']:.2%} |")
    lines.append("")
    atomic_write_text(args.out, "\n".join(lines))
    atomic_write_text(args.out.with_suffix(".jsonl"),
                      "".join(json.dumps(r) + "\n" for r in [{"floor": floor, "started": started}] + rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="packaged:minilm-l6")
    p.add_argument("--large", action="store_true", help="also run everything with packaged:mpnet-base")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-seed", action="store_true", help="skip the seed recipe (about half an hour)")
    p.add_argument("--levers", nargs="*", default=None, help=f"loraclf levers to measure once each: {list(LEVERS)}")
    p.add_argument("--epochs", type=float, help="override the epochs of the tuned contenders (script checks only)")
    p.add_argument("--lever-epochs", type=float, default=1.0, help="epochs of each lever run (its throughput is compared)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in OUT's .jsonl: its floor and start time, skipping finished runs")
    p.add_argument("--work", type=Path, default=Path("/tmp/loraclf-bench-train-speed"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--lever", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.argv = sys.argv[1:]
    if not AG.is_dir():
        sys.exit(f"AG News not found at {AG} (../shared beside the checkout)")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return 0

    import torch

    started = time.time()
    models = [args.model] + (["packaged:mpnet-base"] if args.large else [])
    for model in models:
        args.model = model
        out = args.out if model == models[0] else args.out.with_name(args.out.stem + "_large.md")
        recorded = out.with_suffix(".jsonl")
        if args.resume and recorded.exists():
            head, *rows = [json.loads(line) for line in recorded.read_text().splitlines()]
            floor, started = head["floor"], head["started"]
        else:
            floor = {"matmul_fp32": matmul_rate(torch.float32), "matmul_bf16": matmul_rate(torch.bfloat16),
                     "length": 56, "flops_per_token": flops_per_token(model, 56)}
            rows = []
        print(json.dumps(floor), flush=True)
        done = {(r["contender"], r["rep"], r["lever"]) for r in rows}
        o = argparse.Namespace(**{**vars(args), "out": out})
        # the seed recipe runs after the first repetition, so that an interrupted run still has every contender
        plan = [(name, rep, "") for rep in range(args.reps)
                for name in ("stock-fp32", "stock-bf16", "loraclf") + (("seed",) if rep == 0 and not args.no_seed else ())]
        plan += [("loraclf", 0, lever) for lever in args.levers or []]
        for name, rep, lever in plan:
            if (name, rep, lever) in done:
                continue
            rows.append(run_child(name, args, rep, lever=lever))
            print(json.dumps({k: rows[-1][k] for k in ("contender", "rep", "lever", "train_s", "val", "test")}), flush=True)
            write_table(o, rows, floor, started, final=False)
        write_table(o, rows, floor, started, final=True)
        print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
