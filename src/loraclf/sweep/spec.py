"""The sweep file: its keys, their defaults, and the validated SweepSpec it becomes.

Every sweep default lives here: the constants below and the field defaults of SweepSpec.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import task as problem, runs
from ..config import Config, flatten, from_dict, read_yaml, resolve_paths, set_path
from ..base.errors import ConfigError, did_you_mean



def metrics_of(problem_type: str) -> dict[str, str]:
    """The metrics a sweep of this problem type can optimise (its scalars, main first), each with its direction."""
    return {k: "minimize" if problem.lower_is_better(k) else "maximize" for k in problem.SCALARS[problem_type]}


METRICS = metrics_of(problem.SINGLE)  # a single-label sweep's metrics (the default problem type)
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
SWEEP_KEYS = ("base", "overrides", "metric", "direction", "sampler", "pruner", "n_trials", "timeout", "space",
              "output", "study", "seed", "enqueue", "heartbeat_interval", "grace_period")
SWEEPS_DIR = Path("sweeps")  # default output: sweeps/<study>
HEARTBEAT_S = 30
GRACE_HEARTBEATS = 3  # default grace_period: this many heartbeat intervals


@dataclass
class Param:
    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list] = None

    def grid_values(self) -> list:
        if self.type == "categorical":
            return list(self.choices)
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        values = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]


@dataclass
class SweepSpec:
    path: Path
    base_data: dict  # the base config + overrides, as a nested dict, validated
    space: list[Param]
    metric: str = problem.main_metric(problem.SINGLE)  # load_sweep: the problem type's main metric
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_options: dict = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict = field(default_factory=dict)
    n_trials: Optional[int] = None
    timeout: Optional[float] = None
    output: Path = SWEEPS_DIR
    study: str = "sweep"
    seed: int = 42
    enqueue: list[dict] = field(default_factory=list)
    heartbeat_interval: int = HEARTBEAT_S
    grace_period: int = GRACE_HEARTBEATS * HEARTBEAT_S

    def fingerprint(self) -> str:
        """What workers on one study must agree on: the search space, metric and direction."""
        return json.dumps({"metric": self.metric, "direction": self.direction,
                           "space": [p.__dict__ for p in self.space]}, sort_keys=True, default=str)


def _format_value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def shown_params(params: dict) -> str:
    """'adapter.r=2, train.learning_rate=0.001': a trial's params for people."""
    return ", ".join(f"{k}={_format_value(v)}" for k, v in params.items())


def trial_config(spec: SweepSpec, params: dict, run_name: Optional[str] = None) -> Config:
    """The training config of one trial: base + overrides + the trial's params."""
    data = copy.deepcopy(spec.base_data)
    for k, v in params.items():
        set_path(data, k.split("."), v)
    set_path(data, ["eval", "metric_for_best_model"], spec.metric)
    if run_name is not None:
        set_path(data, ["output", "dir"], str(spec.output))
        set_path(data, ["output", "run_name"], run_name)
    return from_dict(data)


# ------------------------------------------------------------------------------------------ reading the file


def load_sweep(path: str | Path, study: Optional[str] = None) -> SweepSpec:
    """Read and validate a sweep file; every problem is collected and raised as one ConfigError."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = [f"unknown sweep key '{k}'{did_you_mean(k, SWEEP_KEYS)}" for k in raw if k not in SWEEP_KEYS]
    base_data, base_ok = _base_data(raw, path, problems)
    metric, direction = _metric(raw, _problem_type(base_data) if base_ok else problem.SINGLE, problems)
    sampler, sampler_options = _options(raw.get("sampler", SweepSpec.sampler), SAMPLERS, "sampler", problems)
    pruner, pruner_options = _options(raw.get("pruner", SweepSpec.pruner), PRUNERS, "pruner", problems)
    space = _space(raw.get("space"), sampler, problems)
    if base_ok:
        _check_range_ends(space, base_data, problems)
    n_trials, timeout, heartbeat, grace = _limits(raw, problems)
    seed = raw.get("seed", SweepSpec.seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"'seed' must be an integer, got {seed!r}")
        seed = SweepSpec.seed
    if sampler == "grid" and n_trials is None and space and all(p.type == "categorical" or p.step or p.type == "int"
                                                                for p in space):
        n_trials = math.prod(len(p.grid_values()) for p in space)
    if n_trials is None and timeout is None:
        problems.append("give 'n_trials' and/or 'timeout' (seconds) so the sweep ends")
    enqueue = _enqueue(raw.get("enqueue") or [], space, problems)
    name = study or raw.get("study") or path.stem
    output = Path(raw.get("output") or SWEEPS_DIR / runs.safe_run_name(str(name)))
    if problems:
        raise ConfigError([f"sweep file {path}: {p}" for p in problems])
    return SweepSpec(path=path, base_data=base_data, space=space, metric=metric, direction=direction,
                     sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
                     n_trials=n_trials, timeout=timeout, output=output, study=str(name), seed=seed,
                     enqueue=enqueue, heartbeat_interval=heartbeat, grace_period=grace)


def _base_data(raw: dict, path: Path, problems: list) -> tuple[dict, bool]:
    """The base config <- overrides as one nested dict (data paths resolve like a config file's), and whether it is valid."""
    base_data: dict = {}
    base = raw.get("base")
    if base is not None:
        bp = Path(base)
        if not bp.is_absolute() and not bp.exists() and (path.parent / bp).exists():
            bp = path.parent / bp
        try:
            base_data = read_yaml(bp)
            resolve_paths(base_data, bp.resolve().parent)
        except ConfigError as e:
            problems += [f"'base': {p}" for p in e.problems]
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append(f"'overrides' must be a mapping of config keys (train.learning_rate: 1e-3), got {overrides!r}")
        overrides = {}
    over_tree: dict = {}
    for k, v in flatten(overrides).items():
        set_path(over_tree, k.split("."), v)
    resolve_paths(over_tree, path.resolve().parent)
    for k, v in flatten(over_tree).items():
        set_path(base_data, k.split("."), v)
    try:
        from_dict(copy.deepcopy(base_data))
    except ConfigError as e:
        problems += [f"base config: {p}" for p in e.problems]
        return base_data, False
    return base_data, True


def _problem_type(base_data: dict) -> str:
    model = base_data.get("model") if isinstance(base_data.get("model"), dict) else {}
    return model.get("problem_type") or problem.SINGLE


def _metric(raw: dict, problem_type: str, problems: list) -> tuple[str, str]:
    """The objective: 'metric' (default the problem type's main metric) and its direction, which follows it."""
    metrics = metrics_of(problem_type)
    metric = raw.get("metric", problem.main_metric(problem_type))
    if metric not in metrics:
        problems.append(f"'metric' {metric!r} is not a metric of model.problem_type={problem_type}; give one of "
                        f"{', '.join(metrics)}{did_you_mean(str(metric), metrics)}")
        metric = problem.main_metric(problem_type)
    direction = raw.get("direction", metrics[metric])
    if direction not in ("maximize", "minimize"):
        problems.append(f"'direction' must be maximize or minimize, got {direction!r}")
    elif direction != metrics[metric]:
        better = "higher" if metrics[metric] == "maximize" else "lower"
        problems.append(f"'direction: {direction}' contradicts metric '{metric}', which is better {better}; "
                        f"drop 'direction' (it follows the metric)")
    return metric, direction


def _options(value, names: tuple, what: str, problems: list) -> tuple[Optional[str], dict]:
    """`tpe` or `{name: tpe, n_startup_trials: 5}` -> ('tpe', {'n_startup_trials': 5})."""
    if isinstance(value, str):
        name, opts = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        opts = {k: v for k, v in value.items() if k != "name"}
        name = value["name"]
    else:
        problems.append(f"'{what}' must be one of {', '.join(names)} or a mapping with name: and Optuna options, got {value!r}")
        return None, {}
    if name not in names:
        problems.append(f"'{what}' must be one of {', '.join(names)}, got {name!r}{did_you_mean(name, names)}")
        return None, {}
    return name, opts


def _space(space_raw, sampler: Optional[str], problems: list) -> list[Param]:
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append("'space' must map config keys to ranges, e.g. {train.learning_rate: {type: float, low: 1e-4, "
                        "high: 3e-3, log: true}}")
        return []
    known_keys = set(flatten(Config().to_dict()))
    known_keys.add("track")
    space = []
    for key, spec in space_raw.items():
        if key not in known_keys:
            problems.append(f"space key '{key}' is not a config key{did_you_mean(key, known_keys)}; "
                            f"see `loraclf config --keys`")
            continue
        p = _parse_param(key, spec, sampler, problems)
        if p is not None:
            space.append(p)
    return space


def _check_range_ends(space: list[Param], base_data: dict, problems: list) -> None:
    """Every end of every range must make a valid config."""
    for p in space:
        for v in p.choices if p.type == "categorical" else [p.low, p.high]:
            d = copy.deepcopy(base_data)
            set_path(d, p.key.split("."), v)
            try:
                from_dict(d)
            except ConfigError as e:
                problems += [f"space '{p.key}' value {v!r}: {q}" for q in e.problems]


def _parse_param(key: str, raw, sampler: Optional[str], problems: list) -> Optional[Param]:
    where = f"space '{key}'"
    if isinstance(raw, list):  # shorthand: a bare list is a categorical choice
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping like {{type: float, low: 1e-4, high: 1e-2, log: true}}, got {raw!r}")
        return None
    problems += [f"{where} has unknown key '{k}'{did_you_mean(k, PARAM_KEYS)}" for k in raw if k not in PARAM_KEYS]
    tp = raw.get("type", "categorical" if "choices" in raw else None)
    if tp not in PARAM_TYPES:
        problems.append(f"{where} 'type' must be one of {', '.join(PARAM_TYPES)}, got {tp!r}{did_you_mean(str(tp), PARAM_TYPES)}")
        return None
    if tp == "categorical":
        return _categorical(key, raw.get("choices"), problems)
    return _numeric(key, tp, raw, sampler, problems)


def _categorical(key: str, choices, problems: list) -> Optional[Param]:
    where = f"space '{key}'"
    if not isinstance(choices, list) or not choices:
        problems.append(f"{where} needs a non-empty 'choices' list")
        return None
    bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
    if bad:
        problems.append(f"{where} choices must be numbers, strings, booleans or null, got {bad[0]!r} "
                        f"(name a preset such as qkv instead of a list of modules)")
        return None
    if len(set(map(repr, choices))) != len(choices):
        problems.append(f"{where} has repeated choices {choices}")
    return Param(key, "categorical", choices=list(choices))


def _number(v, integer: bool):
    """A YAML value as an int/float, or None when it is not one."""
    if isinstance(v, str):  # yaml reads 1e-4 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if integer and not float(v).is_integer():
        return None
    return int(v) if integer else float(v)


def _numeric(key: str, tp: str, raw: dict, sampler: Optional[str], problems: list) -> Optional[Param]:
    where = f"space '{key}'"
    integer = tp == "int"
    low, high = _number(raw.get("low"), integer), _number(raw.get("high"), integer)
    step = _number(raw.get("step"), integer) if raw.get("step") is not None else None
    log = raw.get("log", False)
    if low is None or high is None:
        kind = "integers" if integer else "numbers"
        problems.append(f"{where} needs 'low' and 'high' {kind}, got low={raw.get('low')!r} high={raw.get('high')!r}")
        return None
    if not isinstance(log, bool):
        problems.append(f"{where} 'log' must be true or false, got {log!r}")
        return None
    if low > high:
        problems.append(f"{where} low={low} is above high={high}")
    if log and low <= 0:
        problems.append(f"{where} log scale needs low > 0, got {low}")
    if raw.get("step") is not None and (step is None or step <= 0):
        problems.append(f"{where} 'step' must be a positive {'integer' if integer else 'number'}, got {raw.get('step')!r}")
        return None
    if log and step is not None and step != 1:
        problems.append(f"{where} cannot combine log: true with step (Optuna samples one or the other)")
    if sampler == "grid" and tp == "float" and step is None:
        problems.append(f"{where}: the grid sampler needs a finite grid; give 'step' (linear) or 'choices' for floats")
    return Param(key, tp, low=low, high=high, log=log, step=step)


def _positive(raw: dict, name: str, integer: bool, problems: list):
    v = raw.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (integer and not float(v).is_integer()):
        problems.append(f"'{name}' must be a positive {'integer' if integer else 'number'}, got {v!r}")
        return None
    return int(v) if integer else float(v)


def _limits(raw: dict, problems: list) -> tuple:
    """(n_trials, timeout, heartbeat_interval, grace_period), the last two with their defaults."""
    n_trials = _positive(raw, "n_trials", True, problems)
    timeout = _positive(raw, "timeout", False, problems)
    heartbeat = _positive(raw, "heartbeat_interval", True, problems) or HEARTBEAT_S
    grace = _positive(raw, "grace_period", True, problems) or GRACE_HEARTBEATS * heartbeat
    if grace <= heartbeat:
        problems.append(f"'grace_period' ({grace}) must be longer than 'heartbeat_interval' ({heartbeat})")
    return n_trials, timeout, heartbeat, grace


def _enqueue(enqueue, space: list[Param], problems: list) -> list[dict]:
    """Trials to run first, each a mapping from space keys to values inside their ranges."""
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        problems.append("'enqueue' must be a list of mappings from space keys to values (trials to run first)")
        return []
    by_key = {p.key: p for p in space}
    for i, params in enumerate(enqueue):
        for k, v in params.items():
            p = by_key.get(k)
            if p is None:
                problems.append(f"enqueue[{i}] key '{k}' is not in the space{did_you_mean(k, by_key)}")
            elif p.type == "categorical" and v not in p.choices:
                problems.append(f"enqueue[{i}] value {v!r} of '{k}' is not one of its choices {p.choices}")
            elif p.type != "categorical" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                              or not p.low <= v <= p.high):
                problems.append(f"enqueue[{i}] value {v!r} of '{k}' is outside [{p.low}, {p.high}]")
    return enqueue
