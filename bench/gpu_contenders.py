"""bench/gpu.py's contenders, each run in a child process of its own: the frozen stock Trainer reference, a bare
PyTorch + PEFT loop, loraclf at the reference recipe and loraclf's GPU defaults; and the Probe that times them alike.

The reference's constants are bench/train_speed_contenders.py's (REFERENCE, LORACLF_AT_REFERENCE, EVAL_STEPS),
fixed there and never read from loraclf: both benchmarks measure against the same recipe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from train_speed_contenders import (
    EVAL_STEPS,
    LORACLF_AT_REFERENCE,
    REFERENCE,
    _clock,
    _stock_data,
    reference_model,
)

CONTENDERS = ("stock", "bare", "loraclf-recipe", "loraclf")
LABEL = {"stock": "stock Trainer + PEFT (the frozen reference)", "bare": "bare PyTorch + PEFT loop (the floor)",
         "loraclf-recipe": "loraclf at the reference recipe", "loraclf": "loraclf's GPU defaults (budget capped)"}


@dataclass(frozen=True)
class GpuSuite:
    key: str
    title: str
    folder: Path  # train.csv, val.csv, test.csv with columns text and label (0..3)
    model: str  # a packaged name or a folder
    max_steps: int | None  # None: the reference's epochs; else that many steps and one evaluation at the end
    accuracy_means_something: bool

    def split(self, name: str) -> Path:
        return self.folder / f"{name}.csv"


# ------------------------------------------------------------------------------------------ the probe


class Probe:
    """The start time, rows and real tokens of every training forward, and the end of every evaluation, recorded
    alike for every contender. Token counts stay on the device until the end: a .item() per step would add a host
    synchronisation the contender does not have."""

    def __init__(self, profiler=None) -> None:
        self.steps: list = []  # (start time, rows, real tokens as a 0-d tensor)
        self.evals_end: list[float] = []
        self.profiler = profiler  # --profile: torch.profiler, advanced one step at each training forward

    def step(self, mask: torch.Tensor) -> None:
        self.steps.append((time.perf_counter(), mask.shape[0], mask.sum()))
        if self.profiler is not None:
            self.profiler.step()

    def evaluated(self) -> None:
        self.evals_end.append(time.perf_counter())

    def hook(self, model) -> None:
        """Record every training forward of model (evaluation runs in eval mode and is left out)."""
        def pre(module, args, kwargs):
            if module.training and kwargs.get("attention_mask") is not None:
                self.step(kwargs["attention_mask"])

        model.register_forward_pre_hook(pre, with_kwargs=True)

    def summary(self, warmup: int) -> dict:
        """Steady state: every step after the first `warmup` whose span (its start to the next step's start) holds no
        evaluation; the last step has no next start and is left out."""
        tokens = [int(t) for *_, t in self.steps]
        dt = rows = real = n = 0
        for i in range(max(warmup, 0) + 1, len(self.steps)):
            t0, t1 = self.steps[i - 1][0], self.steps[i][0]
            if any(t0 < e <= t1 for e in self.evals_end):
                continue
            dt, rows, real, n = dt + t1 - t0, rows + self.steps[i - 1][1], real + tokens[i - 1], n + 1
        if not n or dt <= 0:
            return {"steady_steps": 0, "step_ms": None, "samples_s": None, "tokens_s": None}
        return {"steady_steps": n, "step_ms": 1000 * dt / n, "samples_s": rows / dt, "tokens_s": real / dt,
                "steps_seen": len(self.steps), "real_tokens": sum(tokens)}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------ the stock reference


def _stock_args(suite: GpuSuite, args):
    from transformers import TrainingArguments

    r = REFERENCE
    steps = dict(max_steps=suite.max_steps, eval_steps=suite.max_steps) if suite.max_steps else dict(
        num_train_epochs=args.epochs or r["num_train_epochs"], eval_steps=EVAL_STEPS)
    return TrainingArguments(
        output_dir=str(args.work / f"{suite.key}-stock-trainer"), bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(), eval_strategy="steps", save_strategy="no", report_to="none",
        logging_strategy="no", disable_tqdm=True, seed=args.seed, learning_rate=r["learning_rate"],
        weight_decay=r["weight_decay"], warmup_steps=r["warmup_ratio"], lr_scheduler_type=r["lr_scheduler_type"],
        per_device_train_batch_size=r["per_device_train_batch_size"],
        per_device_eval_batch_size=r["per_device_eval_batch_size"], max_grad_norm=r["max_grad_norm"],
        train_sampling_strategy="group_by_length", **steps)


def run_stock(suite: GpuSuite, args, probe: Probe) -> dict:
    """bench/train_speed.py's stock reference (Trainer + peft.get_peft_model, REFERENCE), in args.precision."""
    import numpy as np
    from transformers import (
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
    )

    tok = AutoTokenizer.from_pretrained(args.model_path)
    enc, names = _stock_data(_as_train_speed_suite(suite), tok, seed=False)
    model = reference_model(args.model_path, len(names))
    probe.hook(model)

    class Evaluated(TrainerCallback):
        def on_evaluate(self, *a, **kw):
            probe.evaluated()

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    clock = _clock()
    trainer = Trainer(model=model, args=_stock_args(suite, args), train_dataset=enc["train"], eval_dataset=enc["val"],
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy,
                      callbacks=[clock, Evaluated()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    val = trainer.evaluate()["eval_accuracy"]
    if not clock.evals or clock.evals[-1]["step"] != trainer.state.global_step:
        clock.evals.append({"step": trainer.state.global_step, "accuracy": val, "train_s": clock.train_s})
    test = accuracy(trainer.predict(enc["test"]))["accuracy"]
    return {"train_s": clock.train_s, "val": val, "test": test, "evals": clock.evals,
            "steps": trainer.state.global_step, "trainable": _trainable(model)}


def _as_train_speed_suite(suite: GpuSuite):
    from train_speed_contenders import AG_LABELS, Suite

    return Suite(suite.key, suite.title, suite.folder, "label", AG_LABELS, suite.model, ())


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------ the bare loop


def _encode(tok, path: Path) -> tuple[list, list]:
    import pandas as pd

    df = pd.read_csv(path)
    ids = tok(df["text"].astype(str).tolist(), truncation=True, max_length=REFERENCE["max_length"])["input_ids"]
    return ids, df["label"].astype(int).tolist()


def _pad(ids: list, rows, pad_id: int, dev: torch.device) -> dict:
    import numpy as np

    width = max(len(ids[i]) for i in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, i in enumerate(rows):
        out[j, :len(ids[i])], mask[j, :len(ids[i])] = ids[i], 1
    pin = dev.type == "cuda"
    t = [torch.from_numpy(a) for a in (out, mask)]
    t = [x.pin_memory() if pin else x for x in t]
    return {"input_ids": t[0].to(dev, non_blocking=True), "attention_mask": t[1].to(dev, non_blocking=True)}


def _grouped_batches(ids: list, batch: int, gen: torch.Generator) -> list:
    """Length-grouped batches as the Trainer's group_by_length draws them: shuffled, then sorted by length inside
    mega-batches of 50 batches."""
    order = torch.randperm(len(ids), generator=gen).tolist()
    mega = batch * 50
    out = []
    for s in range(0, len(order), mega):
        chunk = sorted(order[s:s + mega], key=lambda i: -len(ids[i]))
        out += [chunk[k:k + batch] for k in range(0, len(chunk), batch)]
    return out


@torch.no_grad()
def _accuracy(model, ids: list, labels: list, pad_id: int, dev, dtype) -> float:
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    right = torch.zeros((), dtype=torch.long, device=dev)
    bs = REFERENCE["per_device_eval_batch_size"]
    for k in range(0, len(order), bs):
        rows = order[k:k + bs]
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(**_pad(ids, rows, pad_id, dev)).logits
        right += (logits.argmax(-1) == torch.tensor([labels[i] for i in rows], device=dev)).sum()
    model.train()
    return int(right) / len(ids)


def run_bare(suite: GpuSuite, args, probe: Probe) -> dict:
    """The reference's model and recipe in a plain loop: autocast, fused AdamW on CUDA, pinned non-blocking copies,
    no host synchronisation inside a step; evaluation on the same schedule as the others."""
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    dev, r = device(), REFERENCE
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    tok = AutoTokenizer.from_pretrained(args.model_path)
    (train_ids, train_y), val, test = (_encode(tok, suite.split(s)) for s in ("train", "val", "test"))
    model = reference_model(args.model_path, 4).to(dev)
    probe.hook(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r["learning_rate"], weight_decay=r["weight_decay"], fused=dev.type == "cuda")
    bs = r["per_device_train_batch_size"]
    per_epoch = math.ceil(len(train_ids) / bs)
    total = suite.max_steps or math.ceil(per_epoch * (args.epochs or r["num_train_epochs"]))
    sched = get_linear_schedule_with_warmup(opt, math.ceil(r["warmup_ratio"] * total), total)
    every = suite.max_steps or EVAL_STEPS
    gen, step, eval_s, evals, t0 = torch.Generator().manual_seed(args.seed), 0, 0.0, [], time.perf_counter()
    model.train()
    while step < total:
        for rows in _grouped_batches(train_ids, bs, gen):
            batch = _pad(train_ids, rows, tok.pad_token_id, dev)
            batch["labels"] = torch.tensor([train_y[i] for i in rows]).to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, r["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % every == 0 or step == total:
                te = time.perf_counter()
                evals.append({"step": step, "accuracy": _accuracy(model, *val, tok.pad_token_id, dev, dtype),
                              "train_s": te - t0 - eval_s})
                eval_s += time.perf_counter() - te
                probe.evaluated()
            if step == total:
                break
    return {"train_s": time.perf_counter() - t0 - eval_s, "val": evals[-1]["accuracy"],
            "test": _accuracy(model, *test, tok.pad_token_id, dev, dtype), "evals": evals, "steps": step,
            "trainable": _trainable(model)}


# ------------------------------------------------------------------------------------------ loraclf


def loraclf_overrides(name: str, suite: GpuSuite, args) -> list[str]:
    from train_speed_contenders import AG_LABELS

    over = [f"model.name_or_path={args.model_path}", f"data.train={suite.split('train')}",
            f"data.validation={suite.split('val')}", f"data.test={suite.split('test')}", "data.text_column=text",
            "data.label_column=label", f"data.label_names=[{', '.join(AG_LABELS)}]", f"train.seed={args.seed}",
            f"eval.eval_steps={suite.max_steps or EVAL_STEPS}", "output.report=false", f"output.dir={args.work}",
            f"output.run_name={name}-{suite.key}", "output.overwrite=true"]
    if name == "loraclf":  # its own defaults for this device, under the reference's trainable budget
        over.append(f"budget.max_trainable_params={args.cap}")
        if args.check:  # --check's 160 rows would turn on the few-shot recipe, which a 5k-row suite never runs
            over.append("train.few_shot=false")
    else:
        over += LORACLF_AT_REFERENCE + [f"train.mixed_precision={args.precision}"]
    if suite.max_steps:
        over.append(f"train.max_steps={suite.max_steps}")
    elif args.epochs:
        over.append(f"train.num_train_epochs={args.epochs}")
    return over


def run_loraclf(name: str, suite: GpuSuite, args, probe: Probe) -> dict:
    """`loraclf train` with loop._forward_backward and evaluate_val wrapped to feed the probe."""
    from loraclf.config import load_config
    from loraclf.training import loop, train

    forward_backward, evaluate_val = loop._forward_backward, loop.evaluate_val

    def probed(ctx, state, batch):
        probe.step(batch["attention_mask"])
        return forward_backward(ctx, state, batch)

    def evaluated(*a, **kw):
        try:
            return evaluate_val(*a, **kw)
        finally:
            probe.evaluated()

    loop._forward_backward, loop.evaluate_val = probed, evaluated
    result = train(load_config(None, loraclf_overrides(name, suite, args)), quiet=True)
    m = result.metrics
    evals = [{"step": r["step"], "accuracy": r["accuracy"], "train_s": r["time"]}
             for r in result.history if r.get("type") == "eval"]
    return {"train_s": m["train_runtime_s"], "val": m["val"]["accuracy"], "test": m["test"]["accuracy"],
            "evals": evals, "steps": m["global_step"], "trainable": m["trainable_params"],
            "precision_used": "fp32" if m["precision"] == "no" else m["precision"]}


RUNNERS = {"stock": run_stock, "bare": run_bare}


PROFILE_ROWS = 15


def _profiler(args):
    """--profile N: torch.profiler over N training steps after the warm-up (CPU and, on a GPU, CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, schedule=schedule(skip_first=args.warmup, wait=0, warmup=1, active=args.profile,
                                                     repeat=1))


def profile_table(prof) -> str:
    """The top PROFILE_ROWS operators by their own time on the device that ran them (CUDA on a GPU, else CPU)."""
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=PROFILE_ROWS, max_name_column_width=48)


def run(name: str, suite: GpuSuite, args) -> dict:
    """One contender in this process: its result, the probe's steady state and its peak GPU memory; with --profile,
    the profiler's top operators over the steps it recorded."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    prof = _profiler(args) if getattr(args, "profile", 0) else None
    probe = Probe(prof)
    if prof is not None:
        prof.start()
    try:
        out = RUNNERS[name](suite, args, probe) if name in RUNNERS else run_loraclf(name, suite, args, probe)
    finally:
        if prof is not None:
            prof.stop()
    if prof is not None:
        out["profile"] = profile_table(prof)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out.update(probe.summary(args.warmup))
    return out


def reference_trainable(model_path: str) -> int:
    return _trainable(reference_model(model_path, 4))
