"""The Optuna side of a sweep: storage, sampler and pruner, the study, one worker's trials, and run_sweep.

Every trial is a normal run folder `<output>/trial-NNNN/` (numbered by Optuna's trial number, so workers never
collide). The study lives in an Optuna RDB storage: a SQLite file inside the sweep folder by default, or
`--storage URL` shared by workers on any number of machines (PostgreSQL for many). Heartbeats mark a killed
worker's trial FAIL; rerunning the same command resumes the study.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..model import budget
from .. import data, runs
from ..base import logs
from ..config import Config
from ..base.errors import BudgetError, ConfigError, LoraclfError
from ..training import train
from .results import test_attr, write_results
from .spec import Param, SweepSpec, load_sweep, shown_params, trial_config

logger = logs.get(__name__)
SQLITE_LOCK_WAIT_S = 60
SEED_STRIDE = 7919  # a prime: a resumed sweep's sampler seed moves this far per existing trial


class SweepError(LoraclfError):
    """A storage or study that cannot be used as given."""


def say(msg: str) -> None:
    logger.info(f"sweep: {msg}")


# ------------------------------------------------------------------------------------------ Optuna objects


def _build_sampler(spec: SweepSpec, seed: int):
    import optuna

    try:
        if spec.sampler == "grid":
            grid = {p.key: p.grid_values() for p in spec.space}
            return optuna.samplers.GridSampler(grid, seed=seed, **spec.sampler_options)
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
        kwargs = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}}
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=kwargs,
                                              heartbeat_interval=spec.heartbeat_interval,
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
        raise SweepError(f"cannot open storage {_shown_url(url)}: {first}") from None


def _shown_url(url: str) -> str:
    return url.split("@")[-1]  # never print a password


def open_study(spec: SweepSpec, storage):
    """Create or load the study; refuse one made with another direction, search space or metric."""
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
    splits_cache: dict = field(default_factory=dict)
    ran: int = 0

    def splits(self, cfg: Config):
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
        if key not in self.splits_cache:
            self.splits_cache[key] = data.load_splits(cfg.data, log=lambda m: None,
                                                      problem_type=cfg.model.problem_type)
        return self.splits_cache[key]

    def objective(self, trial) -> float:
        spec = self.spec
        params = _suggest(trial, spec.space)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        _skip_surplus(trial, spec.n_trials)
        name = f"trial-{trial.number:04d}"
        cfg = trial_config(spec, params, name)
        splits = self.splits(cfg)
        shown = shown_params(params)
        rejected = _over_budget(cfg, len(splits.id2label))
        if rejected is not None:
            return _reject(trial, rejected)
        run_dir = runs.new_run_dir(spec.output, name, overwrite=False)
        status = {"study": spec.study, "trial": trial.number, "params": params, "worker": trial.user_attrs.get("worker")}
        say(f"trial {trial.number}: {shown}")
        value = self.train(trial, cfg, splits, run_dir, status)
        self.ran += 1
        return value

    def train(self, trial, cfg: Config, splits, run_dir: Path, status: dict) -> float:
        """Train one trial's run folder, reporting each evaluation to the pruner; returns the val metric."""
        import optuna

        spec = self.spec

        def on_eval(step: int, metrics: dict) -> None:
            if metrics.get(spec.metric) is None:  # undefined at this step (e.g. Pearson of constant predictions)
                return
            value = float(metrics[spec.metric])
            runs.write_json(run_dir / runs.SWEEP_TRIAL, {**status, "state": "running", "step": step})
            trial.report(value, step)
            if trial.should_prune():
                runs.write_json(run_dir / runs.SWEEP_TRIAL, {**status, "state": "pruned", "step": step, spec.metric: value})
                trial.set_user_attr("pruned_at_step", step)
                raise optuna.TrialPruned(f"{spec.metric} {value:.4f} at step {step} is worse than the pruner allows")

        started = time.time()
        try:
            result = train(cfg, quiet=True, splits=splits, run_dir=run_dir, on_eval=on_eval)
        except BudgetError as e:  # the exact count on the built model, still before any training step
            return _reject(trial, (None, str(e)))
        except optuna.TrialPruned:
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("run_time_s", round(time.time() - started, 2))
            say(f"trial {trial.number}: pruned at step {trial.user_attrs.get('pruned_at_step')}")
            raise
        except BaseException:
            if run_dir.is_dir():
                runs.write_json(run_dir / runs.SWEEP_TRIAL, {**status, "state": "failed"})
            raise
        finally:
            gc.collect()
        value = result.metrics["val"].get(spec.metric)
        value = float("nan") if value is None else float(value)  # Optuna marks a NaN trial failed
        _record(trial, result, run_dir, started, spec.metric)
        runs.write_json(run_dir / runs.SWEEP_TRIAL, {**status, "state": "complete", spec.metric: value})
        say(f"trial {trial.number}: val {spec.metric} {value:.4f} "
            f"({result.params['trainable']:,} trainable, {time.time() - started:.0f} s)")
        return value


def _record(trial, result, run_dir: Path, started: float, metric: str) -> None:
    """A complete trial's facts as user attrs, which sweep_summary.csv and best.yaml read from the storage."""
    m = result.metrics
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("run_time_s", round(time.time() - started, 2))
    trial.set_user_attr("trainable_params", int(result.params["trainable"]))
    trial.set_user_attr("best_step", m.get("best_step"))
    if isinstance((m.get("test") or {}).get(metric), (int, float)):
        trial.set_user_attr(test_attr(metric), float(m["test"][metric]))


def _skip_surplus(trial, n_trials: Optional[int]) -> None:
    """Raise _Surplus when trials before this one already make the study's n_trials."""
    import optuna

    if n_trials is None:
        return
    State = optuna.trial.TrialState
    live = (State.COMPLETE, State.PRUNED, State.RUNNING, State.WAITING)
    before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    if len(before) >= n_trials:
        trial.set_user_attr("skipped", f"the study already had {n_trials} trials")
        trial.study.stop()
        raise _Surplus(f"the study already has n_trials={n_trials}; this worker stops")


def _reject(trial, rejected: tuple):
    import optuna

    count, why = rejected
    trial.set_user_attr("rejected", why)
    if count is not None:
        trial.set_user_attr("trainable_params", int(count))
    say(f"trial {trial.number}: rejected without training: {why}")
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
    if cfg.budget.max_trainable_params is None:
        return None
    try:
        budget.enforce(cfg, num_labels, log=lambda m: None)  # also resolves adapter.r=auto
    except BudgetError as e:
        count = None if cfg.adapter.r == "auto" else budget.count_trainable(cfg, num_labels)
        return count, str(e)
    return None


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
    with logs.quiet(quiet):
        study = _start(spec, storage)
        worker = _Worker(spec)
        try:
            _optimize(spec, study, worker, n_trials, timeout or spec.timeout)
        finally:
            try:
                write_results(spec, study)
            except Exception as e:  # a worker's results are rewritten by the next one; never mask the real error
                logger.warning(f"sweep: could not write the sweep summary: {type(e).__name__}: {e}")
        say(f"{worker.ran} trial(s) trained by this worker; summary in {spec.output / runs.SWEEP_SUMMARY}")
    return spec.output


def _start(spec: SweepSpec, storage: Optional[str]):
    """Open the storage and the study (creating the sweep folder only once both are usable); reseed the sampler."""
    if storage is None:
        spec.output.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(spec.output / runs.SWEEP_STUDY_DB).resolve()}"
    study = open_study(spec, open_storage(url, spec))
    spec.output.mkdir(parents=True, exist_ok=True)
    if spec.sampler != "grid":
        # workers sharing a storage must not draw the same random points, so each mixes in its process id;
        # a resumed sweep mixes in the trial count for the same reason. The grid sampler is the exception:
        # its seed shuffles the grid, and trial k runs grid point k only if every worker shuffles alike.
        existing = len(study.get_trials(deepcopy=False))
        study.sampler = _build_sampler(spec, (spec.seed + SEED_STRIDE * existing + (os.getpid() if storage else 0)) % 2**31)
    say(f"study {spec.study!r} in {_shown_url(url)}: {len(study.trials)} trials so far; folder {spec.output}")
    return study


def _optimize(spec: SweepSpec, study, worker: _Worker, n_trials: Optional[int], timeout: Optional[float]) -> None:
    """This worker's share of trials, stopping once the study (all workers together) has spec.n_trials."""
    import optuna

    State = optuna.trial.TrialState

    def enough(study, _trial) -> None:
        # trials still running elsewhere count too, so workers stop at the study's total, not above it
        counted = study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED, State.RUNNING))
        if spec.n_trials is not None and len(counted) >= spec.n_trials:
            study.stop()

    finished = study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED))
    if n_trials == 0 or (spec.n_trials is not None and len(finished) >= spec.n_trials):
        return
    study.optimize(worker.objective, n_trials=n_trials, timeout=timeout, catch=(_Surplus,), callbacks=[enough])
