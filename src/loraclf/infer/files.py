"""The predict and evaluate verbs on files: read the input through infer.inputs, run the model, and write the
output format of each problem type (competition: ID,Label; full: labels, ids, confidences, probabilities)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .. import data as data_mod
from .. import runs
from .. import task as problem
from ..base import device as device_mod
from ..base.errors import DataError
from ..data import targets
from ..task import MULTI, REGRESSION
from .engine import InferenceModel, label_values, load_inference_model
from .inputs import check_pair_columns, read_inputs
from .metrics import compute_metrics

FORMATS = ("competition", "full")
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".txt", "")
DEFAULT_DELIMITER = "|"  # how label sets are written when the run names no data.label_delimiter


def _prob_columns(df: pd.DataFrame, out: np.ndarray, labels: list[str]) -> pd.DataFrame:
    for j, name in enumerate(labels):
        df[f"prob_{name}"] = out[:, j] if len(out) else []
    return df


def _single_frame(out: np.ndarray, im: InferenceModel, ids: list, fmt: str) -> pd.DataFrame:
    pred = problem.predictions(out, im.decision).astype(np.int64)
    if fmt == "competition":
        values = label_values(im.id2label, im.int_labels)
        return pd.DataFrame({"ID": ids, "Label": [values[int(i)] for i in pred]})
    df = pd.DataFrame({"ID": ids, "label": [im.id2label[int(i)] for i in pred], "label_id": pred,
                       "confidence": out[np.arange(len(pred)), pred] if len(pred) else []})
    return _prob_columns(df, out, im.labels)


def _multi_frame(out: np.ndarray, im: InferenceModel, ids: list, fmt: str) -> pd.DataFrame:
    delimiter = im.data.label_delimiter or DEFAULT_DELIMITER
    joined = [delimiter.join(names) for names in im.decide(out)]
    if fmt == "competition":
        return pd.DataFrame({"ID": ids, "Labels": joined})
    return _prob_columns(pd.DataFrame({"ID": ids, "labels": joined}), out, im.labels)


def prediction_frame(out: np.ndarray, im: InferenceModel, ids: Optional[list], fmt: str) -> pd.DataFrame:
    """What predict writes, per problem type and format.

    single-label  competition: ID,Label (class id for integer labels, else name); full: ID,label,label_id,
                  confidence,prob_<label>...
    multi-label   competition: ID,Labels (names joined by data.label_delimiter, else '|'); full: ID,labels,
                  prob_<label>...
    regression    competition: ID,Label (the value); full: ID,prediction
    """
    ids = list(range(len(out))) if ids is None else ids
    if im.problem_type == REGRESSION:
        return pd.DataFrame({"ID": ids, "Label" if fmt == "competition" else "prediction": np.asarray(out, float)})
    if im.problem_type == MULTI:
        return _multi_frame(out, im, ids, fmt)
    return _single_frame(out, im, ids, fmt)


def summary(out: np.ndarray, im: InferenceModel) -> dict:
    """Rows per label (multi-label: rows holding each label), or the mean, std, min and max of regression values."""
    if im.problem_type == REGRESSION:
        v = np.asarray(out, dtype=np.float64)
        stats = (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))
        return {k: (float(f(v)) if len(v) else None) for k, f in stats}
    k = len(im.id2label)
    pred = problem.predictions(out, im.decision)
    if im.problem_type == MULTI:
        counts = pred.sum(0) if len(pred) else np.zeros(k, int)
    else:
        counts = np.bincount(pred, minlength=k) if len(pred) else np.zeros(k, int)
    return {im.id2label[i]: int(c) for i, c in enumerate(counts)}


def write_frame(path: str | Path, df: pd.DataFrame) -> None:
    """df as .csv/.tsv/.jsonl/.parquet (by path's suffix), written atomically."""
    path = Path(path)
    _check_suffix(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        runs.atomic_write_text(path, df.to_json(orient="records", lines=True))
    elif suffix == ".parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        runs.atomic_write_bytes(path, buf.getvalue())
    else:
        runs.atomic_write_text(path, df.to_csv(index=False, sep="\t" if suffix == ".tsv" else ","))


def check_output(output: Path, source: str | Path, flag: str) -> None:
    """Refuse, before any model is loaded, an --output that cannot be written or that is the file read."""
    runs.check_output_file(output, "--output")
    src = Path(source)
    if output.resolve() == src.resolve() or (output.exists() and src.exists() and output.samefile(src)):
        raise DataError(f"--output {output} is the {flag} file; writing it would overwrite what is read: "
                        f"give another --output path")


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"unknown output format '{path.suffix}' for {path}; use .csv, .tsv, .jsonl or .parquet")


# ------------------------------------------------------------------------------------------ the verbs


def predict_file(run: str | Path | runs.ModelFolder, input_path: str | Path, output_path: str | Path, fmt: str = "competition",
                 batch_size: Optional[int] = None, allow_pickle: bool = False, text_column: Optional[str] = None,
                 precision: str = "fp32", quiet: bool = False, int8_engine: str = "auto") -> dict:
    """Predict every text (or pair) of an input file and write the competition or the full format.

    run may be a run folder or an exported model folder. Returns rows, output, problem_type, and counts (rows
    per predicted label; multi-label: rows holding each label) or, for regression, summary (mean, std, min, max).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown --format '{fmt}'; choose competition or full")
    device_mod.resolve_inference(precision, "--precision")
    out = Path(output_path)
    _check_suffix(out)
    if not Path(input_path).is_file():
        raise DataError(f"input file not found: {input_path}")
    check_output(out, input_path, "--input")
    im = load_inference_model(run, int8_engine=int8_engine)
    if text_column:
        im.data.text_column = text_column
    texts, pairs, ids = read_inputs(input_path, im.data, allow_pickle or im.data.allow_pickle, bool(text_column))
    outputs = im.predict(texts, batch_size, precision, progress=not quiet, pairs=pairs)
    write_frame(out, prediction_frame(outputs, im, ids, fmt))
    key = "summary" if im.problem_type == REGRESSION else "counts"
    return {"rows": len(texts), "output": str(out), "problem_type": im.problem_type, key: summary(outputs, im)}


def evaluate_frame(im: InferenceModel, df: pd.DataFrame, where: str, batch_size: Optional[int] = None,
                   precision: str = "fp32", progress: bool = False) -> dict:
    """The problem type's metrics on a labelled DataFrame, cleaned as training cleans it and its labels encoded
    through the model's label map (data.label_columns: the file's 0/1 columns)."""
    notes: list[str] = []
    check_pair_columns(df.columns, im.data, where)
    clean = data_mod.clean_frame(df, im.data, where, True, notes.append, im.problem_type)
    labels = np.asarray(targets.encode(im.problem_type, clean["label"], im.id2label, im.data, where))
    pairs = clean["text_pair"].tolist() if "text_pair" in clean else None
    out = im.predict(clean["text"].tolist(), batch_size, precision, progress, pairs=pairs)
    metrics = compute_metrics(labels, out, im.id2label, decision=im.decision)
    metrics["notes"] = notes
    return metrics


def evaluate_file(run: str | Path | runs.Run, data_path: str | Path, batch_size: Optional[int] = None, allow_pickle: bool = False,
                  precision: str = "fp32", quiet: bool = False, output: Optional[str | Path] = None,
                  int8_engine: str = "auto") -> dict:
    """Metrics of a run on a labelled file (labels mapped through the run's label map)."""
    device_mod.resolve_inference(precision, "--precision")
    if output:
        check_output(Path(output), data_path, "--data")
    im = load_inference_model(runs.as_run(run), int8_engine=int8_engine)
    df = data_mod.read_table(data_path, allow_pickle or im.data.allow_pickle, im.data.max_file_mb)
    metrics = evaluate_frame(im, df, str(data_path), batch_size, precision, progress=not quiet)
    notes = metrics.pop("notes")  # the key order of metrics JSON stays: ..., file, notes
    metrics["file"] = str(data_path)
    metrics["notes"] = notes
    if output:
        runs.write_json(output, metrics)
    return metrics


def explain_file(run: str | Path | runs.ModelFolder, input_path: str | Path, output_path: str | Path,
                 target: Optional[str] = None, steps: Optional[int] = None, allow_pickle: bool = False,
                 text_column: Optional[str] = None, precision: str = "fp32", quiet: bool = False) -> dict:
    """Token attributions (infer.explain) for every text (or pair) of an input file, written as JSON: one record per
    row, {ID, target, output, prediction, words: [{word, score}], pair_words, delta}. Returns rows, output and the
    records."""
    from . import explain as explain_mod

    steps = explain_mod.DEFAULT_STEPS if steps is None else steps
    out = Path(output_path)
    if out.suffix.lower() != ".json":
        raise DataError(f"--output {out} must be a .json file (the HTML page is written beside it)")
    if not Path(input_path).is_file():
        raise DataError(f"input file not found: {input_path}")
    check_output(out, input_path, "--input")
    im = load_inference_model(run)
    explain_mod.check_explainable(im, precision, steps)
    explain_mod.target_index(im, target)
    if text_column:
        im.data.text_column = text_column
    texts, pairs, ids = read_inputs(input_path, im.data, allow_pickle or im.data.allow_pickle, bool(text_column))
    found = explain_mod.explain_texts(im, texts, pairs, target, steps, precision, progress=not quiet)
    ids = list(range(len(texts))) if ids is None else ids
    records = [{"ID": _plain(i), **e.to_json()} for i, e in zip(ids, found)]
    runs.write_json(out, records)
    return {"rows": len(records), "output": str(out), "records": records}


def _plain(value):
    """An ID as JSON writes it (numpy integers to int)."""
    return value.item() if hasattr(value, "item") else value
