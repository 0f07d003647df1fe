"""bench/train_speed.py's contenders: the frozen stock Trainer + PEFT reference (its constants below are the fixed
baseline, never read from loraclf's defaults), the seed recipe, loraclf's rows and the loop levers, each run by
bench/train_speed.py in a child process of its own. bench/recipe_screen.py reuses the suites and loraclf's rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import common

DATA = common.DATA
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
    "train.batch_tokens=null",  # batches of 32 rows on every device (a GPU's auto would cap them by tokens)
    "train.few_shot=false",  # the stock recipe at any data size (a check's few rows would turn on the few-shot one)
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
        precision = "bf16" if common.bf16_supported() else "fp32"
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


def model_path(name: str) -> str:
    from loraclf.base.sources import resolve_model

    return resolve_model(name)


def reference_model(model_name: str, num_labels: int):
    """The reference's PEFT model: REFERENCE's LoRA on query and value, the head in full (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    path = model_path(model_name)
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

    tok = AutoTokenizer.from_pretrained(model_path(args.model))
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


def instrument_loop(loop) -> dict:
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
    src = Path(model_path(model))
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

    seen = instrument_loop(loop)
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


