"""The run folder: its layout, atomic writers and readers, and checkpoint discovery.

Layout of a run folder (every other module reads and writes it through this one):

    RUN/
      config.yaml          the resolved config
      label_map.json       {"id2label": {"0": name, ...}, "label2id": {name: 0, ...}}
      params.json          trainable-parameter breakdown
      history.jsonl        one JSON record per log or evaluation (see train.py)
      metrics.json         final metrics per split, best step, run time, hardware
      val_predictions.csv  text,label,predicted,confidence for the validation split at the best checkpoint
      adapter/             standard PEFT files (adapter_config.json, adapter_model.safetensors), head included
      tokenizer/           the tokenizer used for training
      checkpoints/step-N/  resumable checkpoints; a checkpoint is complete only when COMPLETE exists in it
      report/              plots and report.html
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import RunError

CONFIG = "config.yaml"
LABEL_MAP = "label_map.json"
PARAMS = "params.json"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
DECISION = "decision.json"  # how logits become outputs: problem type, temperature, thresholds, target scaling
LOSS = "loss.json"  # the training loss and the weights it used (class weights, target scaling)
VAL_PREDICTIONS = "val_predictions.csv"
ADAPTER = "adapter"
MODEL_CARD = "README.md"  # in adapter/ and in an export folder: the Hugging Face model card
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
REPORT = "report"
COMPLETE = "COMPLETE"  # written last into a checkpoint folder; its absence marks a torn checkpoint
ROUNDS = "rounds"
TRACKING = "tracking.json"  # where the trackers wrote: MLflow tracking URI + run id, TensorBoard folder
TENSORBOARD = "tensorboard"
ADAPT = "adapt.json"  # self-training: the rounds and their pseudo-label counts
PSEUDO_LABELS = "pseudo_labels.csv"
SWEEP_TRIAL = "sweep_trial.json"  # in each sweep trial's run folder: study, trial number, params, state

# inside checkpoints/step-N/
CKPT_WEIGHTS = "trainable.safetensors"
CKPT_OPTIMIZER = "optimizer.pt"
CKPT_SCHEDULER = "scheduler.pt"
CKPT_RNG = "rng.pt"
CKPT_STATE = "state.json"

# inside report/
REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
PER_LABEL_PNG = "per_label.png"  # multi-label
PREDICTED_VS_TRUE_PNG = "predicted_vs_true.png"  # regression
RESIDUALS_PNG = "residuals.png"  # regression
RELIABILITY_PNG = "reliability.png"  # a calibrated single-label run

# `loraclf compare` output folder
COMPARE_MD = "compare.md"
COMPARE_CSV = "compare.csv"

# an export folder (a plain transformers model folder)
EXPORT_INFO = "loraclf_export.json"  # how the folder was made; serve/predict read max_length from it
ONNX_FILE = "model.onnx"
HF_CONFIG = "config.json"

# a sweep's output folder
SWEEP_SUMMARY = "sweep_summary.csv"
SWEEP_BEST = "best.yaml"
SWEEP_PLOTS = "plots"
SWEEP_STUDY_DB = "study.db"  # the default SQLite storage, inside the sweep folder


# ------------------------------------------------------------------------------------------ atomic writes


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a temp file in the same folder, fsync it, rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run folder is incomplete (was training interrupted?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON; the run folder is damaged (train the run again)") from None


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp folder beside path; on success it is fsynced and renamed to path (replacing any old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and fsync; a torn last line is skipped by read_jsonl."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if not isinstance(record, dict):
            raise damaged(path, f"line {len(out) + 1} is {type(record).__name__}, not a JSON object")
        out.append(record)
    return out


# ------------------------------------------------------------------------------------------ run folders


def _existing_parent(p: Path) -> Path:
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe(folder: Path, what: str, p: Path) -> None:
    """Create and remove one temp file in folder: the only sure test of writability (root ignores mode bits)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".loraclf-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunError(f"cannot write {what} {p}: {e.strerror or type(e).__name__} in {folder}") from None


def check_output_file(path: str | Path, what: str = "--output") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, under a file, or unwritable."""
    p = Path(path)
    if p.is_dir():
        raise RunError(f"{what} {p} is a folder; give the path of a file to write")
    parent = _existing_parent(p)
    if not parent.is_dir():
        raise RunError(f"cannot write {what} {p}: {parent} is a file, not a folder")
    _probe(parent, what, p)
    return p


def check_output_dir(path: str | Path, what: str = "output.dir") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunError(f"{what} {p} is a file, not a folder; give a folder path")
    parent = p if p.is_dir() else _existing_parent(p)
    if not parent.is_dir():
        raise RunError(f"cannot create {what} {p}: {parent} is a file, not a folder")
    _probe(parent, what, p)
    return p


def new_run_dir(out_dir: str | Path, run_name: str, overwrite: bool) -> Path:
    """The path a new run will be published at; refuses to clobber unless overwrite is set."""
    check_output_dir(out_dir, "output.dir")
    run = Path(out_dir) / run_name
    if run.exists() and not run.is_dir():
        raise RunError(f"{run} is a file, not a run folder; pick another output.run_name")
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise RunError(
            f"run folder {run} already exists; pick another output.run_name, set output.overwrite=true, "
            f"or continue it with --resume"
        )
    if Path(out_dir).is_dir():  # a kill while an earlier run of this name was being created left its temp folder
        for stale in Path(out_dir).glob(f".{glob.escape(run_name)}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    return run


def safe_run_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "run"


def open_run(run: str | Path) -> Path:
    """Check that RUN is a finished run folder that predict/evaluate/export can use."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run} (give the folder that `loraclf train` printed)")
    for name in (CONFIG, LABEL_MAP):
        if not (run / name).is_file():
            raise RunError(f"{run} is not a loraclf run folder: {name} is missing")
    adapter = run / ADAPTER
    if not adapter.is_dir() or not (adapter / "adapter_config.json").is_file():
        raise RunError(
            f"{run}/{ADAPTER} is missing or incomplete; the run did not finish. Resume it with "
            f"`loraclf train --resume {run}`"
        )
    _check_run_files(run)
    return run


def _check_run_files(run: Path) -> None:
    """Cheap checks that the run's own files parse, so damage is reported as such and not as a library traceback."""
    import yaml

    try:
        cfg = yaml.safe_load((run / CONFIG).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        cfg = None
    if not isinstance(cfg, dict):
        raise RunError(f"{run / CONFIG} is not valid YAML: the run folder is damaged; train the run again")
    read_label_map(run)
    weights = run / ADAPTER / "adapter_model.safetensors"
    if weights.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error type on a damaged header
            raise RunError(f"{weights} is damaged ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); "
                           f"re-run `loraclf train`, or `loraclf train --resume {run}` if its checkpoints are there") from None


def checkpoint_dirs(run: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Torn ones (no COMPLETE marker) are ignored."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


def prune_checkpoints(run: str | Path, keep_last: int, keep: Path | None) -> None:
    """Delete complete checkpoints beyond the newest keep_last, never the one in keep (the best)."""
    dirs = checkpoint_dirs(run)
    doomed = dirs[:-keep_last] if keep_last > 0 else dirs
    for p in doomed:
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        # renamed away first, so a kill during the delete never leaves a half-deleted step-N behind
        gone = p.with_name(f".{p.name}.del.tmp")
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(p, gone)
        shutil.rmtree(gone, ignore_errors=True)


def remove_temp_files(run: str | Path) -> list[Path]:
    """Clean up after writes cut short by a kill: temp files and folders of the atomic writers in RUN and
    RUN/checkpoints. A `.NAME.old` whose NAME is missing (killed between atomic_dir's two renames) is put back."""
    removed = []
    for folder in (Path(run), Path(run) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not p.name.startswith("."):
                continue
            if p.name.endswith(".old"):
                original = p.with_name(p.name[1:-len(".old")])
                if not original.exists():
                    os.replace(p, original)
                    continue
            elif not p.name.endswith(".tmp"):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- reading run and export folders


@dataclass
class LabelMap:
    """A run's label map: class names by id, and whether the labels were integers (0..K-1) in the data."""

    id2label: dict[int, str]
    int_labels: bool


def damaged(path: str | Path, why: str) -> RunError:
    """The one error for a run-folder file that parses but does not hold what loraclf wrote there."""
    return RunError(f"{path} is damaged ({why}); it is not what loraclf wrote: restore it or train the run again")


def read_json_object(path: str | Path, required: dict | None = None) -> dict:
    """A JSON file that must hold an object; `required` maps keys that must be present to their allowed types."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise damaged(path, f"expected a JSON object, got {type(obj).__name__}")
    for key, types in (required or {}).items():
        if key not in obj:
            raise damaged(path, f"'{key}' is missing")
        if not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in _as_tuple(types)):
            raise damaged(path, f"'{key}' is {type(obj[key]).__name__}")
    return obj


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _id2label(path: Path, raw) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise damaged(path, "'id2label' must map '0', '1', ... to class names")
    try:
        id2label = {int(k): v for k, v in raw.items()}
    except (TypeError, ValueError):
        raise damaged(path, "'id2label' keys must be class ids '0', '1', ...") from None
    if sorted(id2label) != list(range(len(id2label))) or not all(isinstance(v, str) for v in id2label.values()):
        raise damaged(path, "'id2label' must map the ids 0..K-1 to class names")
    if len(set(id2label.values())) != len(id2label):
        raise damaged(path, "'id2label' names a class twice")
    return id2label


def read_label_map(run: str | Path) -> LabelMap:
    """RUN/label_map.json, shape-checked; runs written before int_labels was recorded infer it from the names."""
    path = Path(run) / LABEL_MAP
    saved = read_json_object(path, {"id2label": dict})
    id2label = _id2label(path, saved["id2label"])
    if "label2id" in saved and not isinstance(saved["label2id"], dict):
        raise damaged(path, "'label2id' must map class names to ids")
    if "int_labels" in saved and not isinstance(saved["int_labels"], bool):
        raise damaged(path, "'int_labels' must be true or false")
    if "int_labels" in saved:
        return LabelMap(id2label, bool(saved["int_labels"]))
    return LabelMap(id2label, all(str(v).isdigit() and int(v) == k for k, v in id2label.items()))


def is_export_dir(path: str | Path) -> bool:
    """A model folder (config.json) that is not a run folder."""
    p = Path(path)
    return (p / HF_CONFIG).is_file() and not (p / CONFIG).is_file()


def read_export_info(folder: str | Path) -> dict | None:
    """How an export folder was made (FOLDER/loraclf_export.json), or None for a model folder without one."""
    p = Path(folder) / EXPORT_INFO
    return read_json_object(p) if p.is_file() else None


def read_optional_object(path: str | Path) -> dict:
    """A side file that may be absent ({} then) but, when present, must hold a JSON object."""
    return read_json_object(path) if Path(path).is_file() else {}
