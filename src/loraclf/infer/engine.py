"""Batch inference from a run folder or an export folder, and the output formats of each problem type.

Texts (and the second texts of sentence pairs) go through `data.windows.encode`, the tokenization path of training,
so data.long_text (truncate, head_tail, chunks) holds at prediction too: the windows of one long document share
its index and are pooled back into one row. Logits become outputs by the run's decision (problem.outputs):
probabilities (calibrated when the run fitted a temperature), per-label probabilities, or values.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import config as config_mod
from .. import data as data_mod
from ..base import device as device_mod
from ..base import logs
from .. import task as problem
from . import int8 as quantize_mod
from .. import model as model_mod
from .. import runs
from ..config import DataConfig
from ..data import read_texts, targets, windows
from ..base.errors import ConfigError, DataError, ModelError, did_you_mean
from ..config import INT8_PREDICT_BATCH, PREDICT_BATCH
from .evaluate import compute_metrics, predict_probs
from ..task import MULTI, REGRESSION, SINGLE, Decision

FORMATS = ("competition", "full")
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".txt", "")
# the data keys an export keeps (loraclf_export.json "data"), so predicting from it reads inputs as the run did
INFERENCE_DATA_KEYS = ("text_column", "text_pair_column", "truncation", "label_column", "label_columns",
                       "label_delimiter", "allow_empty_labels", "id_column", "max_length", "max_text_chars",
                       "long_text", "head_tokens", "stride", "chunk_pooling")
CONFIG_THRESHOLDS = "loraclf_thresholds"  # the export's config.json key of the run's decision thresholds
DEFAULT_DELIMITER = "|"  # how label sets are written when the run names no data.label_delimiter


def token_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Indices into lengths, longest first, cut into batches of at most batch_size texts and max_tokens padded tokens.

    Sorting keeps padding small; the token cap lets batches of short texts grow past batch_size (up to 4x) while
    long texts stay in batches that fit in cache.
    """
    order = np.argsort(-lengths, kind="stable")
    out, start, n = [], 0, len(order)
    cap = batch_size * 4
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(cap, max_tokens // longest))
        out.append(order[start:start + size])
        start += size
    return out


def _pad(enc, idx: np.ndarray, keys: list[str], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad one batch straight into int64 arrays (tokenizer.pad goes through Python dicts per row: slower)."""
    rows = [enc["input_ids"][i] for i in idx]
    width = max(len(r) for r in rows)
    arrays = {k: np.full((len(idx), width), pad_id if k == "input_ids" else 0, dtype=np.int64) for k in keys}
    for j, i in enumerate(idx):
        n = len(rows[j])
        sl = slice(width - n, width) if left else slice(0, n)
        for k in keys:
            arrays[k][j, sl] = enc[k][i]
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _batches(enc, doc: np.ndarray, order: list[np.ndarray], keys: list[str], pad_id: int, left: bool):
    # padded one batch at a time: a 100k-token document's windows never sit padded in memory all at once
    for idx in order:
        yield {"index": torch.from_numpy(doc[idx]), **_pad(enc, idx, keys, pad_id, left)}


def _autocast_dtype(model, precision: str):
    """The autocast dtype for precision (bf16/fp16; auto resolved here); None for fp32 or a model already in half."""
    dtype = device_mod.autocast_dtype(device_mod.resolve(precision))
    first = next(model.parameters(), None)  # None: an onnxruntime graph (loraclf.infer.onnx), run as it is
    return dtype if first is not None and first.dtype == torch.float32 else None


def model_problem_type(model) -> str:
    """The problem type a transformers model's config names (single-label when it names none)."""
    pt = getattr(model.config, "problem_type", None)
    return pt if pt in problem.PROBLEM_TYPES else SINGLE


def _inference_data(data: Optional[DataConfig], max_length: Optional[int]) -> DataConfig:
    data = data if data is not None else DataConfig()
    return data if max_length is None or max_length == data.max_length else dataclasses.replace(data, max_length=max_length)


def empty_outputs(model, decision: Decision) -> np.ndarray:
    if decision.problem_type == REGRESSION:
        return np.zeros(0, dtype=np.float64)
    return np.zeros((0, model.config.num_labels), dtype=np.float32)


def predict_texts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: Optional[int] = None,
                  precision: str = "fp32", progress: bool = False, max_tokens: Optional[int] = None, *,
                  pairs: Optional[list[str]] = None, data: Optional[DataConfig] = None,
                  decision: Optional[Decision] = None) -> np.ndarray:
    """Outputs for texts (and their pairs), one row per text in input order (problem.outputs of the decision).

    data: how texts are cut (data.long_text, truncation of pairs, max_length; default: truncated at max_length or
    128). decision: default the model config's problem type with no temperature or thresholds. The rows (windows
    for chunks) are sorted by length and cut into batches of at most max_tokens padded tokens (default batch_size x
    max_length; see token_batches), then run through evaluate.predict_probs, which pools the windows of a document.
    bf16/fp16 run a half-precision model as is and an fp32 model under autocast.
    """
    data = _inference_data(data, max_length)
    decision = decision if decision is not None else Decision(model_problem_type(model))
    dtype = _autocast_dtype(model, precision)
    if not len(texts):
        return empty_outputs(model, decision)
    enc = windows.encode(tokenizer, list(texts), None if pairs is None else list(pairs), data)
    doc = np.asarray(enc.pop("doc"), dtype=np.int64)
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(doc))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    order = token_batches(lengths, batch_size, max_tokens or batch_size * data.max_length)
    with tqdm(total=len(doc), desc="predict", unit="text", leave=False,
              disable=not logs.show_progress(progress)) as bar:
        _, out, _ = predict_probs(model, _batches(enc, doc, order, keys, pad_id, left), autocast_dtype=dtype,
                                  progress=bar, decision=decision, pooling=data.chunk_pooling)
    return out


# ------------------------------------------------------------------------------------------ the model


@dataclass
class InferenceModel:
    """A model ready to predict, loaded from a run folder or from an exported model folder."""

    model: torch.nn.Module
    tokenizer: object
    id2label: dict[int, str]
    max_length: int
    int_labels: bool
    data: DataConfig  # how inputs are read and cut: the run's data section (an export keeps it)
    source: str  # "run" or "export"
    decision: Decision = field(default_factory=Decision)  # the problem type, temperature, thresholds, scaling
    path: Optional[Path] = None  # the folder it was loaded from
    int8: Optional[torch.nn.Module] = field(default=None, repr=False)  # the int8 model, built on first int8 use
    int8_engine: str = "auto"  # whose int8 (loraclf.infer.int8.INT8_ENGINES): auto picks the faster one for this CPU

    @property
    def problem_type(self) -> str:
        return self.decision.problem_type

    @property
    def labels(self) -> list[str]:
        """Label names in id order (regression: the one target's name)."""
        return [self.id2label[i] for i in range(len(self.id2label))]

    @property
    def reads_pairs(self) -> bool:
        return bool(data_mod.pair_columns(self.data))

    def check_pairs(self, texts: list, pairs: Optional[list]) -> Optional[list[str]]:
        """pairs as the model needs them: one second text per text for a pair model, None otherwise."""
        if self.reads_pairs and pairs is None:
            raise DataError(f"this model reads sentence pairs (data.text_pair_column="
                            f"{self.data.text_pair_column!r}); give text_pair, one second text per text")
        if not self.reads_pairs and pairs is not None:
            raise DataError("this model reads single texts (it was trained without data.text_pair_column); "
                            "drop text_pair")
        if pairs is None:
            return None
        pairs = list(pairs)
        if len(pairs) != len(texts):
            raise DataError(f"text_pair has {len(pairs)} texts for {len(texts)} texts; give one second text per text")
        if not all(isinstance(t, str) for t in pairs):
            raise DataError("text_pair must hold strings, one second text per text")
        return pairs

    def predict(self, texts: list[str], batch_size: Optional[int] = None, precision: str = "fp32",
                progress: bool = False, pairs: Optional[list[str]] = None) -> np.ndarray:
        """Outputs in input order: probabilities (single- and multi-label) or values (regression). batch_size None:
        PREDICT_BATCH, or INT8_PREDICT_BATCH for int8 (loraclf.config.limits says why)."""
        pairs = self.check_pairs(texts, pairs)
        model, default = self.model, PREDICT_BATCH
        if device_mod.resolve_inference(precision) == device_mod.INT8:
            model, precision, default = self.int8_model(), "fp32", INT8_PREDICT_BATCH  # int8 weights, fp32 activations
        batch_size = batch_size or default
        return predict_texts(model, self.tokenizer, texts, batch_size, self.max_length, precision, progress,
                             pairs=pairs, data=self.data, decision=self.decision)

    def int8_model(self) -> torch.nn.Module:
        """The model with its Linear layers dynamically quantized to int8 by int8_engine (loraclf.infer.int8), on the
        CPU: an export's saved int8 file of that engine where it has one, else built here once and kept."""
        if self.int8 is None:
            self.int8 = quantize_mod.int8_model(self.model, self.tokenizer, self.path, self.max_length,
                                                self.int8_engine)
            if device_mod.has_amx():
                logs.get(__name__).warning(quantize_mod.SLOWER_ON_AMX)
        return self.int8

    def decide(self, out: np.ndarray) -> list:
        """Per row: the label (class id for integer labels, else its name), the list of label names, or the value."""
        if self.problem_type == REGRESSION:
            return [float(v) for v in out]
        pred = problem.predictions(out, self.decision)
        if self.problem_type == MULTI:
            return [[self.id2label[int(j)] for j in np.flatnonzero(row)] for row in pred]
        values = label_values(self.id2label, self.int_labels)
        return [values[int(i)] for i in pred]


def _export_decision(p: Path, model, info: dict) -> Decision:
    """An export's problem type and thresholds; its temperature and target scaling are folded into its weights."""
    pt = model_problem_type(model)
    saved = info.get("decision") if isinstance(info.get("decision"), dict) else {}
    thresholds = saved.get("thresholds", model.config.to_dict().get(CONFIG_THRESHOLDS))
    want = model.config.num_labels if pt == MULTI else 1
    if thresholds is not None and not (isinstance(thresholds, list) and len(thresholds) == want
                                       and all(isinstance(t, (int, float)) for t in thresholds)):
        raise ModelError(f"{p / runs.EXPORT_INFO} is damaged: 'decision.thresholds' must be a list of {want} "
                         f"number(s); export the run again")
    return Decision(pt, thresholds=thresholds, threshold_metric=saved.get("threshold_metric"))


def _export_data(p: Path, info: dict, pt: str, max_length: int) -> DataConfig:
    """The run's data keys kept in the export (INFERENCE_DATA_KEYS); the defaults for an export without them."""
    saved = info.get("data") if isinstance(info.get("data"), dict) else {}
    tree = {k: v for k, v in saved.items() if k in INFERENCE_DATA_KEYS}
    tree["max_length"] = max_length
    try:
        return config_mod.from_dict({"model": {"problem_type": pt}, "data": tree}).data
    except ConfigError as e:
        raise ModelError(f"{p / runs.EXPORT_INFO} is damaged ({e}); export the run again") from None


def _load_export(p: Path) -> InferenceModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_mod.quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(p))
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the model folder {p}: {str(e).strip().splitlines()[0][:300]}") from None
    info = runs.read_export_info(p) or {}
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    int_labels = info.get("int_labels", all(v.isdigit() and int(v) == k for k, v in id2label.items()))
    max_length = int(info.get("max_length") or min(tokenizer.model_max_length, 512))
    decision = _export_decision(p, model, info)
    data = _export_data(p, info, decision.problem_type, max_length)
    return InferenceModel(model, tokenizer, id2label, max_length, bool(int_labels), data, "export", decision)


def load_inference_model(path: str | Path, device: Optional[str] = None, int8_engine: str = "auto") -> InferenceModel:
    """Load a run folder (adapter merged into the base) or a folder written by `loraclf export`.

    device: default the first CUDA GPU when there is one, else the CPU. int8_engine: whose int8 precision="int8"
    runs (loraclf.infer.int8.INT8_ENGINES; checked here, used on first int8 use).
    """
    quantize_mod.resolve_engine(int8_engine, "--int8-engine")
    im = _load(Path(path), device or ("cuda" if torch.cuda.is_available() else "cpu"))
    im.int8_engine = int8_engine
    return im


def _load(p: Path, device: str) -> InferenceModel:
    if runs.is_export_dir(p):
        im = _load_export(p)
        im.model.eval().to(device)
        im.path = p
        return im
    run = runs.open_run(p)
    model, tokenizer, id2label, cfg = model_mod.load_run_model(run, merge=False)
    model = model_mod.merge_adapter(model).eval().to(device)
    int_labels = runs.read_label_map(run).int_labels
    decision = problem.read_decision(run, cfg.model.problem_type)
    return InferenceModel(model, tokenizer, id2label, cfg.data.max_length, int_labels, cfg.data, "run", decision, p)


# ------------------------------------------------------------------------------------------ inputs


def check_pair_columns(columns, data: DataConfig, where: str) -> None:
    """A pair model's input must hold its text-pair column(s): one line naming the missing one."""
    columns = [str(c) for c in columns]
    missing = [c for c in data_mod.pair_columns(data) if c not in columns]
    if missing:
        raise DataError(f"{where} has no text-pair column '{missing[0]}'{did_you_mean(missing[0], columns)}; columns "
                        f"are: {', '.join(columns)} (this model reads sentence pairs: give each row its second text "
                        f"in '{missing[0]}', the run's data.text_pair_column)")


def _pair_texts(df: pd.DataFrame, data: DataConfig) -> Optional[list[str]]:
    cols = data_mod.pair_columns(data)
    if not cols:
        return None
    joined = data_mod.join_text([df[c].tolist() for c in cols])
    return [("" if t is None else t[: data.max_text_chars]) for t in joined]


def frame_inputs(df: pd.DataFrame, data: DataConfig, where: str) -> tuple[list[str], Optional[list[str]]]:
    """A DataFrame's texts (and second texts, for a pair model) in row order, empty ones kept as ''."""
    check_pair_columns(df.columns, data, where)
    single = dataclasses.replace(data, text_pair_column=None)
    texts = [("" if t is None else t[: data.max_text_chars]) for t in data_mod.select_text(df, single, where)]
    return texts, _pair_texts(df, data)


def read_inputs(path: str | Path, data: DataConfig, allow_pickle: bool,
                named: bool) -> tuple[list[str], Optional[list[str]], Optional[list]]:
    """An input file's texts, second texts (pair models) and IDs (see data.read_texts)."""
    texts, ids, df = read_texts(path, dataclasses.replace(data, text_pair_column=None), allow_pickle=allow_pickle,
                                named=named)
    check_pair_columns(df.columns, data, str(path))
    return texts, _pair_texts(df, data), ids


# ------------------------------------------------------------------------------------------ output formats


def label_values(id2label: dict[int, str], int_labels: bool) -> list:
    """What the competition format writes per class: the class id for integer labels, else the name."""
    return [i if int_labels else id2label[i] for i in range(len(id2label))]


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


def predict_file(run: str | Path, input_path: str | Path, output_path: str | Path, fmt: str = "competition",
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


def evaluate_file(run: str | Path, data_path: str | Path, batch_size: Optional[int] = None, allow_pickle: bool = False,
                  precision: str = "fp32", quiet: bool = False, output: Optional[str | Path] = None,
                  int8_engine: str = "auto") -> dict:
    """Metrics of a run on a labelled file (labels mapped through the run's label map)."""
    device_mod.resolve_inference(precision, "--precision")
    if output:
        check_output(Path(output), data_path, "--data")
    run = runs.open_run(run)
    im = load_inference_model(run, int8_engine=int8_engine)
    df = data_mod.read_table(data_path, allow_pickle or im.data.allow_pickle, im.data.max_file_mb)
    metrics = evaluate_frame(im, df, str(data_path), batch_size, precision, progress=not quiet)
    notes = metrics.pop("notes")  # the key order of metrics JSON stays: ..., file, notes
    metrics["file"] = str(data_path)
    metrics["notes"] = notes
    if output:
        runs.write_json(output, metrics)
    return metrics
