"""Hyperparameter sweeps on Optuna: a search space over any config key, many workers on one study.

A sweep file names a base config and a search space; every trial is a normal run folder
`<output>/trial-NNNN/` (numbered by Optuna's trial number, so workers never collide). The study lives in an
Optuna RDB storage: a SQLite file inside the sweep folder by default, or `--storage URL` shared by workers on
any number of machines (PostgreSQL for many). Heartbeats mark a killed worker's trial FAIL; rerunning the same
command resumes the study. At the end each worker writes, from the storage, sweep_summary.csv, best.yaml and
plots/ into its sweep folder.

Trial states in sweep_summary.csv: COMPLETE, PRUNED (stopped early by the pruner), REJECTED (over
budget.max_trainable_params, never trained; an Optuna PRUNED trial with user attr `rejected`), FAIL (crashed or
killed), SKIPPED (started after the study already had n_trials; an Optuna FAIL with user attr `skipped`).
"""

from __future__ import annotations

import copy
import gc
import html
import json
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from . import runs
from .config import Config, resolve_paths, set_path, diff_from_defaults, flatten, from_dict, read_yaml
from .errors import BudgetError, ConfigError, LoraclfError, did_you_mean

SUMMARY = "sweep_summary.csv"
BEST = "best.yaml"
PLOTS = "plots"
TRIAL_FILE = "sweep_trial.json"  # in each trial's run folder: study, trial number, params, state
METRICS = {"accuracy": "maximize", "macro_f1": "maximize", "loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
SWEEP_KEYS = ("base", "overrides", "metric", "direction", "sampler", "pruner", "n_trials", "timeout", "space",
              "output", "study", "seed", "enqueue", "heartbeat_interval", "grace_period")


class SweepError(LoraclfError):
    """A storage or study that cannot be used as given."""


# ------------------------------------------------------------------------------------------ the sweep file


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

    def distribution(self):
        import optuna

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)


@dataclass
class SweepSpec:
    path: Path
    base_data: dict  # the base config + overrides, as a nested dict, validated
    space: list[Param]
    metric: str = "accuracy"
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_options: dict = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict = field(default_factory=dict)
    n_trials: Optional[int] = None
    timeout: Optional[float] = None
    output: Path = Path("sweeps")
    study: str = "sweep"
    seed: int = 42
    enqueue: list[dict] = field(default_factory=list)
    heartbeat_interval: int = 30
    grace_period: int = 90

    def fingerprint(self) -> str:
        """What workers on one study must agree on: the search space, metric and direction."""
        return json.dumps({"metric": self.metric, "direction": self.direction,
                           "space": [p.__dict__ for p in self.space]}, sort_keys=True, default=str)


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


def _parse_param(key: str, raw, sampler: Optional[str], problems: list) -> Optional[Param]:
    where = f"space '{key}'"
    if isinstance(raw, list):  # shorthand: a bare list is a categorical choice
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping like {{type: float, low: 1e-4, high: 1e-2, log: true}}, got {raw!r}")
        return None
    known = ("type", "low", "high", "log", "step", "choices")
    for k in raw:
        if k not in known:
            problems.append(f"{where} has unknown key '{k}'{did_you_mean(k, known)}")
    tp = raw.get("type", "categorical" if "choices" in raw else None)
    if tp not in PARAM_TYPES:
        problems.append(f"{where} 'type' must be one of {', '.join(PARAM_TYPES)}, got {tp!r}{did_you_mean(str(tp), PARAM_TYPES)}")
        return None
    if tp == "categorical":
        choices = raw.get("choices")
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
        return Param(key, tp, choices=list(choices))

    def number(name, integer):
        v = raw.get(name)
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

    low, high = number("low", tp == "int"), number("high", tp == "int")
    step = number("step", tp == "int") if raw.get("step") is not None else None
    log = raw.get("log", False)
    kind = "integers" if tp == "int" else "numbers"
    if low is None or high is None:
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
        problems.append(f"{where} 'step' must be a positive {'integer' if tp == 'int' else 'number'}, got {raw.get('step')!r}")
        return None
    if log and step is not None and step != 1:
        problems.append(f"{where} cannot combine log: true with step (Optuna samples one or the other)")
    if sampler == "grid" and tp == "float" and step is None:
        problems.append(f"{where}: the grid sampler needs a finite grid; give 'step' (linear) or 'choices' for floats")
    return Param(key, tp, low=low, high=high, log=log, step=step)


def load_sweep(path: str | Path, study: Optional[str] = None) -> SweepSpec:
    """Read and validate a sweep file; every problem is collected and raised as one ConfigError."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = []
    for k in raw:
        if k not in SWEEP_KEYS:
            problems.append(f"unknown sweep key '{k}'{did_you_mean(k, SWEEP_KEYS)}")

    # base config <- overrides, as one nested dict; data paths resolve like a config file's
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
    known_keys = set(flatten(Config().to_dict()))
    known_keys.add("track")
    base_ok = True
    try:
        from_dict(copy.deepcopy(base_data))
    except ConfigError as e:
        base_ok = False
        problems += [f"base config: {p}" for p in e.problems]

    metric = raw.get("metric", "accuracy")
    if metric not in METRICS:
        problems.append(f"'metric' must be one of {', '.join(METRICS)}, got {metric!r}{did_you_mean(str(metric), METRICS)}")
        metric = "accuracy"
    direction = raw.get("direction", METRICS[metric])
    if direction not in ("maximize", "minimize"):
        problems.append(f"'direction' must be maximize or minimize, got {direction!r}")
    elif direction != METRICS[metric]:
        better = "higher" if METRICS[metric] == "maximize" else "lower"
        problems.append(f"'direction: {direction}' contradicts metric '{metric}', which is better {better}; "
                        f"drop 'direction' (it follows the metric)")
    sampler, sampler_options = _options(raw.get("sampler", "tpe"), SAMPLERS, "sampler", problems)
    pruner, pruner_options = _options(raw.get("pruner", "median"), PRUNERS, "pruner", problems)

    space_raw = raw.get("space")
    space: list[Param] = []
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append("'space' must map config keys to ranges, e.g. {train.learning_rate: {type: float, low: 1e-4, "
                        "high: 3e-3, log: true}}")
        space_raw = {}
    for key, spec in space_raw.items():
        if key not in known_keys:
            problems.append(f"space key '{key}' is not a config key{did_you_mean(key, known_keys)}; "
                            f"see `loraclf config --keys`")
            continue
        p = _parse_param(key, spec, sampler, problems)
        if p is not None:
            space.append(p)
    if base_ok:  # every end of every range must make a valid config
        for p in space:
            ends = p.choices if p.type == "categorical" else [p.low, p.high]
            for v in ends:
                d = copy.deepcopy(base_data)
                set_path(d, p.key.split("."), v)
                try:
                    from_dict(d)
                except ConfigError as e:
                    problems += [f"space '{p.key}' value {v!r}: {q}" for q in e.problems]

    def positive(name, integer):
        v = raw.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (integer and not float(v).is_integer()):
            problems.append(f"'{name}' must be a positive {'integer' if integer else 'number'}, got {v!r}")
            return None
        return int(v) if integer else float(v)

    n_trials = positive("n_trials", True)
    timeout = positive("timeout", False)
    heartbeat = positive("heartbeat_interval", True) or 30
    grace = positive("grace_period", True) or 3 * heartbeat
    if grace <= heartbeat:
        problems.append(f"'grace_period' ({grace}) must be longer than 'heartbeat_interval' ({heartbeat})")
    seed = raw.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"'seed' must be an integer, got {seed!r}")
        seed = 42
    if sampler == "grid" and n_trials is None and space and all(p.type == "categorical" or p.step or p.type == "int" for p in space):
        n_trials = math.prod(len(p.grid_values()) for p in space)
    if n_trials is None and timeout is None:
        problems.append("give 'n_trials' and/or 'timeout' (seconds) so the sweep ends")

    by_key = {p.key: p for p in space}
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        problems.append("'enqueue' must be a list of mappings from space keys to values (trials to run first)")
        enqueue = []
    for i, params in enumerate(enqueue):
        for k, v in params.items():
            p = by_key.get(k)
            if p is None:
                problems.append(f"enqueue[{i}] key '{k}' is not in the space{did_you_mean(k, by_key)}")
            elif p.type == "categorical" and v not in p.choices:
                problems.append(f"enqueue[{i}] value {v!r} of '{k}' is not one of its choices {p.choices}")
            elif p.type != "categorical" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not p.low <= v <= p.high):
                problems.append(f"enqueue[{i}] value {v!r} of '{k}' is outside [{p.low}, {p.high}]")

    name = study or raw.get("study") or path.stem
    output = Path(raw.get("output") or Path("sweeps") / runs.safe_run_name(str(name)))
    if problems:
        raise ConfigError([f"sweep file {path}: {p}" for p in problems])
    return SweepSpec(path=path, base_data=base_data, space=space, metric=metric, direction=direction,
                     sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
                     n_trials=n_trials, timeout=timeout, output=output, study=str(name), seed=seed,
                     enqueue=enqueue, heartbeat_interval=heartbeat, grace_period=grace)


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


# ------------------------------------------------------------------------------------------ Optuna objects


def _build_sampler(spec: SweepSpec, seed: int):
    import optuna

    try:
        if spec.sampler == "grid":
            return optuna.samplers.GridSampler({p.key: p.grid_values() for p in spec.space}, seed=seed, **spec.sampler_options)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **spec.sampler_options)
        return optuna.samplers.TPESampler(seed=seed, **spec.sampler_options)
    except TypeError as e:
        raise ConfigError([f"sweep file {spec.path}: sampler options: {e}"]) from None


def _build_pruner(spec: SweepSpec):
    import optuna

    kinds = {"median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "hyperband": optuna.pruners.HyperbandPruner}
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    try:
        return kinds[spec.pruner](**spec.pruner_options)
    except TypeError as e:
        raise ConfigError([f"sweep file {spec.path}: pruner options: {e}"]) from None


def with_driver(url: str) -> str:
    """postgresql://... with the PostgreSQL driver that is installed (SQLAlchemy 2.1 assumes psycopg 3)."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg") is None \
                and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def open_storage(url: str, spec: SweepSpec):
    """An Optuna RDB storage with heartbeats, or a one-line SweepError naming what is wrong with url."""
    import optuna
    import sqlalchemy.exc

    if "://" not in url:
        raise SweepError(f"--storage {url!r} is not a database URL; use sqlite:///path/study.db or "
                         f"postgresql://user:password@host:5432/dbname")
    kwargs: dict = {}
    if url.startswith("sqlite"):
        # several processes write one SQLite file: wait for its lock instead of failing at once
        kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=kwargs, heartbeat_interval=spec.heartbeat_interval,
                                              grace_period=spec.grace_period)
        except sqlalchemy.exc.SQLAlchemyError as e:
            # workers starting together race to create the schema ("table studies already exists",
            # a duplicate alembic_version row): the loser retries and finds the schema in place
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
            if attempt < 3 and racing:
                time.sleep(0.5 + attempt)
                continue
            error = e
        except (ImportError, ValueError) as e:
            error = e
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        shown = url.split("@")[-1] if "@" in url else url  # never print a password
        raise SweepError(f"cannot open storage {shown}: {first}") from None


def open_study(spec: SweepSpec, storage):
    import optuna

    try:
        study = optuna.create_study(study_name=spec.study, storage=storage, direction=spec.direction,
                                    sampler=_build_sampler(spec, spec.seed), pruner=_build_pruner(spec),
                                    load_if_exists=True)
    except ValueError as e:
        raise SweepError(f"study {spec.study!r}: {e}") from None
    if study.direction.name.lower() != spec.direction:
        raise SweepError(f"study {spec.study!r} already exists and {study.direction.name.lower()}s; this sweep file "
                         f"{spec.direction}s. Use another --study name")
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", spec.fingerprint())
    elif saved != spec.fingerprint():
        raise SweepError(f"study {spec.study!r} was created with another search space or metric; give this sweep "
                         f"another --study name, or run the original sweep file")
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


# ------------------------------------------------------------------------------------------ one trial


class _Surplus(Exception):
    """This trial started after the study already had n_trials; it is skipped, not run."""


@dataclass
class _Worker:
    spec: SweepSpec
    quiet: bool
    splits_cache: dict = field(default_factory=dict)
    ran: int = 0

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[loraclf sweep] {msg}", file=sys.stderr, flush=True)

    def splits(self, cfg: Config):
        from . import data as data_mod

        key = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
        if key not in self.splits_cache:
            self.splits_cache[key] = data_mod.load_splits(cfg.data, log=lambda m: None)
        return self.splits_cache[key]

    def objective(self, trial) -> float:
        import optuna

        spec = self.spec
        params = _suggest(trial, spec.space)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if spec.n_trials is not None:
            live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                    optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
            before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
            if len(before) >= spec.n_trials:
                trial.set_user_attr("skipped", f"the study already had {spec.n_trials} trials")
                trial.study.stop()
                raise _Surplus(f"the study already has n_trials={spec.n_trials}; this worker stops")
        name = f"trial-{trial.number:04d}"
        cfg = trial_config(spec, params, name)
        splits = self.splits(cfg)
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())

        rejected = _over_budget(cfg, len(splits.id2label))
        if rejected is not None:
            return self._reject(trial, rejected, shown)
        run_dir = runs.new_run_dir(spec.output, name, overwrite=False)
        status = {"study": spec.study, "trial": trial.number, "params": params, "worker": trial.user_attrs.get("worker")}

        def on_eval(step: int, metrics: dict) -> None:
            value = float(metrics[spec.metric])
            runs.write_json(run_dir / TRIAL_FILE, {**status, "state": "running", "step": step})
            trial.report(value, step)
            if trial.should_prune():
                runs.write_json(run_dir / TRIAL_FILE, {**status, "state": "pruned", "step": step, spec.metric: value})
                trial.set_user_attr("pruned_at_step", step)
                raise optuna.TrialPruned(f"{spec.metric} {value:.4f} at step {step} is worse than the pruner allows")

        from .train import train

        started = time.time()
        self.say(f"trial {trial.number}: {shown}")
        try:
            result = train(cfg, quiet=True, splits=splits, run_dir=run_dir, on_eval=on_eval)
        except BudgetError as e:  # the exact count on the built model, still before any training step
            return self._reject(trial, (None, str(e)), shown)
        except optuna.TrialPruned:
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("run_time_s", round(time.time() - started, 2))
            self.say(f"trial {trial.number}: pruned at step {trial.user_attrs.get('pruned_at_step')}")
            raise
        except BaseException:
            if run_dir.is_dir():
                runs.write_json(run_dir / TRIAL_FILE, {**status, "state": "failed"})
            raise
        finally:
            gc.collect()
        m = result.metrics
        value = float(m["val"][spec.metric])
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_time_s", round(time.time() - started, 2))
        trial.set_user_attr("trainable_params", int(result.params["trainable"]))
        trial.set_user_attr("best_step", m.get("best_step"))
        if "test" in m:
            trial.set_user_attr("test_accuracy", float(m["test"]["accuracy"]))
            trial.set_user_attr("test_macro_f1", float(m["test"]["macro_f1"]))
        runs.write_json(run_dir / TRIAL_FILE, {**status, "state": "complete", spec.metric: value})
        self.ran += 1
        self.say(f"trial {trial.number}: val {spec.metric} {value:.4f} "
                 f"({result.params['trainable']:,} trainable, {time.time() - started:.0f} s)")
        return value

    def _reject(self, trial, rejected: tuple, shown: str):
        import optuna

        count, why = rejected
        trial.set_user_attr("rejected", why)
        if count is not None:
            trial.set_user_attr("trainable_params", int(count))
        self.say(f"trial {trial.number}: rejected without training: {why}")
        # a pruned trial is one TPE learns from (as a bad one); a failed one it would ignore and propose again
        raise optuna.TrialPruned(f"rejected: {why}")


def _suggest(trial, space: list[Param]) -> dict:
    params = {}
    for p in space:
        if p.type == "categorical":
            params[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.type == "int":
            params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return params


def _over_budget(cfg: Config, num_labels: int) -> Optional[tuple[Optional[int], str]]:
    """(trainable count, reason) when cfg breaks budget.max_trainable_params, else None. Loads no weights."""
    from . import budget as budget_mod

    cap = cfg.budget.max_trainable_params
    if cap is None:
        return None
    count_fn = getattr(budget_mod, "count_trainable", None)

    def count(c: Config) -> Optional[int]:
        if count_fn is None or c.adapter.r == "auto":
            return None
        n = count_fn(c, num_labels)
        return int(n["trainable"] if isinstance(n, dict) else n)

    try:
        cfg = budget_mod.enforce(cfg, num_labels, log=lambda m: None)  # also resolves adapter.r=auto
    except BudgetError as e:
        return count(cfg), str(e)
    n = count(cfg)
    if n is not None and n > cap:
        return n, f"{n:,} trainable parameters, over budget.max_trainable_params={cap:,}"
    return None  # without count_trainable, train.prepare still checks the built model before any step


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------ running


def run_sweep(sweep_file: str | Path, storage: Optional[str] = None, study_name: Optional[str] = None,
              n_trials: Optional[int] = None, quiet: bool = False, timeout: Optional[float] = None) -> Path:
    """Run trials of the study until it has n_trials (all workers together) or the timeout passes.

    storage: an Optuna RDB URL shared by workers; default a SQLite file in the sweep folder.
    n_trials: at most this many trials by this worker (the sweep file's n_trials caps the whole study).
    Returns the sweep folder, where sweep_summary.csv, best.yaml and plots/ are written.
    """
    import optuna

    spec = load_sweep(sweep_file, study_name)
    if n_trials is not None and n_trials < 0:
        raise SweepError(f"--n-trials must be >= 0, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise SweepError(f"--timeout must be a positive number of seconds, got {timeout}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats are what mark a killed worker's trial failed; Optuna still labels them experimental
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage is None:
        spec.output.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(spec.output / 'study.db').resolve()}"
    rdb = open_storage(url, spec)
    study = open_study(spec, rdb)
    spec.output.mkdir(parents=True, exist_ok=True)  # only once the storage and the study are known to be usable
    if spec.sampler != "grid":
        # workers sharing a storage must not draw the same random points, so each mixes in its process id;
        # a resumed sweep mixes in the trial count for the same reason. The grid sampler is the exception:
        # its seed shuffles the grid, and trial k runs grid point k only if every worker shuffles alike.
        existing = len(study.get_trials(deepcopy=False))
        study.sampler = _build_sampler(spec, (spec.seed + 7919 * existing + (os.getpid() if storage else 0)) % 2**31)
    worker = _Worker(spec, quiet)
    worker.say(f"study {spec.study!r} in {url.split('@')[-1]}: {len(study.trials)} trials so far; "
               f"folder {spec.output}")

    def enough(study, _trial) -> None:
        # trials still running elsewhere count too, so workers stop at the study's total, not above it
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        if spec.n_trials is not None and len(study.get_trials(deepcopy=False, states=states)) >= spec.n_trials:
            study.stop()

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    todo = n_trials
    if spec.n_trials is not None and len(study.get_trials(deepcopy=False, states=finished)) >= spec.n_trials:
        todo = 0
    try:
        if todo != 0:
            study.optimize(worker.objective, n_trials=todo, timeout=timeout or spec.timeout, catch=(_Surplus,),
                           callbacks=[enough])
    finally:
        try:
            write_results(spec, study)
        except Exception as e:  # a worker's results are rewritten by the next one; never mask the real error
            print(f"[loraclf sweep] could not write the sweep summary: {type(e).__name__}: {e}", file=sys.stderr)
    worker.say(f"{worker.ran} trial(s) trained by this worker; summary in {spec.output / SUMMARY}")
    return spec.output


# ------------------------------------------------------------------------------------------ results


def trial_state(t) -> str:
    if t.state.name == "PRUNED" and "rejected" in t.user_attrs:
        return "REJECTED"
    if t.state.name == "FAIL" and "skipped" in t.user_attrs:
        return "SKIPPED"
    return t.state.name


def summary_rows(spec: SweepSpec, trials: list) -> list[dict]:
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({
            "trial": t.number,
            "state": trial_state(t),
            f"val_{spec.metric}": t.value if t.state.name == "COMPLETE" else (t.intermediate_values.get(last) if last else None),
            **{p.key: t.params.get(p.key) for p in spec.space},
            "trainable_params": t.user_attrs.get("trainable_params"),
            "run_time_s": round(duration, 2) if duration is not None else None,
            "last_step": last,
            "test_accuracy": t.user_attrs.get("test_accuracy"),
            "run_dir": t.user_attrs.get("run_dir"),
            "worker": t.user_attrs.get("worker"),
            "note": t.user_attrs.get("rejected") or t.user_attrs.get("skipped") or "",
        })
    return rows


def write_results(spec: SweepSpec, study) -> None:
    """sweep_summary.csv, best.yaml and plots/ in the sweep folder, from the study storage alone."""
    import optuna

    optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
    # Workers sharing a folder each write at the end; one that read the storage just before another's last trial
    # finished could overwrite a final summary with a stale one. So write, look again, and rewrite if it moved.
    for _ in range(5):
        trials = study.get_trials(deepcopy=False)
        _write_results(spec, study, trials)
        if [(t.number, t.state) for t in study.get_trials(deepcopy=False)] == [(t.number, t.state) for t in trials]:
            return


def _write_results(spec: SweepSpec, study, trials: list) -> None:
    import pandas as pd

    rows = summary_rows(spec, trials)
    if not rows:
        return
    df = pd.DataFrame(rows)
    for col in ("trainable_params", "last_step", *(p.key for p in spec.space if p.type == "int")):
        df[col] = df[col].astype("Int64")  # whole numbers stay whole next to empty cells
    runs.atomic_write_text(spec.output / SUMMARY, df.to_csv(index=False))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        pick = max if spec.direction == "maximize" else min
        best = pick(complete, key=lambda t: t.value)
        cfg = trial_config(spec, best.params)
        body = yaml.safe_dump(diff_from_defaults(cfg), sort_keys=False)
        head = (f"# loraclf train {spec.output / BEST}\n"
                f"# best of {len(complete)} complete trials of study {spec.study!r} ({spec.path}): trial {best.number}, "
                f"val {spec.metric} {best.value:.4f}"
                + (f", test accuracy {best.user_attrs['test_accuracy']:.4f}" if "test_accuracy" in best.user_attrs else "")
                + f"\n# run folder of that trial: {best.user_attrs.get('run_dir')}\n")
        runs.atomic_write_text(spec.output / BEST, head + body)
    write_plots(spec, study, rows)


def write_plots(spec: SweepSpec, study, rows: list[dict]) -> list[Path]:
    """Optimisation history, parameter importances, and the metric against each searched key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = spec.output / PLOTS
    out.mkdir(parents=True, exist_ok=True)
    col = f"val_{spec.metric}"
    done = [r for r in rows if r["state"] == "COMPLETE" and r[col] is not None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r[col] is not None]
    written = []

    def save(fig, name):
        path = out / name
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    if done:
        ax.scatter([r["trial"] for r in done], [r[col] for r in done], label="complete", color="tab:blue")
        best, xs, ys = None, [], []
        for r in sorted(done, key=lambda r: r["trial"]):
            v = r[col]
            best = v if best is None or (v > best if spec.direction == "maximize" else v < best) else best
            xs.append(r["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r[col] for r in pruned], marker="x", color="tab:gray",
                   label="pruned (last report)")
    for r in rows:
        if r["state"] == "REJECTED":
            ax.axvline(r["trial"], color="tab:orange", alpha=0.3, lw=1)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {spec.metric}")
    ax.set_title(f"optimisation history ({spec.study}; orange lines: rejected over budget)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, "history.png")

    importances = {}
    if len(done) >= 2:
        import optuna

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "importances will be equal" on a handful of trials
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = {}
    if importances:
        fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(importances)))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (optuna.importance.get_param_importances)")
        ax.set_title("parameter importances", fontsize=9)
        save(fig, "importances.png")

    for p in spec.space:
        pts = [(r[p.key], r[col]) for r in done if r[p.key] is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        if p.type == "categorical":
            labels = [str(c) for c in p.choices]
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts], color="tab:blue")
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], color="tab:blue")
            if p.log:
                ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.set_ylabel(f"val {spec.metric}")
        ax.set_title(f"val {spec.metric} against {p.key}", fontsize=9)
        save(fig, f"metric_vs_{runs.safe_run_name(p.key)}.png")
    return written


def report_line(run: str | Path) -> Optional[str]:
    """An HTML line for a run's report when the run is a sweep trial, else None."""
    path = Path(run) / TRIAL_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in info.get("params", {}).items())
        return (f"<p>Sweep trial {int(info['trial'])} of study <code>{html.escape(str(info['study']))}</code>: "
                f"{html.escape(params)}. All trials: <code>{html.escape(str(Path(run).parent / SUMMARY))}</code>.</p>")
    except (OSError, ValueError, KeyError, TypeError):
        return None
