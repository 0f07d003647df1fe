"""Batch inference from a run folder, and the output formats."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data as data_mod
from . import device as device_mod
from . import logs
from . import model as model_mod
from . import runs
from .config import Config, DataConfig
from .data import read_texts
from .errors import DataError, ModelError
from .evaluate import compute_metrics, predict_probs

FORMATS = ("competition", "full")
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".txt", "")


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


def _batches(enc, order: list[np.ndarray], keys: list[str], pad_id: int, left: bool):
    for idx in order:
        yield {"index": torch.from_numpy(idx), **_pad(enc, idx, keys, pad_id, left)}


def _autocast_dtype(model, precision: str):
    """The autocast dtype for precision (bf16/fp16; auto resolved here); None for fp32 or a model already in half."""
    dtype = device_mod.AUTOCAST_DTYPES.get(device_mod.resolve(precision))
    return dtype if next(model.parameters()).dtype == torch.float32 else None


def predict_texts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
                  precision: str = "fp32", progress: bool = False, max_tokens: Optional[int] = None) -> np.ndarray:
    """Class probabilities for texts, in input order.

    Texts are tokenized once, sorted by length and cut into batches (see token_batches), then run through
    evaluate.predict_probs. bf16/fp16 run a half-precision model as is and an fp32 model under autocast.
    """
    dtype = _autocast_dtype(model, precision)
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    order = token_batches(lengths, batch_size, max_tokens or batch_size * max_length)
    with tqdm(total=len(texts), desc="predict", unit="text", leave=False,
              disable=not logs.show_progress(progress)) as bar:
        _, probs, _ = predict_probs(model, _batches(enc, order, keys, pad_id, left), autocast_dtype=dtype, progress=bar)
    return probs


def label_values(id2label: dict[int, str], int_labels: bool) -> list:
    """What the competition format writes per class: the class id for integer labels, else the name."""
    return [i if int_labels else id2label[i] for i in range(len(id2label))]


def write_predictions(path: str | Path, probs: np.ndarray, id2label: dict[int, str], ids: Optional[list],
                      fmt: str, int_labels: bool) -> None:
    import pandas as pd

    path = Path(path)
    pred = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=int)
    ids = list(range(len(pred))) if ids is None else ids
    if fmt == "competition":
        values = label_values(id2label, int_labels)
        df = pd.DataFrame({"ID": ids, "Label": [values[int(i)] for i in pred]})
    else:
        df = pd.DataFrame({"ID": ids, "label": [id2label[int(i)] for i in pred], "label_id": pred.astype(int),
                           "confidence": probs.max(-1) if len(probs) else []})
        for i in range(len(id2label)):
            df[f"prob_{id2label[i]}"] = probs[:, i] if len(probs) else []
    suffix = path.suffix.lower()
    _check_suffix(path)
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


@dataclass
class InferenceModel:
    """A classifier ready to predict, loaded from a run folder or from an exported model folder."""

    model: torch.nn.Module
    tokenizer: object
    id2label: dict[int, str]
    max_length: int
    int_labels: bool
    data: DataConfig  # how to read input files: the run's data section, or the defaults for an export
    source: str  # "run" or "export"

    def predict(self, texts: list[str], batch_size: int = 64, precision: str = "fp32", progress: bool = False) -> np.ndarray:
        return predict_texts(self.model, self.tokenizer, texts, batch_size, self.max_length, precision, progress)


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
    return InferenceModel(model, tokenizer, id2label, max_length, bool(int_labels), Config().data, "export")


def load_inference_model(path: str | Path, device: Optional[str] = None) -> InferenceModel:
    """Load a run folder (adapter merged into the base) or a folder written by `loraclf export`.

    device: default the first CUDA GPU when there is one, else the CPU.
    """
    p = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if runs.is_export_dir(p):
        im = _load_export(p)
        im.model.eval().to(device)
        return im
    run = runs.open_run(p)
    model, tokenizer, id2label, cfg = model_mod.load_run_model(run, merge=False)
    model = model_mod.merge_adapter(model).eval().to(device)
    int_labels = runs.read_label_map(run).int_labels
    return InferenceModel(model, tokenizer, id2label, cfg.data.max_length, int_labels, cfg.data, "run")


def predict_file(run: str | Path, input_path: str | Path, output_path: str | Path, fmt: str = "competition",
                 batch_size: int = 64, allow_pickle: bool = False, text_column: Optional[str] = None,
                 precision: str = "fp32", quiet: bool = False) -> dict:
    """Predict every text of an input file and write ID,Label (competition) or the full output.

    run may be a run folder or an exported model folder.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown --format '{fmt}'; choose competition or full")
    device_mod.resolve(precision, "--precision")
    out = Path(output_path)
    _check_suffix(out)
    if not Path(input_path).is_file():
        raise DataError(f"input file not found: {input_path}")
    check_output(out, input_path, "--input")
    im = load_inference_model(run)
    if text_column:
        im.data.text_column = text_column
    texts, ids, _ = read_texts(input_path, im.data, allow_pickle=allow_pickle or im.data.allow_pickle,
                               named=bool(text_column))
    probs = im.predict(texts, batch_size, precision, progress=not quiet)
    id2label = im.id2label
    write_predictions(out, probs, id2label, ids, fmt, im.int_labels)
    counts = np.bincount(probs.argmax(-1), minlength=len(id2label)) if len(probs) else np.zeros(len(id2label), int)
    return {"rows": len(texts), "output": str(out), "counts": {id2label[i]: int(c) for i, c in enumerate(counts)}}


def frame_texts(df, data: DataConfig, where: str) -> list[str]:
    """A DataFrame's texts for predict, in row order: its text column(s) joined as data says, empty ones kept as ''."""
    return [("" if t is None else t[: data.max_text_chars]) for t in data_mod.select_text(df, data, where)]


def evaluate_frame(model, tokenizer, id2label: dict[int, str], data: DataConfig, max_length: int, df, where: str,
                   batch_size: int = 64, precision: str = "fp32", progress: bool = False) -> dict:
    """Metrics on a labelled DataFrame, cleaned as training cleans it and labels mapped through id2label."""
    notes: list[str] = []
    clean = data_mod.clean_frame(df, data, where, True, notes.append)
    labels = data_mod.encode_labels(clean["label"], id2label, where)
    probs = predict_texts(model, tokenizer, clean["text"].tolist(), batch_size, max_length, precision, progress)
    metrics = compute_metrics(labels, probs, id2label)
    metrics["notes"] = notes
    return metrics


def evaluate_file(run: str | Path, data_path: str | Path, batch_size: int = 64, allow_pickle: bool = False,
                  precision: str = "fp32", quiet: bool = False, output: Optional[str | Path] = None) -> dict:
    """Metrics of a run on a labelled file (labels mapped through the run's label map)."""
    device_mod.resolve(precision, "--precision")
    if output:
        check_output(Path(output), data_path, "--data")
    run = runs.open_run(run)
    model, tokenizer, id2label, cfg = model_mod.load_run_model(run)
    df = data_mod.read_table(data_path, allow_pickle or cfg.data.allow_pickle, cfg.data.max_file_mb)
    metrics = evaluate_frame(model, tokenizer, id2label, cfg.data, cfg.data.max_length, df, str(data_path),
                             batch_size, precision, progress=not quiet)
    notes = metrics.pop("notes")  # the key order of metrics JSON stays: ..., file, notes
    metrics["file"] = str(data_path)
    metrics["notes"] = notes
    if output:
        runs.write_json(output, metrics)
    return metrics
