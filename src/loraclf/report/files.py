"""What the report reads from a run folder (RunFiles), and the names it gives the metrics."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import task as problem, runs
from ..base.errors import RunError
from . import checks


WRONG_EXAMPLES = 20  # the most confidently wrong validation examples shown in the report
# the figures of each problem type, beside curves.png
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "subset_accuracy": "subset accuracy",
         "hamming_loss": "Hamming loss", "mean_average_precision": "mean average precision", "loss": "loss",
         "ece": "ECE", "nll": "NLL", "rmse": "RMSE", "mae": "MAE", "pearson": "Pearson r", "spearman": "Spearman ρ",
         "r2": "R²"}
CALIBRATION_SCALARS = ("ece", "nll")  # single-label: in the calibration table, not drawn as curves
UNITLESS = ("pearson", "spearman", "r2")  # regression: drawn on their own axis, apart from the errors in target units
VAL_LOSS = {problem.SINGLE: "cross-entropy", problem.MULTI: "binary cross-entropy", problem.REGRESSION: "MSE"}
METRIC_COLOURS = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def metric_name(key: str) -> str:
    """A metric's name for people: macro_f1 -> macro-F1."""
    return NAMES.get(key, key)


def curve_metrics(problem_type: str) -> list[str]:
    """The validation metrics drawn against step: the type's scalars (main first) but the loss and calibration."""
    return [k for k in problem.SCALARS[problem_type] if k != "loss" and k not in CALIBRATION_SCALARS]


# ------------------------------------------------------------------------------------------ reading a run


@dataclass
class RunFiles:
    """What the report needs from a run folder; optional files are None/empty when absent."""

    path: Path
    config: dict
    metrics: dict
    params: dict | None = None
    history: list[dict] = field(default_factory=list)
    predictions: list[dict] | None = None  # rows of val_predictions.csv
    tracking: dict | None = None

    @property
    def train(self) -> list[dict]:
        return [r for r in self.history if r.get("type") == "train" and numbers(r, "step", "loss")]

    @property
    def problem_type(self) -> str:
        return _problem_type(self.config, self.metrics)

    @property
    def evals(self) -> list[dict]:
        main = problem.main_metric(self.problem_type)
        return [r for r in self.history if r.get("type") == "eval" and r.get("split", "val") == "val"
                and numbers(r, "step", main)]


def numbers(record: dict, *keys: str) -> bool:
    """True when every key holds a finite number; records written by another version or torn by hand are skipped
    (load_run says how many)."""
    return all(checks.finite(record.get(k)) for k in keys)


def _problem_type(config: dict, metrics: dict) -> str:
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return metrics.get("problem_type") or model.get("problem_type") or problem.SINGLE


def _read_config(run: Path) -> dict:
    try:
        config = yaml.safe_load(checks.read_text(run / runs.CONFIG)) or {}
    except (yaml.YAMLError, RunError):
        config = None
    if not isinstance(config, dict):
        raise RunError(f"{run}/{runs.CONFIG} is not a valid YAML mapping; the run folder is damaged")
    return config


def _read_json(path: Path):
    try:
        return runs.read_json(path)
    except OSError as e:  # a folder in its place, or no permission to read
        raise RunError(f"cannot read {path}: {e.strerror or e}; the run folder is damaged") from None


def _read_optional_json(path: Path):
    """A side file that may be absent (None) but, when present, must hold a JSON object (else: named as damaged)."""
    if not path.is_file():
        return None
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise runs.damaged(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def load_run(run: str | Path) -> RunFiles:
    """Read a finished run folder (config.yaml and metrics.json must exist), checking the shape of every file the
    report reads (checks.py): a damaged file is one RunError, damaged lines or rows are left out with a warning."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run} (give the folder that `loraclf train` printed)")
    if not (run / runs.CONFIG).is_file():
        raise RunError(f"{run} is not a loraclf run folder: {runs.CONFIG} is missing")
    if not (run / runs.METRICS).is_file():
        raise RunError(f"{run}/{runs.METRICS} is missing; the run did not finish, so there is nothing to report yet")
    config = _read_config(run)
    _read_optional_json(run / runs.ADAPT)  # self-training's record: checked here, shown from metrics.json
    metrics = _read_json(run / runs.METRICS)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("val"), dict):
        raise RunError(f"{run}/{runs.METRICS} has no 'val' metrics; the run folder is damaged")
    if metrics.get("problem_type", problem.SINGLE) not in problem.PROBLEM_TYPES:
        raise RunError(f"{run}/{runs.METRICS} names an unknown problem_type {metrics['problem_type']!r}; the run "
                       f"folder is damaged")
    checks.check_metrics(run / runs.METRICS, metrics)
    params, tracking = _read_optional_json(run / runs.PARAMS), _read_optional_json(run / runs.TRACKING)
    checks.check_params(run / runs.PARAMS, params)
    checks.check_tracking(run / runs.TRACKING, tracking)
    pt = _problem_type(config, metrics)
    history = checks.read_history(run / runs.HISTORY)
    predictions = checks.read_predictions(run / runs.VAL_PREDICTIONS, pt)
    checks.warn_unplotted(run / runs.HISTORY, history, pt)
    return RunFiles(run, config, metrics, params, history, predictions, tracking)


def sweep_trial_line(run: str | Path) -> str | None:
    """An HTML line for a run's report when the run is a trial of a sweep (it holds sweep_trial.json), else None."""
    path = Path(run) / runs.SWEEP_TRIAL
    if not path.is_file():
        return None
    info = runs.read_json_object(path, {"trial": int, "study": str})
    if not isinstance(info.get("params", {}), dict):
        raise runs.damaged(path, "'params' must be an object")
    params = ", ".join(f"{k}={_short(v)}" for k, v in info.get("params", {}).items())
    return (f"<p>Sweep trial {int(info['trial'])} of study <code>{html.escape(str(info['study']))}</code>: "
            f"{html.escape(params)}. All trials: "
            f"<code>{html.escape(str(Path(run).parent / runs.SWEEP_SUMMARY))}</code>.</p>")


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------ plots
