"""A trained model's folder, opened and checked once: `Run` (what `loraclf train` wrote) and `ExportFolder` (what
`loraclf export` wrote). Every command opens its folder here and hands the object down; nothing below re-opens
the path. A file that changes outputs (config.yaml, label_map.json, decision.json, the adapter weights) is
shape-checked here, so damage is one line naming the file, never a library traceback or a silent wrong output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..base.errors import ConfigError, RunError
from ..config import Config
from ..config.load import from_dict, parse_override, read_yaml, set_path
from .. import task
from .folder import LabelMap, is_export_dir, read_export_info, read_label_map
from .io import damaged, read_json_object
from .layout import ADAPTER, CONFIG, DECISION, EXPORT_INFO, HF_CONFIG, LABEL_MAP, TOKENIZER

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_run_config(run: str | Path) -> Config:
    """RUN/config.yaml as a validated Config; a file that parses but does not validate is reported as damaged."""
    path = Path(run) / CONFIG
    try:
        return from_dict(read_yaml(path))
    except ConfigError as e:
        raise RunError(f"{path} is damaged or was written by another version ({e}); restore it or train the run "
                       f"again") from None


def resume_config(run: str | Path, overrides: list[str] | None = None) -> Config:
    """The config saved in RUN (config.yaml, its paths already absolute) <- key=value overrides, validated."""
    saved = Path(run) / CONFIG
    if not Path(run).is_dir():
        raise RunError(f"cannot resume: run folder {run} not found (give the folder that `loraclf train` printed)")
    if not saved.is_file():
        raise RunError(f"cannot resume: {saved} not found; {run} is not a loraclf run folder "
                       f"(give the folder that `loraclf train` printed)")
    load_run_config(run)  # the saved file itself must validate: damage is named as such, not as an override problem
    data = read_yaml(saved)
    for text in overrides or []:
        keys, value = parse_override(text)
        set_path(data, keys, value)
    return from_dict(data)


# ------------------------------------------------------------------------------------------ decision.json


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_thresholds(path: Path, d: task.Decision, n_labels: int) -> None:
    if d.thresholds is None:
        return
    want = n_labels if d.problem_type == task.MULTI else 1
    if d.problem_type == task.REGRESSION or (d.problem_type == task.SINGLE and n_labels != 2):
        raise damaged(path, f"'thresholds' are set, but a {d.problem_type} model with {n_labels} label(s) has none")
    if not (isinstance(d.thresholds, list) and len(d.thresholds) == want):
        raise damaged(path, f"'thresholds' must be a list of {want} number(s), one per label")
    if not all(_finite(t) and 0.0 <= t <= 1.0 for t in d.thresholds):
        raise damaged(path, "'thresholds' must be probabilities between 0 and 1")


def _check_decision(path: Path, d: task.Decision, problem_type: str, n_labels: int) -> None:
    if d.problem_type != problem_type:
        raise damaged(path, f"its problem_type {d.problem_type!r} disagrees with config.yaml's {problem_type!r}")
    if not (_finite(d.temperature) and 0 < d.temperature < 1e6):
        raise damaged(path, "'temperature' must be a positive finite number")
    if not (_finite(d.target_mean) and _finite(d.target_std) and 0 < d.target_std < 1e30 and abs(d.target_mean) < 1e30):
        raise damaged(path, "'target_mean' and 'target_std' must be finite numbers, the std positive")
    if d.threshold_metric is not None and not isinstance(d.threshold_metric, str):
        raise damaged(path, "'threshold_metric' must be a name or null")
    if not isinstance(d.notes, dict):
        raise damaged(path, "'notes' must be a JSON object")
    _check_thresholds(path, d, n_labels)


def read_decision(run: str | Path, problem_type: str = task.SINGLE, n_labels: Optional[int] = None) -> task.Decision:
    """RUN/decision.json, shape-checked against the run's problem type and label count; a run written before it
    existed decides by argmax (single-label) or 0.5 (multi-label)."""
    path = Path(run) / DECISION
    if not path.is_file():
        return task.Decision(problem_type)
    obj = read_json_object(path, {"problem_type": str})
    if obj["problem_type"] not in task.PROBLEM_TYPES:
        raise damaged(path, f"unknown problem_type {obj['problem_type']!r}")
    d = task.Decision.from_json(obj)
    _check_decision(path, d, problem_type, n_labels if n_labels is not None else 2)
    return d


# ------------------------------------------------------------------------------------------ the folders


def _check_adapter(path: Path) -> None:
    adapter = path / ADAPTER
    if not adapter.is_dir() or not (adapter / ADAPTER_CONFIG).is_file():
        raise RunError(f"{path}/{ADAPTER} is missing or incomplete; the run did not finish. Resume it with "
                       f"`loraclf train --resume {path}`")
    weights = adapter / ADAPTER_WEIGHTS
    if weights.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error type on a damaged header
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise RunError(f"{weights} is damaged ({first}); re-run `loraclf train`, or `loraclf train --resume "
                           f"{path}` if its checkpoints are there") from None


def _check_config_file(path: Path) -> None:
    import yaml

    try:
        tree = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        tree = None
    if not isinstance(tree, dict):
        raise RunError(f"{path / CONFIG} is not valid YAML: the run folder is damaged; train the run again")


@dataclass(frozen=True)
class Run:
    """A finished run folder: its path, config, label map and decision rule, each read and checked once."""

    path: Path
    config: Config
    label_map: LabelMap
    decision: task.Decision

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Check that PATH is a finished run folder that predict, evaluate, export and serve can use, and read it."""
        p = Path(path)
        if not p.is_dir():
            raise RunError(f"run folder not found: {p} (give the folder that `loraclf train` printed)")
        for name in (CONFIG, LABEL_MAP):
            if not (p / name).is_file():
                raise RunError(f"{p} is not a loraclf run folder: {name} is missing")
        _check_adapter(p)
        _check_config_file(p)
        label_map = read_label_map(p)
        cfg = load_run_config(p)
        pt = cfg.model.problem_type
        return cls(p, cfg, label_map, read_decision(p, pt, task.num_labels(pt, label_map.id2label)))

    @property
    def id2label(self) -> dict[int, str]:
        return self.label_map.id2label

    @property
    def problem_type(self) -> str:
        return self.config.model.problem_type

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER

    def file(self, name: str) -> Path:
        """RUN/name (the names are in loraclf.runs.layout)."""
        return self.path / name


@dataclass(frozen=True)
class ExportFolder:
    """A standalone model folder written by `loraclf export` (or any transformers classification folder)."""

    path: Path
    info: dict  # loraclf_export.json: how it was made; {} for a plain transformers folder

    @classmethod
    def open(cls, path: str | Path) -> "ExportFolder":
        p = Path(path)
        if not is_export_dir(p):
            hint = "; for a run folder use Classifier.from_run" if (p / CONFIG).is_file() else ""
            raise RunError(f"{p} is not an exported model folder ({HF_CONFIG} is missing){hint}")
        return cls(p, read_export_info(p) or {})

    def file(self, name: str = EXPORT_INFO) -> Path:
        return self.path / name


ModelFolder = Union[Run, ExportFolder]


def open_model_folder(path: str | Path) -> ModelFolder:
    """A run folder or an export folder, whichever PATH holds, opened and checked."""
    return ExportFolder.open(path) if is_export_dir(path) else Run.open(path)


def as_run(run: Run | str | Path) -> Run:
    """The Run itself, or the folder at a path opened as one (the entry points of the Python API take either)."""
    return run if isinstance(run, Run) else Run.open(run)
