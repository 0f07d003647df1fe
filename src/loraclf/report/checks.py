"""Shape checks of the run-folder files the report reads (issue 42: a binary history.jsonl gave a traceback).

A file that cannot be read, is not UTF-8 text, or holds the wrong type where loraclf writes a number, a list or an
object is damaged: one RunError names it and what is wrong, before anything is drawn or written. Lines of
history.jsonl and rows of val_predictions.csv that a kill can cut short, or that hold no number where one belongs,
are left out with one warning line each, and the report goes on without them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .. import runs, task as problem
from ..base import logs
from ..base.errors import RunError

# val_predictions.csv columns that hold numbers, besides each label's prob_<name>
NUMERIC_COLUMNS = {problem.SINGLE: ("confidence",), problem.MULTI: (), problem.REGRESSION: ("label", "predicted",
                                                                                          "residual")}


def finite(v) -> bool:
    """A JSON number that can be drawn: not a bool, not NaN or infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def warn(path: Path, what: str) -> None:
    logs.get(__name__).warning(f"warning: {path}: {what}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def read_text(path: Path) -> str:
    """A run-folder file's text; unreadable or not UTF-8: a RunError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise runs.damaged(path, f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}") from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}; the run folder is damaged") from None


# ------------------------------------------------------------------------------------------ history.jsonl


def read_history(path: Path) -> list[dict]:
    """history.jsonl's records; lines that are not JSON (a kill cuts the last one short) are left out, with a
    warning; a line that is JSON but not an object means the file is not what loraclf wrote."""
    if not path.exists():
        return []
    records, torn, total = [], [], 0
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn.append(n)
            continue
        if not isinstance(record, dict):
            raise runs.damaged(path, f"line {n} is {type(record).__name__}, not a JSON object")
        records.append(record)
    if torn:
        warn(path, f"left out {len(torn)} of {_plural(total, 'line')} that are not JSON (cut short by a kill, "
                   f"or damaged), from line {torn[0]}")
    return records


def warn_unplotted(path: Path, history: list[dict], problem_type: str) -> None:
    """Say how many training and validation records the curves and the progress table leave out."""
    main = problem.main_metric(problem_type)
    bad = sum(1 for r in history
              if (r.get("type") == "train" and not (finite(r.get("step")) and finite(r.get("loss"))))
              or (r.get("type") == "eval" and r.get("split", "val") == "val"
                  and not (finite(r.get("step")) and finite(r.get(main)))))
    if bad:
        warn(path, f"left out {_plural(bad, 'record')} whose step, loss or main metric is not a finite number")


# ------------------------------------------------------------------------------------------ val_predictions.csv


def _is_number(cell) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return False
    return True


def read_predictions(path: Path, problem_type: str) -> list[dict] | None:
    """val_predictions.csv's rows as dicts (None when absent). Rows whose fields do not match the header, or that hold
    no number where one belongs, are left out with a warning."""
    if not path.is_file():
        return None
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error):
        raise RunError(f"{path} is not a readable UTF-8 CSV; the run folder is damaged") from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}; the run folder is damaged") from None
    if not rows:
        raise runs.damaged(path, "it is empty, without even its header row")
    header, body = rows[0], [r for r in rows[1:] if r]
    whole = [dict(zip(header, r)) for r in body if len(r) == len(header)]
    if len(whole) < len(body):
        warn(path, f"left out {_plural(len(body) - len(whole), 'row')} whose fields do not match the header")
    numeric = [c for c in header if c in NUMERIC_COLUMNS[problem_type] or c.startswith("prob_")]
    good = [r for r in whole if all(_is_number(r[c]) for c in numeric)]
    if len(good) < len(whole):
        warn(path, f"left out {_plural(len(whole) - len(good), 'row')} with a non-number in {', '.join(numeric)}")
    return good


# ------------------------------------------------------------------------------------------ the JSON files


def _expect(path: Path, key: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise runs.damaged(path, f"'{key}' is {type(value).__name__}, expected {what}")


def _objects(path: Path, key: str, value) -> None:
    """An object whose values are objects (per_class, per_label)."""
    _expect(path, key, value, isinstance(value, dict), "an object of objects")
    for name, v in value.items():
        _expect(path, f"{key}.{name}", v, isinstance(v, dict), "an object")


def _confusion(path: Path, key: str, split: dict) -> None:
    matrix = split["confusion_matrix"]
    ok = isinstance(matrix, list) and all(isinstance(row, list) and all(finite(x) for x in row) for row in matrix)
    _expect(path, f"{key}.confusion_matrix", matrix, ok, "a square list of lists of numbers")
    if any(len(row) != len(matrix) for row in matrix):
        raise runs.damaged(path, f"'{key}.confusion_matrix' is not square (rows of "
                                 f"{', '.join(str(len(row)) for row in matrix)} numbers)")
    labels = split.get("labels")
    if isinstance(labels, list) and len(labels) != len(matrix):
        raise runs.damaged(path, f"'{key}.confusion_matrix' has {len(matrix)} rows but '{key}.labels' names "
                                 f"{len(labels)} labels")


def _check_split(path: Path, key: str, split) -> None:
    _expect(path, key, split, isinstance(split, dict), "an object")
    if split.get("labels") is not None:
        _expect(path, f"{key}.labels", split["labels"], isinstance(split["labels"], list), "a list")
    for table in ("per_class", "per_label"):
        if split.get(table) is not None:
            _objects(path, f"{key}.{table}", split[table])
    if split.get("confusion_matrix") is not None:
        _confusion(path, key, split)


def _check_decision(path: Path, decision) -> None:
    _expect(path, "decision", decision, isinstance(decision, dict), "an object")
    for name in ("temperature", "target_mean", "target_std"):
        if decision.get(name) is not None:
            _expect(path, f"decision.{name}", decision[name], finite(decision[name]), "a number")
    thresholds = decision.get("thresholds")
    if thresholds is not None:
        ok = isinstance(thresholds, list) and all(finite(t) for t in thresholds)
        _expect(path, "decision.thresholds", thresholds, ok, "a list of numbers")


def check_metrics(path: Path, metrics: dict) -> None:
    """The parts of metrics.json the report draws or indexes: splits, their tables and matrix, the decision."""
    for key in ("val", "test"):
        if key in metrics:
            _check_split(path, key, metrics[key])
    best = metrics.get("best_step")
    if best is not None:
        _expect(path, "best_step", best, finite(best) and float(best).is_integer(), "a whole number")
    if metrics.get("decision") is not None:
        _check_decision(path, metrics["decision"])
    for key in ("hardware", "calibration"):
        if metrics.get(key) is not None:
            _expect(path, key, metrics[key], isinstance(metrics[key], dict), "an object")


def check_params(path: Path, params: dict | None) -> None:
    if params and params.get("groups") is not None:
        _expect(path, "groups", params["groups"], isinstance(params["groups"], dict), "an object")


def check_tracking(path: Path, tracking: dict | None) -> None:
    for tracker, info in (tracking or {}).items():
        if info is not None:
            _expect(path, tracker, info, isinstance(info, dict), "an object")
