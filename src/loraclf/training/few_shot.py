"""The few-shot recipe (train.few_shot) and the warning for runs too small to learn.

With a few dozen labelled rows per class, the default recipe (a 10% validation split, 3 epochs of batch 32) trains a
handful of optimizer steps from a random head and picks its checkpoint on a few validation rows. The few-shot
recipe instead (chosen by bench/small_data.py, docs/little-data.md):

- trains on every labelled row: no validation split is held out (a data.validation file is still used);
- runs a fixed schedule, FEW_SHOT_EPOCHS epochs of batch FEW_SHOT_BATCH and at least FEW_SHOT_MIN_STEPS steps,
  keeping the last step (evaluation only at the end);
- starts the head's output layer from class prototypes: the mean of the head's input features (the pooler output
  for BERT) per class, as a nearest-class-mean classifier. The architecture is the stock one, so the saved run loads
  in transformers/peft, `loraclf predict` and `export` like any other.

It changes only the keys a config leaves at their defaults, and logs one line saying that it is on and why.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from .. import data as data_mod
from ..base import logs
from ..base.errors import ConfigError, DataError
from ..config import Config
from ..data import Splits
from ..model.architectures import FAMILIES
from ..task import MULTI, REGRESSION

if TYPE_CHECKING:
    import datasets

logger = logs.get(__name__)

FEW_SHOT_ROWS_PER_CLASS = 50  # auto: on under this many labelled training rows per class (positives per label)
FEW_SHOT_EPOCHS = 25
FEW_SHOT_BATCH = 16
FEW_SHOT_MIN_STEPS = 50
FEW_SHOT_MAX_STEPS = 2000
PROTOTYPE_MARGIN = 2.0  # spread (std across classes) of the training rows' logits at initialisation
MAX_LOGIT_SCALE = 10.0  # tau's cap: |w_c| |x| at most this many margins
TOO_FEW_STEPS = 30  # fewer optimizer steps than this: warn
TOO_FEW_VAL_ROWS = 30  # a validation split of fewer rows than this: warn


def _applies(cfg: Config) -> bool:
    return cfg.train.few_shot is not False and not cfg.data.streaming and cfg.model.problem_type != REGRESSION


def check_config(cfg: Config) -> None:
    """train.few_shot=true where the recipe cannot apply: one line, before any data is read."""
    if cfg.train.few_shot is not True:
        return
    if cfg.model.problem_type == REGRESSION:
        raise ConfigError(["train.few_shot=true is for classification; regression has no classes to learn from a "
                           "few rows each (use train.few_shot=false or auto)"])
    if cfg.data.streaming:
        raise ConfigError(["train.few_shot=true needs the training rows counted up front, which data.streaming=true "
                           "does not allow; set data.streaming=false or train.few_shot=false"])


def rows_per_class(splits: Splits) -> np.ndarray:
    """Labelled training rows per class (multi-label: positive rows per label), validation included when it is the
    training rows."""
    labels = data_mod.train_labels(splits)
    if splits.problem_type == MULTI:
        return np.asarray(labels, dtype=np.float64).reshape(len(labels), -1).sum(axis=0)
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(splits.id2label)).astype(np.float64)


def decide(cfg: Config, splits: Splits) -> Optional[str]:
    """Why the few-shot recipe is on, or None when it is off. Raises DataError where few_shot=true cannot learn."""
    if not _applies(cfg) or splits.problem_type == REGRESSION:
        return None
    counts = rows_per_class(splits)
    if counts.max(initial=0) < 2:
        if cfg.train.few_shot is True:
            raise DataError(f"train.few_shot=true needs at least one class with two labelled rows; no class of the "
                            f"{len(splits.train)} training rows has two: label more rows")
        return None
    mean = float(counts.mean())
    what = "positive rows per label" if splits.problem_type == MULTI else "labelled training rows per class"
    if cfg.train.few_shot is True:
        return f"train.few_shot=true ({mean:.1f} {what})"
    if mean < FEW_SHOT_ROWS_PER_CLASS:
        return (f"{mean:.1f} {what} on average, under train.few_shot=auto's threshold of {FEW_SHOT_ROWS_PER_CLASS} "
                f"(set train.few_shot=false for the default recipe)")
    return None


def _schedule(cfg: Config, n_rows: int) -> Config:
    """The recipe's schedule, on the keys left at their defaults."""
    default = Config()
    tr, ev = cfg.train, cfg.eval
    if tr.per_device_train_batch_size == default.train.per_device_train_batch_size:
        tr = dataclasses.replace(tr, per_device_train_batch_size=FEW_SHOT_BATCH)
    if tr.max_steps is None and tr.num_train_epochs == default.train.num_train_epochs:
        per_epoch = math.ceil(n_rows / (tr.per_device_train_batch_size * tr.gradient_accumulation_steps))
        steps = min(max(FEW_SHOT_EPOCHS * per_epoch, FEW_SHOT_MIN_STEPS), FEW_SHOT_MAX_STEPS)
        tr = dataclasses.replace(tr, max_steps=steps)
    if ev.eval_steps is None and tr.max_steps is not None:
        ev = dataclasses.replace(ev, eval_steps=tr.max_steps)  # a fixed schedule: the last step is the model
    return dataclasses.replace(cfg, train=tr, eval=ev)


def plan(cfg: Config, splits: Optional[Splits], say: Callable[[str], None],
         id2label: Optional[dict[int, str]] = None) -> tuple[Config, Splits, Optional[str]]:
    """Load the splits (when not given) and decide the recipe. Returns (config, splits, why it is on or None).

    With the recipe on and no validation source, validation is the training rows themselves; with it off, the
    validation split is taken from train as usual.
    """
    check_config(cfg)
    loaded = splits is None
    if loaded:
        splits = data_mod.load_splits(cfg.data, log=say, id2label=id2label, problem_type=cfg.model.problem_type,
                                      hold_out=not _applies(cfg))
    why = decide(cfg, splits)
    if why is None:
        if splits.validation_is_train:
            splits = data_mod.hold_out_validation(splits, cfg.data, say)
        if loaded:
            data_mod.warn_overlap(splits)
        return cfg, splits, None
    cfg = _schedule(cfg, len(splits.train))
    say(f"few-shot recipe on: {why}; every labelled row trains, {cfg.train.max_steps or 'configured'} steps of "
        f"batch {cfg.train.per_device_train_batch_size}, head from class prototypes")
    if splits.validation_is_train:
        say(f"validation: none held out; the {len(splits.validation)} training rows stand in for it, so val metrics "
            f"measure fit, not generalisation (give data.validation to measure)")
    elif loaded:
        data_mod.warn_overlap(splits)
    return cfg, splits, why


# ------------------------------------------------------------------------------------------ prototype head


def head_output_layer(model) -> Optional[torch.nn.Linear]:
    """The trained copy of the head's final projection (classifier, or classifier.out_proj), or None."""
    fam = FAMILIES.get(model.config.model_type)
    names = fam.head_out if fam is not None else ("classifier",)
    for name, mod in model.named_modules():
        plain = re.sub(r"\.modules_to_save\.[^.]+", "", name.removeprefix("base_model.model."))
        if plain in names and isinstance(mod, torch.nn.Linear) and mod.weight.requires_grad:
            return mod
    return None


@torch.no_grad()
def head_features(model, layer: torch.nn.Module, train_ds: datasets.Dataset, tokenizer, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels): the input of the head's output layer for every training row, dropout off."""
    feats: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().float().cpu()))
    labels = []
    was_training = model.training
    model.eval()
    try:
        for batch in data_mod.eval_loader(train_ds, tokenizer, batch_size):
            labels.append(batch["labels"].float().cpu())
            model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def prototype_weights(x: np.ndarray, y: np.ndarray, num_labels: int, multi: bool,
                      margin: float = PROTOTYPE_MARGIN) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weight, bias, which rows are set, tau) of a nearest-class-mean output layer.

    Single-label: class c's logit is -tau/2 |x - mean_c|^2 up to a term shared by all classes, so weight_c =
    tau * mean_c and bias_c = -tau/2 |mean_c|^2. Multi-label: label l's logit is positive nearer its positives' mean
    p than its negatives' mean n: weight_l = tau_l (p - n), bias_l = -weight_l . (p + n) / 2. tau (one per output)
    scales the training rows' logits to a spread of `margin` (their std across classes, or their mean absolute value
    per label), whatever the scale of the features.
    """
    w = np.zeros((num_labels, x.shape[1]), dtype=np.float64)
    b = np.zeros(num_labels, dtype=np.float64)
    tau = np.ones(num_labels, dtype=np.float64)
    if multi:
        y = y.reshape(len(y), -1)
        ok = (y.sum(0) > 0) & (y.sum(0) < len(y))
        for j in np.flatnonzero(ok):
            p, n = x[y[:, j] > 0.5].mean(0), x[y[:, j] <= 0.5].mean(0)
            w[j], b[j] = p - n, -float((p - n) @ (p + n)) / 2
            reach = float(np.linalg.norm(w[j]) * np.linalg.norm(x, axis=1).mean())
            tau[j] = min(margin / max(float(np.abs(x @ w[j] + b[j]).mean()), 1e-12),
                         MAX_LOGIT_SCALE * margin / max(reach, 1e-12))
        return w * tau[:, None], b * tau, ok, tau
    y = y.astype(np.int64)
    present = np.bincount(y, minlength=num_labels) > 0
    means = np.stack([x[y == c].mean(0) if present[c] else np.zeros(x.shape[1]) for c in range(num_labels)])
    w[present] = means[present]
    b[present] = -(means[present] ** 2).sum(-1) / 2
    logits = x @ w[present].T + b[present]
    spread = float((logits - logits.mean(1, keepdims=True)).std()) if present.sum() > 1 else 1.0
    # nearly equal features (an untrained encoder) would make tau huge and dropout's noise then dominates the
    # logits: tau is capped so that no logit exceeds MAX_LOGIT_SCALE * margin for a feature vector of the rows' norm
    reach = float(np.linalg.norm(w[present], axis=1).max() * np.linalg.norm(x, axis=1).mean())
    tau[:] = min(margin / max(spread, 1e-12), MAX_LOGIT_SCALE * margin / max(reach, 1e-12))
    return w * tau[:, None], b * tau, present, tau


def init_head(model, tokenizer, train_ds: datasets.Dataset, problem_type: str, say: Callable[[str], None]) -> bool:
    """Set the head's output layer to class prototypes of the training rows. False (and one line) where the head's
    layout is unknown."""
    layer = head_output_layer(model)
    if layer is None or problem_type == REGRESSION:
        say("few-shot: the head's output layer was not found; it starts random")
        return False
    x, y = head_features(model, layer, train_ds, tokenizer)
    w, b, rows, _ = prototype_weights(x.astype(np.float64), y, layer.out_features, problem_type == MULTI)
    with torch.no_grad():
        keep = torch.as_tensor(rows)
        layer.weight[keep] = torch.as_tensor(w[rows], dtype=layer.weight.dtype)
        if layer.bias is not None:
            layer.bias[keep] = torch.as_tensor(b[rows], dtype=layer.bias.dtype)
    return True


# ------------------------------------------------------------------------------------------ too small to learn


def warn_too_small(cfg: Config, total_steps: int, n_val: int, few_shot: bool, val_is_train: bool,
                   say: Callable[[str], None] = logger.warning) -> list[str]:
    """One warning line per way a run is too small to learn from, with what to change. Returns the lines."""
    lines = []
    if total_steps < TOO_FEW_STEPS:
        fix = ("raise train.max_steps" if cfg.train.max_steps else "raise train.num_train_epochs or set train.max_steps")
        if not few_shot:
            fix += ", or set train.few_shot=true (every row trains, a longer fixed schedule)"
        lines.append(f"warning: only {total_steps} optimizer steps: too few to learn from; {fix}")
    if n_val < TOO_FEW_VAL_ROWS and not val_is_train and not cfg.data.streaming:
        lines.append(f"warning: validation has only {n_val} rows, so each row moves its accuracy by "
                     f"{100 / max(n_val, 1):.0f} points and the best checkpoint is picked by noise; give a larger "
                     f"data.validation, or train.few_shot=true to train on every row with a fixed schedule")
    for line in lines:
        say(line)
    return lines
