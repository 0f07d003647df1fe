"""The few-shot recipe (train.few_shot) and the warning for runs too small to learn.

With a few dozen labelled rows per class, the default recipe (a 10% validation split, 3 epochs of batch 32) trains a
handful of optimizer steps from a random head and picks its checkpoint on a few validation rows. The few-shot
recipe instead (chosen by bench/small_data.py, docs/little-data.md):

- trains on every labelled row: no validation split is held out (a data.validation file, or a data.validation_split
  the config sets, is still used);
- runs a fixed schedule, FEW_SHOT_EPOCHS epochs of batch FEW_SHOT_BATCH and at least FEW_SHOT_MIN_STEPS steps,
  keeping the last step (evaluation only at the end);
- adapts every linear layer of the encoder (adapter.target_modules=all-linear instead of qv);
- first trains the adapter on sentence pairs of the labelled rows, as SetFit does (contrastive.py: class-balanced
  batches, every pair scored 10 times on average, but at most 3 steps per pair of classes where the sentence
  embedding already separates the classes, mean-pooled embeddings, at 5x the classifier's learning rate), then the
  classifier at FEW_SHOT_LR (a fifth of the default 1e-3, so it does not undo the first stage). The screen and the
  measurement against SetFit: docs/little-data.md, bench/results/small_data.md.

The model is the stock one, so the saved run loads in transformers/peft, `loraclf predict` and `export` like any
other. A head started from class prototypes (class-mean pooler features as a nearest-class-mean output layer) was
measured and dropped: with 8 rows per class it scored 9.5 points lower on AG News and 6 lower on TREC-6 than the
random head (seed 0; docs/little-data.md), its confident start leaving the encoder little gradient.

It changes only the keys a config leaves at their defaults, and logs one line saying that it is on and why.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np

from .. import data as data_mod
from ..base import logs
from ..base.errors import ConfigError, DataError
from ..config import Config
from ..config.validate import few_shot_problems
from ..data import Splits
from ..task import MULTI, REGRESSION

logger = logs.get(__name__)

FEW_SHOT_ROWS_PER_CLASS = 50  # auto: on under this many labelled training rows per class (positives per label)
FEW_SHOT_EPOCHS = 25
FEW_SHOT_BATCH = 16
FEW_SHOT_MIN_STEPS = 50
FEW_SHOT_MAX_STEPS = 2000
FEW_SHOT_LR = 2e-4  # the classifier stage's learning rate, after the contrastive stage (at 5x this)
FEW_SHOT_TARGETS = "all-linear"  # every linear layer of the encoder adapted: TREC-6 8/class seed 0, 49.3% against 34.6% (qv)
TOO_FEW_STEPS = 30  # fewer optimizer steps than this: warn
TOO_FEW_VAL_ROWS = 30  # a validation split of fewer rows than this: warn


def _applies(cfg: Config) -> bool:
    return cfg.train.few_shot is not False and not cfg.data.streaming and cfg.model.problem_type != REGRESSION


def _every_row_trains(cfg: Config) -> bool:
    """Whether the recipe may keep the validation split in train: it applies, and data.validation_split is left at
    its default (a split the config asks for is taken)."""
    return _applies(cfg) and cfg.data.validation_split == Config().data.validation_split


def check_config(cfg: Config) -> None:
    """train.few_shot=true where the recipe cannot apply: one line, before any data is read (load_config checks the
    same; a Config built in Python is checked here)."""
    problems = few_shot_problems(cfg)
    if problems:
        raise ConfigError(problems)


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
    if tr.learning_rate == default.train.learning_rate:
        tr = dataclasses.replace(tr, learning_rate=FEW_SHOT_LR)
    if ev.eval_steps is None and tr.max_steps is not None:
        ev = dataclasses.replace(ev, eval_steps=tr.max_steps)  # a fixed schedule: the last step is the model
    return dataclasses.replace(widened_targets(cfg), train=tr, eval=ev)


def widened_targets(cfg: Config) -> Config:
    """The recipe's adapter: every linear layer adapted where adapter.target_modules is left at its default, unless a
    budget cap is set (the cap was sized for the config's own targets, and the recipe must not turn a run that fits
    into one that is refused, or shrink its rank behind the user's back). `loraclf budget` counts with it too."""
    default = Config()
    ad = cfg.adapter
    if ad.target_modules == default.adapter.target_modules and cfg.budget.max_trainable_params is None:
        return dataclasses.replace(cfg, adapter=dataclasses.replace(ad, target_modules=FEW_SHOT_TARGETS))
    return cfg


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
                                      hold_out=not _every_row_trains(cfg))
    why = decide(cfg, splits)
    if why is None:
        if cfg.train.contrastive_steps is not None:
            say(f"train.contrastive_steps={cfg.train.contrastive_steps} is not used: the few-shot recipe is off for "
                f"these rows (set train.few_shot=true to use it)")
        if splits.validation_is_train:
            splits = data_mod.hold_out_validation(splits, cfg.data, say)
        if loaded:
            data_mod.warn_overlap(splits)
        return cfg, splits, None
    cfg = _schedule(cfg, len(splits.train))
    rows = "every labelled row trains" if splits.validation_is_train else "the rows outside validation train"
    stage = ("no contrastive stage (train.contrastive_steps=0)" if cfg.train.contrastive_steps == 0 else
             "first a contrastive stage (sentence pairs of the labelled rows, same class pulled together, as SetFit)")
    say(f"few-shot recipe on: {why}; {rows}; adapter on {cfg.adapter.target_modules}; {stage}, then the classifier: "
        f"{cfg.train.max_steps or 'configured'} steps of batch {cfg.train.per_device_train_batch_size} at learning "
        f"rate {cfg.train.learning_rate:g}, the last step kept")
    if splits.validation_is_train:
        say(f"validation: none held out; the {len(splits.validation)} training rows stand in for it, so val metrics "
            f"measure fit, not generalisation (give data.validation to measure)")
    elif loaded:
        data_mod.warn_overlap(splits)
    return cfg, splits, why


def contrast(cfg: Config, model, train_ds, tokenizer, accelerator, say: Callable[[str], None]) -> None:
    """The recipe's first stage (contrastive.py): sentence pairs of the labelled rows train the adapter before
    the classifier does, for train.contrastive_steps steps (None: contrastive.py's rule; 0: skipped). Skipped on a
    resumed run (its checkpoint holds the adapted weights)."""
    from . import contrastive
    from ..data.splits import label_array

    if train_ds is None or len(train_ds) < 2:
        return
    if cfg.train.contrastive_steps == 0:
        say("contrastive stage: skipped (train.contrastive_steps=0)")
        return
    contrastive.run(model, train_ds, label_array(train_ds), data_mod.collator(tokenizer),
                    cfg.train.learning_rate, cfg.train.seed, device=accelerator.device,
                    autocast=accelerator.autocast, say=say, steps=cfg.train.contrastive_steps)


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
