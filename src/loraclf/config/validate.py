"""Validation of a config: typed coercion, range checks, the dataclass builder that collects every problem, the
bounds of size-like keys, and the checks that involve more than one key.

`build` is generic over the dataclasses of schema.py and knows no section or key of its own; `cross_checks` knows
them all. load.from_dict calls both and reports every problem together.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal, Optional, Union

from ..base import sources
from ..base.errors import did_you_mean
from ..task import LOSSES, MULTI, REGRESSION, SCALARS, SINGLE

# the default --batch-size of predict and evaluate (batch_size=None in the API): int8 runs smaller batches, which
# measured 1.13x (onnxruntime's engine) and 1.49x (torch's) the texts/s of batches of 64 on a Zen 4, where bf16 and
# fp32 gained nothing or less from them (bench/results/predict_speed_zen4.md against predict_speed_zen4_bs16.md)
PREDICT_BATCH = 64
INT8_PREDICT_BATCH = 16
# upper bounds of size-like keys: far above any real use, and low enough that torch, NumPy (seeds) and the memory of
# one machine can hold what they size, so absurd values fail in validation instead of deep in a model build
MAX_RANK = 8192
MAX_BATCH = 4096
MAX_STEPS = 10**9
MAX_SEED = 2**32 - 1


# ----------------------------------------------------------------------------------- coercion and ranges


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {type_name(k)} to {type_name(v)}"
    return getattr(tp, "__name__", str(tp))


def coerce(value, tp):
    """Return value as type tp, or raise TypeError/ValueError. Ints are accepted for floats, never the reverse."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except (TypeError, ValueError) as e:
                errors.append((a, e))
        # a mapping (or list) given where the union has one: that member's reason (e.g. a weight that is not finite)
        # says more than the list of the union's types
        kind = dict if isinstance(value, dict) else list if isinstance(value, list) else None
        same = [e for a, e in errors if kind is not None and typing.get_origin(a) is kind]
        if len(same) == 1 and isinstance(same[0], ValueError):
            raise same[0]
        raise TypeError(f"expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}{hint}")
    if origin in (list, dict):
        return _container(value, tp, origin)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"must be a finite number, got {value!r}")
            return value
        if isinstance(value, str):  # yaml reads 1e-4 (no dot) as a string
            try:
                return coerce(float(value), float)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported type {tp}")


def _container(value, tp, origin):
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError(f"expected {type_name(tp)}, got {value!r}")
        return [coerce(v, inner) for v in value]
    key_tp, value_tp = typing.get_args(tp)
    if not isinstance(value, dict):
        raise TypeError(f"expected {type_name(tp)}, got {value!r}")
    # YAML reads a label key 0 as an int: a mapping keyed by label names takes it as its text
    out = {}
    for k, v in value.items():
        key = coerce(str(k) if key_tp is str and isinstance(k, (int, float)) else k, key_tp)
        try:
            out[key] = coerce(v, value_tp)
        except ValueError as e:  # a value of the right type that is out of bounds: say which key holds it
            raise ValueError(f"at {key!r}: {e}") from None
    return out


INT64_MAX = 2**63 - 1  # the largest integer torch (and most of NumPy) can hold


def _shown(value) -> str:
    text = str(value)
    return text if len(text) < 20 else f"a {len(text.lstrip('-'))}-digit number"


def check_range(value, meta) -> Optional[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    for key, op, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not op(value, bound):
            return f"must be {word} {bound}, got {_shown(value)}"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return f"must be at most {INT64_MAX:,} in size, got {_shown(value)}"
    return None


def hints_of(cls) -> dict:
    return typing.get_type_hints(cls)


def build(cls, data: dict, prefix: str, problems: list[str]):
    hints = hints_of(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(f"unknown key '{path}'{did_you_mean(key, fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"'{path}' must be a section (a mapping), got {value!r}")
                continue
            kwargs[key] = build(tp, value, path + ".", problems)
            continue
        try:
            coerced = coerce(value, tp)
        except (TypeError, ValueError) as e:
            problems.append(f"'{path}' {e}")
            continue
        bad = check_range(coerced, fields[key].metadata)
        if bad:
            problems.append(f"'{path}' {bad}")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)


# ------------------------------------------------------------------------------------ checks across keys


TRACKERS = ("tensorboard", "mlflow")


def cross_checks(cfg) -> list[str]:
    problems = []
    name = cfg.output.run_name
    if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name):
        # a run writes only inside output.dir/run_name; a name with a path in it could point anywhere
        problems.append(f"'output.run_name' must be a plain folder name (no '/' or '..'), got {name!r}; "
                        f"put the parent folder in output.dir")
    for name in cfg.track:
        if name not in TRACKERS:
            problems.append(f"'track' has unknown tracker '{name}'{did_you_mean(name, TRACKERS)}; choose from {', '.join(TRACKERS)}")
    if isinstance(cfg.adapter.r, int) and cfg.adapter.r < 1:
        problems.append(f"'adapter.r' must be >= 1 or 'auto', got {cfg.adapter.r}")
    if isinstance(cfg.adapter.r, int) and cfg.adapter.r > MAX_RANK:
        problems.append(f"'adapter.r' must be <= {MAX_RANK} or 'auto', got {cfg.adapter.r}")
    if cfg.adapter.r == "auto" and cfg.budget.max_trainable_params is None:
        problems.append("'adapter.r: auto' needs budget.max_trainable_params (the cap the rank is fitted under)")
    if cfg.adapter.r == "auto" and cfg.adapter.method == "ia3":
        problems.append("'adapter.r: auto' does not apply to adapter.method ia3, which has no rank (its size is fixed "
                        "by the target modules); set adapter.r to a number or choose fewer adapter.target_modules")
    if (cfg.adapter.method == "adalora" and cfg.adapter.init_r is not None and isinstance(cfg.adapter.r, int)
            and cfg.adapter.init_r < cfg.adapter.r):
        problems.append(f"'adapter.init_r' ({cfg.adapter.init_r}) must be >= adapter.r ({cfg.adapter.r}), AdaLoRA's target rank")
    if cfg.adapter.lokr_decompose_factor == 0:
        problems.append("'adapter.lokr_decompose_factor' must be -1 (automatic) or a factor >= 1, got 0")
    if isinstance(cfg.adapter.target_modules, list) and not cfg.adapter.target_modules:
        problems.append("'adapter.target_modules' is an empty list; give a preset (qv) or module names")
    if cfg.data.train is None and cfg.data.name is None:
        problems.append("no training data: set data.train to a file or data.name to a dataset (e.g. ag_news)")
    tc = cfg.data.text_column
    if isinstance(tc, list) and not tc:
        problems.append("'data.text_column' is an empty list; name at least one column")
    names = cfg.data.label_names or []
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"'data.label_names' names {', '.join(repr(n) for n in twice)} more than once; each class id "
                        f"needs its own name")
    if len(cfg.optimizer.betas) != 2 or not all(0 <= b < 1 for b in cfg.optimizer.betas):
        problems.append(f"'optimizer.betas' must be two numbers in [0, 1), got {cfg.optimizer.betas}")
    if cfg.optimizer.name == "loraplus" and cfg.adapter.method not in ("lora", "dora", "rslora", "pissa"):
        problems.append(f"'optimizer.name: loraplus' needs a LoRA-family adapter.method, got '{cfg.adapter.method}'")
    if cfg.data.validation_split >= 1 and not float(cfg.data.validation_split).is_integer():
        problems.append(f"'data.validation_split' >= 1 is a row count and must be whole, got {cfg.data.validation_split}")
    if cfg.data.unlabeled is None and cfg.adapt.rounds > 1:
        problems.append("'adapt.rounds' > 1 needs data.unlabeled (the texts to pseudo-label)")
    if cfg.data.streaming:
        problems += _streaming_checks(cfg)
    if cfg.train.prefix_cache is True:
        problems += _prefix_cache_checks(cfg)
    if cfg.train.fast_dropout is True and cfg.train.torch_compile:
        problems.append("'train.fast_dropout: true' does not combine with train.torch_compile (the compiled model "
                        "keeps the dropout it was traced with); set train.fast_dropout=auto or false")
    return (problems + _problem_checks(cfg) + few_shot_problems(cfg) + _long_text_checks(cfg.data)
            + _group_checks(cfg.data))


def few_shot_problems(cfg) -> list[str]:
    """train.few_shot=true where the recipe cannot apply (training checks this again: loraclf.training.few_shot), and
    train.contrastive_steps with the recipe turned off."""
    if cfg.train.few_shot is False and cfg.train.contrastive_steps is not None:
        return [f"train.contrastive_steps={cfg.train.contrastive_steps} is a step of the few-shot recipe, which "
                "train.few_shot=false turns off; remove train.contrastive_steps or set train.few_shot=true or auto"]
    if cfg.train.few_shot is not True:
        return []
    if cfg.model.problem_type == REGRESSION:
        return ["train.few_shot=true is for classification; regression has no classes to learn from a few rows each "
                "(use train.few_shot=false or auto)"]
    if cfg.data.streaming:
        return ["train.few_shot=true needs the training rows counted up front, which data.streaming=true does not "
                "allow; set data.streaming=false or train.few_shot=false"]
    return []


def _group_checks(data) -> list[str]:
    """data.group_column names a column of its own (not the text, pair or label columns), of a whole file."""
    g = data.group_column
    if g is None:
        return []
    if not g.strip():
        return ["'data.group_column' is empty; name a column of data.train, or leave it unset"]
    taken = {"data.text_column": data.text_column, "data.text_pair_column": data.text_pair_column,
             "data.label_column": None if data.label_columns else data.label_column, "data.label_columns": data.label_columns}
    for key, value in taken.items():
        if g == value or (isinstance(value, list) and g in value):
            return [f"'data.group_column' ({g!r}) is also {key}; name the column that holds each row's group"]
    if data.streaming:
        return ["'data.group_column' folds a training split read whole; set data.streaming=false"]
    return []


def prefix_cache_clashes(cfg) -> list[str]:
    """The settings under which the lower layers' outputs change between epochs or are not kept, so
    train.prefix_cache cannot apply: refused here for true, and the reason auto stays off (training/prefix.py)."""
    clashes = [(cfg.augment.enabled, "augment.enabled (each epoch's texts differ)"),
               (cfg.data.streaming, "data.streaming (rows are read once and not kept)"),
               (cfg.train.torch_compile, "train.torch_compile (the compiled encoder runs whole)")]
    return [what for on, what in clashes if on]


def _prefix_cache_checks(cfg) -> list[str]:
    return [f"'train.prefix_cache: true' does not combine with {what}; set train.prefix_cache=auto or false"
            for what in prefix_cache_clashes(cfg)]


def _problem_checks(cfg) -> list[str]:
    """Settings that only some problem types have (see task.py)."""
    pt, problems = cfg.model.problem_type, []
    fit = f"model.problem_type is {pt}"
    if cfg.train.loss is not None and cfg.train.loss not in LOSSES[pt]:
        problems.append(f"'train.loss' {cfg.train.loss} does not fit {pt}; choose {' or '.join(LOSSES[pt])}")
    metric = cfg.eval.metric_for_best_model
    if metric is not None and metric not in SCALARS[pt]:
        problems.append(f"'eval.metric_for_best_model' {metric!r} is not a {pt} metric{did_you_mean(metric, SCALARS[pt])}; "
                        f"choose from {', '.join(SCALARS[pt])}")
    if pt == REGRESSION and cfg.eval.tune_thresholds in ("f1", "fbeta"):
        problems.append(f"'eval.tune_thresholds' {cfg.eval.tune_thresholds} needs classes, but {fit}; set it to auto or none")
    if pt != SINGLE and cfg.eval.calibration != "none":
        problems.append(f"'eval.calibration: {cfg.eval.calibration}' is for single_label_classification, but {fit}")
    if pt != MULTI and (cfg.data.label_delimiter is not None or cfg.data.label_columns is not None):
        key = "data.label_delimiter" if cfg.data.label_delimiter is not None else "data.label_columns"
        problems.append(f"'{key}' gives label sets, which need model.problem_type=multi_label_classification ({fit})")
    if cfg.data.label_delimiter == "":
        problems.append("'data.label_delimiter' is empty; in YAML quote it (label_delimiter: \"|\"), since a bare | "
                        "starts a block of text")
    if cfg.data.label_columns is not None and len(cfg.data.label_columns) < 2:
        problems.append("'data.label_columns' needs at least two 0/1 columns, one per label")
    if pt == REGRESSION and cfg.train.class_weights != "none":
        problems.append(f"'train.class_weights' needs classes, but {fit}; remove it")
    if pt != SINGLE and cfg.data.sampling == "balanced":
        problems.append(f"'data.sampling: balanced' draws classes equally often: single_label_classification only ({fit})")
    if pt != SINGLE and cfg.train.label_smoothing:
        problems.append(f"'train.label_smoothing' is for single-label cross-entropy ({fit})")
    if isinstance(cfg.train.class_weights, dict):
        problems += _class_weight_checks(cfg.train.class_weights)
    if cfg.data.label_columns is not None:
        twice = [c for i, c in enumerate(cfg.data.label_columns) if c in cfg.data.label_columns[:i]]
        if twice:
            problems.append(f"'data.label_columns' names {twice[0]!r} twice; name each 0/1 column once (each column is "
                            f"one label)")
    if cfg.data.streaming and (pt != SINGLE or cfg.data.text_pair_column is not None):
        problems.append("'data.streaming: true' trains single-label classification of single texts; set "
                        "data.streaming=false for other problem types or sentence pairs")
    if cfg.data.streaming and cfg.data.long_text == "chunks":
        problems.append("'data.long_text: chunks' does not apply to a stream; set data.streaming=false")
    if cfg.data.streaming and isinstance(cfg.train.batch_tokens, int):
        problems.append("'train.batch_tokens' groups a whole epoch's rows by length, which a stream never holds; "
                        "set train.batch_tokens=null or data.streaming=false")
    return problems


MAX_CLASS_WEIGHT = 1e6  # weights are relative to 1 (a label not named); beyond a million one class silences the rest


def _class_weight_checks(weights: dict) -> list[str]:
    bad = {k: v for k, v in weights.items() if not v > 0}
    if bad:
        k, v = next(iter(bad.items()))
        return [f"'train.class_weights' must be positive numbers; label {k!r} has {v:g}"]
    out = [(k, v) for k, v in weights.items() if not 1 / MAX_CLASS_WEIGHT <= v <= MAX_CLASS_WEIGHT]
    if out:
        k, v = out[0]
        return [f"'train.class_weights' gives label {k!r} the weight {v:g}; each weight must be at most "
                f"{MAX_CLASS_WEIGHT:g} and at least {1 / MAX_CLASS_WEIGHT:g} (weights are relative to 1, the weight "
                f"of a label not named; beyond that one class drowns out the others and float32 losses overflow)"]
    return []


def _long_text_checks(data) -> list[str]:
    problems = []
    if data.long_text == "chunks" and data.stride >= data.max_length:
        problems.append(f"'data.stride' ({data.stride}) must be smaller than data.max_length ({data.max_length}): "
                        f"windows advance by max_length - stride tokens")
    if data.long_text == "head_tail" and data.head_tokens is not None and data.head_tokens >= data.max_length:
        problems.append(f"'data.head_tokens' ({data.head_tokens}) must be smaller than data.max_length "
                        f"({data.max_length}), which also holds the tail and the special tokens")
    if data.long_text != "truncate" and data.text_pair_column is not None:
        problems.append(f"'data.long_text: {data.long_text}' applies to single texts; sentence pairs are cut by "
                        f"data.truncation")
    return problems


def _streaming_checks(cfg) -> list[str]:
    """A stream has no length and is read once per pass, so whatever needs either is refused up front."""
    problems = []
    if cfg.train.max_steps is None:
        problems.append("'data.streaming: true' needs train.max_steps: a stream's length is unknown, so "
                        "train.num_train_epochs cannot set the schedule (e.g. train.max_steps=5000)")
    if cfg.eval.eval_steps is None:
        problems.append("'data.streaming: true' needs eval.eval_steps: 'once per epoch' needs the stream's length "
                        "(e.g. eval.eval_steps=500)")
    if cfg.data.train is None and sources.is_packaged(cfg.data.name):
        problems.append(f"'data.streaming: true' streams a file (data.train) or a hub dataset (data.name); "
                        f"{cfg.data.name} is small and read whole, so set data.streaming=false")
    if cfg.augment.enabled:
        problems.append("'augment.enabled' does not apply to a stream (copies are made from the whole training set); "
                        "set augment.enabled=false or data.streaming=false")
    if cfg.train.class_weights == "balanced":
        problems.append("'train.class_weights: balanced' counts the classes of the whole training split, which a stream "
                        "never holds at once; give the weights as a mapping (e.g. train.class_weights={a: 1.0, b: 3.0}) "
                        "or set data.streaming=false")
    if cfg.data.sampling == "balanced":
        problems.append("'data.sampling: balanced' draws from every class of the whole training split, which a stream "
                        "never holds at once; set data.sampling=random or data.streaming=false")
    if cfg.data.unlabeled is not None:
        problems.append("self-training (data.unlabeled) adds pseudo-labelled rows to the training set, which a stream "
                        "does not hold; set data.streaming=false")
    return problems
